import Foundation
import TenureCore
import TenurePQ
import TenureZstd
import TenureZlib

#if canImport(Glibc)
import Glibc
#endif

/// Limits on one upload, enforced while it streams in.
public struct UploadLimits: Sendable, Equatable {
    /// Bytes received (the upload as sent).
    public var maximumBytes: Int64 = 10 << 30
    /// Bytes after decompression (SQL text, or archive data).
    public var maximumDecompressedBytes: Int64 = 50 << 30
    /// Decompressed / received, checked once more than 16 MiB came out (a zip bomb).
    public var maximumRatio: Double = 100
    /// Longest a single statement of the upload (or of an upgrade script) may run.
    public var statementTimeout: Duration = .seconds(900)
    /// Most objects (CREATE statements, or relations and functions in the result).
    public var maximumObjects = 100_000
    /// Longest one statement of an upload (or of an upgrade script) may be, in bytes: the
    /// lexer holds one statement whole so the policy judges all of it.
    public var maximumStatementBytes = 256 << 20

    public init() {}

    /// Refuses an upload that decompressed (`produced` bytes from `received`) past the limit
    /// or past the ratio of a decompression bomb.
    func checkDecompressed(_ produced: Int64, received: Int64) throws(TenureError) {
        if produced > maximumDecompressedBytes {
            throw TenureError(
                .uploadRejected, "the upload decompresses to more than the limit of \(maximumDecompressedBytes) bytes (TENURE_UPLOAD_MAX_DECOMPRESSED_BYTES)")
        }
        if produced > 16 << 20, Double(produced) > Double(max(received, 1)) * maximumRatio {
            throw TenureError(
                .uploadRejected,
                "the upload decompresses more than \(Int(maximumRatio)) times its size (\(received) bytes in, \(produced) out; TENURE_UPLOAD_MAX_RATIO): refused as a decompression bomb"
            )
        }
    }
}

/// The formats an upload may have, told apart by their first bytes.
public enum UploadFormat: String, Sendable, CaseIterable {
    case tenure
    case pgDumpCustom = "pg_dump-custom"
    case sql
    case sqlZst = "sql.zst"
    /// `pg_dump -Ft`: converted by pg_restore like the custom format.
    case pgDumpTar = "pg_dump-tar"
    /// Plain SQL compressed with gzip (one or more members).
    case sqlGz = "sql.gz"
    /// A zip holding one `dump.sql` (backup zips of ERP database managers); other members
    /// are read past and listed.
    case zip

    /// Recognizes a format from the first bytes (up to 512) of an upload.
    public static func detect(_ head: [UInt8]) throws(TenureError) -> UploadFormat {
        if head.isEmpty { throw TenureError(.uploadRejected, "the upload is empty") }
        if head.starts(with: Array("PGDMP".utf8)) { return .pgDumpCustom }
        if head.starts(with: [0x28, 0xB5, 0x2F, 0xFD]) { return .sqlZst }
        if head.count >= 262, Array(head[257..<262]) == Array("ustar".utf8) {
            // pg_dump's tar format starts with its table of contents; Tenure's with its header.
            let name = head.prefix(100).prefix { $0 != 0 }
            return Array(name) == Array("toc.dat".utf8) ? .pgDumpTar : .tenure
        }
        if head.starts(with: [0x1F, 0x8B]) { return .sqlGz }
        if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) { return .zip }
        // Plain SQL: UTF-8 text without NUL bytes (a cut multi-byte character at the end of
        // the peeked bytes is fine).
        let text = head.count == 512 ? Array(head.prefix(508)) : head
        if !text.contains(0), String(validating: text, as: UTF8.self) != nil || text.count >= 508 && isMostlyText(text) {
            return .sql
        }
        throw TenureError(
            .uploadRejected,
            "the upload is not a recognized format: expected a Tenure archive (.tenure), a pg_dump custom-format (-Fc) or tar (-Ft) archive, plain SQL (.sql), SQL compressed with zstd (.sql.zst) or gzip (.sql.gz), or a zip holding dump.sql"
        )
    }

    static func isMostlyText(_ bytes: [UInt8]) -> Bool {
        for end in stride(from: bytes.count, to: max(bytes.count - 4, 0), by: -1) where String(validating: bytes[0..<end], as: UTF8.self) != nil {
            return true
        }
        return false
    }
}

/// What an upload put into its database.
public struct UploadImportSummary: Sendable {
    public var format: UploadFormat
    public var byteCount: Int64
    public var decompressedByteCount: Int64
    public var statementCount: Int64
    public var skippedCount: Int64
    /// A zip's members other than its dump.sql, read past and not used.
    public var ignoredMembers: [String] = []
    /// Tables whose COPY data was converted to binary on the client.
    public var binaryTableCount = 0
}

/// Replays the first bytes read for format detection, then counts and limits the rest.
final class UploadSource: ByteSource {
    let inner: any ByteSource
    let limits: UploadLimits
    var head: [UInt8] = []
    var headOffset = 0
    private(set) var byteCount: Int64 = 0
    /// The decompressed byte count so far (set by whoever decompresses).
    var decompressed: () -> Int64 = { 0 }
    var what: String { inner.what }

    init(_ inner: any ByteSource, limits: UploadLimits) {
        self.inner = inner
        self.limits = limits
    }

    func peek() throws(TenureError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = try buffer.withMutableBytes { (raw) throws(TenureError) in try inner.readFully(into: raw) }
        head = Array(buffer.prefix(count))
        return head
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        try checkDecompressed()
        var count: Int
        if headOffset < head.count {
            count = min(buffer.count, head.count - headOffset)
            head.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]).copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[headOffset..<(headOffset + count)])) }
            headOffset += count
        } else {
            count = try inner.read(into: buffer)
        }
        byteCount += Int64(count)
        if byteCount > limits.maximumBytes {
            throw TenureError(
                .bodyTooLarge, "the upload is larger than the limit of \(limits.maximumBytes) bytes (TENURE_UPLOAD_MAX_BYTES)",
                context: ["limit": String(limits.maximumBytes)])
        }
        return count
    }

    func checkDecompressed() throws(TenureError) {
        try limits.checkDecompressed(decompressed(), received: byteCount)
    }
}

/// Runs plain SQL, statement by statement, on a session of the upload's role: uploaded SQL
/// under the statement policy, upgrade scripts (`policy: false`) as they are.
public final class StatementRunner {
    let connection: PostgresConnection
    let lexer: SQLLexer
    let limits: UploadLimits
    let policy: Bool
    var statements: Int64 = 0
    var skipped: Int64 = 0
    /// CREATE statements so far, shared by every runner of one upload (parallel sessions).
    let creates: Locked<Int>
    var copyRows = 0
    var inCopy = false
    var copyLine = 0
    /// Called with an extension's name and the statement for every `CREATE EXTENSION`:
    /// true when it was created elsewhere (by Tenure, from the allowlist), false to run it
    /// as the upload's role; throws to refuse it.
    public var createExtension: ((String, String) throws(TenureError) -> Bool)?
    /// Extensions `createExtension` made.
    var createdExtensions = Set<String>()
    /// Converts pg_dump's `COPY ... FROM stdin` data to COPY's binary format on the client
    /// when every column has a type `BinaryCopyEncoder` knows (the server's text
    /// parsing is most of a load's CPU). A value it does not convert fails the COPY with
    /// `binaryFallback` in the error's context: the caller reruns the same script as text.
    var binaryCopy = false
    /// More sessions (of the same role, in the same database) a binary COPY is split over.
    var partConnections: [PostgresConnection] = []
    private var split: SplitBinaryCopy?
    private(set) var binaryTables = 0
    /// The catalog rows `BinaryColumn.resolve` read so far, by type OID.
    private var binaryCatalog: [UInt32: BinaryColumn.CatalogType] = [:]
    static let binaryFallback = "binary_fallback"

    public convenience init(connection: PostgresConnection, lexer: SQLLexer, limits: UploadLimits, policy: Bool = true) {
        self.init(connection: connection, lexer: lexer, limits: limits, policy: policy, creates: Locked(0))
    }

    init(connection: PostgresConnection, lexer: SQLLexer, limits: UploadLimits, policy: Bool, creates: Locked<Int>) {
        self.connection = connection
        self.lexer = lexer
        self.limits = limits
        self.policy = policy
        self.creates = creates
    }

    func failure(_ error: TenureError, line: Int) -> TenureError {
        let message = error.context["postgres_message"] ?? error.message
        if error.sqlState == "57014" {
            return TenureError(
                .uploadRejected,
                "line \(line): a statement ran longer than the limit of \(PolicyDuration.format(limits.statementTimeout)) (TENURE_UPLOAD_STATEMENT_TIMEOUT) and was cancelled",
                context: ["line": String(line)], sqlState: error.sqlState)
        }
        if error.code == .serverUnreachable { return error }
        return TenureError(
            .uploadRejected, "line \(line): PostgreSQL refused the statement: \(message)\(error.sqlState.map { " (SQLSTATE \($0))" } ?? "")",
            context: ["line": String(line)], sqlState: error.sqlState)
    }

    public func handle(_ event: SQLEvent) throws(TenureError) {
        switch event {
        case .statement(let text, let line):
            var decision = UploadStatementPolicy.decide(text)
            if !policy, decision != .copyIn { decision = .run }
            switch decision {
            case .reject(let why):
                throw TenureError(.uploadRejected, "line \(line): \(why)", context: ["line": String(line)])
            case .skip:
                skipped += 1
            case .run:
                statements += 1
                if policy, let createExtension, let name = UploadStatementPolicy.extensionName(text) {
                    do {
                        if try createExtension(name, text) {
                            createdExtensions.insert(name)
                            return
                        }
                    } catch {
                        throw TenureError(error.code == .uploadRejected ? .uploadRejected : error.code, "line \(line): \(error.message)", context: ["line": String(line)])
                    }
                }
                // pg_dump comments on every extension; on one Tenure created, only its owner
                // (Tenure) may, and the comment is the extension's own: skipped.
                if let name = UploadStatementPolicy.commentedExtension(text), createdExtensions.contains(name) {
                    statements -= 1
                    skipped += 1
                    return
                }
                if UploadStatementPolicy.tokens(text, limit: 1).first == "CREATE" {
                    if creates.withLock({ $0 += 1; return $0 }) > limits.maximumObjects {
                        throw TenureError(.uploadRejected, "the upload creates more than \(limits.maximumObjects) objects (TENURE_UPLOAD_MAX_OBJECTS)")
                    }
                }
                do { try connection.query(text) } catch { throw failure(error, line: line) }
            case .copyIn:
                statements += 1
                if binaryCopy, let (statement, columns) = try binaryStatement(text) {
                    do { split = try SplitBinaryCopy(statement: statement, columns: columns, connections: [connection] + partConnections) } catch {
                        throw failure(error, line: line)
                    }
                } else {
                    do { try connection.beginCopyIn(text) } catch { throw failure(error, line: line) }
                }
                lexer.expectCopyData()
                inCopy = true
                copyLine = line
            }
        case .copyData(let bytes):
            if let split {
                guard split.feed(bytes) else {
                    // A part stopped: a value it does not convert (text instead) or a failure.
                    self.split = nil
                    let rows: Int?
                    do throws(TenureError) { rows = try split.finish() } catch { throw failure(error, line: copyLine) }
                    guard rows != nil else { throw Self.textInstead }
                    throw TenureError(.internal, "a part of the split COPY stopped")
                }
                return
            }
            do { try bytes.withBytes { (raw) throws(TenureError) in try connection.copyData(raw) } } catch { throw failure(error, line: copyLine) }
        case .copyEnd:
            inCopy = false
            if let split {
                self.split = nil
                let rows: Int?
                do { rows = try split.finish() } catch { throw failure(error, line: copyLine) }
                guard let rows else { throw Self.textInstead }
                copyRows += rows
                binaryTables += 1
                return
            }
            do { copyRows += try connection.endCopy() } catch { throw failure(error, line: copyLine) }
        }
    }

    /// A binary COPY had a value the encoder does not convert (every part was rolled back):
    /// the caller runs the script again as text.
    static let textInstead = TenureError(.internal, "a value of this table's COPY data loads as text", context: [binaryFallback: "1"])

    /// Ends a split COPY still open because an error stopped the script.
    func abandonSplit() {
        split?.abandon()
        split = nil
    }

    /// The binary form of pg_dump's `COPY schema.table (columns) FROM stdin;` when every
    /// named column has a type the encoder converts; nil for anything else (it runs as text).
    func binaryStatement(_ text: String) throws(TenureError) -> (String, [BinaryColumn])? {
        let text = Self.withoutLeadingComments(text)
        guard let (schema, table, columns) = Self.parseCopyFromStdin(text), !columns.isEmpty else { return nil }
        let result = try connection.query(
            """
            SELECT a.attname, a.atttypid::pg_catalog.int8
            FROM pg_catalog.pg_attribute a
            JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
            """, [schema, table])
        var types: [String: UInt32] = [:]
        for row in result.rows {
            if let name = row[0], let oid = row[1].flatMap({ UInt32($0) }) { types[name] = oid }
        }
        let unknown = Set(types.values).subtracting(binaryCatalog.keys)
        if !unknown.isEmpty { binaryCatalog.merge(try BinaryColumn.catalog(for: unknown, on: connection)) { $1 } }
        guard let binary = BinaryColumn.plan(columns, types: types, catalog: binaryCatalog) else { return nil }
        return (String(text.dropLast(" FROM stdin;".count)) + " FROM STDIN (FORMAT binary)", binary)
    }

    /// A statement as the lexer hands it (with the blank lines and `--` comments before it)
    /// from its first keyword on, without trailing white space.
    static func withoutLeadingComments(_ text: String) -> Substring {
        var rest = Substring(text)
        while true {
            rest = rest.drop { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
            guard rest.hasPrefix("--") else { break }
            guard let newline = rest.firstIndex(of: "\n") else { return "" }
            rest = rest[rest.index(after: newline)...]
        }
        while let last = rest.last, last == " " || last == "\n" || last == "\t" || last == "\r" { rest = rest.dropLast() }
        return rest
    }

    /// Schema, table and column names of exactly `COPY schema.table (c1, c2) FROM stdin;` as
    /// pg_dump writes it (names plain or double-quoted); nil for any other statement.
    static func parseCopyFromStdin(_ text: Substring) -> (schema: String, table: String, columns: [String])? {
        var rest = text
        guard rest.hasPrefix("COPY "), rest.hasSuffix(") FROM stdin;") else { return nil }
        rest = rest.dropFirst(5)
        func identifier() -> String? {
            if rest.first == "\"" {
                var name = ""
                var index = rest.index(after: rest.startIndex)
                while index < rest.endIndex {
                    if rest[index] == "\"" {
                        let next = rest.index(after: index)
                        if next < rest.endIndex && rest[next] == "\"" {
                            name.append("\"")
                            index = rest.index(after: next)
                            continue
                        }
                        rest = rest[next...]
                        return name
                    }
                    name.append(rest[index])
                    index = rest.index(after: index)
                }
                return nil
            }
            let name = rest.prefix { $0 == "_" || ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "$" }
            guard let first = name.first, first == "_" || ("a"..."z").contains(first) else { return nil }
            rest = rest.dropFirst(name.count)
            return String(name)
        }
        guard let schema = identifier(), rest.first == "." else { return nil }
        rest = rest.dropFirst()
        guard let table = identifier(), rest.hasPrefix(" (") else { return nil }
        rest = rest.dropFirst(2)
        var columns: [String] = []
        while true {
            guard let column = identifier() else { return nil }
            columns.append(column)
            if rest.hasPrefix(", ") {
                rest = rest.dropFirst(2)
                continue
            }
            guard rest == ") FROM stdin;" else { return nil }
            return (schema, table, columns)
        }
    }
}

/// Restores an upload into an existing empty database, connected as the upload's role
/// (`target`), whatever its format: a Tenure archive through the engine's restore with the
/// statement policy on its schema; pg_dump custom format turned into SQL by `pg_restore -f -`
/// (a converter that connects nowhere) and then run like plain SQL; plain SQL, optionally
/// zstd-compressed, split by `SQLLexer`. Every statement runs through libpq, never psql.
public struct UploadImporter: Sendable {
    public var target: ConnectionParameters
    public var jobs: Int
    public var limits: UploadLimits
    public var pgRestorePath: String

    /// Extensions Tenure creates on the upload's behalf (`TENURE_EXTENSIONS`), with a
    /// superuser session into the upload's database (`extensionAdmin`).
    public var extensions = ExtensionAllowlist()
    public var extensionAdmin: ConnectionParameters?

    public init(target: ConnectionParameters, jobs: Int, limits: UploadLimits, pgRestorePath: String) {
        self.target = target
        self.jobs = jobs
        self.limits = limits
        self.pgRestorePath = pgRestorePath
    }

    public func run(source input: any ByteSource, progress: TransferProgress = TransferProgress()) throws(TenureError) -> UploadImportSummary {
        let source = UploadSource(input, limits: limits)
        let format = try UploadFormat.detect(try source.peek())
        var summary = UploadImportSummary(format: format, byteCount: 0, decompressedByteCount: 0, statementCount: 0, skippedCount: 0)
        switch format {
        case .tenure:
            let counter = Locked<(statements: Int64, skipped: Int64)>((0, 0))
            // The role may hold 16 sessions (its CONNECTION LIMIT); the restore keeps to 12.
            var options = RestoreOptions(target: target, jobs: min(jobs, ParallelCustomUpload.maximumDataSessions))
            options.grantPublicConnect = false
            // No server-side statement_timeout: it would also cut long COPY loads; the
            // controller's watchdog cancels statements past the limit instead.
            var engineLimits = EngineLimits()
            engineLimits.maximumMemberCount = min(engineLimits.maximumMemberCount, max(limits.maximumObjects * 4, 1000))
            options.limits = engineLimits
            let importer = self
            options.schemaFilter = { script, section throws(TenureError) in
                // Listed extensions are created by Tenure before the rest of the pre-data runs.
                var session: PostgresConnection?
                defer { session?.close() }
                let result = try UploadStatementPolicy.filterScript(script, section: section) { (name, statement) throws(TenureError) in
                    try importer.createListedExtension(name, statement, session: &session)
                }
                counter.withLock {
                    $0.statements += Int64(result.statements - result.skipped)
                    $0.skipped += Int64(result.skipped)
                }
                return result.script
            }
            source.decompressed = { progress.rawBytes.load(ordering: .relaxed) }
            let restored: RestoreSummary
            do { restored = try runRestoreIntoExistingDatabase(source: source, options: options, progress: progress) } catch {
                throw Self.asRejection(error)
            }
            if restored.tableCount > limits.maximumObjects {
                throw TenureError(.uploadRejected, "the archive has more than \(limits.maximumObjects) tables (TENURE_UPLOAD_MAX_OBJECTS)")
            }
            let counts = counter.withLock { $0 }
            summary.statementCount = counts.statements
            summary.skippedCount = counts.skipped
            summary.decompressedByteCount = progress.rawBytes.load(ordering: .relaxed)
        case .pgDumpCustom where jobs > 1:
            // Staged on disk and loaded on `jobs` sessions, as pg_restore -j does.
            let outcome = try ParallelCustomUpload(importer: self, progress: progress).run(source: source)
            summary.statementCount = outcome.statements
            summary.skippedCount = outcome.skipped
            summary.decompressedByteCount = outcome.produced
            summary.binaryTableCount = outcome.binaryTables
        case .sql, .sqlZst, .pgDumpCustom, .pgDumpTar, .sqlGz, .zip:
            let connection = try progress.session(target, applicationName: "tenure-upload")
            defer { connection.close() }
            let lexer = SQLLexer(maximumStatementBytes: limits.maximumStatementBytes)
            let runner = StatementRunner(connection: connection, lexer: lexer, limits: limits)
            var extensionSession: PostgresConnection?
            defer { extensionSession?.close() }
            runner.createExtension = { [self] (name, statement) throws(TenureError) in
                try createListedExtension(name, statement, session: &extensionSession)
            }
            let emit: (SQLEvent) throws(TenureError) -> Void = { event throws(TenureError) in try runner.handle(event) }
            var produced: Int64 = 0
            let text: (UnsafeRawBufferPointer) throws(TenureError) -> Void = { bytes throws(TenureError) in
                produced += Int64(bytes.count)
                progress.rawBytes.add(Int64(bytes.count), ordering: .relaxed)
                try source.checkDecompressed()
                try lexer.feed(bytes, emit: emit)
                if progress.isCancelled { throw TenureError(.cancelled, "the upload was cancelled; nothing was kept") }
            }
            source.decompressed = { produced }
            switch format {
            case .sql:
                try pump(source) { (bytes) throws(TenureError) in try text(bytes) }
            case .sqlZst:
                let decompressor = StreamDecompressor(what: "the upload (zstd)")
                do throws(TenureError) {
                    try pump(source) { (bytes) throws(TenureError) in try decompressor.feed(bytes, output: text) }
                    try decompressor.finish()
                } catch {
                    throw Self.asRejection(error)
                }
            case .pgDumpCustom, .pgDumpTar:
                try PgRestoreConverter(path: pgRestorePath).convert(source: source, output: text)
            case .sqlGz:
                let inflater = Inflater(.gzip, what: "the upload (gzip)")
                do throws(TenureError) {
                    try pump(source) { (bytes) throws(TenureError) in try inflater.feed(bytes, output: text) }
                    try inflater.finish()
                } catch {
                    throw Self.asRejection(error)
                }
            case .zip:
                let zip = ZipSQLReader()
                // Every member counts toward the decompression limits, not only dump.sql.
                source.decompressed = { max(produced, zip.decompressedByteCount) }
                do throws(TenureError) {
                    try pump(source) { (bytes) throws(TenureError) in try zip.feed(bytes, output: text) }
                    try zip.finish()
                } catch {
                    throw Self.asRejection(error)
                }
                summary.ignoredMembers = zip.ignoredMembers
            case .tenure:
                preconditionFailure()
            }
            try lexer.finish(emit: emit)
            summary.statementCount = runner.statements
            summary.skippedCount = runner.skipped
            summary.decompressedByteCount = produced
        }
        summary.byteCount = source.byteCount
        progress.compressedBytes.store(source.byteCount, ordering: .relaxed)
        return summary
    }

    /// The one decision both upload paths take for a `CREATE EXTENSION`: refused when neither
    /// trusted nor listed (naming the list); created by Tenure in `session` (an administrator
    /// session into the upload's database, opened on first use) when listed, then true; false
    /// when the upload's role creates it itself.
    func createListedExtension(_ name: String, _ statement: String, session: inout PostgresConnection?) throws(TenureError) -> Bool {
        guard let extensionAdmin else { return false }
        if session == nil { session = try PostgresConnection(extensionAdmin, applicationName: "tenure-upload-extension") }
        try extensions.check(name, trusted: try Self.isTrusted(name, on: session!))
        guard extensions.contains(name) else { return false }
        try ExtensionAllowlist.create(statement: statement, name: name, owner: target["user"] ?? "", on: session!)
        return true
    }

    /// Whether the server marks the extension trusted (its owner may create it).
    static func isTrusted(_ name: String, on connection: PostgresConnection) throws(TenureError) -> Bool {
        let rows = try connection.query(
            "SELECT bool_or(trusted)::text AS trusted FROM pg_catalog.pg_available_extension_versions WHERE name = $1", [name])
        return rows.rows.first?[0] == "true"
    }

    /// Reads `source` to its end in 256 KiB pieces.
    func pump(_ source: any ByteSource, _ body: (UnsafeRawBufferPointer) throws(TenureError) -> Void) throws(TenureError) {
        var buffer = [UInt8](repeating: 0, count: 256 << 10)
        while true {
            let count = try buffer.withMutableBytes { (raw) throws(TenureError) in try source.read(into: raw) }
            if count == 0 { return }
            try buffer.withBytes { (raw) throws(TenureError) in try body(UnsafeRawBufferPointer(rebasing: raw[0..<count])) }
        }
    }

    /// A bad archive is the upload's fault: reported as a rejection with the engine's words.
    static func asRejection(_ error: TenureError) -> TenureError {
        switch error.code {
        case .invalidRequest, .postgres:
            return TenureError(.uploadRejected, error.message, context: error.context, sqlState: error.sqlState)
        default:
            return error
        }
    }
}

/// `pg_restore -f -`: turns a custom-format archive (read from stdin, as it arrives, or from
/// a staged file named in `arguments`) into a SQL script on stdout. It connects to no server;
/// its script goes through the lexer and the statement policy like any uploaded SQL.
struct PgRestoreConverter {
    let path: String

    /// - Parameters:
    ///   - source: the archive, written to pg_restore's stdin; nil when `arguments` name a file.
    ///   - arguments: more arguments (a section, a `--use-list` file, the archive's path).
    func convert(source: (any ByteSource)?, arguments more: [String] = [], output: (UnsafeRawBufferPointer) throws(TenureError) -> Void)
        throws(TenureError)
    {
        signal(SIGPIPE, SIG_IGN)
        var input: [Int32] = [0, 0]
        var stdoutPipe: [Int32] = [0, 0]
        var stderrPipe: [Int32] = [0, 0]
        guard pipe(&input) == 0, pipe(&stdoutPipe) == 0, pipe(&stderrPipe) == 0 else { throw TenureError(.internal, "cannot create pipes for pg_restore") }
        // A 1 MiB pipe (Linux F_SETPIPE_SZ; the default holds 64 KiB): the script is read in
        // fewer, larger pieces, so the lexer takes more whole lines at once. Refused quietly.
        _ = fcntl(stdoutPipe[0], 1031, Int32(1 << 20))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, stderrPipe[1], 2)
        for descriptor in input + stdoutPipe + stderrPipe { posix_spawn_file_actions_addclose(&actions, descriptor) }
        let arguments = [
            path, "--no-owner", "--no-privileges", "--no-tablespaces", "--no-security-labels", "--no-subscriptions", "--no-publications", "--file=-",
        ] + more
        let argv = arguments.map { strdup($0) } + [nil]
        let environment = ["PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8"]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, &actions, nil, argv, envp)
        close(input[0])
        close(stdoutPipe[1])
        close(stderrPipe[1])
        guard spawned == 0 else {
            close(input[1])
            close(stdoutPipe[0])
            close(stderrPipe[0])
            throw TenureError(.internal, "cannot run \(path): \(String(cString: strerror(spawned)))")
        }
        // The upload goes to pg_restore's stdin from a thread of its own; stdout and stderr
        // are read here, so neither side can block the other.
        let writeFailure = Locked<TenureError?>(nil)
        let writerDone = DispatchSemaphore(value: 0)
        let writeDescriptor = input[1]
        if let source {
            let box = SourceBox(source)
            Thread {
            var buffer = [UInt8](repeating: 0, count: 256 << 10)
            defer {
                close(writeDescriptor)
                writerDone.signal()
            }
            do throws(TenureError) {
                while true {
                    let count = try buffer.withMutableBytes { (raw) throws(TenureError) in try box.source.read(into: raw) }
                    if count == 0 { return }
                    var offset = 0
                    while offset < count {
                        let written = buffer.withUnsafeBytes { Glibc.write(writeDescriptor, $0.baseAddress! + offset, count - offset) }
                        if written < 0 {
                            if errno == EINTR { continue }
                            return  // pg_restore stopped reading; its exit status says why
                        }
                        offset += written
                    }
                }
            } catch {
                writeFailure.withLock { $0 = error }
            }
            }.start()
        } else {
            close(writeDescriptor)
            writerDone.signal()
        }
        let (status, errors, failure) = drainChild(pid, stdout: stdoutPipe[0], stderr: stderrPipe[0], errorLimit: 16_384, output: output)
        close(stdoutPipe[0])
        close(stderrPipe[0])
        writerDone.wait()
        if let failure { throw failure }
        if let error = writeFailure.withLock({ $0 }) { throw error }
        let succeeded = (status & 0x7f) == 0 && ((status >> 8) & 0xff) == 0
        guard succeeded else {
            let message = String(decoding: errors, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "exit status \((status >> 8) & 0xff)"
            throw TenureError(.uploadRejected, "not a valid pg_dump custom-format archive (truncated or corrupt): \(printable(message, limit: 300))")
        }
    }
}

/// Hands a source to the writer thread (used there alone while the reader waits).
final class SourceBox: @unchecked Sendable {
    let source: any ByteSource
    init(_ source: any ByteSource) { self.source = source }
}
