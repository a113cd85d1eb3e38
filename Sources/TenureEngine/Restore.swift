import Foundation
import TenureCore
import TenurePQ
import TenureZstd

public struct RestoreOptions: Sendable {
    /// The server and the name of the database to create (it must not exist).
    public var target: ConnectionParameters
    public var jobs: Int
    public var limits = EngineLimits()
    /// `maintenance_work_mem` for index builds.
    public var maintenanceWorkMemory = "512MB"
    /// Checks the manifest's signature when the archive was signed with this key.
    public var key: ArchiveKey?
    /// The database is closed to PUBLIC while it is restored; true gives PUBLIC back the
    /// default `CONNECT, TEMPORARY` at the end (as `createdb` would), false leaves it closed
    /// (a tenant database, whose owner is granted access by the controller).
    public var grantPublicConnect = true
    /// Load tables up to `freezeTableBytes` with `COPY ... FREEZE` on one loader each (truncated
    /// in the loader's transaction, as FREEZE requires); bigger tables load in parallel parts
    /// without it. Off by default: `make bench` measured it slower (see README).
    public var freezeSmallTables = ProcessInfo.processInfo.environment["TENURE_RESTORE_FREEZE"] == "1"
    public var freezeTableBytes: Int64 = 64 << 20
    /// Rewrites each schema script before it runs (script, section name): the upgrade
    /// service's statement policy for uploaded archives. Nil for Tenure's own backups.
    public var schemaFilter: (@Sendable (String, String) throws(TenureError) -> String)?
    /// `max_parallel_maintenance_workers` of the index-build sessions. 0 (the default): each
    /// build runs in its session alone, `jobs` of them at once; `make bench` measured that
    /// faster and cheaper in CPU than letting each build start parallel workers as well
    /// (see README). `TENURE_RESTORE_INDEX_WORKERS=N` overrides it; nil keeps the server's.
    public var indexBuildWorkers: Int? = {
        guard let value = ProcessInfo.processInfo.environment["TENURE_RESTORE_INDEX_WORKERS"] else { return 0 }
        return Int(value).flatMap { $0 >= 0 ? $0 : nil }
    }()
    /// `statement_timeout` of the restore's sessions in milliseconds; 0 = none.
    public var statementTimeoutMilliseconds = 0
    /// Load the tables whose every column has a built-in type `BinaryCopyEncoder` converts
    /// with `COPY ... (FORMAT binary)`, converting the archive's COPY text on the client; a
    /// part holding any value it does not convert loads as text. On by default: `make bench`
    /// measured the server's text parsing as most of a restore's CPU (see README).
    /// `TENURE_RESTORE_BINARY=0` loads everything as text.
    public var binaryLoading = ProcessInfo.processInfo.environment["TENURE_RESTORE_BINARY"] != "0"

    public init(target: ConnectionParameters, jobs: Int) {
        self.target = target
        self.jobs = jobs
    }
}

public struct RestoreSummary: Sendable {
    public var database: String
    public var tableCount: Int
    public var rowCount: Int64
    public var memberCount: Int
}

/// Restores a native archive while it arrives, all or nothing: into a new database under a
/// temporary name, schema first, data members in parallel, then indexes and constraints in
/// parallel; renamed into place only after the manifest checked out. On any failure the
/// temporary database is dropped and nothing is left behind. Thread: blocks.
public func runRestore(source: any ByteSource, options: RestoreOptions, progress: TransferProgress = TransferProgress()) throws(TenureError)
    -> RestoreSummary
{
    guard let target = options.target["dbname"], !target.isEmpty else {
        throw TenureError(.invalidRequest, "the restore URL must name the database to create")
    }
    let admin = try connectMaintenance(options.target)
    defer { admin.close() }
    if try !admin.query("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", [target]).rows.isEmpty {
        throw TenureError(.invalidRequest, "database '\(printable(target))' already exists; restore creates a new database and never overwrites one")
    }
    let temporary = "tenure_restore_" + String((0..<16).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! })
    var created = false
    do throws(TenureError) {
        let restore = Restore(options: options, temporary: temporary, progress: progress) { (encoding) throws(TenureError) in
            guard encoding.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw TenureError(.invalidRequest, "archive header names an invalid encoding '\(printable(encoding))'")
            }
            try admin.execute("CREATE DATABASE \(quoteIdentifier(temporary)) TEMPLATE template0 ENCODING '\(encoding)'")
            created = true
            try admin.execute("REVOKE CONNECT, TEMPORARY ON DATABASE \(quoteIdentifier(temporary)) FROM PUBLIC")
        }
        var summary = try restore.run(source: source)
        try admin.execute("ALTER DATABASE \(quoteIdentifier(temporary)) RENAME TO \(quoteIdentifier(target))")
        if options.grantPublicConnect {
            try admin.execute("GRANT CONNECT, TEMPORARY ON DATABASE \(quoteIdentifier(target)) TO PUBLIC")
        }
        summary.database = target
        return summary
    } catch {
        if created { dropQuietly(temporary, admin: admin, parameters: options.target) }
        throw error
    }
}

/// Restores a native archive into an existing, empty database (`options.target` names it)
/// with no database-level steps: the upgrade service creates the database and its role, and
/// connects as that role. The caller drops the database if this fails. Thread: blocks.
public func runRestoreIntoExistingDatabase(source: any ByteSource, options: RestoreOptions, progress: TransferProgress = TransferProgress())
    throws(TenureError) -> RestoreSummary
{
    guard let target = options.target["dbname"], !target.isEmpty else {
        throw TenureError(.invalidRequest, "the restore target must name the database")
    }
    let restore = Restore(options: options, temporary: target, progress: progress) { (encoding) throws(TenureError) in
        guard encoding.uppercased() == "UTF8" else {
            throw TenureError(.uploadRejected, "the archive's database encoding is \(printable(encoding)); only UTF8 archives can be uploaded")
        }
    }
    return try restore.run(source: source)
}

/// A connection to the target server's maintenance database.
func connectMaintenance(_ parameters: ConnectionParameters) throws(TenureError) -> PostgresConnection {
    do { return try PostgresConnection(parameters.with(database: "postgres"), applicationName: "tenure-restore") } catch {
        return try PostgresConnection(parameters.with(database: "template1"), applicationName: "tenure-restore")
    }
}

func dropQuietly(_ database: String, admin: PostgresConnection, parameters: ConnectionParameters) {
    let statement = "DROP DATABASE IF EXISTS \(quoteIdentifier(database)) WITH (FORCE)"
    if (try? admin.execute(statement)) == nil, let fresh = try? connectMaintenance(parameters) {
        try? fresh.execute(statement)
        fresh.close()
    }
}

/// One data or blob member on its way to a loader.
struct LoadItem: Sendable {
    var key: ChunkKey
    var name: String
    var bytes: [UInt8]
    var blobOffset: Int64
    var table: TableEntry?
    /// The table's column types when its parts load in binary.
    var binary: [BinaryColumn]? = nil
}

final class Restore {
    let options: RestoreOptions
    let temporary: String
    let progress: TransferProgress
    let createDatabase: (String) throws(TenureError) -> Void

    init(options: RestoreOptions, temporary: String, progress: TransferProgress, createDatabase: @escaping (String) throws(TenureError) -> Void) {
        self.options = options
        self.temporary = temporary
        self.progress = progress
        self.createDatabase = createDatabase
    }

    var parameters: ConnectionParameters { options.target.with(database: temporary) }

    func connect() throws(TenureError) -> PostgresConnection {
        let connection = try PostgresConnection(parameters, applicationName: "tenure-restore")
        try connection.execute(restoreSessionSettings(options))
        return connection
    }

    /// Phase timings on stderr with TENURE_TIMING=1 (for benchmarking).
    let timing = ProcessInfo.processInfo.environment["TENURE_TIMING"] == "1"
    let started = Date()
    func mark(_ phase: String) {
        if timing { FileHandle.standardError.write(Data(String(format: "restore %.2f s: %@\n", Date().timeIntervalSince(started), phase).utf8)) }
    }

    func run(source: any ByteSource) throws(TenureError) -> RestoreSummary {
        let reader = ArchiveReader(source: source, limits: options.limits)
        var main: PostgresConnection?
        defer { main?.close() }
        var tables: [TableEntry] = []
        var binaryColumns: [Int: [BinaryColumn]] = [:]
        var restrictKey: String?
        let queues = (0..<options.jobs).map { _ in BoundedQueue<LoadItem>(capacity: 2) }
        let pending = Locked([Int](repeating: 0, count: options.jobs))
        var nextQueue = 0
        let failure = FirstFailure()
        let counted = Locked<[String: (rows: Int64, rawBytes: Int64)]>([:])
        var loadersDone: DispatchGroup?
        func stopLoaders() {
            queues.forEach { $0.close() }
            loadersDone?.wait()
            loadersDone = nil
        }
        /// Small tables go to a fixed loader when FREEZE is on (one transaction per table);
        /// everything else to the least busy loader.
        func route(_ item: LoadItem) -> Int {
            if options.freezeSmallTables, let table = item.table, table.byteCount <= options.freezeTableBytes {
                return table.index % queues.count
            }
            let counts = pending.withLock { $0 }
            nextQueue = (nextQueue + 1) % queues.count
            let least = counts.min() ?? 0
            return counts.indices.first { counts[$0] == least && $0 >= nextQueue } ?? counts.firstIndex(of: least) ?? 0
        }
        var manifest: Manifest?
        var postData: String?
        var quieted: [TableEntry] = []
        do throws(TenureError) {
            while let member = try reader.next() {
                if let error = failure.error { throw error }
                if progress.isCancelled { throw TenureError(.cancelled, "the restore was cancelled; nothing was kept") }
                switch member {
                case .header(let header):
                    restrictKey = header.restrictKey
                    try createDatabase(header.encoding)
                    mark("database created")
                    main = try connect()
                case .preData(let script):
                    try execute(script, restrictKey: restrictKey, section: "pre-data schema", on: main!)
                    mark("pre-data done")
                case .tables(let list):
                    tables = list
                    quieted = try quietAutovacuum(tables, on: main!)
                    if options.binaryLoading && !options.freezeSmallTables { binaryColumns = try binaryPlan(tables, on: main!) }
                case .sequences(let script):
                    try execute(script, restrictKey: nil, section: "sequences", on: main!)
                    loadersDone = startLoaders(queues: queues, pending: pending, failure: failure, counted: counted)
                case .chunk(let key, let name, let bytes, let offset):
                    var table: TableEntry?
                    if key.kind == .data {
                        guard key.object >= 1, Int(key.object) <= tables.count else {
                            throw TenureError(.invalidRequest, "archive member '\(name)' belongs to table \(key.object), which tables.json does not list")
                        }
                        table = tables[Int(key.object) - 1]
                    }
                    let item = LoadItem(
                        key: key, name: name, bytes: bytes, blobOffset: offset, table: table, binary: table.flatMap { binaryColumns[$0.index] })
                    let target = route(item)
                    pending.withLock { $0[target] += 1 }
                    guard queues[target].push(item) else {
                        throw failure.error ?? TenureError(.internal, "restore cancelled")
                    }
                case .postData(let script):
                    mark("all data read")
                    stopLoaders()
                    if let error = failure.error { throw error }
                    mark("data loaded")
                    postData = script
                case .manifest(let value):
                    // The manifest is checked before the post-data runs, so a missing, extra or
                    // altered part is reported as such, not as whatever it breaks later.
                    try reader.check(value, counted: counted.withLock { $0 })
                    _ = try checkSignature(value, key: options.key)
                    manifest = value
                    if let postData {
                        try runPostData(try filtered(stripRestrictLines(postData, key: restrictKey), section: "post-data schema"), tables: tables)
                        mark("post-data done")
                    }
                }
            }
        } catch {
            queues.forEach { $0.fail() }
            stopLoaders()
            throw failure.error ?? error
        }
        guard let manifest else { throw TenureError(.invalidRequest, "archive has no manifest") }
        for table in quieted {
            try main!.execute("ALTER TABLE \(table.qualifiedName) RESET (autovacuum_enabled, toast.autovacuum_enabled)")
        }
        // The PG15 public-schema rule, re-asserted after every restore.
        try main!.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        main?.close()
        main = nil
        return RestoreSummary(database: temporary, tableCount: tables.count, rowCount: manifest.rowCount, memberCount: manifest.members.count)
    }

    /// Autovacuum's insert-triggered VACUUM ANALYZE starts on big tables while they are still
    /// loading and takes CPU from the load and the index builds. For the tables of at least
    /// 16 MiB whose schema does not set `autovacuum_enabled` itself, it is switched off while
    /// the database is built (nobody else can reach it) and reset before the rename, so the
    /// result is the schema as dumped; autovacuum catches up afterwards.
    func quietAutovacuum(_ tables: [TableEntry], on connection: PostgresConnection) throws(TenureError) -> [TableEntry] {
        var quieted: [TableEntry] = []
        for table in tables where table.byteCount >= 16 << 20 {
            let options = try connection.query(
                """
                SELECT array_to_string(c.reloptions, ',') || ',' || coalesce(array_to_string(t.reloptions, ','), '') AS options
                FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid
                WHERE c.oid = $1::pg_catalog.regclass
                """, [table.qualifiedName])
            let text = (options.rows.first?[0] ?? nil) ?? ""
            guard !text.contains("autovacuum_enabled") else { continue }
            try connection.execute("ALTER TABLE \(table.qualifiedName) SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)")
            quieted.append(table)
        }
        return quieted
    }

    /// The binary column types of every table whose every COPY column has one (see
    /// `BinaryColumn`), by table index, read from the catalog of the database being built.
    func binaryPlan(_ tables: [TableEntry], on connection: PostgresConnection) throws(TenureError) -> [Int: [BinaryColumn]] {
        let result = try connection.query(
            """
            SELECT n.nspname, c.relname, a.attname, a.atttypid::pg_catalog.int8
            FROM pg_catalog.pg_attribute a
            JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
              AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
            """)
        var types: [String: [String: UInt32]] = [:]
        for row in result.rows {
            guard let schema = row[0], let table = row[1], let column = row[2], let oid = row[3].flatMap({ UInt32($0) }) else { continue }
            types[schema + "\u{0}" + table, default: [:]][column] = oid
        }
        var plan: [Int: [BinaryColumn]] = [:]
        for table in tables where !table.columns.isEmpty {
            guard let columnTypes = types[table.schema + "\u{0}" + table.name] else { continue }
            let columns = table.columns.compactMap { columnTypes[$0].flatMap(BinaryColumn.init(typeOID:)) }
            if columns.count == table.columns.count { plan[table.index] = columns }
        }
        return plan
    }

    /// Runs a schema script through libpq: pg_dump's `\restrict` lines (with the archive's
    /// key) are removed; anything else psql-specific is a syntax error on the server.
    func execute(_ script: String, restrictKey: String?, section: String, on connection: PostgresConnection) throws(TenureError) {
        let text = try filtered(stripRestrictLines(script, key: restrictKey), section: section)
        do { try connection.execute(text) } catch {
            throw TenureError(error.code, "restoring the \(section) failed: \(error.message)", context: error.context, sqlState: error.sqlState)
        }
    }

    func filtered(_ script: String, section: String) throws(TenureError) -> String {
        guard let filter = options.schemaFilter else { return script }
        return try filter(script, section)
    }

    func startLoaders(
        queues: [BoundedQueue<LoadItem>], pending: Locked<[Int]>, failure: FirstFailure, counted: Locked<[String: (rows: Int64, rawBytes: Int64)]>
    ) -> DispatchGroup {
        let group = DispatchGroup()
        group.enter()
        let parameters = self.parameters
        let limits = options.limits
        let settings = restoreSessionSettings(options)
        let progress = self.progress
        let freeze = options.freezeSmallTables
        let freezeBytes = options.freezeTableBytes
        Thread {
            runThreads(count: queues.count, name: "tenure-restore") { index in
                do throws(TenureError) {
                    let connection = try PostgresConnection(parameters, applicationName: "tenure-restore-worker")
                    defer { connection.close() }
                    try connection.execute(settings)
                    let decompressor = FrameDecompressor()
                    var truncated = Set<Int>()
                    if freeze { try connection.execute("BEGIN") }
                    while let item = queues[index].pop() {
                        var frozen = false
                        if freeze, let table = item.table, table.byteCount <= freezeBytes {
                            if truncated.insert(table.index).inserted { try connection.execute("TRUNCATE ONLY \(table.qualifiedName)") }
                            frozen = true
                        }
                        let result = try load(item, connection: connection, decompressor: decompressor, limits: limits, freeze: frozen)
                        pending.withLock { $0[index] -= 1 }
                        counted.withLock { $0[item.name] = result }
                        progress.rows.add(result.rows, ordering: .relaxed)
                        progress.rawBytes.add(result.rawBytes, ordering: .relaxed)
                        progress.compressedBytes.add(Int64(item.bytes.count), ordering: .relaxed)
                    }
                    if failure.error != nil { return }
                    if freeze { try connection.execute("COMMIT") }
                } catch {
                    failure.record(error)
                    queues.forEach { $0.fail() }
                }
            }
            group.leave()
        }.start()
        return group
    }

    /// The post-data: the index builds and constraints on `jobs` sessions, ordered as
    /// `PostDataSchedule` decides, then everything else in pg_dump's order.
    func runPostData(_ script: String, tables: [TableEntry]) throws(TenureError) {
        let (preamble, entries) = splitSchemaEntries(script)
        try buildPooled(entries, preamble: preamble, tables: tables)
        let rest = entries.filter { !PostDataSchedule.isPooled($0) }
        if !rest.isEmpty {
            let connection = try connect()
            defer { connection.close() }
            try connection.execute(preamble)
            for entry in rest {
                do throws(TenureError) { try connection.execute(entry.sql) } catch {
                    throw TenureError(error.code, "restoring \(entry.type) \(entry.name) failed: \(error.message)", sqlState: error.sqlState)
                }
            }
        }
    }

    /// The index and constraint builds, on up to `jobs` sessions, each taking the next entry
    /// the schedule allows.
    func buildPooled(_ entries: [SchemaEntry], preamble: String, tables: [TableEntry]) throws(TenureError) {
        var sizes: [String: Int64] = [:]
        for table in tables { sizes[dumpName(table.schema) + "." + dumpName(table.name)] = table.byteCount }
        let pooled = entries.filter(PostDataSchedule.isPooled).count
        guard pooled > 0 else { return }
        mark("post-data pool of \(pooled) entries")
        let pool = PostDataPool(PostDataSchedule(entries, sizes: sizes))
        let parameters = self.parameters
        // Commits need not wait for their WAL flush: the rename that publishes the database
        // commits synchronously and flushes all earlier WAL with it.
        var settings = "SET maintenance_work_mem = '\(options.maintenanceWorkMemory)'; SET synchronous_commit = off"
        if let workers = options.indexBuildWorkers { settings += "; SET max_parallel_maintenance_workers = \(workers)" }
        let timing = self.timing
        let started = self.started
        runThreads(count: min(options.jobs, pooled), name: "tenure-post-data") { [settings] _ in
            do throws(TenureError) {
                let connection = try PostgresConnection(parameters, applicationName: "tenure-restore-worker")
                defer { connection.close() }
                try connection.execute(settings)
                try connection.execute(preamble)
                while let (id, entry) = pool.take() {
                    let entryStart = Date()
                    do throws(TenureError) { try connection.execute(entry.sql) } catch {
                        throw TenureError(error.code, "restoring \(entry.type) \(entry.name) failed: \(error.message)", sqlState: error.sqlState)
                    }
                    pool.finished(id, entry)
                    let took = Date().timeIntervalSince(entryStart)
                    if timing && took > 0.1 {
                        FileHandle.standardError.write(
                            Data(String(format: "restore %.2f s: %@ %@ took %.2f s\n", Date().timeIntervalSince(started), entry.type, entry.name, took).utf8))
                    }
                }
            } catch {
                pool.fail(error)
            }
        }
        if let error = pool.failure.error { throw error }
    }
}

/// The post-data's index and constraint builds shared by the sessions building them.
/// Sessions sleep on a condition until the schedule changes (an entry finished, a failure),
/// so waiting costs nothing.
final class PostDataPool: @unchecked Sendable {
    private let condition = NSCondition()
    private var schedule: PostDataSchedule
    private var stopped = false
    let failure = FirstFailure()

    init(_ schedule: PostDataSchedule) { self.schedule = schedule }

    /// The next entry to build, waiting until one can start; nil when all are done or a
    /// session failed.
    func take() -> (id: Int, entry: SchemaEntry)? {
        condition.lock()
        defer { condition.unlock() }
        while !stopped {
            switch schedule.next() {
            case .run(let id, let entry): return (id, entry)
            case .done: return nil
            case .wait: condition.wait()
            }
        }
        return nil
    }

    func finished(_ id: Int, _ entry: SchemaEntry) {
        condition.lock()
        schedule.finish(id, entry)
        condition.broadcast()
        condition.unlock()
    }

    /// A session failed: the others stop after their current entry.
    func fail(_ error: TenureError) {
        failure.record(error)
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }
}

/// Loads one member: COPY for data (the server's row count is returned), `lo_put` for blobs.
func load(_ item: LoadItem, connection: PostgresConnection, decompressor: FrameDecompressor, limits: EngineLimits, freeze: Bool = false)
    throws(TenureError) -> (
    rows: Int64, rawBytes: Int64
) {
    let what = "archive member '\(item.name)'"
    switch item.key.kind {
    case .data:
        let table = item.table!
        if !freeze, let columns = item.binary,
            let loaded = try loadBinary(item, columns: columns, connection: connection, decompressor: decompressor, limits: limits)
        {
            return loaded
        }
        try connection.beginCopyIn("COPY \(table.copyTarget) FROM STDIN\(freeze ? " (FREEZE)" : "")")
        var raw = 0
        do throws(TenureError) {
            raw = try item.bytes.withBytes { (buffer) throws(TenureError) in
                try decompressor.decompress(buffer, maximumByteCount: limits.maximumRawMemberBytes, what: what) { (chunk) throws(TenureError) in
                    try connection.copyData(chunk)
                }
            }
        } catch {
            _ = try? connection.endCopy(failWith: "tenure: \(error.message)")
            throw error
        }
        let rows = try finishCopy(connection, what: what, table: table)
        return (Int64(rows), Int64(raw))
    case .blob:
        var data: [UInt8] = []
        _ = try item.bytes.withBytes { (buffer) throws(TenureError) in
            try decompressor.decompress(buffer, maximumByteCount: limits.maximumRawMemberBytes, what: what) { chunk in data.append(contentsOf: chunk) }
        }
        let oid = String(item.key.object)
        if item.key.part == 1 {
            try connection.query(
                "SELECT pg_catalog.lo_create($1::oid) WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata WHERE oid = $1::oid)", [oid])
        }
        if !data.isEmpty {
            try connection.query("SELECT pg_catalog.lo_put($1::oid, $2::int8, $3::bytea)", [oid, String(item.blobOffset), hexBytea(data)])
        }
        return (0, Int64(data.count))
    }
}

/// Loads a data part with `COPY ... (FORMAT binary)`, converting its COPY text on the way.
/// Nil when a value is not one the encoder converts: that COPY is abandoned (its transaction
/// rolls back, nothing of it stays) and the caller loads the part as text.
func loadBinary(_ item: LoadItem, columns: [BinaryColumn], connection: PostgresConnection, decompressor: FrameDecompressor, limits: EngineLimits)
    throws(TenureError) -> (rows: Int64, rawBytes: Int64)?
{
    let what = "archive member '\(item.name)'"
    let table = item.table!
    try connection.beginCopyIn("COPY \(table.copyTarget) FROM STDIN (FORMAT binary)")
    var encoder = BinaryCopyEncoder(columns: columns)
    var convertible = true
    let notConvertible = TenureError(.internal, "not convertible")
    var raw = 0
    do throws(TenureError) {
        raw = try item.bytes.withBytes { (buffer) throws(TenureError) in
            try decompressor.decompress(buffer, maximumByteCount: limits.maximumRawMemberBytes, what: what) { (chunk) throws(TenureError) in
                guard encoder.feed(chunk) else {
                    convertible = false
                    throw notConvertible
                }
                try encoder.take { (bytes) throws(TenureError) in try connection.copyData(bytes) }
            }
        }
        guard encoder.finish() else {
            convertible = false
            throw notConvertible
        }
        try encoder.take { (bytes) throws(TenureError) in try connection.copyData(bytes) }
    } catch {
        _ = try? connection.endCopy(failWith: convertible ? "tenure: \(error.message)" : "tenure: loading this part as text instead")
        if convertible { throw error }
        if ProcessInfo.processInfo.environment["TENURE_TIMING"] == "1" { FileHandle.standardError.write(Data("restore: \(item.name) loads as text\n".utf8)) }
        return nil
    }
    let rows = try finishCopy(connection, what: what, table: table)
    guard rows == encoder.rows else {
        throw TenureError(.internal, "loading \(what) into \(table.qualifiedName): the server stored \(rows) rows of the \(encoder.rows) sent")
    }
    return (Int64(rows), Int64(raw))
}

/// The settings of the restore's schema and loader sessions. Whatever the server's, role's
/// or database's defaults, the archive's COPY text is read the way the backup wrote it, in
/// the new database's own encoding (the archive's).
func restoreSessionSettings(_ options: RestoreOptions) -> String {
    """
    SET search_path = pg_catalog; SET statement_timeout = \(options.statementTimeoutMilliseconds); \
    SET maintenance_work_mem = '\(options.maintenanceWorkMemory)'; SET synchronous_commit = off; \
    SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; \
    SELECT pg_catalog.set_config('client_encoding', pg_catalog.current_setting('server_encoding'), false)
    """
}

/// Ends a part's COPY: the server's row count, or its refusal naming the part and table.
func finishCopy(_ connection: PostgresConnection, what: String, table: TableEntry) throws(TenureError) -> Int {
    do { return try connection.endCopy() } catch {
        throw TenureError(error.code, "loading \(what) into \(table.qualifiedName) failed: \(error.message)", sqlState: error.sqlState)
    }
}

func hexBytea(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var text = [UInt8]("\\x".utf8)
    text.reserveCapacity(2 + bytes.count * 2)
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 15)])
    }
    return String(decoding: text, as: UTF8.self)
}

/// One entry of a pg_dump plain script ("-- Name: x; Type: T; Schema: s; Owner: o").
struct SchemaEntry: Sendable {
    let type: String
    let name: String
    let sql: String
    /// The table an index or constraint is on, as pg_dump spells it (`public.events`).
    let table: String?
    /// The table a foreign key references (`REFERENCES public.customers(id)`).
    let referencedTable: String?

    init(type: String, name: String, sql: String) {
        self.type = type
        self.name = name
        self.sql = sql
        if let range = sql.range(of: "REFERENCES ") {
            referencedTable = String(sql[range.upperBound...].prefix { !$0.isWhitespace && $0 != "(" })
        } else {
            referencedTable = nil
        }
        table = ["ALTER TABLE ONLY ", "ALTER TABLE ", " ON ONLY ", " ON "].lazy.compactMap { marker in
            sql.range(of: marker).map { String(sql[$0.upperBound...].prefix { !$0.isWhitespace && $0 != "(" }) }
        }.first
    }
}

/// An identifier as pg_dump prints it: bare when it is a plain lowercase name, quoted otherwise.
func dumpName(_ name: String) -> String {
    let plain = name.first.map { $0 == "_" || ("a"..."z").contains($0) } == true
        && name.allSatisfy { $0 == "_" || ("a"..."z").contains($0) || ("0"..."9").contains($0) }
    return plain ? name : quoteName(name)
}

/// Splits a pg_dump section into its preamble (SET statements) and entries, by the
/// comment headers pg_dump writes before every entry.
func splitSchemaEntries(_ script: String) -> (preamble: String, entries: [SchemaEntry]) {
    let lines = script.split(separator: "\n", omittingEmptySubsequences: false)
    var preamble: [Substring] = []
    var entries: [SchemaEntry] = []
    var current: (type: String, name: String, lines: [Substring])?
    var index = 0
    while index < lines.count {
        let line = lines[index]
        if line == "--", index + 1 < lines.count, lines[index + 1].hasPrefix("-- Name: ") {
            if let current { entries.append(SchemaEntry(type: current.type, name: current.name, sql: current.lines.joined(separator: "\n"))) }
            let header = lines[index + 1]
            let fields = header.dropFirst("-- ".count).components(separatedBy: "; ")
            let name = fields.first { $0.hasPrefix("Name: ") }.map { String($0.dropFirst(6)) } ?? "?"
            let type = fields.first { $0.hasPrefix("Type: ") }.map { String($0.dropFirst(6)) } ?? "?"
            current = (type, name, [])
            index += 2
            continue
        }
        if current != nil { current!.lines.append(line) } else { preamble.append(line) }
        index += 1
    }
    if let current { entries.append(SchemaEntry(type: current.type, name: current.name, sql: current.lines.joined(separator: "\n"))) }
    return (preamble.joined(separator: "\n"), entries)
}
