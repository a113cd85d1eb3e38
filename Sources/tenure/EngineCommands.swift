import ArgumentParser
import Foundation
import TenureControl
import TenureCatalog
import TenureCore
import TenureEngine
import TenurePQ

extension BackupFormat: ExpressibleByArgument {}

/// Prints bytes, rows, rate and ETA to stderr once a second while `body` runs, when stderr
/// is a terminal (never into a pipe or a log).
func withProgress<T>(_ label: String, _ progress: TransferProgress, _ body: () throws(TenureError) -> T) throws(TenureError) -> T {
    guard isatty(2) == 1 else { return try body() }
    let done = Locked(false)
    let start = Date()
    let thread = Thread {
        while !done.withLock({ $0 }) {
            Thread.sleep(forTimeInterval: 1)
            if done.withLock({ $0 }) { break }
            let bytes = progress.rawBytes.load(ordering: .relaxed)
            let rows = progress.rows.load(ordering: .relaxed)
            let expected = progress.expectedBytes.load(ordering: .relaxed)
            let seconds = max(Date().timeIntervalSince(start), 0.001)
            let rate = Double(bytes) / seconds
            var line = "\r\(label): \(formatBytes(bytes)), \(rows) rows, \(formatBytes(Int64(rate)))/s"
            if expected > bytes, rate > 0 { line += ", ETA \(Int(Double(expected - bytes) / rate)) s" }
            FileHandle.standardError.write(Data((line + "    ").utf8))
        }
    }
    thread.start()
    defer {
        done.withLock { $0 = true }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
    return try body()
}


func formatBytes(_ count: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(count)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
}

func defaultJobs() -> Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }

func pgDump(_ configuration: TenureConfiguration) -> PgDump { PgDump(path: configuration.pgDumpPath) }

/// An archive argument: a file, or `-` for stdin.
func openInput(_ input: String) throws(TenureError) -> DescriptorSource {
    input == "-" ? DescriptorSource(descriptor: 0, what: "stdin") : try DescriptorSource(path: input)
}

/// An archive argument that may be a sealed file copied out of the backup store: its data key
/// comes from `--data-key-file`, or from the catalog (a destroyed key is `key.destroyed`).
func openArchiveInput(_ input: String, dataKeyFile: String?, options: GlobalOptions) async throws(TenureError) -> any ByteSource {
    let (header, rest) = try SealedFile.readHeader(try openInput(input))
    guard let header else { return rest }
    let key: [UInt8]
    if let dataKeyFile {
        key = try readDataKeyFile(dataKeyFile)
        guard SealedFile.fileKeyID(key) == header.keyID else {
            throw TenureError(.invalidRequest, "\(input) is sealed with data key \(printable(header.keyID)), not with the key in \(dataKeyFile)")
        }
    } else {
        let box = Handoff(header)
        key = try await Session.with(options) { (session) async throws(TenureError) in
            try await session.call { (controller) throws(TenureError) in try controller.openDataKey(id: box.value.keyID, owner: box.value.owner) }
        }
    }
    return SealedFile.opening(rest, header: header, dataKey: key)
}

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup", abstract: "Back up any PostgreSQL database (the URL names it) to a .tenure archive or a .sql.zst export.",
        discussion: """
            The output file is written under a temporary name and appears under its final name only when the backup is complete; \
            with -o - the stream goes to stdout (a failed backup then lacks its manifest, which verify and restore detect).
            """)
    @OptionGroup var options: GlobalOptions
    @Option(help: "Connection URL of the database to back up.") var url: String
    @Option(name: .shortAndLong, help: "Output file, or - for stdout.") var output: String
    @Option(help: "Parallel worker connections (default: the number of cores).") var jobs: Int?
    @Option(help: "native (.tenure archive) or sql (.sql.zst for psql).") var format: BackupFormat = .native
    @Option(help: "zstd compression level, 1–19.") var level: Int32 = BackupOptions.defaultLevel
    @Option(help: "Seal the output with the data key in this file (64 hex digits), as the backup store's files are sealed.") var dataKeyFile: String?

    func run() async {
        await runCommand(json: options.json) { (output) async throws(TenureError) in
            let configuration = try options.configuration()
            let jobs = jobs ?? defaultJobs()
            guard (1...64).contains(jobs) else { throw TenureError(.invalidRequest, "--jobs must be from 1 to 64") }
            guard (1...19).contains(level) else { throw TenureError(.invalidRequest, "--level must be from 1 to 19") }
            let source = try ConnectionParameters(parsing: url, setting: "--url")
            var sink: any ByteSink = self.output == "-" ? DescriptorSink(descriptor: 1, what: "stdout") : try AtomicFileSink(path: self.output)
            if self.output == "-" && isatty(1) == 1 { throw TenureError(.invalidRequest, "refusing to write a backup to a terminal; redirect stdout") }
            if let dataKeyFile {
                let key = try readDataKeyFile(dataKeyFile)
                sink = SealingSink(sink, dataKey: key, keyID: SealedFile.fileKeyID(key), owner: "file")
            }
            var backupOptions = BackupOptions(source: source, jobs: jobs, level: level, format: format, pgDump: pgDump(configuration), createdAt: Date())
            backupOptions.signingKey = try ArchiveKey.load(home: configuration.home, create: true)
            let progress = TransferProgress()
            let start = Date()
            let summary = try withProgress("backup", progress) { () throws(TenureError) in try runBackup(backupOptions, sink: sink, progress: progress) }
            let seconds = Date().timeIntervalSince(start)
            let document: [String: Any] = [
                "output": self.output, "format": format.rawValue, "tables": summary.tableCount, "rows": summary.rowCount, "raw_bytes": summary.rawBytes,
                "written_bytes": summary.writtenBytes, "members": summary.memberCount, "sequences": summary.sequenceCount,
                "large_objects": summary.largeObjectCount, "seconds": (seconds * 1000).rounded() / 1000,
            ]
            // With -o -, stdout is the archive: the summary goes to stderr.
            if self.output == "-" {
                FileHandle.standardError.write(Data("backup: \(summary.tableCount) tables, \(summary.rowCount) rows, \(formatBytes(summary.writtenBytes)) in \(String(format: "%.1f", seconds)) s\n".utf8))
            } else {
                output.emit(json: document) {
                    "backed up \(summary.tableCount) tables, \(summary.rowCount) rows (\(formatBytes(summary.rawBytes)) raw) to \(self.output): \(formatBytes(summary.writtenBytes)) in \(String(format: "%.1f", seconds)) s"
                }
            }
        }
    }
}

struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore", abstract: "Restore a .tenure archive into a new database (the URL names it; it must not exist yet).",
        discussion: "All or nothing: the data goes into a temporary database that is renamed into place only after every part checked out.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "Archive file, or - for stdin.") var input: String
    @Option(help: "Connection URL naming the database to create.") var url: String
    @Option(help: "Parallel loader connections (default: the number of cores).") var jobs: Int?
    @Option(help: "The data key (64 hex digits) a sealed archive was sealed with; without it a sealed archive's key comes from the catalog.") var dataKeyFile: String?

    func run() async {
        await runCommand(json: options.json) { (output) async throws(TenureError) in
            let jobs = jobs ?? defaultJobs()
            guard (1...64).contains(jobs) else { throw TenureError(.invalidRequest, "--jobs must be from 1 to 64") }
            let target = try ConnectionParameters(parsing: url, setting: "--url")
            let source = try await openArchiveInput(input, dataKeyFile: dataKeyFile, options: options)
            var restoreOptions = RestoreOptions(target: target, jobs: jobs)
            // A copy of any database, privileges as archived (as pg_restore restores them).
            restoreOptions.reassertPublicSchemaRule = false
            restoreOptions.limits = try EngineLimits.fromEnvironment()
            restoreOptions.key = try ArchiveKey.load(home: try options.configuration().home, create: false)
            let progress = TransferProgress()
            let start = Date()
            let summary = try withProgress("restore", progress) { () throws(TenureError) in
                try runRestore(source: source, options: restoreOptions, progress: progress)
            }
            let seconds = Date().timeIntervalSince(start)
            output.emit(json: [
                "database": summary.database, "tables": summary.tableCount, "rows": summary.rowCount, "members": summary.memberCount,
                "seconds": (seconds * 1000).rounded() / 1000,
            ]) { "restored \(summary.tableCount) tables, \(summary.rowCount) rows into database \(summary.database) in \(String(format: "%.1f", seconds)) s" }
        }
    }
}

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Check a .tenure archive completely without a database: frames, rows, order, manifest, end marker.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "Archive file, or - for stdin.") var input: String
    @Option(help: "The data key (64 hex digits) a sealed archive was sealed with; without it a sealed archive's key comes from the catalog.") var dataKeyFile: String?

    func run() async {
        await runCommand(json: options.json) { (output) async throws(TenureError) in
            let source = try await openArchiveInput(input, dataKeyFile: dataKeyFile, options: options)
            let key = try ArchiveKey.load(home: try options.configuration().home, create: false)
            let progress = TransferProgress()
            let summary = try withProgress("verify", progress) { () throws(TenureError) in try runVerify(source: source, limits: try EngineLimits.fromEnvironment(), key: key, progress: progress) }
            let signature: String
            switch summary.signature {
            case .valid: signature = "signature valid"
            case .unsigned: signature = "unsigned"
            case .unknownKey: signature = "signed with a key this installation does not have (checksums only)"
            }
            output.emit(json: [
                "ok": true, "members": summary.memberCount, "tables": summary.tableCount, "rows": summary.rowCount, "raw_bytes": summary.rawBytes,
                "created_at": summary.header.createdAt, "database": summary.header.database, "server_version": summary.header.serverVersion,
                "signature": summary.signature.rawValue,
            ]) { "archive OK: \(summary.memberCount) members, \(summary.tableCount) tables, \(summary.rowCount) rows, \(formatBytes(summary.rawBytes)) of data; \(signature)" }
        }
    }
}


extension DatabaseCommand {
    struct Backup: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "backup", abstract: "Back a database up into the backup store (verified, then published and recorded as bk_…).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let job = try await session.call { (controller) throws(TenureError) in try controller.requestBackup(id) }
                    let result = try await session.runJob(job, json: options.json)
                    let backup = result["backup"] as? [String: Any] ?? [:]
                    let backupID = try BackupID(parsing: backup["id"] as? String ?? "")
                    let record = try await session.call { (controller) throws(TenureError) in try controller.backup(backupID) }
                    var document = backupDocument(record, store: session.configuration.backupStore.description)
                    if let warning = backup["warning"] as? String {
                        document["warning"] = warning
                        FileHandle.standardError.write(Data("tenure: warning: \(warning)\n".utf8))
                    }
                    output.emit(json: document) {
                        "backup \(record.id) of \(id) verified: \(formatBytes(record.byteCount ?? 0)), \(record.rowCount ?? 0) rows"
                    }
                }
            }
        }
    }

    struct Backups: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "backups", abstract: "List a database's backups (only verified ones count).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let backups = try await session.call { (controller) throws(TenureError) in try controller.backups(of: id) }
                    output.emit(json: ["backups": backups.map { backupDocument($0, store: session.configuration.backupStore.description) }]) {
                        table(
                            ["ID", "STATE", "STARTED", "BYTES", "ROWS"],
                            backups.map { [$0.id.rawValue, $0.state.rawValue, RFC3339.format($0.startedAt), $0.byteCount.map(String.init) ?? "-", $0.rowCount.map(String.init) ?? "-"] })
                    }
                }
            }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "export", abstract: "Stream a fresh backup of a database to a file or stdout (nothing is stored).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        @Option(name: .shortAndLong, help: "Output file, or - for stdout.") var output: String
        @Option(help: "native (.tenure) or sql (.sql.zst).") var format: BackupFormat = .native

        func run() async {
            await runCommand(json: options.json) { (printer) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                if output == "-" && isatty(1) == 1 { throw TenureError(.invalidRequest, "refusing to write an export to a terminal; redirect stdout") }
                try await Session.with(options) { (session) async throws(TenureError) in
                    let summary = try await session.serverWork { (controller) throws(TenureError) in
                        let sink: any ByteSink = output == "-" ? DescriptorSink(descriptor: 1, what: "stdout") : try AtomicFileSink(path: output)
                        return try controller.exportDatabase(id, format: format, sink: sink)
                    }
                    if output == "-" {
                        FileHandle.standardError.write(Data("export: \(summary.tableCount) tables, \(summary.rowCount) rows\n".utf8))
                    } else {
                        printer.emit(json: ["id": id.rawValue, "output": output, "format": format.rawValue, "tables": summary.tableCount, "rows": summary.rowCount]) {
                            "exported \(id) to \(output): \(summary.tableCount) tables, \(summary.rowCount) rows"
                        }
                    }
                }
            }
        }
    }

    struct RestoreBackup: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "restore",
            abstract: "Replace a database's contents with one of its verified backups (the old contents stay until the new are complete).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        @Option(help: "Backup id (bk_…) of this database.") var backup: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                let backupID = try BackupID(parsing: backup)
                try await Session.with(options) { (session) async throws(TenureError) in
                    _ = try await session.runJob(try await session.call { (controller) throws(TenureError) in try controller.requestRestore(id, backupID: backupID) }, json: options.json)
                    let record = try await session.call { (controller) throws(TenureError) in try controller.database(id) }
                    var document = databaseDocument(record)
                    document["backup_id"] = backupID.rawValue
                    output.emit(json: document) { "restored \(id) (\(record.name)) from \(backupID)" }
                }
            }
        }
    }
}
