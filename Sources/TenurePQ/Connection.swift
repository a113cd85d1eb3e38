import CLibPQ
#if canImport(Glibc)
import Glibc
#endif
import TenureCore

/// libpq connection parameters as keyword/value pairs. Built from a URL or key=value string by
/// libpq's own parser, so every form libpq accepts works. `description` never shows a password.
public struct ConnectionParameters: Sendable, CustomStringConvertible, Equatable {
    public private(set) var values: [(String, String)]

    public static func == (lhs: ConnectionParameters, rhs: ConnectionParameters) -> Bool {
        lhs.values.elementsEqual(rhs.values, by: { $0 == $1 })
    }

    public init(_ values: [(String, String)] = []) { self.values = values }

    /// Parses a `postgresql://` URL or a `key=value` string with libpq's parser.
    public init(parsing text: String, setting: String = "connection URL") throws(TenureError) {
        var errorMessage: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(text, &errorMessage) else {
            let reason = errorMessage.map { String(cString: $0) } ?? "unparseable"
            if let errorMessage { PQfreemem(errorMessage) }
            // libpq's message names the bad part; it never echoes a password.
            throw TenureError(.invalidConfiguration, "\(setting) is not a valid PostgreSQL connection string: \(reason.trimmingTrailingNewlines())")
        }
        defer { PQconninfoFree(options) }
        var values: [(String, String)] = []
        var cursor = options
        while let keyword = cursor.pointee.keyword {
            if let value = cursor.pointee.val { values.append((String(cString: keyword), String(cString: value))) }
            cursor += 1
        }
        self.values = values
    }

    public subscript(key: String) -> String? {
        get { values.last(where: { $0.0 == key })?.1 }
        set {
            values.removeAll { $0.0 == key }
            if let newValue { values.append((key, newValue)) }
        }
    }

    /// The same server with another database.
    public func with(database: String) -> ConnectionParameters {
        var copy = self
        copy["dbname"] = database
        return copy
    }

    public var hasPassword: Bool { self["password"] != nil }

    /// `key=value` pairs with the password replaced by `***`.
    public var description: String {
        values.map { key, value in key == "password" ? "\(key)=***" : "\(key)=\(value)" }.joined(separator: " ")
    }

    /// host:port/dbname for messages.
    public var shortDescription: String {
        let host = self["host"] ?? self["hostaddr"] ?? "localhost"
        return "\(host):\(self["port"] ?? "5432")/\(self["dbname"] ?? self["user"] ?? "?")"
    }
}

/// Stops a session from another thread: shuts its socket down, so that a call blocked on it
/// (a COPY, a query waiting for a lock or for a server that stopped answering) fails at
/// once as if the server had closed the connection. The descriptor stays open until the
/// session is closed, and an interrupter of a closed session does nothing, so it can never
/// touch a descriptor reused by someone else. The server notices the lost client at its next
/// write, or within `client_connection_check_interval` when the session sets it.
public final class SessionInterrupter: Sendable {
    private let socket: Locked<Int32>

    init(socket: Int32) { self.socket = Locked(socket) }

    public func interrupt() {
        socket.withLock { socket in
            if socket >= 0 { _ = shutdown(socket, Int32(SHUT_RDWR)) }
        }
    }

    func detach() { socket.withLock { $0 = -1 } }
}

/// A result set in text format.
public struct QueryResult: Sendable {
    public var columns: [String]
    public var rows: [[String?]]
    /// Rows affected by INSERT/UPDATE/DELETE (PQcmdTuples), 0 otherwise.
    public var affectedRowCount: Int

    public subscript(row: Int, column: String) -> String? {
        guard let index = columns.firstIndex(of: column) else {
            preconditionFailure("no column \(column) in result")
        }
        return rows[row][index]
    }
}

/// A synchronous libpq connection. Not thread-safe: it is born, used and closed on one
/// thread (the data plane's rule); blocking calls must never run on an event loop.
public final class PostgresConnection {
    private var handle: OpaquePointer?
    public let parameters: ConnectionParameters
    /// When set, `query` and `execute` wait at most this long for the server's answer (a
    /// client-side deadline: it holds even when the server is stopped and cannot enforce its
    /// own `statement_timeout`). Past it the connection is closed and the call fails with
    /// `.serverUnreachable` naming the server.
    public var deadline: Duration?

    /// Connects, failing with `.serverUnreachable` (and the server's reason) if it cannot.
    /// Thread: any thread that may block.
    public init(_ parameters: ConnectionParameters, applicationName: String = "tenure", connectTimeoutSeconds: Int = 10)
        throws(TenureError)
    {
        var parameters = parameters
        if parameters["application_name"] == nil { parameters["application_name"] = applicationName }
        if parameters["connect_timeout"] == nil { parameters["connect_timeout"] = String(connectTimeoutSeconds) }
        self.parameters = parameters
        let keys = parameters.values.map { strdup($0.0) }
        let values = parameters.values.map { strdup($0.1) }
        defer {
            keys.forEach { free($0) }
            values.forEach { free($0) }
        }
        var keyPointers: [UnsafePointer<CChar>?] = keys.map { UnsafePointer($0) } + [nil]
        var valuePointers: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) } + [nil]
        let connection = PQconnectdbParams(&keyPointers, &valuePointers, 0)
        guard let connection, PQstatus(connection) == CONNECTION_OK else {
            let reason = connection.map { String(cString: PQerrorMessage($0)) } ?? "out of memory"
            if let connection { PQfinish(connection) }
            var error = TenureError(
                .serverUnreachable, "cannot connect to PostgreSQL at \(parameters.shortDescription): \(reason.trimmingTrailingNewlines())",
                context: ["server": parameters.shortDescription])
            // An interrupted DROP DATABASE leaves an invalid database: 55000 on connect.
            if reason.contains("invalid database") { error.sqlState = "55000" }
            if reason.contains("does not exist") { error.sqlState = "3D000" }
            throw error
        }
        PQsetNoticeProcessor(connection, { _, _ in }, nil)
        handle = connection
        interrupter = SessionInterrupter(socket: PQsocket(connection))
    }

    deinit { close() }

    /// Wakes whichever thread is blocked on this session, from any thread (see
    /// `SessionInterrupter`).
    public private(set) var interrupter = SessionInterrupter(socket: -1)

    public func close() {
        interrupter.detach()
        if let handle { PQfinish(handle) }
        handle = nil
    }

    /// The server's major version number (e.g. 15).
    /// Connected and idle outside a transaction: safe to hand to the next user.
    public var isHealthy: Bool { PQstatus(handle) == CONNECTION_OK && PQtransactionStatus(handle) == PQTRANS_IDLE }

    public var serverMajorVersion: Int { Int(PQserverVersion(handle)) / 10_000 }

    /// Runs one statement with bound text parameters and returns its rows.
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?] = []) throws(TenureError) -> QueryResult {
        guard let handle else { preconditionFailure("query on a closed connection") }
        let copies = parameters.map { $0.map { strdup($0) } ?? nil }
        defer { copies.forEach { free($0) } }
        let pointers: [UnsafePointer<CChar>?] = copies.map { $0.map { UnsafePointer($0) } }
        if let deadline {
            let sent = pointers.withUnsafeBufferPointer { buffer in
                PQsendQueryParams(handle, sql, Int32(parameters.count), nil, buffer.baseAddress, nil, nil, 0)
            }
            return try consume(try awaitResult(sent == 1, deadline: deadline), sql: sql)
        }
        let result = pointers.withUnsafeBufferPointer { buffer in
            PQexecParams(handle, sql, Int32(parameters.count), nil, buffer.baseAddress, nil, nil, 0)
        }
        return try consume(result, sql: sql)
    }

    /// Runs one or more statements without parameters (simple protocol). For DDL.
    public func execute(_ sql: String) throws(TenureError) {
        guard let handle else { preconditionFailure("execute on a closed connection") }
        if let deadline {
            _ = try consume(try awaitResult(PQsendQuery(handle, sql) == 1, deadline: deadline), sql: sql)
            return
        }
        let result = PQexec(handle, sql)
        _ = try consume(result, sql: sql)
    }

    /// Waits for the answer to a query just sent, up to `deadline`, and returns its last result
    /// (or its first error), as PQexec would. Past the deadline the connection is closed.
    private func awaitResult(_ sent: Bool, deadline: Duration) throws(TenureError) -> OpaquePointer? {
        guard let handle else { preconditionFailure("query on a closed connection") }
        guard sent else { return nil }
        let end = ContinuousClock.now + deadline
        var last: OpaquePointer?
        while true {
            while PQisBusy(handle) == 1 {
                let remaining = end - ContinuousClock.now
                let milliseconds = remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000
                if milliseconds <= 0 {
                    if let last { PQclear(last) }
                    let server = parameters.shortDescription
                    close()
                    throw TenureError(
                        .serverUnreachable,
                        "PostgreSQL at \(server) did not answer within \(deadline.components.seconds) s; the session was closed",
                        context: ["server": server])
                }
                var descriptor = pollfd(fd: PQsocket(handle), events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, Int32(min(milliseconds, 1000)))
                if ready < 0 && errno != EINTR { break }
                if ready > 0 && PQconsumeInput(handle) == 0 { break }
            }
            guard let result = PQgetResult(handle) else { return last }
            let status = PQresultStatus(result)
            if status == PGRES_FATAL_ERROR || status == PGRES_COPY_IN || status == PGRES_COPY_OUT {
                // Keep the error; drain the rest so the session is usable.
                if let last { PQclear(last) }
                while let extra = PQgetResult(handle) { PQclear(extra) }
                return result
            }
            if let last { PQclear(last) }
            last = result
        }
    }

    /// Computes a SCRAM-SHA-256 verifier on the client, so the plaintext password never
    /// reaches the server, its logs or `pg_stat_activity`.
    public func scramVerifier(password: String, role: String) throws(TenureError) -> String {
        guard let handle else { preconditionFailure("closed connection") }
        guard let encrypted = PQencryptPasswordConn(handle, password, role, "scram-sha-256") else {
            throw TenureError(.internal, "libpq could not compute a SCRAM verifier: \(String(cString: PQerrorMessage(handle)).trimmingTrailingNewlines())")
        }
        defer { PQfreemem(encrypted) }
        return String(cString: encrypted)
    }

    var rawHandle: OpaquePointer? { handle }
    var lastErrorMessage: String { errorMessage }

    func consumeResult(_ result: OpaquePointer, sql: String) throws(TenureError) -> QueryResult {
        try consume(result, sql: sql)
    }

    private func consume(_ result: OpaquePointer?, sql: String) throws(TenureError) -> QueryResult {
        guard let result else {
            throw TenureError(.serverUnreachable, "lost the connection to \(parameters.shortDescription): \(errorMessage)")
        }
        defer { PQclear(result) }
        // Drain: a simple-protocol PQexec returns only the last result, so nothing is left.
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            let columnCount = Int(PQnfields(result))
            let rowCount = Int(PQntuples(result))
            let columns = (0..<columnCount).map { String(cString: PQfname(result, Int32($0))) }
            var rows: [[String?]] = []
            rows.reserveCapacity(rowCount)
            for row in 0..<rowCount {
                rows.append(
                    (0..<columnCount).map { column in
                        PQgetisnull(result, Int32(row), Int32(column)) == 1 ? nil : String(cString: PQgetvalue(result, Int32(row), Int32(column)))
                    })
            }
            let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
            return QueryResult(columns: columns, rows: rows, affectedRowCount: affected)
        default:
            let sqlState = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            let primary = PQresultErrorField(result, Int32(UInt8(ascii: "M"))).map { String(cString: $0) } ?? errorMessage
            let brokenConnection = PQstatus(handle) != CONNECTION_OK
            throw TenureError(
                brokenConnection ? .serverUnreachable : .postgres,
                "PostgreSQL at \(parameters.shortDescription) refused the statement: \(primary)\(sqlState.map { " (SQLSTATE \($0))" } ?? "")",
                context: ["server": parameters.shortDescription, "postgres_message": primary], sqlState: sqlState)
        }
    }

    private var errorMessage: String {
        handle.map { String(cString: PQerrorMessage($0)).trimmingTrailingNewlines() } ?? "closed"
    }

    /// Runs `body` in a transaction; commits when it returns, rolls back when it throws.
    public func transaction<T>(_ body: () throws(TenureError) -> T) throws(TenureError) -> T {
        try execute("BEGIN")
        do {
            let value = try body()
            try execute("COMMIT")
            return value
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }
}

/// Quotes a validated identifier for SQL. The only place identifiers are built; every caller
/// passes names derived from typed ids or from the catalog's own constants.
public func quoteIdentifier(_ name: String) -> String {
    precondition(!name.utf8.contains(0), "identifier with NUL")
    return "\"" + name.replacingAll("\"", with: "\"\"") + "\""
}

/// Quotes a string literal (for DDL that cannot take bound parameters). Standard-conforming
/// strings are on in every supported server, so only `'` needs doubling.
public func quoteLiteral(_ value: String) -> String {
    precondition(!value.utf8.contains(0), "literal with NUL")
    return "'" + value.replacingAll("'", with: "''") + "'"
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var text = self
        while let last = text.last, last.isNewline || last == " " { text.removeLast() }
        return text
    }

    func replacingAll(_ target: Character, with replacement: String) -> String {
        var result = ""
        result.reserveCapacity(utf8.count)
        for character in self {
            if character == target { result += replacement } else { result.append(character) }
        }
        return result
    }
}

// MARK: - COPY

extension PostgresConnection {
    /// Runs `COPY ... TO STDOUT` and hands each row (PQgetCopyData's buffer, valid only during
    /// the call) to `row`. Returns the row count from the server's completion tag, which the
    /// caller compares with what it counted: a COPY that ends without its tag fails (B1).
    public func copyOut(_ sql: String, row: (UnsafeRawBufferPointer) throws(TenureError) -> Void) throws(TenureError) -> Int {
        guard let handle = rawHandle else { preconditionFailure("copy on a closed connection") }
        guard PQsendQuery(handle, sql) == 1 else {
            throw TenureError(.serverUnreachable, "cannot send COPY to \(parameters.shortDescription): \(lastErrorMessage)")
        }
        guard let first = PQgetResult(handle) else {
            throw TenureError(.serverUnreachable, "no response to COPY from \(parameters.shortDescription): \(lastErrorMessage)")
        }
        guard PQresultStatus(first) == PGRES_COPY_OUT else {
            _ = try? consumeResult(first, sql: sql)
            drainResults()
            throw TenureError(.postgres, "COPY did not start on \(parameters.shortDescription): \(lastErrorMessage)")
        }
        PQclear(first)
        var failure: TenureError?
        while true {
            var buffer: UnsafeMutablePointer<CChar>?
            let length = PQgetCopyData(handle, &buffer, 0)
            if length > 0, let buffer {
                if failure == nil {
                    do throws(TenureError) {
                        try row(UnsafeRawBufferPointer(start: buffer, count: Int(length)))
                    } catch {
                        failure = error
                        // Stop the server producing more; keep draining so the connection stays usable.
                        cancelRunningQuery()
                    }
                }
                PQfreemem(buffer)
                continue
            }
            if let buffer { PQfreemem(buffer) }
            break
        }
        let result = PQgetResult(handle)
        defer { drainResults() }
        if let failure {
            if let result { PQclear(result) }
            throw failure
        }
        guard let result else {
            throw TenureError(.serverUnreachable, "COPY from \(parameters.shortDescription) ended without its completion tag: \(lastErrorMessage)")
        }
        let rows = try consumeResult(result, sql: sql).affectedRowCount
        return rows
    }

    /// Starts `COPY ... FROM STDIN`; then `copyData` any number of times and `endCopy` once,
    /// which returns the server's row count.
    public func beginCopyIn(_ sql: String) throws(TenureError) {
        guard let handle = rawHandle else { preconditionFailure("copy on a closed connection") }
        guard PQsendQuery(handle, sql) == 1, let first = PQgetResult(handle) else {
            throw TenureError(.serverUnreachable, "cannot start COPY on \(parameters.shortDescription): \(lastErrorMessage)")
        }
        guard PQresultStatus(first) == PGRES_COPY_IN else {
            _ = try consumeResult(first, sql: sql)
            drainResults()
            throw TenureError(.postgres, "COPY FROM STDIN did not start on \(parameters.shortDescription)")
        }
        PQclear(first)
    }

    public func copyData(_ bytes: UnsafeRawBufferPointer) throws(TenureError) {
        guard let handle = rawHandle, let base = bytes.baseAddress else { return }
        guard PQputCopyData(handle, base.assumingMemoryBound(to: CChar.self), Int32(bytes.count)) == 1 else {
            throw TenureError(.serverUnreachable, "sending COPY data to \(parameters.shortDescription) failed: \(lastErrorMessage)")
        }
    }

    /// Ends a COPY FROM STDIN (or aborts it with `failWith`) and returns the server's row count.
    @discardableResult
    public func endCopy(failWith reason: String? = nil) throws(TenureError) -> Int {
        guard let handle = rawHandle else { preconditionFailure("copy on a closed connection") }
        guard PQputCopyEnd(handle, reason) == 1 else {
            throw TenureError(.serverUnreachable, "ending COPY on \(parameters.shortDescription) failed: \(lastErrorMessage)")
        }
        guard let result = PQgetResult(handle) else {
            throw TenureError(.serverUnreachable, "COPY on \(parameters.shortDescription) ended without a result")
        }
        defer { drainResults() }
        return try consumeResult(result, sql: "COPY").affectedRowCount
    }

    /// Asks the server to cancel the running statement (PQcancel; safe from another thread).
    public func cancelRunningQuery() {
        guard let handle = rawHandle, let cancel = PQgetCancel(handle) else { return }
        var buffer = [CChar](repeating: 0, count: 256)
        _ = PQcancel(cancel, &buffer, 256)
        PQfreeCancel(cancel)
    }

    func drainResults() {
        guard let handle = rawHandle else { return }
        while let result = PQgetResult(handle) { PQclear(result) }
    }
}
