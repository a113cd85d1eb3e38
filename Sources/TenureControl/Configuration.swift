import Foundation
import TenureCore
import TenureEngine

/// Tenure's configuration: defaults, then an optional file, then `TENURE_*` environment
/// variables (then command-line flags, applied by the CLI). No secret is ever printed: the
/// catalog URL is shown redacted.
public struct TenureConfiguration: Sendable {
    /// Where Tenure keeps its state (`./var` by default): the embedded cluster's location
    /// marker, lock files and, later, the backup store.
    public var home: String
    /// The catalog's PostgreSQL URL; nil means the embedded cluster under `home`.
    public var catalogURL: String?
    public var policy: LifecyclePolicy
    public var sweepLimits: SweepLimits
    /// How often `tenure serve` runs the expiry sweep.
    public var sweepInterval: Duration
    /// PostgreSQL server programs for the embedded cluster.
    public var postgresBinDirectory: String
    public var logLevel: String
    /// Where managed backups live when the store is a local directory (`$TENURE_HOME/backups`).
    public var backupDirectory: String
    /// The backup store: `TENURE_BACKUP_STORE` (a directory or `rclone:REMOTE:PATH`), else
    /// the directory `TENURE_BACKUP_DIR`.
    public var backupStore: BackupStoreLocation
    /// Parallel connections for managed backups and restores.
    public var engineJobs: Int
    /// The pg_dump used for schema sections (TENURE_PG_DUMP, else the one beside the server).
    public var pgDumpPath: String
    /// The HTTP API (`tenure serve`).
    public var http: HTTPSettings
    /// The upgrade service: limits on uploads, the hold, the scripts, where results live.
    public var uploadLimits: UploadLimits
    public var upgradeHold: UploadHold
    public var upgradeScriptsDirectory: String
    public var uploadDirectory: String
    /// The pg_restore that turns uploaded custom-format archives into SQL (it connects nowhere).
    public var pgRestorePath: String
    /// `TENURE_EXTENSIONS`: extensions Tenure creates for uploads (and hosted databases).
    public var extensions = ExtensionAllowlist()
    /// Durable jobs: leases, retries, retention, this replica's name.
    public var jobs: JobSettings
    /// Deadlines of sessions to tenant servers.
    public var serverDeadlines = ServerDeadlines()
    /// Scheduled backups, retention and restore drills.
    public var backupPolicy = BackupPolicySettings()
    /// The owner role's connection limit per plan (`TENURE_PLAN_CONNECTION_LIMITS`), set at
    /// create and subscribe.
    public var planConnectionLimits: [Plan: Int] = [.trial: 5, .paid: 50]
    /// Moves off one server running at once (`tenure server drain --move`).
    public var moveConcurrencyPerServer = 1
    /// The scripts a duplicate with `neutralize` runs on the copy (`*.sql`, name order).
    public var neutralizeScriptsDirectory = "sql/neutralize"
    /// The key-encryption key of every data key (`Keys.swift`); created 0600 at first start.
    public var masterKeyFile: String
    /// The Ed25519 key deletion certificates are signed with; created 0600 at first start.
    public var signingKeyFile: String

    /// Every setting the file and the environment accept, with its documented default.
    public static let settings: [(key: String, defaultValue: String, help: String)] = [
        ("TENURE_HOME", "./var", "state directory: embedded cluster marker, locks, backups"),
        ("TENURE_CATALOG_URL", "(embedded)", "PostgreSQL URL of the catalog; unset = start the embedded cluster"),
        ("TENURE_TRIAL_PERIOD", "15d", "length of a trial"),
        ("TENURE_GRACE_PERIOD", "21d", "time from deactivation to destruction (21d = 1,814,400 s)"),
        ("TENURE_MAX_DESTROY_FRACTION", "0.10", "a sweep destroying more than this share of the live fleet destroys nothing"),
        ("TENURE_MAX_DESTROY_COUNT", "50", "a sweep destroying more than this many databases destroys nothing"),
        ("TENURE_MAX_CLOCK_SKEW", "5m", "a sweep refuses to act if this clock and the catalog server's differ by more"),
        ("TENURE_SWEEP_INTERVAL", "1m", "how often `tenure serve` runs the expiry sweep"),
        ("TENURE_PG_BIN", EmbeddedDefaults.postgresBinDirectory, "PostgreSQL 15 server programs for the embedded cluster"),
        ("TENURE_LOG_LEVEL", "info", "trace, debug, info, notice, warning, error or critical"),
        ("TENURE_BACKUP_STORE", "$TENURE_HOME/backups", "the backup store: a directory, or rclone:REMOTE:PATH for any object store rclone reaches (S3, GCS, Azure, SFTP, ...)"),
        ("TENURE_BACKUP_DIR", "$TENURE_HOME/backups", "the backup store's directory (an older name; TENURE_BACKUP_STORE wins)"),
        ("TENURE_JOBS", "(cores)", "parallel connections for managed backups and restores"),
        ("TENURE_PG_DUMP", "$TENURE_PG_BIN/pg_dump", "the pg_dump used for schema sections"),
        ("TENURE_CONFIG", "$TENURE_HOME/tenure.conf", "optional configuration file of KEY=value lines"),
        ("TENURE_HTTP_ADDRESS", "127.0.0.1:8080", "where `tenure serve` listens (HOST:PORT)"),
        ("TENURE_HTTP_MAX_BODY", "1048576", "largest JSON request body, in bytes (413 above)"),
        ("TENURE_HTTP_MAX_TRANSFERS", "2", "exports and backup/restore jobs running at once (429 with Retry-After above)"),
        ("TENURE_HTTP_MAX_QUEUED_JOBS", "16", "jobs waiting to run (429 above)"),
        ("TENURE_HTTP_REQUEST_TIMEOUT", "30s", "statement timeout of the API's catalog sessions: the longest a catalog query of a request may run"),
        ("TENURE_HTTP_CATALOG_CONNECTIONS", "4", "catalog sessions (and threads) serving API requests"),
        ("TENURE_UPGRADE_HOLD", "4mo", "how long an upload's result is kept after its last successful upgrade (calendar months in UTC, clamped to the month's end; or a duration such as 30d)"),
        ("TENURE_UPGRADE_SCRIPTS", "sql/upgrade", "directory of upgrade scripts (*.sql, applied in name order, each in its own transaction)"),
        ("TENURE_UPLOAD_DIR", "$TENURE_HOME/uploads", "where downloadable upgrade results are kept"),
        ("TENURE_UPLOAD_MAX_BYTES", "10737418240", "largest upload, in bytes as sent"),
        ("TENURE_UPLOAD_MAX_DECOMPRESSED_BYTES", "53687091200", "most bytes an upload may decompress to"),
        ("TENURE_UPLOAD_MAX_RATIO", "100", "most an upload may expand when decompressed (checked past 16 MiB)"),
        ("TENURE_UPLOAD_STATEMENT_TIMEOUT", "15m", "longest one statement of an upload or upgrade script may run (COPY data excepted)"),
        ("TENURE_UPLOAD_MAX_OBJECTS", "100000", "most objects (tables, functions, ...) an upload may create"),
        ("TENURE_EXTENSIONS", "", "extensions Tenure creates on a customer's behalf (comma-separated; trusted extensions need no listing)"),
        ("TENURE_UPLOAD_MAX_STATEMENT_BYTES", "268435456", "longest one statement of an upload or upgrade script may be, in bytes (held whole so the policy judges all of it)"),
        ("TENURE_PG_RESTORE", "$TENURE_PG_BIN/pg_restore", "the pg_restore that converts uploaded custom-format archives to SQL"),
        ("TENURE_JOB_LEASE", "30s", "a job's lease: renewed while it runs; a job whose lease expired is taken over by any replica"),
        ("TENURE_JOB_MAX_ATTEMPTS", "3", "attempts of a job that fails transiently or whose process dies"),
        ("TENURE_JOB_BACKOFF", "10s", "wait before a job's second attempt (doubled for each further one, at most 5m)"),
        ("TENURE_JOB_RETENTION", "30d", "how long finished jobs are kept"),
        ("TENURE_EXPORT_WAIT", "30s", "how long an export over HTTP waits for the database's running job (409 after)"),
        ("TENURE_BACKUP_INTERVAL", "24h", "every live database is backed up this often, at a slot spread over the interval by its id (`off`: no schedule)"),
        ("TENURE_BACKUP_CONCURRENCY_PER_SERVER", "1", "backups and drills running at once on one tenant server"),
        ("TENURE_BACKUP_MAX_AGE", "26h", "a database whose newest verified backup is older than this is stale"),
        ("TENURE_BACKUP_KEEP_LAST", "1", "newest verified backups kept per database"),
        ("TENURE_BACKUP_KEEP_DAILY", "7", "UTC days whose newest verified backup is kept"),
        ("TENURE_BACKUP_KEEP_WEEKLY", "4", "ISO weeks whose newest verified backup is kept"),
        ("TENURE_BACKUP_KEEP_MONTHLY", "3", "months whose newest verified backup is kept"),
        ("TENURE_DRILL_INTERVAL", "24h", "how often restore drills are picked (`off`: none scheduled)"),
        ("TENURE_DRILL_COUNT", "1", "backups drilled at least each drill interval"),
        ("TENURE_DRILL_MAX_AGE", "30d", "every live database's newest backup is drilled within this"),
        ("TENURE_DRILL_SERVER", "default", "the tenant server drills restore onto (into a scratch database)"),
        ("TENURE_REPLICA_ID", "(host:pid)", "this process's name in job leases and /readyz"),
        ("TENURE_SERVER_CONNECT_TIMEOUT", "10s", "longest wait to connect to a tenant server"),
        ("TENURE_SERVER_STATEMENT_TIMEOUT", "60s", "longest a control statement on a tenant server may run (the client gives up 15 s later)"),
        ("TENURE_SERVER_LOCK_TIMEOUT", "10s", "longest a control statement on a tenant server waits for a lock"),
        ("TENURE_MOVE_CONCURRENCY_PER_SERVER", "1", "moves off one tenant server running at once (a drain with --move queues one per database)"),
        ("TENURE_NEUTRALIZE_SCRIPTS", "sql/neutralize", "scripts a duplicate with neutralize runs on the copy before it is reachable (*.sql, name order, each in its own transaction, as the copy's owner)"),
        ("TENURE_PLAN_CONNECTION_LIMITS", "trial=5,paid=50", "the owner role's connection limit per plan, set at create and subscribe (-1: none)"),
        ("TENURE_MASTER_KEY_FILE", "$TENURE_HOME/master.key", "the master key that wraps every database's and upload's data key (created at first start; Tenure refuses to start without the one the catalog's keys need)"),
        ("TENURE_SIGNING_KEY_FILE", "$TENURE_HOME/signing.key", "the Ed25519 key deletion certificates are signed with (created at first start)"),
        ("TENURE_SERVER_STALL_PROBE", "30s", "a backup, restore or upgrade that made no progress this long checks that its server still answers (stopped if not)"),
    ]

    public static func load(environment: [String: String] = ProcessInfo.processInfo.environment) throws(TenureError) -> TenureConfiguration {
        var values: [String: String] = [:]
        let home = environment["TENURE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "./var"
        let configPath = environment["TENURE_CONFIG"] ?? (home + "/tenure.conf")
        if FileManager.default.fileExists(atPath: configPath) {
            values = try parseFile(configPath)
        } else if environment["TENURE_CONFIG"] != nil {
            throw TenureError(.invalidConfiguration, "TENURE_CONFIG names \(configPath), which does not exist")
        }
        for (key, value) in environment where key.hasPrefix("TENURE_") { values[key] = value }
        return try TenureConfiguration(values: values, home: values["TENURE_HOME"] ?? home)
    }

    init(values: [String: String], home: String) throws(TenureError) {
        self.home = home
        catalogURL = values["TENURE_CATALOG_URL"].flatMap { $0.isEmpty ? nil : $0 }
        policy = LifecyclePolicy(
            trialPeriod: try values["TENURE_TRIAL_PERIOD"].map { (text) throws(TenureError) in try PolicyDuration.parse(text, setting: "TENURE_TRIAL_PERIOD") }
                ?? LifecyclePolicy.defaultTrialPeriod,
            gracePeriod: try values["TENURE_GRACE_PERIOD"].map { (text) throws(TenureError) in try PolicyDuration.parse(text, setting: "TENURE_GRACE_PERIOD") }
                ?? LifecyclePolicy.defaultGracePeriod)
        var limits = SweepLimits()
        if let text = values["TENURE_MAX_DESTROY_FRACTION"] {
            guard let value = Double(text), value >= 0, value <= 1 else {
                throw TenureError(.invalidConfiguration, "TENURE_MAX_DESTROY_FRACTION='\(printable(text))' must be a number from 0 to 1, such as 0.10")
            }
            limits.maximumDestroyFraction = value
        }
        if let text = values["TENURE_MAX_DESTROY_COUNT"] {
            guard let value = Int(text), value >= 0 else {
                throw TenureError(.invalidConfiguration, "TENURE_MAX_DESTROY_COUNT='\(printable(text))' must be a whole number of 0 or more")
            }
            limits.maximumDestroyCount = value
        }
        if let text = values["TENURE_MAX_CLOCK_SKEW"] {
            limits.maximumClockSkew = try PolicyDuration.parse(text, setting: "TENURE_MAX_CLOCK_SKEW")
        }
        sweepLimits = limits
        sweepInterval = try values["TENURE_SWEEP_INTERVAL"].map { (text) throws(TenureError) in try PolicyDuration.parse(text, setting: "TENURE_SWEEP_INTERVAL") } ?? .seconds(60)
        postgresBinDirectory = values["TENURE_PG_BIN"] ?? EmbeddedDefaults.postgresBinDirectory
        logLevel = values["TENURE_LOG_LEVEL"] ?? "info"
        pgDumpPath = values["TENURE_PG_DUMP"].flatMap { $0.isEmpty ? nil : $0 } ?? (postgresBinDirectory + "/pg_dump")
        backupDirectory = values["TENURE_BACKUP_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? (home + "/backups")
        if let text = values["TENURE_BACKUP_STORE"], !text.isEmpty {
            backupStore = try BackupStoreLocation.parse(text, setting: "TENURE_BACKUP_STORE")
            if case .directory(let path) = backupStore { backupDirectory = path }
        } else {
            backupStore = .directory(backupDirectory)
        }
        let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
        if let text = values["TENURE_JOBS"] {
            guard let jobs = Int(text), (1...64).contains(jobs) else {
                throw TenureError(.invalidConfiguration, "TENURE_JOBS='\(printable(text))' must be a whole number from 1 to 64")
            }
            engineJobs = jobs
        } else {
            engineJobs = cores
        }
        http = try HTTPSettings(values: values)
        var upload = UploadLimits()
        func number(_ key: String, _ range: ClosedRange<Int64>) throws(TenureError) -> Int64? {
            guard let text = values[key] else { return nil }
            guard let value = Int64(text), range.contains(value) else {
                throw TenureError(.invalidConfiguration, "\(key)='\(printable(text))' must be a whole number from \(range.lowerBound) to \(range.upperBound)")
            }
            return value
        }
        upload.maximumBytes = try number("TENURE_UPLOAD_MAX_BYTES", 1...(1 << 50)) ?? upload.maximumBytes
        upload.maximumDecompressedBytes = try number("TENURE_UPLOAD_MAX_DECOMPRESSED_BYTES", 1...(1 << 52)) ?? upload.maximumDecompressedBytes
        upload.maximumRatio = Double(try number("TENURE_UPLOAD_MAX_RATIO", 1...1_000_000) ?? Int64(upload.maximumRatio))
        upload.maximumObjects = Int(try number("TENURE_UPLOAD_MAX_OBJECTS", 1...100_000_000) ?? Int64(upload.maximumObjects))
        upload.maximumStatementBytes = Int(
            try number("TENURE_UPLOAD_MAX_STATEMENT_BYTES", 1024...(4 << 30)) ?? Int64(upload.maximumStatementBytes))
        if let text = values["TENURE_UPLOAD_STATEMENT_TIMEOUT"] {
            upload.statementTimeout = try PolicyDuration.parse(text, setting: "TENURE_UPLOAD_STATEMENT_TIMEOUT")
        }
        uploadLimits = upload
        upgradeHold = try values["TENURE_UPGRADE_HOLD"].map { (text) throws(TenureError) in try UploadHold.parse(text) } ?? .default
        upgradeScriptsDirectory = values["TENURE_UPGRADE_SCRIPTS"].flatMap { $0.isEmpty ? nil : $0 } ?? "sql/upgrade"
        uploadDirectory = values["TENURE_UPLOAD_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? (home + "/uploads")
        pgRestorePath = values["TENURE_PG_RESTORE"].flatMap { $0.isEmpty ? nil : $0 } ?? (postgresBinDirectory + "/pg_restore")
        extensions = try ExtensionAllowlist.parse(values["TENURE_EXTENSIONS"] ?? "")
        jobs = try JobSettings(values: values)
        for (key, path) in [
            ("TENURE_SERVER_CONNECT_TIMEOUT", \ServerDeadlines.connect), ("TENURE_SERVER_STATEMENT_TIMEOUT", \ServerDeadlines.statement),
            ("TENURE_SERVER_LOCK_TIMEOUT", \ServerDeadlines.lock), ("TENURE_SERVER_STALL_PROBE", \ServerDeadlines.stallProbe),
        ] {
            guard let text = values[key] else { continue }
            let value = try PolicyDuration.parse(text, setting: key)
            guard value >= .seconds(1) else { throw TenureError(.invalidConfiguration, "\(key) must be at least 1s") }
            serverDeadlines[keyPath: path] = value
        }
        backupPolicy = try BackupPolicySettings(values: values)
        if let text = values["TENURE_PLAN_CONNECTION_LIMITS"] {
            for pair in text.split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2, let plan = Plan(rawValue: parts[0]), let limit = Int(parts[1]), (-1...100_000).contains(limit) else {
                    throw TenureError(
                        .invalidConfiguration,
                        "TENURE_PLAN_CONNECTION_LIMITS='\(printable(text))' must be PLAN=N pairs separated by commas (plans trial and paid; N from -1, no limit, to 100000), such as trial=5,paid=50")
                }
                planConnectionLimits[plan] = limit
            }
        }
        if let text = values["TENURE_MOVE_CONCURRENCY_PER_SERVER"] {
            guard let value = Int(text), (1...64).contains(value) else {
                throw TenureError(.invalidConfiguration, "TENURE_MOVE_CONCURRENCY_PER_SERVER='\(printable(text))' must be a whole number from 1 to 64")
            }
            moveConcurrencyPerServer = value
        }
        neutralizeScriptsDirectory = values["TENURE_NEUTRALIZE_SCRIPTS"].flatMap { $0.isEmpty ? nil : $0 } ?? "sql/neutralize"
        masterKeyFile = values["TENURE_MASTER_KEY_FILE"].flatMap { $0.isEmpty ? nil : $0 } ?? (home + "/master.key")
        signingKeyFile = values["TENURE_SIGNING_KEY_FILE"].flatMap { $0.isEmpty ? nil : $0 } ?? (home + "/signing.key")
        let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
        guard levels.contains(logLevel) else {
            throw TenureError(.invalidConfiguration, "TENURE_LOG_LEVEL='\(printable(logLevel))' must be one of \(levels.joined(separator: ", "))")
        }
    }

    /// `KEY=value` lines; `#` starts a comment; unknown keys are refused (a typo must not
    /// silently fall back to a default that destroys data sooner).
    static func parseFile(_ path: String) throws(TenureError) -> [String: String] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw TenureError(.invalidConfiguration, "cannot read configuration file \(path): \(error.localizedDescription)")
        }
        let known = Set(settings.map(\.key))
        var values: [String: String] = [:]
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let equals = line.firstIndex(of: "=") else {
                throw TenureError(.invalidConfiguration, "\(path):\(number + 1): expected KEY=value")
            }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            guard known.contains(key) else {
                throw TenureError(.invalidConfiguration, "\(path):\(number + 1): unknown setting '\(printable(key))'; known: \(known.sorted().joined(separator: ", "))")
            }
            values[key] = value
        }
        return values
    }
}

/// Settings of the HTTP API, with their documented defaults.
public struct HTTPSettings: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var maximumBodyByteCount = 1 << 20
    public var maximumTransfers = 2
    public var maximumQueuedJobs = 16
    public var requestTimeout: Duration = .seconds(30)
    public var catalogConnections = 4

    init(values: [String: String]) throws(TenureError) {
        if let text = values["TENURE_HTTP_ADDRESS"] {
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port),
                colon != text.startIndex
            else {
                throw TenureError(.invalidConfiguration, "TENURE_HTTP_ADDRESS='\(printable(text))' must be HOST:PORT, such as 127.0.0.1:8080")
            }
            host = String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
            self.port = port
        }
        func integer(_ key: String, _ range: ClosedRange<Int>) throws(TenureError) -> Int? {
            guard let text = values[key] else { return nil }
            guard let value = Int(text), range.contains(value) else {
                throw TenureError(.invalidConfiguration, "\(key)='\(printable(text))' must be a whole number from \(range.lowerBound) to \(range.upperBound)")
            }
            return value
        }
        maximumBodyByteCount = try integer("TENURE_HTTP_MAX_BODY", 1024...(1 << 30)) ?? maximumBodyByteCount
        maximumTransfers = try integer("TENURE_HTTP_MAX_TRANSFERS", 1...64) ?? maximumTransfers
        maximumQueuedJobs = try integer("TENURE_HTTP_MAX_QUEUED_JOBS", 0...10_000) ?? maximumQueuedJobs
        catalogConnections = try integer("TENURE_HTTP_CATALOG_CONNECTIONS", 1...64) ?? catalogConnections
        if let text = values["TENURE_HTTP_REQUEST_TIMEOUT"] {
            requestTimeout = try PolicyDuration.parse(text, setting: "TENURE_HTTP_REQUEST_TIMEOUT")
        }
    }
}

/// Deadlines of sessions to tenant servers, with their documented defaults.
public struct ServerDeadlines: Sendable {
    public var connect: Duration = .seconds(10)
    public var statement: Duration = .seconds(60)
    public var lock: Duration = .seconds(10)
    /// How long a data operation may go without progress before its server is asked whether
    /// it still answers.
    public var stallProbe: Duration = .seconds(30)
}

/// The backup policy's settings, with their documented defaults.
public struct BackupPolicySettings: Sendable {
    /// Nil: no scheduled backups (`TENURE_BACKUP_INTERVAL=off`).
    public var interval: Duration? = .seconds(86_400)
    public var concurrencyPerServer = 1
    public var maxAge: Duration = .seconds(26 * 3600)
    public var retention = RetentionPolicy()
    /// Nil: no scheduled drills.
    public var drillInterval: Duration? = .seconds(86_400)
    public var drillCount = 1
    public var drillMaxAge: Duration = .seconds(30 * 86_400)
    public var drillServer = "default"

    public init() {}

    init(values: [String: String]) throws(TenureError) {
        func duration(_ key: String, off: Bool) throws(TenureError) -> Duration?? {
            guard let text = values[key] else { return .none }
            if off && text == "off" { return .some(nil) }
            let value = try PolicyDuration.parse(text, setting: key)
            guard value >= .seconds(1) else { throw TenureError(.invalidConfiguration, "\(key) must be at least 1s\(off ? " (or off)" : "")") }
            return .some(value)
        }
        func count(_ key: String, _ range: ClosedRange<Int>) throws(TenureError) -> Int? {
            guard let text = values[key] else { return nil }
            guard let value = Int(text), range.contains(value) else {
                throw TenureError(.invalidConfiguration, "\(key)='\(printable(text))' must be a whole number from \(range.lowerBound) to \(range.upperBound)")
            }
            return value
        }
        if let value = try duration("TENURE_BACKUP_INTERVAL", off: true) { interval = value }
        if let value = try duration("TENURE_BACKUP_MAX_AGE", off: false) { maxAge = value ?? maxAge }
        if let value = try duration("TENURE_DRILL_INTERVAL", off: true) { drillInterval = value }
        if let value = try duration("TENURE_DRILL_MAX_AGE", off: false) { drillMaxAge = value ?? drillMaxAge }
        concurrencyPerServer = try count("TENURE_BACKUP_CONCURRENCY_PER_SERVER", 1...64) ?? concurrencyPerServer
        drillCount = try count("TENURE_DRILL_COUNT", 0...10_000) ?? drillCount
        retention = RetentionPolicy(
            keepLast: try count("TENURE_BACKUP_KEEP_LAST", 1...10_000) ?? retention.keepLast,
            keepDaily: try count("TENURE_BACKUP_KEEP_DAILY", 0...10_000) ?? retention.keepDaily,
            keepWeekly: try count("TENURE_BACKUP_KEEP_WEEKLY", 0...10_000) ?? retention.keepWeekly,
            keepMonthly: try count("TENURE_BACKUP_KEEP_MONTHLY", 0...10_000) ?? retention.keepMonthly)
        if let text = values["TENURE_DRILL_SERVER"] {
            guard (try? ServerName(validating: text)) != nil else {
                throw TenureError(.invalidConfiguration, "TENURE_DRILL_SERVER='\(printable(text))' is not a server name")
            }
            drillServer = text
        }
    }

    /// The schedule's pure rules (an interval of a day when scheduling is off, for status).
    public var schedule: BackupSchedule { BackupSchedule(interval: interval ?? .seconds(86_400), maxAge: maxAge) }
}

/// Settings of durable jobs, with their documented defaults.
public struct JobSettings: Sendable {
    public var lease: Duration = .seconds(30)
    public var retry = JobRetryPolicy()
    public var retention: Duration = .seconds(30 * 86_400)
    public var exportWait: Duration = .seconds(30)
    /// The lease owner this process writes: unique per process.
    public var replicaID: String

    init(values: [String: String]) throws(TenureError) {
        func duration(_ key: String) throws(TenureError) -> Duration? {
            try values[key].map { (text) throws(TenureError) in try PolicyDuration.parse(text, setting: key) }
        }
        lease = try duration("TENURE_JOB_LEASE") ?? lease
        guard lease >= .seconds(2) else { throw TenureError(.invalidConfiguration, "TENURE_JOB_LEASE must be at least 2s") }
        if let text = values["TENURE_JOB_MAX_ATTEMPTS"] {
            guard let value = Int(text), (1...100).contains(value) else {
                throw TenureError(.invalidConfiguration, "TENURE_JOB_MAX_ATTEMPTS='\(printable(text))' must be a whole number from 1 to 100")
            }
            retry.maxAttempts = value
        }
        retry.baseDelay = try duration("TENURE_JOB_BACKOFF") ?? retry.baseDelay
        retention = try duration("TENURE_JOB_RETENTION") ?? retention
        exportWait = try duration("TENURE_EXPORT_WAIT") ?? exportWait
        let host = ProcessInfo.processInfo.hostName
        let given = values["TENURE_REPLICA_ID"].flatMap { $0.isEmpty ? nil : $0 }
        if let given, !(given.utf8.count <= 100 && given.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F })) {
            throw TenureError(.invalidConfiguration, "TENURE_REPLICA_ID='\(printable(given))' must be 1 to 100 printable ASCII characters without spaces")
        }
        // The process id keeps two replicas started with one name apart.
        replicaID = (given ?? String(host.prefix(60))) + ":" + String(getpid())
    }
}

public enum EmbeddedDefaults {
    public static let postgresBinDirectory = "/usr/lib/postgresql/15/bin"
    public static let catalogDatabase = "tenure"
}

/// Named crash points. With `TENURE_FAILPOINT=<name>` the process kills itself with SIGKILL
/// when it reaches that step, so tests can prove the next start finishes or rolls back; with
/// `<name>:stop` it stops itself (SIGSTOP), as a paused replica would; with `<name>:sleep` it
/// waits 5 s there.
public enum Failpoint: String, CaseIterable, Sendable {
    case createAfterIntent = "create.after_intent"
    case createAfterRole = "create.after_role"
    case createAfterDatabase = "create.after_database"
    case destroyAfterIntent = "destroy.after_intent"
    case destroyAfterDropDatabase = "destroy.after_drop_database"
    case destroyAfterDropRole = "destroy.after_drop_role"
    case backupBeforePublish = "backup.before_publish"
    case restoreAfterLoad = "restore.after_load"
    case restoreAfterAside = "restore.after_aside"
    case uploadAfterDatabase = "upload.after_database"
    case uploadBeforeFinish = "upload.before_finish"
    case upgradeAfterCopy = "upgrade.after_copy"
    case uploadDestroyAfterRecord = "upload_destroy.after_record"
    case keyRotateAfterRewrap = "key_rotate.after_rewrap"
    case purgeBeforeDelete = "purge.before_delete"
    case moveAfterFreeze = "move.after_freeze"
    case moveAfterCopy = "move.after_copy"
    case moveAfterSwitch = "move.after_switch"
    case moveAfterEnable = "move.after_enable"

    private static let armed: String? = ProcessInfo.processInfo.environment["TENURE_FAILPOINT"]

    public func hit() {
        if Self.armed == rawValue {
            kill(getpid(), SIGKILL)
        } else if Self.armed == rawValue + ":stop" {
            // The process stops itself here (a paused replica); SIGCONT resumes it.
            kill(getpid(), SIGSTOP)
        } else if Self.armed == rawValue + ":sleep" {
            // Work that takes a while at this step (a shutdown meanwhile).
            Thread.sleep(forTimeInterval: 5)
        }
    }
}
