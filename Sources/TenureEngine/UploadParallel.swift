import Foundation
import TenureCore
import TenurePQ

#if canImport(Glibc)
import Glibc
#endif

/// A pg_dump custom-format upload loaded on `jobs` sessions of the upload's role, as
/// `pg_restore -j` loads it: the archive is staged in a private directory (it needs a file
/// to seek in), then
/// 1. the pre-data runs on one session (`pg_restore --section=pre-data`);
/// 2. the table data on `jobs` sessions, biggest tables first (sizes from the archive's
///    table of contents), each session running `pg_restore --use-list` for one big table
///    or a batch of small ones; sequence values and large objects as one more item;
/// 3. the post-data (`pg_restore --verbose --section=post-data`, so every entry carries its
///    dump id and dependencies) on `jobs` sessions by `PostDataSchedule`, as a Tenure
///    restore runs it, then the last pass in order.
///
/// Every script pg_restore renders goes through the lexer and the statement policy, as in
/// the serial path; the table of contents read here only plans. Any archive it cannot plan
/// (another version, data without offsets) runs as one stream from the staged file.
struct ParallelCustomUpload: Sendable {
    let importer: UploadImporter
    let progress: TransferProgress

    /// Whether tables loaded alone convert their COPY data to binary on the client
    /// (`TENURE_UPLOAD_BINARY=0` keeps text, for comparison).
    var binary = ProcessInfo.processInfo.environment["TENURE_UPLOAD_BINARY"] != "0"

    /// Small tables are loaded in batches of about this many bytes of archive data.
    static let batchBytes: Int64 = 8 << 20
    static let batchEntries = 64
    /// Most sessions the data load opens at once.
    static let maximumDataSessions = 12

    struct Outcome {
        var statements: Int64 = 0
        var skipped: Int64 = 0
        var produced: Int64 = 0
        var binaryTables = 0
    }

    /// Shared by the sessions of one upload: counts, the decompressed-bytes limit, the first
    /// failure (which stops the others at their next chunk).
    final class Shared: @unchecked Sendable {
        let counts = Locked<(statements: Int64, skipped: Int64, produced: Int64, binaryTables: Int)>((0, 0, 0, 0))
        let creates = Locked(0)
        let failure = FirstFailure()
        /// Bytes of the staged upload, for the decompression ratio.
        let stagedBytes: Int64
        init(stagedBytes: Int64) { self.stagedBytes = stagedBytes }
    }

    func run(source: UploadSource) throws(TenureError) -> Outcome {
        let directory = NSTemporaryDirectory() + "tenure-upload-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        guard mkdir(directory, 0o700) == 0 else {
            throw TenureError(.internal, "cannot create a private directory to stage the upload: \(String(cString: strerror(errno)))")
        }
        let archive = directory + "/upload.dump"
        defer {
            if let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
                for name in names { unlink(directory + "/" + name) }
            }
            rmdir(directory)
        }
        try stage(source, to: archive)
        mark("staged \(source.byteCount) bytes")
        let shared = Shared(stagedBytes: source.byteCount)
        guard let plan = CustomArchiveTOC.read(path: archive), plan.hasDataOffsets, try listsSameEntries(plan, archive: archive) else {
            // Not plannable: one stream, as before, from the staged file.
            try runScript(arguments: [archive], connection: nil, shared: shared, extensions: true)
            return outcome(shared)
        }
        try runScript(arguments: ["--section=pre-data", archive], connection: nil, shared: shared, extensions: true)
        mark("pre-data done")
        try loadData(plan, archive: archive, directory: directory, shared: shared)
        mark("data done")
        try runPostData(plan, archive: archive, shared: shared)
        mark("post-data done")
        return outcome(shared)
    }

    /// `TENURE_TIMING=1`: phases on stderr, as the restore prints them.
    static let timing = ProcessInfo.processInfo.environment["TENURE_TIMING"] == "1"
    let started = Date()
    func mark(_ phase: String) {
        if Self.timing { FileHandle.standardError.write(Data(String(format: "upload %.2f s: %@\n", Date().timeIntervalSince(started), phase).utf8)) }
    }

    func outcome(_ shared: Shared) -> Outcome {
        let counts = shared.counts.withLock { $0 }
        return Outcome(statements: counts.statements, skipped: counts.skipped, produced: counts.produced, binaryTables: counts.binaryTables)
    }

    /// Writes the upload to `path` (mode 0600) as it arrives, under the upload's byte limits.
    func stage(_ source: UploadSource, to path: String) throws(TenureError) {
        let descriptor = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw TenureError(.internal, "cannot stage the upload: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        try importer.pump(source) { (bytes) throws(TenureError) in
            var offset = 0
            while offset < bytes.count {
                let written = write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw TenureError(.internal, "cannot stage the upload: \(String(cString: strerror(errno)))")
                }
                offset += written
            }
            progress.compressedBytes.store(source.byteCount, ordering: .relaxed)
            if progress.isCancelled { throw TenureError(.cancelled, "the upload was cancelled; nothing was kept") }
        }
    }

    /// Whether every entry `pg_restore --list` shows is in the table of contents read here,
    /// with the same type: a guard against this reader and pg_restore ever disagreeing, which
    /// could lose data. (The listing leaves out the archive's settings entries, ENCODING and
    /// the like, and what the converter's options exclude.)
    func listsSameEntries(_ plan: CustomArchiveTOC, archive: String) throws(TenureError) -> Bool {
        var listing: [UInt8] = []
        try PgRestoreConverter(path: importer.pgRestorePath).convert(source: nil, arguments: ["--list", archive]) { bytes throws(TenureError) in
            guard listing.count + bytes.count <= 256 << 20 else { throw TenureError(.uploadRejected, "the archive's table of contents is too large") }
            listing.append(contentsOf: bytes)
        }
        var types: [Int: String] = [:]
        for entry in plan.entries { types[entry.dumpID] = entry.desc }
        for line in listing.split(separator: UInt8(ascii: "\n")) where line.first != UInt8(ascii: ";") {
            // "3360; 0 76191 TABLE DATA public a owner"
            let fields = String(decoding: line, as: UTF8.self).split(separator: " ", maxSplits: 3)
            guard fields.count == 4, fields[0].hasSuffix(";"), let id = Int(fields[0].dropLast()), let type = types[id], fields[3].hasPrefix(type + " ")
            else { return false }
        }
        return true
    }

    /// Renders the archive with `arguments` and runs the script on `connection` (a new
    /// session of the upload's role when nil) through the lexer and the policy.
    func runScript(
        arguments: [String], connection given: PostgresConnection?, shared: Shared, extensions: Bool, binary: Bool = false,
        parts: [PostgresConnection] = []
    ) throws(TenureError) {
        let connection: PostgresConnection
        if let given { connection = given } else { connection = try progress.session(importer.target, applicationName: "tenure-upload") }
        defer { if given == nil { connection.close() } }
        let lexer = SQLLexer(maximumStatementBytes: importer.limits.maximumStatementBytes)
        let runner = StatementRunner(connection: connection, lexer: lexer, limits: importer.limits, policy: true, creates: shared.creates)
        runner.binaryCopy = binary
        runner.partConnections = parts
        defer { runner.abandonSplit() }
        var extensionSession: PostgresConnection?
        defer { extensionSession?.close() }
        if extensions {
            runner.createExtension = { [importer] (name, statement) throws(TenureError) in
                try importer.createListedExtension(name, statement, session: &extensionSession)
            }
        }
        defer {
            shared.counts.withLock {
                $0.statements += runner.statements
                $0.skipped += runner.skipped
                $0.binaryTables += runner.binaryTables
            }
        }
        let emit: (SQLEvent) throws(TenureError) -> Void = { event throws(TenureError) in try runner.handle(event) }
        try PgRestoreConverter(path: importer.pgRestorePath).convert(source: nil, arguments: arguments) { bytes throws(TenureError) in
            try account(bytes.count, shared: shared)
            try lexer.feed(bytes, emit: emit)
        }
        try lexer.finish(emit: emit)
    }

    /// Counts rendered bytes against the decompression limits; stops when the upload was
    /// cancelled or another session failed.
    func account(_ count: Int, shared: Shared) throws(TenureError) {
        let produced = shared.counts.withLock { $0.produced += Int64(count); return $0.produced }
        progress.rawBytes.add(Int64(count), ordering: .relaxed)
        try importer.limits.checkDecompressed(produced, received: shared.stagedBytes)
        if progress.isCancelled { throw TenureError(.cancelled, "the upload was cancelled; nothing was kept") }
        if let failure = shared.failure.error { throw failure }
    }

    /// The data section on `jobs` sessions: one item per big table, batches of small ones,
    /// biggest first; everything else of the data section (sequence values, large objects)
    /// and the extensions' configuration data are one item each, first.
    func loadData(_ plan: CustomArchiveTOC, archive: String, directory: String, shared: Shared) throws(TenureError) {
        let tableIDs = Set(plan.entries.filter { $0.desc == "TABLE DATA" }.map(\.dumpID))
        var items: [[Int]] = []
        if plan.entries.contains(where: { $0.section == CustomArchiveTOC.dataSection && !tableIDs.contains($0.dumpID) }) {
            items.append(plan.entries.map(\.dumpID).filter { !tableIDs.contains($0) })
        }
        // An extension's configuration tables are not in the archive as tables (the extension
        // creates them, with their foreign keys), and the archive records no order among their
        // data but its own: pg_dump sorted them by their foreign keys. They are one item, in
        // that order.
        let dumpedTables = Set(plan.entries.filter { $0.desc == "TABLE" }.map(\.dumpID))
        let linked = Set(plan.entries.filter { tableIDs.contains($0.dumpID) && !$0.dependencies.contains(where: dumpedTables.contains) }.map(\.dumpID))
        if !linked.isEmpty { items.append(plan.entries.map(\.dumpID).filter(linked.contains)) }
        let tables = plan.entries.filter { tableIDs.contains($0.dumpID) && !linked.contains($0.dumpID) }.sorted { $0.dataBytes > $1.dataBytes }
        var batch: [Int] = []
        var batchBytes: Int64 = 0
        var singles = Set<Int>()
        for table in tables {
            if table.dataBytes >= Self.batchBytes {
                singles.insert(items.count)
                items.append([table.dumpID])
                continue
            }
            batch.append(table.dumpID)
            batchBytes += table.dataBytes
            if batchBytes >= Self.batchBytes || batch.count >= Self.batchEntries {
                items.append(batch)
                batch = []
                batchBytes = 0
            }
        }
        if !batch.isEmpty { items.append(batch) }
        guard !items.isEmpty else { return }
        let queue = items
        let singleItems = singles
        let next = Locked(0)
        let upload = self
        // The upload's role may hold 16 sessions (its CONNECTION LIMIT); the data load keeps
        // to `maximumDataSessions` of them, workers times parts.
        let workers = min(max(importer.jobs, 1), Self.maximumDataSessions / 2, items.count)
        let extraParts = max(1, min(importer.jobs, Self.maximumDataSessions / workers)) - 1
        runThreads(count: workers, name: "tenure-upload-data") { worker in
            do throws(TenureError) {
                let connection = try upload.progress.session(upload.importer.target, applicationName: "tenure-upload-data")
                defer { connection.close() }
                // A table loaded alone is split over this session and `jobs - 1` more.
                var parts: [PostgresConnection] = []
                defer { parts.forEach { $0.close() } }
                while shared.failure.error == nil {
                    let index = next.withLock { (value: inout Int) -> Int in
                        value += 1
                        return value - 1
                    }
                    guard index < queue.count else { return }
                    let list = directory + "/data-\(worker).list"
                    let text = queue[index].map { "\($0)\n" }.joined()
                    guard FileManager.default.createFile(atPath: list, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
                        throw TenureError(.internal, "cannot write pg_restore's list file for the upload")
                    }
                    let arguments = ["--section=data", "--use-list=\(list)", archive]
                    // A table of its own loads in binary; if a value does not convert, its
                    // COPY was rolled back and the table loads again as text.
                    if singleItems.contains(index) && upload.binary {
                        do throws(TenureError) {
                            while parts.count < extraParts {
                                parts.append(try upload.progress.session(upload.importer.target, applicationName: "tenure-upload-data"))
                            }
                            try upload.runScript(arguments: arguments, connection: connection, shared: shared, extensions: false, binary: true, parts: parts)
                            continue
                        } catch {
                            guard error.context[StatementRunner.binaryFallback] != nil else { throw error }
                        }
                    }
                    try upload.runScript(arguments: arguments, connection: connection, shared: shared, extensions: false)
                }
            } catch {
                shared.failure.record(error)
            }
        }
        if let error = shared.failure.error { throw error }
    }

    /// Every table's and materialized view's size on the server by "schema\0name".
    func loadedTableSizes() throws(TenureError) -> [String: Int64] {
        let connection = try progress.session(importer.target, applicationName: "tenure-upload-post-data")
        defer { connection.close() }
        let result = try connection.query(
            "SELECT n.nspname, c.relname, pg_catalog.pg_relation_size(c.oid) FROM pg_catalog.pg_class c "
                + "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm')")
        var sizes: [String: Int64] = [:]
        for row in result.rows {
            guard let schema = row[0], let name = row[1], let bytes = row[2].flatMap({ Int64($0) }) else { continue }
            sizes[schema + "\u{0}" + name] = bytes
        }
        return sizes
    }

    /// The post-data, scheduled from the dependencies pg_restore renders, on `jobs` sessions.
    func runPostData(_ plan: CustomArchiveTOC, archive: String, shared: Shared) throws(TenureError) {
        var rendered: [UInt8] = []
        try PgRestoreConverter(path: importer.pgRestorePath).convert(source: nil, arguments: ["--verbose", "--section=post-data", archive]) {
            bytes throws(TenureError) in
            try account(bytes.count, shared: shared)
            rendered.append(contentsOf: bytes)
        }
        let ids = Set(plan.entries.map(\.dumpID))
        let (preamble, entries) = splitSchemaEntries(keepDependencies(String(decoding: rendered, as: UTF8.self), on: ids))
        rendered = []
        guard !entries.isEmpty, entries.allSatisfy({ $0.dumpID != nil }) else {
            // No table of contents in the rendering: the script as it is, on one session.
            return try runScript(arguments: ["--section=post-data", archive], connection: nil, shared: shared, extensions: false)
        }
        let postDataIDs = Set(entries.compactMap(\.dumpID))
        let preData = plan.entries.filter { $0.section != CustomArchiveTOC.postDataSection }.map {
            SchemaEntry(type: $0.desc, name: $0.tag, schema: $0.namespace, sql: "", dumpID: $0.dumpID, dependencies: $0.dependencies)
        }
        var sizes: [String: Int64] = [:]
        for entry in plan.entries where entry.desc == "TABLE DATA" { sizes[entry.namespace + "\u{0}" + entry.tag] = entry.dataBytes }
        // The archive's sizes are compressed, which understates a table that compresses well;
        // the loaded tables' own sizes, where the server gives them, rank the builds instead.
        if let loaded = try? loadedTableSizes() { sizes.merge(loaded) { _, loaded in loaded } }
        let schedule: PostDataPlan
        do { schedule = try PostDataPlan(entries, preData: preData, earlierIDs: ids.subtracting(postDataIDs), sizes: sizes) } catch {
            throw TenureError(.uploadRejected, error.message)
        }
        let upload = self
        let options = RestoreOptions(target: importer.target, jobs: 1)
        let settings = options.buildSettings
        let label = Self.timing ? "upload" : nil
        try runPostDataPool(schedule.schedule, jobs: min(importer.jobs, Self.maximumDataSessions), name: "tenure-upload-post-data") { () throws(TenureError) in
            let connection = try upload.progress.session(upload.importer.target, applicationName: "tenure-upload-post-data")
            do throws(TenureError) {
                try connection.execute(settings)
                try upload.runText(preamble, on: connection, shared: shared)
            } catch {
                connection.close()
                throw error
            }
            return options.postDataSession(on: connection, label: label, since: upload.started) { (sql) throws(TenureError) in
                try upload.runText(sql, on: connection, shared: shared)
            }
        }
        // The last pass, then a commit that waits for its WAL flush, and so for every
        // commit of the post-data before it.
        let connection = try progress.session(importer.target, applicationName: "tenure-upload-post-data")
        defer { connection.close() }
        try runText(preamble, on: connection, shared: shared)
        for entry in schedule.last {
            do throws(TenureError) { try runText(entry.sql, on: connection, shared: shared) } catch {
                throw TenureError(error.code, "restoring \(entry.describe) failed: \(error.message)", context: error.context, sqlState: error.sqlState)
            }
        }
        try connection.execute("SET synchronous_commit = on; SELECT pg_catalog.txid_current()")
    }

    /// Runs rendered SQL text on `connection` through the lexer and the policy.
    func runText(_ text: String, on connection: PostgresConnection, shared: Shared) throws(TenureError) {
        let lexer = SQLLexer(maximumStatementBytes: importer.limits.maximumStatementBytes)
        let runner = StatementRunner(connection: connection, lexer: lexer, limits: importer.limits, policy: true, creates: shared.creates)
        defer {
            shared.counts.withLock {
                $0.statements += runner.statements
                $0.skipped += runner.skipped
            }
        }
        let emit: (SQLEvent) throws(TenureError) -> Void = { event throws(TenureError) in try runner.handle(event) }
        try Array((text + "\n").utf8).withBytes { (bytes) throws(TenureError) in try lexer.feed(bytes, emit: emit) }
        try lexer.finish(emit: emit)
    }
}

/// One table's binary COPY split over several sessions, so a big table's load is not one
/// server process's work: the lexer's chunks (whole lines) go round-robin to one thread per
/// session, each converting its share with its own `BinaryCopyEncoder`. Nothing is committed
/// unless every part converts: a value one encoder refuses ends every part's COPY with an
/// error (the server rolls each back), and the caller loads the table again as text.
final class SplitBinaryCopy: @unchecked Sendable {
    let connections: [PostgresConnection]
    private let queues: [BoundedQueue<[UInt8]>]
    private let group = DispatchGroup()
    private let failure = FirstFailure()
    /// Rows each part's encoder sent, and whether every part converted all of its share.
    private let parts: Locked<(rows: Int, refused: Bool)>
    private var next = 0

    init(statement: String, columns: [BinaryColumn], connections: [PostgresConnection]) throws(TenureError) {
        self.connections = connections
        queues = connections.map { _ in BoundedQueue<[UInt8]>(capacity: 4) }
        parts = Locked((0, false))
        var begun = 0
        do throws(TenureError) {
            for connection in connections {
                try connection.beginCopyIn(statement)
                begun += 1
            }
        } catch {
            for connection in connections.prefix(begun) { _ = try? connection.endCopy(failWith: "tenure: the load stopped") }
            throw error
        }
        for index in connections.indices {
            group.enter()
            let queue = queues[index]
            // Each session is used by its part's thread alone until `finish` joins them.
            let thread = Thread { [self] in
                defer { group.leave() }
                let connection = self.connections[index]
                var encoder = BinaryCopyEncoder(columns: columns)
                do throws(TenureError) {
                    while let chunk = queue.pop() {
                        guard chunk.withUnsafeBytes({ encoder.feed($0) }) else { return refuse() }
                        try encoder.take { (bytes) throws(TenureError) in try connection.copyData(bytes) }
                    }
                    guard failure.error == nil, !parts.withLock({ $0.refused }) else { return }
                    guard encoder.finish() else { return refuse() }
                    try encoder.take { (bytes) throws(TenureError) in try connection.copyData(bytes) }
                    let rows = encoder.rows
                    parts.withLock { $0.rows += rows }
                } catch {
                    failure.record(error)
                    queues.forEach { $0.fail() }
                }
            }
            thread.name = "tenure-upload-copy-part-\(index)"
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    private func refuse() {
        parts.withLock { $0.refused = true }
        queues.forEach { $0.fail() }
    }

    /// Hands a chunk of whole lines to the next part; false once a part stopped (call `finish`).
    func feed(_ chunk: [UInt8]) -> Bool {
        defer { next += 1 }
        return queues[next % queues.count].push(chunk)
    }

    /// Waits for every part and ends the COPYs. Returns the rows stored; nil when a value did
    /// not convert (every part rolled back); throws the first failure (every part rolled back).
    func finish() throws(TenureError) -> Int? {
        queues.forEach { $0.close() }
        group.wait()
        let (rows, refused) = parts.withLock { $0 }
        if refused || failure.error != nil {
            for connection in connections { _ = try? connection.endCopy(failWith: "tenure: loading this table as text instead") }
            if let error = failure.error { throw error }
            return nil
        }
        var stored = 0
        for connection in connections { stored += try connection.endCopy() }
        guard stored == rows else { throw TenureError(.internal, "the server stored \(stored) rows of the \(rows) sent") }
        return stored
    }

    /// Stops every part (an error elsewhere): their COPYs end with an error.
    func abandon() {
        queues.forEach { $0.fail() }
        group.wait()
        for connection in connections { _ = try? connection.endCopy(failWith: "tenure: the load stopped") }
    }
}
