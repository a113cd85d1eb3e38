import Foundation
import Synchronization
import TenureCore
import TenurePQ
import TenureZstd


public struct BackupOptions: Sendable {
    public var source: ConnectionParameters
    public var jobs: Int
    /// zstd level. The default (1) was chosen by `make bench`: see the README's table.
    public var level: Int32
    public var format: BackupFormat
    public var pgDump: PgDump
    public var limits = EngineLimits()
    /// Raw COPY text per frame (= per data member); a single larger row makes a larger frame.
    public var frameBytes = 8 << 20
    /// Tables larger than this are split into CTID ranges of this size, so one big table
    /// keeps every worker busy.
    public var partBytes: Int64 = 64 << 20
    public var createdAt: Date
    /// Signs the manifest (native format) when set.
    public var signingKey: ArchiveKey?

    public static let defaultLevel: Int32 = 1

    public init(source: ConnectionParameters, jobs: Int, level: Int32 = defaultLevel, format: BackupFormat, pgDump: PgDump, createdAt: Date) {
        self.source = source
        self.jobs = jobs
        self.level = level
        self.format = format
        self.pgDump = pgDump
        self.createdAt = createdAt
    }
}


/// One unit of worker output: a member of the archive (native) or a run of SQL frames.
struct Segment: Sendable {
    var name: String
    var kind: ChunkKey.Kind
    var object: Int64
    var part: Int
    var rows: Int64
    var rawBytes: Int64
    var bytes: [UInt8]
}

enum BackupTask: Sendable {
    /// A whole table (nil range) or the pages [first, last) of it (nil last: to the end).
    case table(TableEntry, firstPage: Int64?, lastPage: Int64?)
    case largeObject(UInt32)
}

/// Takes a snapshot-consistent logical backup of one database and streams it to `sink`.
///
/// A coordinator session exports a snapshot; `jobs` worker sessions, each on its own
/// thread, import it and COPY table parts out, compress each frame with libzstd and hand
/// it to the writer (this thread) through a bounded queue, so memory stays bounded and a
/// slow sink slows the workers. Schema sections come from `pg_dump --snapshot`. Every stage's
/// end is checked (COPY's row count, the frame, the writer's flush); any failure aborts the
/// sink, so the output never looks complete. Thread: blocks the calling thread.
public func runBackup(_ options: BackupOptions, sink: any ByteSink, progress: TransferProgress = TransferProgress()) throws(TenureError)
    -> BackupSummary
{
    do throws(TenureError) {
        let summary = try Backup(options: options, sink: sink, progress: progress).run()
        try sink.finish()
        return summary
    } catch {
        sink.abort()
        throw error
    }
}

final class Backup {
    let options: BackupOptions
    let sink: any ByteSink
    let progress: TransferProgress
    /// Each table's and large object's next part number, shared by every copy phase.
    let partNumbers = Locked<[Int64: Int]>([:])

    init(options: BackupOptions, sink: any ByteSink, progress: TransferProgress) {
        self.options = options
        self.sink = sink
        self.progress = progress
    }

    func run() throws(TenureError) -> BackupSummary {
        precondition(options.jobs >= 1, "jobs")
        let dumpVersion = try options.pgDump.version()
        let coordinator = try progress.session(options.source, applicationName: "tenure-backup")
        defer { coordinator.close() }
        guard dumpVersion.major >= coordinator.serverMajorVersion else {
            throw TenureError(
                .invalidRequest,
                "pg_dump \(dumpVersion.text) is older than the server (major \(coordinator.serverMajorVersion)); its output could be incomplete, so nothing was backed up. Install a pg_dump of major \(coordinator.serverMajorVersion) or newer")
        }
        try prepareSession(coordinator)
        try coordinator.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        let snapshot = try coordinator.query("SELECT pg_export_snapshot() AS s")[0, "s"]!
        let facts = try coordinator.query(
            "SELECT current_setting('server_version') AS version, current_setting('server_encoding') AS encoding, current_database() AS name, current_setting('block_size')::int8 AS block"
        )
        let blockSize = Int64(facts[0, "block"]!)!
        let tables = try listTables(coordinator)
        let sequenceSQL = try readSequences(coordinator)
        let largeObjects = try coordinator.query("SELECT oid::int8 AS oid FROM pg_catalog.pg_largeobject_metadata ORDER BY oid").rows.map {
            UInt32($0[0]!)!
        }
        progress.expectedBytes.store(tables.reduce(0) { $0 + $1.byteCount }, ordering: .relaxed)

        let restrictKey = options.pgDump.supportsRestrictKey() ? randomKey() : nil
        // Both schema sections from one pg_dump run, before the data: pg_dump reads the whole
        // catalog whatever the section, so one run costs what one section did.
        let (preData, postData) = try options.pgDump.dumpSchema(
            parameters: options.source, snapshot: snapshot, restrictKey: restrictKey, maximumBytes: options.limits.maximumSchemaBytes,
            progress: progress)

        let header = ArchiveHeader(
            format: ArchiveLayout.formatName, formatVersion: ArchiveLayout.formatVersion, createdAt: RFC3339.format(options.createdAt),
            serverVersion: facts[0, "version"]!, pgDumpVersion: dumpVersion.text, database: facts[0, "name"]!, encoding: facts[0, "encoding"]!,
            restrictKey: restrictKey)
        let writer: any SegmentWriter =
            options.format == .native
            ? NativeWriter(sink: sink, createdAt: options.createdAt, level: options.level, key: options.signingKey)
            : SQLWriter(sink: sink, level: options.level, restrictKey: restrictKey)
        try writer.begin(header: header, preData: preData, tables: tables, sequences: sequenceSQL)

        // Work: biggest first, so the longest part starts earliest.
        var tasks: [BackupTask] = []
        let pagesPerPart = max(1, options.partBytes / blockSize)
        for table in tables where table.filter == nil {
            let pages = table.byteCount / blockSize
            if table.byteCount > options.partBytes {
                var first: Int64 = 0
                while first < pages {
                    let last = first + pagesPerPart
                    tasks.append(.table(table, firstPage: first, lastPage: last >= pages ? nil : last))
                    first = last
                }
            } else {
                tasks.append(.table(table, firstPage: nil, lastPage: nil))
            }
        }
        // Whole tables, biggest first, each table's ranges together and in order: a table's
        // data then ends as early as it can in the archive, and a restore builds its indexes
        // while the tables after it still load.
        func order(_ task: BackupTask) -> (bytes: Int64, index: Int, page: Int64) {
            guard case .table(let table, let first, _) = task else { return (0, 0, 0) }
            return (table.byteCount, table.index, first ?? 0)
        }
        tasks.sort {
            let (a, b) = (order($0), order($1))
            return a.bytes != b.bytes ? a.bytes > b.bytes : a.index != b.index ? a.index < b.index : a.page < b.page
        }
        tasks += largeObjects.map { .largeObject($0) }

        try copy(tasks, jobs: options.jobs, snapshot: snapshot, writer: writer)
        // Extensions' configuration tables last, one after another in foreign-key order
        // (referenced tables first), on one session: their constraints exist as soon as the
        // extension is created, so a restore loads their rows in this order (see `Restore`).
        let configuration = try foreignKeyOrder(tables.filter { $0.filter != nil }, on: coordinator)
        try copy(configuration.map { .table($0, firstPage: nil, lastPage: nil) }, jobs: 1, snapshot: snapshot, writer: writer)

        try writer.end(postData: postData)
        try coordinator.execute("COMMIT")
        return BackupSummary(
            tableCount: tables.count, rowCount: progress.rows.load(ordering: .relaxed), rawBytes: progress.rawBytes.load(ordering: .relaxed),
            writtenBytes: writer.writtenBytes, memberCount: writer.memberCount, sequenceCount: sequenceSQL.split(separator: "\n").count,
            largeObjectCount: largeObjects.count)
    }

    /// Runs `tasks` on up to `jobs` worker sessions in the snapshot and writes what they produce
    /// (in the order it arrives) until all are done or one fails.
    func copy(_ tasks: [BackupTask], jobs: Int, snapshot: String, writer: any SegmentWriter) throws(TenureError) {
        guard !tasks.isEmpty else { return }
        let work = Locked(tasks[...])
        let queue = BoundedQueue<Segment>(capacity: max(2, options.jobs * 2))
        let failure = FirstFailure()
        let partNumbers = self.partNumbers
        let options = self.options
        let progress = self.progress
        let jobs = min(jobs, tasks.count)
        let workersDone = DispatchGroup()
        workersDone.enter()
        Thread {
            runThreads(count: jobs, name: "tenure-backup") { _ in
                do throws(TenureError) {
                    try BackupWorker(options: options, snapshot: snapshot, queue: queue, failure: failure, partNumbers: partNumbers, progress: progress)
                        .run(work)
                } catch {
                    failure.record(error)
                    queue.fail()
                }
            }
            queue.close()
            workersDone.leave()
        }.start()

        var writeError: TenureError?
        while let segment = queue.pop() {
            do throws(TenureError) {
                try writer.write(segment)
                progress.compressedBytes.add(Int64(segment.bytes.count), ordering: .relaxed)
            } catch {
                writeError = error
                failure.record(error)
                queue.fail()
                break
            }
        }
        workersDone.wait()
        if let error = failure.error ?? writeError { throw error }
    }

    /// `tables` with every table after the tables its foreign keys reference (a cycle keeps
    /// the listed order for its members, as pg_dump does with a warning).
    func foreignKeyOrder(_ tables: [TableEntry], on connection: PostgresConnection) throws(TenureError) -> [TableEntry] {
        guard tables.count > 1 else { return tables }
        func key(_ schema: String, _ name: String) -> String { schema + "\u{0}" + name }
        let result = try connection.query(
            """
            SELECT rn.nspname, r.relname, fn.nspname, f.relname FROM pg_catalog.pg_constraint c
            JOIN pg_catalog.pg_class r ON r.oid = c.conrelid JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
            JOIN pg_catalog.pg_class f ON f.oid = c.confrelid JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace
            WHERE c.contype = 'f' AND c.conrelid <> c.confrelid
            """)
        var references: [String: Set<String>] = [:]
        for row in result.rows { references[key(row[0]!, row[1]!), default: []].insert(key(row[2]!, row[3]!)) }
        var placed: [TableEntry] = []
        var done = Set<String>()
        var visiting = Set<String>()
        let byKey = Dictionary(tables.map { (key($0.schema, $0.name), $0) }, uniquingKeysWith: { first, _ in first })
        func place(_ table: TableEntry) {
            let tableKey = key(table.schema, table.name)
            guard !done.contains(tableKey), visiting.insert(tableKey).inserted else { return }
            for referenced in references[tableKey, default: []].sorted() { if let other = byKey[referenced] { place(other) } }
            done.insert(tableKey)
            placed.append(table)
        }
        tables.forEach(place)
        return placed
    }

    /// Every ordinary table outside the system schemas that no extension owns, and every
    /// extension's configuration table (`pg_extension_config_dump`) with the filter its
    /// extension registered: pg_dump carries the rows an extension marks as configuration
    /// (those the user added), and so does Tenure.
    func listTables(_ connection: PostgresConnection) throws(TenureError) -> [TableEntry] {
        let result = try connection.query(
            """
            WITH configuration AS (
                SELECT c.relid, coalesce(e.extcondition[c.position], '') AS filter
                FROM pg_catalog.pg_extension e, unnest(e.extconfig) WITH ORDINALITY AS c(relid, position)
            ), listed AS (
                SELECT c.oid, NULL::text AS filter FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                  WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype = 'e')
                UNION ALL
                SELECT c.oid, configuration.filter FROM configuration JOIN pg_catalog.pg_class c ON c.oid = configuration.relid
                WHERE c.relkind = 'r'
            )
            SELECT n.nspname AS schema, c.relname AS name, pg_catalog.pg_relation_size(c.oid) AS bytes,
                   coalesce((SELECT json_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '[]') AS columns,
                   listed.filter
            FROM listed JOIN pg_catalog.pg_class c ON c.oid = listed.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            ORDER BY 1, 2
            """)
        var tables: [TableEntry] = []
        for (index, row) in result.rows.enumerated() {
            let columns = (try? JSONDecoder().decode([String].self, from: Data((row[3] ?? "[]").utf8))) ?? []
            tables.append(
                TableEntry(index: index + 1, schema: row[0]!, name: row[1]!, columns: columns, byteCount: Int64(row[2]!) ?? 0, filter: row[4]))
        }
        return tables
    }

    /// `setval` for every sequence no extension owns and every sequence an extension marks
    /// as configuration, read in the snapshot.
    func readSequences(_ connection: PostgresConnection) throws(TenureError) -> String {
        let sequences = try connection.query(
            """
            SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'S'
              AND ((n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype = 'e'))
                   OR EXISTS (SELECT 1 FROM pg_catalog.pg_extension e WHERE c.oid = ANY (e.extconfig)))
            ORDER BY 1, 2
            """)
        var lines: [String] = []
        for row in sequences.rows {
            let name = "\(quoteName(row[0]!)).\(quoteName(row[1]!))"
            let state = try connection.query("SELECT last_value, is_called FROM \(name)")
            lines.append("SELECT pg_catalog.setval(\(quoteLiteral(name)), \(state[0, "last_value"]!), \(state[0, "is_called"] == "t" ? "true" : "false"));")
        }
        return lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
    }

    func randomKey() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        var generator = SystemRandomNumberGenerator()
        return String((0..<32).map { _ in alphabet.randomElement(using: &generator)! })
    }
}

/// Session settings for every engine connection to a database it reads: names always
/// qualified, no row-level security silently hiding rows, and (CVE-2024-7348) no reading
/// through a view or foreign table swapped in for a table. The COPY text is written in one
/// fixed form whatever the server's, database's or role's defaults (as pg_dump does): ISO
/// dates with UTC offsets, `postgres` intervals, floats exact, bytea in hex, in the
/// database's own encoding (the one the archive header records).
func prepareSession(_ connection: PostgresConnection) throws(TenureError) {
    try connection.execute(
        """
        SET search_path = pg_catalog; SET row_security = off; SET statement_timeout = 0; SET lock_timeout = '60s';
        SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = 'hex';
        SELECT pg_catalog.set_config('client_encoding', pg_catalog.current_setting('server_encoding'), false)
        """)
    try? connection.execute("SET restrict_nonsystem_relation_kind = 'view, foreign-table'")
}

/// One backup worker: its own session in the shared snapshot, its own zstd context.
struct BackupWorker {
    let options: BackupOptions
    let snapshot: String
    let queue: BoundedQueue<Segment>
    let failure: FirstFailure
    let partNumbers: Locked<[Int64: Int]>
    let progress: TransferProgress

    func run(_ work: Locked<ArraySlice<BackupTask>>) throws(TenureError) {
        let connection = try progress.session(options.source, applicationName: "tenure-backup-worker")
        defer { connection.close() }
        try prepareSession(connection)
        try connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        try connection.execute("SET TRANSACTION SNAPSHOT \(quoteLiteral(snapshot))")
        let compressor = FrameCompressor(level: options.level)
        while failure.error == nil, let task = work.withLock({ $0.popFirst() }) {
            switch task {
            case .table(let table, let first, let last):
                try copyTable(table, first: first, last: last, connection: connection, compressor: compressor)
            case .largeObject(let oid):
                try copyLargeObject(oid, connection: connection, compressor: compressor)
            }
        }
        try connection.execute("COMMIT")
    }

    func nextPart(_ object: Int64) -> Int {
        partNumbers.withLock { numbers in
            let next = (numbers[object] ?? 0) + 1
            numbers[object] = next
            return next
        }
    }

    func copyTable(_ table: TableEntry, first: Int64?, last: Int64?, connection: PostgresConnection, compressor: FrameCompressor) throws(TenureError) {
        let sql: String
        if let first {
            let columns = table.columns.map(quoteName).joined(separator: ", ")
            var condition = "ctid >= '(\(first),0)'::pg_catalog.tid"
            if let last { condition += " AND ctid < '(\(last),0)'::pg_catalog.tid" }
            sql = "COPY (SELECT \(columns) FROM ONLY \(table.qualifiedName) WHERE \(condition)) TO STDOUT"
        } else if let filter = table.filter {
            let columns = table.columns.map(quoteName).joined(separator: ", ")
            sql = "COPY (SELECT \(columns) FROM ONLY \(table.qualifiedName) \(filter)) TO STDOUT"
        } else {
            sql = "COPY \(table.copyTarget) TO STDOUT"
        }
        let sqlPrefix = Array("COPY \(table.copyTarget) FROM stdin;\n".utf8)
        let sqlSuffix = Array("\\.\n\n".utf8)
        var buffer: [UInt8] = []
        buffer.reserveCapacity(options.frameBytes + 65_536)
        var rowsInFrame: Int64 = 0
        var rowBytesInFrame: Int64 = 0
        var rowsTotal: Int64 = 0
        let native = options.format == .native
        func flush() throws(TenureError) {
            guard rowsInFrame > 0 else { return }
            if !native { buffer += sqlSuffix }
            let frame = try buffer.withBytes { (bytes) throws(TenureError) in try compressor.compress(bytes) }
            let part = nextPart(Int64(table.index))
            let raw = Int64(buffer.count)
            // Progress per frame, not per row: shared counters stay off the row loop.
            progress.rows.add(rowsInFrame, ordering: .relaxed)
            progress.rawBytes.add(rowBytesInFrame, ordering: .relaxed)
            rowBytesInFrame = 0
            guard
                queue.push(
                    Segment(
                        name: ArchiveLayout.dataMember(table: table.index, part: part), kind: .data, object: Int64(table.index), part: part,
                        rows: rowsInFrame, rawBytes: raw, bytes: frame))
            else { throw failure.error ?? TenureError(.internal, "backup cancelled") }
            buffer.removeAll(keepingCapacity: true)
            if !native { buffer += sqlPrefix }
            rowsInFrame = 0
        }
        if !native { buffer += sqlPrefix }
        let frameBytes = options.frameBytes
        let serverRows = try connection.copyOut(sql) { (row) throws(TenureError) in
            buffer.append(contentsOf: row)
            rowsInFrame += 1
            rowBytesInFrame += Int64(row.count)
            rowsTotal += 1
            if buffer.count >= frameBytes { try flush() }
        }
        try flush()
        guard Int64(serverRows) == rowsTotal else {
            throw TenureError(.internal, "COPY of \(table.qualifiedName) reported \(serverRows) rows but \(rowsTotal) arrived; backup failed")
        }
    }

    func copyLargeObject(_ oid: UInt32, connection: PostgresConnection, compressor: FrameCompressor) throws(TenureError) {
        let chunkBytes = 1 << 20
        var offset: Int64 = 0
        var buffer: [UInt8] = []
        let native = options.format == .native
        func flush(force: Bool) throws(TenureError) {
            guard buffer.count >= options.frameBytes || (force && (!buffer.isEmpty || offset == 0)) else { return }
            let frame = try buffer.withBytes { (bytes) throws(TenureError) in try compressor.compress(bytes) }
            let part = nextPart(-Int64(oid) - 1)
            guard
                queue.push(
                    Segment(
                        name: ArchiveLayout.blobMember(oid: oid, part: part), kind: .blob, object: Int64(oid), part: part, rows: 0,
                        rawBytes: Int64(buffer.count), bytes: frame))
            else { throw failure.error ?? TenureError(.internal, "backup cancelled") }
            buffer.removeAll(keepingCapacity: true)
        }
        while true {
            let result = try connection.query("SELECT pg_catalog.lo_get($1::oid, $2::int8, $3::int4) AS data", [String(oid), String(offset), String(chunkBytes)])
            let bytes = decodeHexBytea(result[0, "data"] ?? "\\x")
            if native {
                buffer += bytes
            } else if !bytes.isEmpty {
                buffer += Array("SELECT pg_catalog.lo_put(\(oid), \(offset), '\(result[0, "data"]!)'::bytea);\n".utf8)
            }
            offset += Int64(bytes.count)
            progress.rawBytes.add(Int64(bytes.count), ordering: .relaxed)
            try flush(force: false)
            if bytes.count < chunkBytes { break }
        }
        try flush(force: true)
    }
}

/// `\x4142` → [0x41, 0x42] (anything else: no bytes).
func decodeHexBytea(_ text: String) -> [UInt8] {
    guard text.hasPrefix("\\x") else { return [] }
    return hexBytes(text.dropFirst(2)) ?? []
}

/// Where segments go: a tar archive, or a plain SQL zstd stream.
protocol SegmentWriter {
    func begin(header: ArchiveHeader, preData: String, tables: [TableEntry], sequences: String) throws(TenureError)
    func write(_ segment: Segment) throws(TenureError)
    func end(postData: String) throws(TenureError)
    var writtenBytes: Int64 { get }
    var memberCount: Int { get }
}

final class NativeWriter: SegmentWriter {
    let tar: TarWriter
    let sink: any ByteSink
    var entries: [ManifestEntry] = []
    var tableCount = 0
    let key: ArchiveKey?
    private(set) var writtenBytes: Int64 = 0

    init(sink: any ByteSink, createdAt: Date, level: Int32, key: ArchiveKey?) {
        self.sink = sink
        self.key = key
        tar = TarWriter(sink: sink, modificationTime: Int(createdAt.timeIntervalSince1970))
    }

    var memberCount: Int { entries.count }

    func writeSchemaMember(_ name: String, _ bytes: [UInt8], kind: String) throws(TenureError) {
        try tar.writeMember(name: name, bytes: bytes)
        let hash = bytes.withUnsafeBytes { XXH64.hash($0) }
        entries.append(
            ManifestEntry(
                name: name, kind: kind, object: nil, part: nil, rows: 0, compressedBytes: Int64(bytes.count), rawBytes: Int64(bytes.count),
                xxh64: XXH64.hex(hash)))
        writtenBytes += Int64(512 + (bytes.count + 511) / 512 * 512)
    }

    func begin(header: ArchiveHeader, preData: String, tables: [TableEntry], sequences: String) throws(TenureError) {
        tableCount = tables.count
        try writeSchemaMember(ArchiveLayout.header, encodeJSON(header), kind: "header")
        try writeSchemaMember(ArchiveLayout.preData, Array(preData.utf8), kind: "schema")
        try writeSchemaMember(ArchiveLayout.tables, encodeJSON(tables), kind: "tables")
        try writeSchemaMember(ArchiveLayout.sequences, Array(sequences.utf8), kind: "sequences")
    }

    func write(_ segment: Segment) throws(TenureError) {
        try tar.writeMember(name: segment.name, bytes: segment.bytes)
        let hash = segment.bytes.withUnsafeBytes { XXH64.hash($0) }
        entries.append(
            ManifestEntry(
                name: segment.name, kind: segment.kind.rawValue, object: segment.object, part: segment.part, rows: segment.rows,
                compressedBytes: Int64(segment.bytes.count), rawBytes: segment.rawBytes, xxh64: XXH64.hex(hash)))
        writtenBytes += Int64(512 + (segment.bytes.count + 511) / 512 * 512)
    }

    func end(postData: String) throws(TenureError) {
        try writeSchemaMember(ArchiveLayout.postData, Array(postData.utf8), kind: "schema")
        var manifest = Manifest(
            formatVersion: ArchiveLayout.formatVersion, members: entries, tableCount: tableCount,
            rowCount: entries.reduce(0) { $0 + $1.rows }, rawBytes: entries.filter { $0.kind == "data" || $0.kind == "blob" }.reduce(0) { $0 + $1.rawBytes },
            signature: nil)
        manifest.signature = key?.sign(manifest)
        let bytes = encodeJSON(manifest)
        try tar.writeMember(name: ArchiveLayout.manifest, bytes: bytes)
        try tar.writeEnd()
        writtenBytes += Int64(512 + (bytes.count + 511) / 512 * 512 + 1024)
    }
}

final class SQLWriter: SegmentWriter {
    let sink: any ByteSink
    let compressor: FrameCompressor
    let restrictKey: String?
    private(set) var writtenBytes: Int64 = 0
    private(set) var memberCount = 0

    init(sink: any ByteSink, level: Int32, restrictKey: String?) {
        self.sink = sink
        compressor = FrameCompressor(level: level)
        self.restrictKey = restrictKey
    }

    func writeText(_ text: String) throws(TenureError) {
        let bytes = Array(text.utf8)
        let frame = try bytes.withBytes { (buffer) throws(TenureError) in try compressor.compress(buffer) }
        try sink.write(frame)
        writtenBytes += Int64(frame.count)
    }

    func begin(header: ArchiveHeader, preData: String, tables: [TableEntry], sequences: String) throws(TenureError) {
        var text = "-- Tenure SQL export of database \(header.database.replacingOccurrences(of: "\n", with: " ")), taken \(header.createdAt)\n"
        text += "-- Restore into an empty database: zstd -dc FILE.sql.zst | psql -v ON_ERROR_STOP=1 -d DATABASE\n\n"
        text += preData
        text += "\n-- Data (Tenure)\n"
        if let restrictKey { text += "\\restrict \(restrictKey)\n" }
        text += sequences
        try writeText(text)
    }

    func write(_ segment: Segment) throws(TenureError) {
        try sink.write(segment.bytes)
        writtenBytes += Int64(segment.bytes.count)
        memberCount += 1
    }

    func end(postData: String) throws(TenureError) {
        var text = ""
        if let restrictKey { text += "\\unrestrict \(restrictKey)\n" }
        text += "\n" + postData
        try writeText(text)
    }
}
