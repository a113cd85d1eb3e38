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
    /// Revoke CREATE on schema `public` from PUBLIC at the end (PostgreSQL 15's default), whatever
    /// the archive granted: on for tenant databases and uploads, whose owners must not open
    /// their schema to other roles; off for `tenure restore`, a faithful copy as pg_restore
    /// makes it.
    public var reassertPublicSchemaRule = true
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
    /// With the default above (no `TENURE_RESTORE_INDEX_WORKERS`), a big index build that the
    /// schedule finds running while other sessions would wait (`PostDataSchedule.spareSessions`)
    /// gets those sessions' share as parallel workers, and the next build goes back to 0.
    public var idleSessionsBuildInParallel = ProcessInfo.processInfo.environment["TENURE_RESTORE_INDEX_WORKERS"] == nil

    /// What a post-data session runs before `entry` when the schedule found `spare` sessions
    /// idle, given the workers it set last (updated): nil when nothing changes.
    /// With a label (`TENURE_TIMING=1`), a build given workers is named on stderr.
    func workersSetting(for entry: SchemaEntry, spare: Int, current: inout Int, label: String?, since started: Date) -> String? {
        guard idleSessionsBuildInParallel, entry.buildsIndex, spare != current else { return nil }
        current = spare
        if let label, spare > 0 {
            FileHandle.standardError.write(
                Data(String(format: "%@ %.2f s: %@ may use %d parallel workers\n", label, Date().timeIntervalSince(started), entry.describe, spare).utf8))
        }
        return "SET max_parallel_maintenance_workers = \(spare)"
    }
    /// A post-data session on `connection`: each entry's SQL goes to `run` after the workers
    /// setting its spare sessions call for, timed under `label` (see `timed`).
    func postDataSession(
        on connection: PostgresConnection, label: String?, since started: Date, run: @escaping (String) throws(TenureError) -> Void
    ) -> PostDataSession {
        var workers = indexBuildWorkers ?? -1
        return PostDataSession(close: { connection.close() }) { (entry, spare) throws(TenureError) in
            if let setting = workersSetting(for: entry, spare: spare, current: &workers, label: label, since: started) {
                try connection.execute(setting)
            }
            try timed(entry, label: label, since: started, workers: workers) { () throws(TenureError) in try run(entry.sql) }
        }
    }

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

    /// The settings of a session building the post-data: `maintenance_work_mem`,
    /// `max_parallel_maintenance_workers`, and commits that do not wait for their WAL flush
    /// (the caller ends with a commit that does, which flushes all earlier WAL with it).
    var buildSettings: String {
        var settings = "SET maintenance_work_mem = '\(maintenanceWorkMemory)'; SET synchronous_commit = off"
        if let workers = indexBuildWorkers { settings += "; SET max_parallel_maintenance_workers = \(workers)" }
        return settings
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

/// Restores a native archive into a new database named exactly `options.target`'s database
/// (no temporary name, no rename; checked against the manifest like every restore): a restore
/// drill's scratch database, whose name the caller derives from the drill so that a dead
/// attempt's leftover can be found and dropped. On failure the database is dropped. Thread: blocks.
public func runRestoreIntoNewDatabase(source: any ByteSource, options: RestoreOptions, progress: TransferProgress = TransferProgress())
    throws(TenureError) -> RestoreSummary
{
    guard let target = options.target["dbname"], !target.isEmpty else {
        throw TenureError(.invalidRequest, "the restore target must name the database")
    }
    let admin = try connectMaintenance(options.target)
    defer { admin.close() }
    var created = false
    do throws(TenureError) {
        let restore = Restore(options: options, temporary: target, progress: progress) { (encoding) throws(TenureError) in
            guard encoding.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw TenureError(.invalidRequest, "archive header names an invalid encoding '\(printable(encoding))'")
            }
            try admin.execute("CREATE DATABASE \(quoteIdentifier(target)) TEMPLATE template0 ENCODING '\(encoding)'")
            created = true
            try admin.execute("REVOKE CONNECT, TEMPORARY ON DATABASE \(quoteIdentifier(target)) FROM PUBLIC")
        }
        return try restore.run(source: source)
    } catch {
        if created { dropQuietly(target, admin: admin, parameters: options.target) }
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
        let connection = try progress.session(parameters, applicationName: "tenure-restore")
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
        /// extensions' configuration tables all to the first loader, so they load in the
        /// archive's order, referenced tables first (their foreign keys already exist);
        /// everything else to the least busy loader.
        func route(_ item: LoadItem) -> Int {
            if item.table?.filter != nil { return 0 }
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
        var preDataEntries: [SchemaEntry] = []
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
                    try runPreData(script, restrictKey: restrictKey, on: main!)
                    preDataEntries = splitSchemaEntries(script).entries
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
                        try runPostData(
                            try filtered(stripRestrictLines(postData, key: restrictKey), section: "post-data schema"), tables: tables, preData: preDataEntries)
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
        // The PG15 public-schema rule, re-asserted after every restore of a tenant's data.
        if options.reassertPublicSchemaRule { try main!.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC") }
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

    /// The binary column kinds of every table whose every COPY column has one (see
    /// `BinaryColumn.resolve`), by table index, read from the catalog of the database being
    /// built.
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
        let catalog = try BinaryColumn.catalog(for: Set(types.values.flatMap(\.values)), on: connection)
        var plan: [Int: [BinaryColumn]] = [:]
        for table in tables where !table.columns.isEmpty {
            guard let columnTypes = types[table.schema + "\u{0}" + table.name] else { continue }
            if let columns = BinaryColumn.plan(table.columns, types: columnTypes, catalog: catalog) { plan[table.index] = columns }
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

    /// The pre-data, as `PreDataPlan` splits it: in order on `main`, long runs of table and
    /// sequence entries on `jobs` sessions.
    func runPreData(_ script: String, restrictKey: String?, on main: PostgresConnection) throws(TenureError) {
        let text = try filtered(stripRestrictLines(script, key: restrictKey), section: "pre-data schema")
        let (preamble, entries) = splitSchemaEntries(text)
        guard options.jobs > 1, let plan = try PreDataPlan(entries) else {
            return try executeSection(text, on: main)
        }
        try executeSection(preamble, on: main)
        for segment in plan.segments {
            switch segment {
            case .serial(let entries):
                try executeSection(entries.map(\.sql).joined(separator: "\n"), on: main)
            case .parallel(let schedule):
                mark("pre-data pool of \(schedule.count) entries")
                let (parameters, progress, settings) = (self.parameters, self.progress, restoreSessionSettings(options))
                do throws(TenureError) {
                    // A unique violation is two sessions naming a table's array type alike at
                    // once; the entry rolled back and runs again once the other committed.
                    try runPostDataPool(schedule, jobs: options.jobs, name: "tenure-pre-data", retrying: ["40P01", "23505"]) {
                        () throws(TenureError) in
                        let connection = try poolSession(progress, parameters, settings: settings, preamble: preamble)
                        return PostDataSession(close: { connection.close() }) { (entry, _) throws(TenureError) in try connection.execute(entry.sql) }
                    }
                } catch {
                    throw TenureError(error.code, "restoring the pre-data schema failed: \(error.message)", context: error.context, sqlState: error.sqlState)
                }
            }
        }
    }

    /// Runs pre-data statements on `connection`, naming the section in an error.
    func executeSection(_ text: String, on connection: PostgresConnection) throws(TenureError) {
        do { try connection.execute(text) } catch {
            throw TenureError(error.code, "restoring the pre-data schema failed: \(error.message)", context: error.context, sqlState: error.sqlState)
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
                    let connection = try progress.session(parameters, applicationName: "tenure-restore-worker")
                    defer { connection.close() }
                    try connection.execute(settings)
                    let decompressor = FrameDecompressor()
                    var truncated = Set<Int>()
                    if freeze { try connection.execute("BEGIN") }
                    while let item = queues[index].pop() {
                        var frozen = false
                        // Never an extension's configuration table: TRUNCATE would remove the rows the
                        // extension created itself.
                        if freeze, let table = item.table, table.byteCount <= freezeBytes, table.filter == nil {
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

    /// Entry types `pg_restore` runs after everything else, in their own passes (privileges,
    /// then event triggers and materialized view refreshes): Tenure runs them, and whatever
    /// depends on them, last and one after another, in pg_dump's order.
    static let lastPassTypes: Set<String> = ["ACL", "ACL LANGUAGE", "DEFAULT ACL", "EVENT TRIGGER", "MATERIALIZED VIEW DATA"]

    /// The post-data. With pg_dump's table of contents in the script (every archive Tenure
    /// makes since the dependency-graph schedule), its entries run on `jobs` sessions as
    /// `PostDataSchedule` decides from pg_dump's dependencies, then the last pass in order.
    /// An older archive (no dump ids) runs its post-data in pg_dump's order on one session:
    /// slower, but that order always satisfies the dependencies.
    func runPostData(_ script: String, tables: [TableEntry], preData: [SchemaEntry]) throws(TenureError) {
        let (preamble, entries) = splitSchemaEntries(script)
        guard !entries.isEmpty else {
            // No entry headers: whatever the script holds runs as it is, never skipped.
            let connection = try connect()
            defer { connection.close() }
            do { try connection.execute(preamble) } catch {
                throw TenureError(error.code, "restoring the post-data schema failed: \(error.message)", sqlState: error.sqlState)
            }
            return
        }
        guard entries.allSatisfy({ $0.dumpID != nil }) else {
            mark("post-data without dependencies: \(entries.count) entries in order")
            return try runInOrder(entries, preamble: preamble)
        }
        var sizes: [String: Int64] = [:]
        for table in tables { sizes[table.schema + "\u{0}" + table.name] = table.byteCount }
        let plan = try PostDataPlan(entries, preData: preData, earlierIDs: Set(preData.compactMap(\.dumpID)), sizes: sizes)
        try buildPooled(plan.schedule, preamble: preamble)
        try runInOrder(plan.last, preamble: preamble)
    }

    /// Entries one after another on one session, in the order given.
    func runInOrder(_ entries: [SchemaEntry], preamble: String) throws(TenureError) {
        guard !entries.isEmpty else { return }
        let connection = try connect()
        defer { connection.close() }
        try connection.execute(preamble)
        for entry in entries {
            do throws(TenureError) { try connection.execute(entry.sql) } catch {
                throw TenureError(error.code, "restoring \(entry.describe) failed: \(error.message)", sqlState: error.sqlState)
            }
        }
    }

    /// The scheduled post-data entries, on up to `jobs` sessions, each taking the next entry
    /// the schedule allows.
    func buildPooled(_ schedule: PostDataSchedule, preamble: String) throws(TenureError) {
        guard schedule.count > 0 else { return }
        mark("post-data pool of \(schedule.count) entries")
        let parameters = self.parameters
        // Commits need not wait for their WAL flush: the rename that publishes the database
        // commits synchronously and flushes all earlier WAL with it.
        let settings = options.buildSettings
        let options = self.options
        let timing = self.timing
        let started = self.started
        let progress = self.progress
        try runPostDataPool(schedule, jobs: options.jobs, name: "tenure-post-data") { [settings] () throws(TenureError) in
            let connection = try poolSession(progress, parameters, settings: settings, preamble: preamble)
            return options.postDataSession(on: connection, label: timing ? "restore" : nil, since: started) { (sql) throws(TenureError) in
                try connection.execute(sql)
            }
        }
    }
}

/// A session of one of the restore's pools: connected, then `settings` and the schema
/// script's `preamble` run (closed again if either fails).
func poolSession(_ progress: TransferProgress, _ parameters: ConnectionParameters, settings: String, preamble: String) throws(TenureError)
    -> PostgresConnection
{
    let connection = try progress.session(parameters, applicationName: "tenure-restore-worker")
    do throws(TenureError) {
        try connection.execute(settings)
        try connection.execute(preamble)
    } catch {
        connection.close()
        throw error
    }
    return connection
}

/// Runs one post-data entry; with a label (`TENURE_TIMING=1`), prints it on stderr when it
/// took over 0.1 s, with the time since `started`.
func timed(_ entry: SchemaEntry, label: String?, since started: Date, workers: Int = 0, _ body: () throws(TenureError) -> Void) throws(TenureError) {
    let entryStart = Date()
    try body()
    let took = Date().timeIntervalSince(entryStart)
    if let label, took > 0.1 {
        let parallel = workers > 0 && entry.buildsIndex ? " (up to \(workers) parallel workers)" : ""
        FileHandle.standardError.write(
            Data(String(format: "%@ %.2f s: %@ took %.2f s%@\n", label, Date().timeIntervalSince(started), entry.describe, took, parallel).utf8))
    }
}

/// What the post-data's planning decides from pg_dump's table of contents: the entries the
/// lock-aware schedule runs in parallel, and the last pass run after them in order (privileges,
/// event triggers, materialized-view refreshes and whatever depends on them).
struct PostDataPlan {
    let schedule: PostDataSchedule
    let last: [SchemaEntry]

    /// - Parameters:
    ///   - entries: the post-data entries, every one with its dump id.
    ///   - preData: the pre-data entries (their tables, partition attachments and inheritance
    ///     give the lock groups; only type, schema, name, dump id and dependencies are read).
    ///   - earlierIDs: the dump ids of every entry done before the post-data starts.
    ///   - sizes: table data sizes by "schema\0name", to start the biggest tables' chains first.
    init(_ entries: [SchemaEntry], preData: [SchemaEntry], earlierIDs: Set<Int>, sizes: [String: Int64]) throws(TenureError) {
        let postDataIDs = Set(entries.compactMap(\.dumpID))
        var last = Set<Int>()
        var grew = true
        while grew {
            grew = false
            for entry in entries where !last.contains(entry.dumpID!) {
                let lastPass =
                    Restore.lastPassTypes.contains(entry.type) || (entry.type == "COMMENT" && entry.name.hasPrefix("EVENT TRIGGER "))
                    || entry.dependencies.contains(where: last.contains)
                if lastPass {
                    last.insert(entry.dumpID!)
                    grew = true
                }
            }
        }
        for entry in entries where last.contains(entry.dumpID!) {
            if let missing = entry.dependencies.first(where: { !earlierIDs.contains($0) && !postDataIDs.contains($0) }) {
                throw TenureError(
                    .invalidRequest,
                    "the archive's post-data entry \(entry.describe) depends on entry \(missing), which the archive does not carry; nothing was restored")
            }
        }
        let locked = PostDataSchedule.lockedTables(preData, sizes: sizes)
        schedule = try PostDataSchedule(entries.filter { !last.contains($0.dumpID!) }, tables: locked, preDataIDs: earlierIDs)
        self.last = entries.filter { last.contains($0.dumpID!) }
    }
}

/// One session of the post-data pool: runs an entry (given how many sessions the schedule
/// found idle beside it, `PostDataSchedule.spareSessions`), and is closed when the pool is done.
struct PostDataSession {
    let close: () -> Void
    let run: (SchemaEntry, Int) throws(TenureError) -> Void
}

/// Runs a schedule's entries on up to `jobs` sessions (made by `open`, one per thread), each
/// taking the next entry the schedule allows. A deadlock the server broke rolled the entry
/// back, so it runs again (up to 5 times; the lock groups make this rare). The first failure
/// stops the other sessions after their current entry and is thrown.
func runPostDataPool(
    _ schedule: PostDataSchedule, jobs: Int, name: String, retrying: Set<String> = ["40P01"],
    open: @escaping @Sendable () throws(TenureError) -> PostDataSession
) throws(TenureError) {
    let count = schedule.count
    guard count > 0 else { return }
    let sessions = min(max(jobs, 1), count)
    let pool = PostDataPool(schedule, sessions: sessions)
    runThreads(count: sessions, name: name) { _ in
        do throws(TenureError) {
            let session = try open()
            defer { session.close() }
            while let (id, entry, spare) = pool.take() {
                var attempt = 1
                while true {
                    do throws(TenureError) {
                        try session.run(entry, spare)
                        break
                    } catch {
                        if let state = error.sqlState, retrying.contains(state), attempt < 5 {
                            attempt += 1
                            Thread.sleep(forTimeInterval: 0.05 * Double(attempt))
                            continue
                        }
                        throw TenureError(error.code, "restoring \(entry.describe) failed: \(error.message)", context: error.context, sqlState: error.sqlState)
                    }
                }
                pool.finished(id)
            }
        } catch {
            pool.fail(error)
        }
    }
    if let error = pool.failure.error { throw error }
}

/// The post-data's scheduled entries shared by the sessions building them.
/// Sessions sleep on a condition until the schedule changes (an entry finished, a failure),
/// so waiting costs nothing.
final class PostDataPool: @unchecked Sendable {
    private let condition = NSCondition()
    private var schedule: PostDataSchedule
    private var stopped = false
    private let sessions: Int
    let failure = FirstFailure()

    init(_ schedule: PostDataSchedule, sessions: Int) {
        self.schedule = schedule
        self.sessions = sessions
    }

    /// The next entry to build and the sessions idle beside it, waiting until one can start;
    /// nil when all are done or a session failed.
    func take() -> (id: Int, entry: SchemaEntry, spare: Int)? {
        condition.lock()
        defer { condition.unlock() }
        while !stopped {
            switch schedule.next() {
            case .run(let id, let entry): return (id, entry, schedule.spareSessions(for: id, sessions: sessions))
            case .done: return nil
            case .wait: condition.wait()
            }
        }
        return nil
    }

    func finished(_ id: Int) {
        condition.lock()
        schedule.finish(id)
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

/// One entry of a pg_dump plain script: its header ("-- TOC entry N (class ...)",
/// "-- Dependencies: ...", "-- Name: x; Type: T; Schema: s; Owner: o") and its statements.
struct SchemaEntry: Sendable {
    let type: String
    let name: String
    let schema: String
    /// The statements, preceded by the session settings pg_dump's script had in force for
    /// them (tablespace, table access method), so the entry runs alike on any session.
    let sql: String
    /// pg_dump's dump id, when the script was rendered with its table of contents.
    let dumpID: Int?
    /// The dump ids of the entries this one depends on, as pg_dump recorded them.
    let dependencies: [Int]

    /// Whether the entry builds an index (an index, or a primary key or unique constraint):
    /// the entries that may use parallel maintenance workers.
    var buildsIndex: Bool { type == "INDEX" || type == "CONSTRAINT" }

    /// "INDEX public.events_customer (dump id 3221)".
    var describe: String {
        "\(type) \(schema == "-" || schema.isEmpty ? "" : schema + ".")\(name)\(dumpID.map { " (dump id \($0))" } ?? "")"
    }
}

/// Splits a pg_dump section into its preamble (SET statements) and entries, by the comment
/// headers pg_dump writes before every entry. The settings pg_dump switches between entries
/// (`SET default_tablespace`, `SET default_table_access_method`, written just before an
/// entry's header) are taken off the entry before and carried by every later entry, so that
/// entries run on different sessions, in any order, each see their own.
func splitSchemaEntries(_ script: String) -> (preamble: String, entries: [SchemaEntry]) {
    var script = script
    return script.withUTF8 { SchemaScanner(bytes: $0).split() }
}

/// `splitSchemaEntries` over the script's UTF-8 bytes: lines as byte ranges, strings made
/// only for what an entry keeps (a schema of thousands of tables has tens of thousands of lines).
private struct SchemaScanner {
    let bytes: UnsafeBufferPointer<UInt8>

    func text(_ range: Range<Int>) -> String { String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self) }

    func hasPrefix(_ range: Range<Int>, _ prefix: StaticString) -> Bool {
        let count = prefix.utf8CodeUnitCount
        guard range.count >= count else { return false }
        for offset in 0..<count where bytes[range.lowerBound + offset] != prefix.utf8Start[offset] { return false }
        return true
    }

    /// The setting's name when the line is `SET default_tablespace = ...;` or
    /// `SET default_table_access_method = ...;`.
    func settingName(_ range: Range<Int>) -> String? {
        guard range.count > 4, bytes[range.upperBound - 1] == UInt8(ascii: ";") else { return nil }
        if hasPrefix(range, "SET default_tablespace = ") { return "default_tablespace" }
        if hasPrefix(range, "SET default_table_access_method = ") { return "default_table_access_method" }
        return nil
    }

    /// A comment header line's value after `prefix`, as the range of the rest of the line.
    func rest(_ range: Range<Int>, after prefix: StaticString) -> Range<Int> { (range.lowerBound + prefix.utf8CodeUnitCount)..<range.upperBound }

    func split() -> (preamble: String, entries: [SchemaEntry]) {
        var lines: [Range<Int>] = []
        var start = 0
        for index in 0..<bytes.count where bytes[index] == 0x0A {
            lines.append(start..<index)
            start = index + 1
        }
        lines.append(start..<bytes.count)

        var entries: [SchemaEntry] = []
        var settings: [String: String] = [:]
        var settingsPrefix = ""
        func setting(_ name: String, _ line: Range<Int>) {
            settings[name] = text(line)
            settingsPrefix = settings.keys.sorted().map { settings[$0]! + "\n" }.joined()
        }
        var preambleEnd: Int?
        struct Open {
            var type = "?", name = "?", schema = "", dumpID: Int?, dependencies: [Int] = []
            var prefix = ""
            var first = 0
        }
        var current: Open?
        func close(before next: Int) {
            guard let open = current else { return }
            // Settings written for the next entry belong to it, not to this one.
            var last = next - 1
            var moved: [Int] = []
            while last >= open.first, lines[last].isEmpty || settingName(lines[last]) != nil {
                if settingName(lines[last]) != nil { moved.append(last) }
                last -= 1
            }
            let body = last >= open.first ? text(lines[open.first].lowerBound..<lines[last].upperBound) : ""
            entries.append(
                SchemaEntry(type: open.type, name: open.name, schema: open.schema, sql: open.prefix + body, dumpID: open.dumpID, dependencies: open.dependencies))
            for line in moved.reversed() { setting(settingName(lines[line])!, lines[line]) }
            current = nil
        }
        var index = 0
        while index < lines.count {
            let line = lines[index]
            if line.count == 2 && bytes[line.lowerBound] == 0x2D && bytes[line.lowerBound + 1] == 0x2D {
                // A header: "--", comment lines, one of them "-- Name: ...", then "--".
                var end = index + 1
                while end < lines.count, hasPrefix(lines[end], "-- ") { end += 1 }
                if end < lines.count, lines[end].count == 2, bytes[lines[end].lowerBound] == 0x2D, bytes[lines[end].lowerBound + 1] == 0x2D,
                    let nameLine = lines[(index + 1)..<end].first(where: { hasPrefix($0, "-- Name: ") })
                {
                    if current == nil { preambleEnd = preambleEnd ?? index }
                    close(before: index)
                    var open = Open()
                    // "Name: n; Type: t; Schema: s; Owner: o", split at every "; ".
                    var fieldStart = nameLine.lowerBound + 3
                    var cursor = fieldStart
                    func field(_ range: Range<Int>) {
                        if hasPrefix(range, "Name: ") { open.name = text(rest(range, after: "Name: ")) }
                        if hasPrefix(range, "Type: ") { open.type = text(rest(range, after: "Type: ")) }
                        if hasPrefix(range, "Schema: ") { open.schema = text(rest(range, after: "Schema: ")) }
                    }
                    while cursor + 1 < nameLine.upperBound {
                        if bytes[cursor] == UInt8(ascii: ";") && bytes[cursor + 1] == 0x20 {
                            field(fieldStart..<cursor)
                            cursor += 2
                            fieldStart = cursor
                        } else {
                            cursor += 1
                        }
                    }
                    field(fieldStart..<nameLine.upperBound)
                    let comments = lines[(index + 1)..<end]
                    if let toc = comments.first(where: { hasPrefix($0, "-- TOC entry ") }) {
                        open.dumpID = Int(text(rest(toc, after: "-- TOC entry ")).prefix { $0.isNumber })
                    }
                    if let line = comments.first(where: { hasPrefix($0, "-- Dependencies: ") }) {
                        open.dependencies = text(rest(line, after: "-- Dependencies: ")).split(separator: " ").compactMap { Int($0) }
                    }
                    open.prefix = settingsPrefix
                    open.first = end + 1
                    current = open
                    index = end + 1
                    continue
                }
            }
            if current == nil, let name = settingName(line) { setting(name, line) }
            index += 1
        }
        if current != nil { close(before: lines.count) }
        let preamble: String
        if let end = preambleEnd {
            preamble = end == 0 ? "" : text(0..<lines[end - 1].upperBound)
        } else {
            preamble = text(0..<bytes.count)
        }
        return (preamble, entries)
    }
}
