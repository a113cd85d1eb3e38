import Foundation
import Logging
import TenureCatalog
import TenureCore
import TenureEngine
import TenurePQ

/// One database's backup status (`tenure backup-status`, `GET /v1/backup-status`).
public struct BackupStatusEntry: Sendable {
    public var facts: BackupFacts
    public var stale: Bool
    public var nextDue: Date?
}

/// The fleet's backup status: every live database (or only the stale ones) and totals over all.
public struct BackupStatus: Sendable {
    public var entries: [BackupStatusEntry]
    public var databases: Int
    public var stale: Int
    public var neverBackedUp: Int
    /// Age of the oldest newest-verified backup among live databases (seconds), 0 if none.
    public var oldestNewestVerifiedAge: Double
    public var drillFailed: Int
    public var scheduleOn: Bool
}

/// What one scheduler pass did.
public struct ScheduleReport: Sendable {
    public var backupsQueued = 0
    public var drillsQueued = 0
    public var status: BackupStatus?
    /// False when another replica holds the scheduler lock (this pass did nothing).
    public var ran = false
}

extension Controller {
    // MARK: Status

    public func backupStatus(staleOnly: Bool = false) throws(TenureError) -> BackupStatus {
        try backupStatus(of: try catalog.backupFacts(), staleOnly: staleOnly, now: clock.now())
    }

    private func backupStatus(of facts: [BackupFacts], staleOnly: Bool, now: Date) throws(TenureError) -> BackupStatus {
        let policy = configuration.backupPolicy
        let schedule = policy.schedule
        var entries: [BackupStatusEntry] = []
        var stale = 0
        var never = 0
        var oldest = 0.0
        for fact in facts {
            let isStale = schedule.isStale(newestVerified: fact.newestVerifiedAt, createdAt: fact.createdAt, now: now)
            if isStale { stale += 1 }
            if let newest = fact.newestVerifiedAt { oldest = max(oldest, now.timeIntervalSince(newest)) } else { never += 1 }
            guard !staleOnly || isStale else { continue }
            let due = policy.interval == nil
                ? nil : schedule.nextDue(id: fact.databaseID.rawValue, lastStarted: fact.lastStarted ?? fact.createdAt, pending: fact.pending, now: now)
            entries.append(BackupStatusEntry(facts: fact, stale: isStale, nextDue: due))
        }
        let drillFailed = try catalog.backupCount(state: .drillFailed)
        return BackupStatus(
            entries: entries, databases: facts.count, stale: stale, neverBackedUp: never, oldestNewestVerifiedAge: oldest, drillFailed: drillFailed,
            scheduleOn: policy.interval != nil)
    }

    // MARK: The scheduler

    /// One pass of the scheduler (run by one replica at a time): queues a backup for every
    /// live database whose slot has come and that has none pending, and restore drills as the
    /// drill policy asks. Returns the fleet's status too (for the freshness metrics).
    public func schedulePass() throws(TenureError) -> ScheduleReport {
        var report = ScheduleReport()
        guard try catalog.tryLockScheduler() else {
            // Another replica schedules; the freshness figures are the same from here.
            report.status = try backupStatus()
            return report
        }
        defer { try? catalog.unlockScheduler() }
        report.ran = true
        let policy = configuration.backupPolicy
        let now = clock.now()
        let facts = try catalog.backupFacts()
        if policy.interval != nil {
            let schedule = policy.schedule
            for fact in facts where schedule.isDue(id: fact.databaseID.rawValue, lastStarted: fact.lastStarted ?? fact.createdAt, pending: fact.pending, now: now) {
                let job = try catalog.insertJob(
                    kind: .backup, subject: fact.databaseID.rawValue, arguments: ["scheduled": "true"], actor: "scheduler",
                    maxAttempts: configuration.jobs.retry.maxAttempts, now: now, serverName: fact.serverName)
                logger.info("scheduled backup queued", metadata: ["tenure.job_id": "\(job.id)", "tenure.database_id": "\(fact.databaseID)"])
                report.backupsQueued += 1
            }
        }
        if let interval = policy.drillInterval {
            report.drillsQueued = try scheduleDrills(facts, interval: interval, now: now)
        }
        // The freshness figures from the facts read above: queuing changes none of them.
        report.status = try backupStatus(of: facts, staleOnly: false, now: now)
        return report
    }

    /// Picks backups to drill: at least `TENURE_DRILL_COUNT` per drill interval, and enough
    /// that each live database's newest backup is drilled within `TENURE_DRILL_MAX_AGE` (the
    /// fleet's share of it per interval), most overdue first: never drilled, then the oldest
    /// drill.
    private func scheduleDrills(_ facts: [BackupFacts], interval: Duration, now: Date) throws(TenureError) -> Int {
        let policy = configuration.backupPolicy
        let intervalSeconds = BackupSchedule.seconds(interval)
        let withBackups = facts.filter { $0.newestVerifiedID != nil }
        let share = Int((Double(withBackups.count) * intervalSeconds / BackupSchedule.seconds(policy.drillMaxAge)).rounded(.up))
        let target = max(policy.drillCount, share)
        let already = try catalog.scheduledDrillCount(since: now.addingTimeInterval(-intervalSeconds))
        guard already < target else { return 0 }
        let pendingDrills = Set(
            try catalog.jobs(subject: nil, state: .queued, kind: .drill, limit: 1000, before: nil).map(\.subject)
                + catalog.jobs(subject: nil, state: .running, kind: .drill, limit: 1000, before: nil).map(\.subject))
        let candidates = withBackups.filter { $0.newestVerifiedDrilledAt == nil && !pendingDrills.contains($0.databaseID.rawValue) }
            .sorted { ($0.lastDrillAt ?? .distantPast, $0.databaseID.rawValue) < ($1.lastDrillAt ?? .distantPast, $1.databaseID.rawValue) }
        var queued = 0
        for fact in candidates.prefix(target - already) {
            guard let backup = fact.newestVerifiedID else { continue }
            _ = try catalog.insertJob(
                kind: .drill, subject: fact.databaseID.rawValue, arguments: ["backup_id": backup.rawValue, "server": policy.drillServer], actor: "scheduler",
                maxAttempts: configuration.jobs.retry.maxAttempts, now: now, serverName: policy.drillServer)
            queued += 1
        }
        return queued
    }

    // MARK: Retention

    /// Applies the retention policy to one database's backups (after each verified backup):
    /// deletes the files of the backups it lets go, then marks them deleted. Returns how many.
    @discardableResult
    func applyRetention(_ id: DatabaseID) throws(TenureError) -> Int {
        let database = try catalog.database(id)
        let backups = try catalog.backups(databaseID: id)
        let candidates = backups.map {
            RetentionCandidate(id: $0.id.rawValue, takenAt: $0.startedAt, state: $0.state, drillPassed: $0.drillOutcome == .passed)
        }
        let plan = Retention.plan(candidates, policy: configuration.backupPolicy.retention, legalHold: database.lifecycle.legalHold != nil)
        // A backup a queued or running restore or drill names stays until that job is done.
        let wanted = Set(try catalog.unfinishedJobs(subject: id.rawValue).compactMap { $0.arguments["backup_id"] })
        var deleted = 0
        for backup in backups where plan.delete.contains(backup.id.rawValue) && !wanted.contains(backup.id.rawValue) {
            do { try backupStore.delete(backup.path) } catch {
                logger.warning(
                    "retention could not delete a backup from the store; it stays listed",
                    metadata: ["tenure.backup_id": "\(backup.id)", "tenure.error": "\(error.message)"])
                continue
            }
            try catalog.markBackupDeleted(backup.id, now: clock.now())
            deleted += 1
        }
        if deleted > 0 {
            try catalog.audit(
                at: clock.now(), databaseID: id.rawValue, actor: actor, action: "backups_rotated", from: nil, to: nil, reason: nil,
                detail: ["deleted": String(deleted), "kept": String(plan.keep.count)])
        }
        return deleted
    }

    // MARK: Drills

    /// Queues a restore drill of one backup (or of a database's newest verified backup).
    public func requestDrill(backupID: BackupID?, databaseID: DatabaseID?) throws(TenureError) -> JobRecord {
        let backup: BackupRecord
        if let backupID {
            backup = try catalog.backup(backupID)
            if let databaseID, backup.databaseID != databaseID {
                throw TenureError(.invalidRequest, "backup \(backupID) belongs to database \(backup.databaseID), not to \(databaseID)")
            }
        } else if let databaseID {
            _ = try catalog.database(databaseID)
            guard let newest = try catalog.backups(databaseID: databaseID, state: .verified).last else {
                throw TenureError(.lifecycleConflict, "database \(databaseID) has no verified backup to drill", context: ["database_id": databaseID.rawValue])
            }
            backup = newest
        } else {
            throw TenureError(.invalidRequest, "give a backup_id or a database_id to drill")
        }
        guard backup.state == .verified || backup.state == .drillFailed else {
            throw TenureError(.lifecycleConflict, "backup \(backup.id) is \(backup.state.rawValue); only a stored backup can be drilled", context: ["backup_id": backup.id.rawValue])
        }
        _ = try catalog.server(named: configuration.backupPolicy.drillServer)
        let job = try catalog.insertJob(
            kind: .drill, subject: backup.databaseID.rawValue, arguments: ["backup_id": backup.id.rawValue, "server": configuration.backupPolicy.drillServer], actor: actor,
            maxAttempts: configuration.jobs.retry.maxAttempts, now: clock.now(), serverName: configuration.backupPolicy.drillServer)
        logger.info("drill queued", metadata: ["tenure.job_id": "\(job.id)", "tenure.backup_id": "\(backup.id)"])
        return job
    }

    /// The scratch database of a drill job (derived from the job, so a dead attempt's is found).
    static func drillDatabaseName(_ job: JobID) -> String { "tenure_drill_" + job.rawValue.dropFirst("job_".count) }

    /// Runs a drill: restores the backup into a scratch database on the drill server (every
    /// table's row count and every part's checksum checked against the manifest on the way),
    /// runs ANALYZE, drops the scratch database and records the outcome. A backup that does
    /// not restore is a failed drill (the backup is then `drill_failed`); a drill server that
    /// cannot be reached fails the job instead (retried), recording nothing about the backup.
    func runDrill(_ job: JobRecord, progress: TransferProgress) throws(TenureError) -> DrillRecord {
        guard let text = job.arguments["backup_id"] else { throw TenureError(.internal, "drill job \(job.id) has no backup_id") }
        let backup = try catalog.backup(try BackupID(parsing: text))
        let server = try catalog.server(named: job.arguments["server"] ?? configuration.backupPolicy.drillServer)
        let scratch = Self.drillDatabaseName(job.id)
        let admin = try connectAdmin(server)
        defer { admin.close() }
        // A dead attempt's scratch database goes first, and so does that of any drill job that
        // ended without cleaning up (its process died on its last attempt).
        try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(scratch)) WITH (FORCE)")
        let prefix = "tenure_drill_"
        for row in try admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'tenure\\_drill\\_%'").rows {
            guard let name = row[0], name.hasPrefix(prefix) else { continue }
            let owner = (try? catalog.job(JobID(unchecked: "job_" + name.dropFirst(prefix.count))))
            if owner == nil || owner?.state.isFinished == true {
                logger.notice("dropping a scratch database a dead drill left", metadata: ["tenure.database": "\(name)"])
                try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(name)) WITH (FORCE)")
            }
        }
        let started = clock.now()
        var detail: [String: String] = ["scratch_database": scratch]
        var outcome = DrillOutcome.passed
        do throws(TenureError) {
            guard backup.state == .verified || backup.state == .drillFailed else {
                throw TenureError(.lifecycleConflict, "backup \(backup.id) is \(backup.state.rawValue); nothing to drill")
            }
            let source = try openStoredBackup(backup)
            var options = RestoreOptions(target: try adminParameters(server, database: scratch), jobs: configuration.engineJobs)
            options.target["options"] = nil
            options.key = try ArchiveKey.load(home: configuration.home, create: false)
            options.grantPublicConnect = false
            let summary = try watching(server, "drill", progress: progress) { () throws(TenureError) in
                try runRestoreIntoNewDatabase(source: source, options: options, progress: progress)
            }
            detail["tables"] = String(summary.tableCount)
            detail["rows"] = String(summary.rowCount)
            if let expected = backup.rowCount, expected != summary.rowCount {
                throw TenureError(.internal, "the drill restored \(summary.rowCount) rows; the backup recorded \(expected)")
            }
            let session = try PostgresConnection(try adminParameters(server, database: scratch), applicationName: "tenure-drill")
            defer { session.close() }
            try session.execute("ANALYZE")
        } catch {
            switch error.code {
            case .serverUnreachable, .catalogUnavailable, .timeout, .cancelled, .concurrentModification, .embeddedServer:
                try? admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(scratch)) WITH (FORCE)")
                throw error
            default:
                outcome = .failed
                detail["error"] = String(error.message.prefix(1000))
                detail["error_code"] = error.code.rawValue
            }
        }
        try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(scratch)) WITH (FORCE)")
        let drill = DrillRecord(
            id: DrillID.random(), backupID: backup.id, databaseID: backup.databaseID, serverName: server.name.rawValue, jobID: job.id, startedAt: started,
            finishedAt: clock.now(), outcome: outcome, detail: detail)
        try catalog.transaction { () throws(TenureError) in
            try catalog.recordDrill(drill)
            try catalog.audit(
                at: drill.finishedAt, databaseID: backup.databaseID.rawValue, actor: actor, action: outcome == .passed ? "drill_passed" : "drill_failed",
                from: nil, to: nil, reason: nil, detail: ["backup_id": backup.id.rawValue, "drill_id": drill.id.rawValue, "job_id": job.id.rawValue])
        }
        if outcome == .failed {
            logger.error("restore drill failed: the backup no longer counts as verified", metadata: ["tenure.backup_id": "\(backup.id)", "tenure.drill_id": "\(drill.id)"])
        }
        return drill
    }

    /// Drills newest first.
    public func drills(databaseID: DatabaseID?, backupID: BackupID?, limit: Int) throws(TenureError) -> [DrillRecord] {
        guard (1...1000).contains(limit) else { throw TenureError(.invalidRequest, "limit must be from 1 to 1000") }
        return try catalog.drills(databaseID: databaseID, backupID: backupID, limit: limit)
    }
}

public func drillDocument(_ drill: DrillRecord) -> [String: Any] {
    [
        "id": drill.id.rawValue, "backup_id": drill.backupID.rawValue, "database_id": drill.databaseID.rawValue, "server": drill.serverName,
        "job_id": drill.jobID.map { $0.rawValue as Any } ?? NSNull(), "started_at": RFC3339.format(drill.startedAt),
        "finished_at": RFC3339.format(drill.finishedAt), "duration_ms": drill.durationMilliseconds, "outcome": drill.outcome.rawValue,
        "detail": drill.detail,
    ]
}

public func backupStatusDocument(_ status: BackupStatus, now: Date) -> [String: Any] {
    let databases: [[String: Any]] = status.entries.map { entry in
        let facts = entry.facts
        return [
            "database_id": facts.databaseID.rawValue, "name": facts.name, "state": facts.state, "server": facts.serverName,
            "newest_verified_backup_id": facts.newestVerifiedID.map { $0.rawValue as Any } ?? NSNull(),
            "newest_verified_at": facts.newestVerifiedAt.map { RFC3339.format($0) as Any } ?? NSNull(),
            "age_seconds": facts.newestVerifiedAt.map { Int(now.timeIntervalSince($0)) as Any } ?? NSNull(),
            "stale": entry.stale, "next_due_at": entry.nextDue.map { RFC3339.format($0) as Any } ?? NSNull(), "backups_kept": facts.kept,
            "legal_hold": facts.legalHold, "last_drill_at": facts.lastDrillAt.map { RFC3339.format($0) as Any } ?? NSNull(),
            "last_drill_outcome": facts.lastDrillOutcome.map { $0.rawValue as Any } ?? NSNull(),
        ]
    }
    return [
        "databases": databases,
        "totals": [
            "databases": status.databases, "stale": status.stale, "never_backed_up": status.neverBackedUp,
            "oldest_newest_verified_age_seconds": Int(status.oldestNewestVerifiedAge), "drill_failed_backups": status.drillFailed,
            "schedule": status.scheduleOn ? "on" : "off",
        ] as [String: Any],
    ]
}
