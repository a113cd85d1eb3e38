import Foundation
import Logging
import TenureCatalog
import TenureCore
import TenureEngine

/// One page of jobs, newest first, and the cursor of the next page (nil on the last).
public struct JobPage: Sendable {
    public var jobs: [JobRecord]
    public var nextCursor: String?
}

extension Controller {
    // MARK: Requests: checked first, then a queued row (the work runs on whichever replica claims it)

    /// Queues a backup of a live database.
    public func requestBackup(_ id: DatabaseID) throws(TenureError) -> JobRecord {
        let record = try catalog.database(id)
        switch record.state {
        case .trial, .active, .deactivated: break
        case .provisioning, .destroyed:
            throw TenureError(.lifecycleConflict, "a \(record.state.rawValue) database cannot be backed up", context: ["database_id": id.rawValue])
        }
        return try enqueue(.backup, subject: id.rawValue, arguments: [:], serverName: record.serverName)
    }

    /// Queues a restore of one of the database's verified backups.
    public func requestRestore(_ id: DatabaseID, backupID: BackupID) throws(TenureError) -> JobRecord {
        let backup = try backupOf(id, backupID)
        guard backup.state == .verified else {
            throw TenureError(.lifecycleConflict, "backup \(backupID) is \(backup.state.rawValue); only verified backups can be restored")
        }
        let record = try catalog.database(id)
        switch record.state {
        case .trial, .active: break
        case .provisioning, .deactivated, .destroyed:
            throw TenureError(.lifecycleConflict, "a \(record.state.rawValue) database cannot be restored; reactivate it first", context: ["database_id": id.rawValue])
        }
        return try enqueue(.restore, subject: id.rawValue, arguments: ["backup_id": backupID.rawValue])
    }

    /// Queues an upgrade run of an upload.
    public func requestUpgrade(_ id: UploadID) throws(TenureError) -> JobRecord {
        let record = try catalog.upload(id)
        switch record.state {
        case .uploaded, .upgraded, .upgradeFailed: break
        case .uploading, .upgrading, .rejected, .destroyed:
            throw TenureError(.lifecycleConflict, "a \(record.state.rawValue) upload cannot be upgraded now", context: ["upload_id": id.rawValue])
        }
        return try enqueue(.upgrade, subject: id.rawValue, arguments: [:])
    }

    /// Queues a streamed export's turn (its row; the streaming replica takes it with `claimTurn`).
    public func requestExport(_ id: DatabaseID, format: BackupFormat) throws(TenureError) -> JobRecord {
        let record = try catalog.database(id)
        switch record.state {
        case .trial, .active, .deactivated: break
        case .provisioning, .destroyed:
            throw TenureError(.lifecycleConflict, "a \(record.state.rawValue) database cannot be exported", context: ["database_id": id.rawValue])
        }
        return try catalog.insertJob(
            kind: .export, subject: id.rawValue, arguments: ["format": format.rawValue], actor: actor, maxAttempts: 1, now: clock.now())
    }

    /// Takes this job for this replica if its turn has come (no earlier unfinished job of its
    /// subject); nil while it waits.
    public func claimTurn(_ id: JobID) throws(TenureError) -> JobRecord? {
        try catalog.claimJob(
            owner: configuration.jobs.replicaID, lease: configuration.jobs.lease, policy: configuration.jobs.retry, now: clock.now(), only: id,
            perServer: configuration.backupPolicy.concurrencyPerServer, movesPerServer: configuration.moveConcurrencyPerServer)?.job
    }

    private func enqueue(_ kind: JobKind, subject: String, arguments: [String: String], serverName: String? = nil) throws(TenureError) -> JobRecord {
        let limit = configuration.http.maximumQueuedJobs
        let queued = try catalog.queuedJobCount()
        // Jobs that start at once on a free transfer slot do not count as waiting.
        guard queued < limit + configuration.http.maximumTransfers else {
            throw TenureError(
                .limitExceeded, "too many jobs are waiting (\(queued), limit \(limit)); retry later", context: ["retry_after": "10", "limit": String(limit)])
        }
        let job = try catalog.insertJob(
            kind: kind, subject: subject, arguments: arguments, actor: actor, maxAttempts: configuration.jobs.retry.maxAttempts, now: clock.now(),
            serverName: serverName)
        logger.info("job queued", metadata: ["tenure.job_id": "\(job.id)", "tenure.kind": "\(kind.rawValue)", "tenure.subject": "\(subject)"])
        return job
    }

    // MARK: Reads and cancels

    public func job(_ id: JobID) throws(TenureError) -> JobRecord { try catalog.job(id) }

    /// Jobs newest first, filtered by database or upload and state; `cursor` from the previous page.
    public func listJobs(databaseID: DatabaseID?, uploadID: UploadID?, state: JobState?, limit: Int, cursor: String?) throws(TenureError) -> JobPage {
        guard (1...1000).contains(limit) else { throw TenureError(.invalidRequest, "limit must be from 1 to 1000") }
        if databaseID != nil, uploadID != nil { throw TenureError(.invalidRequest, "give database_id or upload_id, not both") }
        var before: Int64?
        if let cursor {
            guard let value = Int64(cursor), value > 0 else { throw TenureError(.invalidRequest, "cursor '\(printable(cursor))' is not one this API gave out") }
            before = value
        }
        let jobs = try catalog.jobs(subject: databaseID?.rawValue ?? uploadID?.rawValue, state: state, limit: limit + 1, before: before)
        let page = Array(jobs.prefix(limit))
        return JobPage(jobs: page, nextCursor: jobs.count > limit ? page.last.map { String($0.seq) } : nil)
    }

    /// Cancels a queued job at once, or asks the replica running it to stop.
    public func cancelJob(_ id: JobID) throws(TenureError) -> JobRecord {
        guard let job = try catalog.requestCancel(id, now: clock.now()) else {
            let finished = try catalog.job(id)
            throw TenureError(
                .jobFinished, "job \(id) has already finished (\(finished.state.rawValue)); there is nothing to cancel", context: ["job_id": id.rawValue])
        }
        try catalog.audit(
            at: clock.now(), databaseID: job.kind.subjectIsUpload ? nil : job.subject, actor: actor, action: "job_cancel_requested", from: nil, to: nil,
            reason: nil, detail: ["job_id": id.rawValue, "kind": job.kind.rawValue])
        return job
    }

    /// The store deletions (purge jobs) still to run, oldest first: a command that destroyed
    /// something runs them before it returns.
    public func pendingPurges() throws(TenureError) -> [JobRecord] {
        try catalog.jobs(subject: nil, state: .queued, kind: .purge, limit: 1000, before: nil).reversed()
    }

    /// The unfinished jobs of a database or upload, oldest first (an export waits for them).
    public func unfinishedJobs(subject: String) throws(TenureError) -> [JobRecord] { try catalog.unfinishedJobs(subject: subject) }

    // MARK: The work

    /// Runs a claimed job's work and returns its result document (JSON text). The catalog's
    /// fence is set by the worker, so every transaction of the work checks ownership.
    public func perform(_ job: JobRecord, progress: TransferProgress) throws(TenureError) -> String {
        let document: [String: Any]
        switch job.kind {
        case .backup:
            let id = try DatabaseID(parsing: job.subject)
            let outcome = try backupDatabase(id, scheduled: job.arguments["scheduled"] == "true", progress: progress)
            var backup = backupDocument(outcome.record, store: nil)
            if let warning = outcome.warning { backup["warning"] = warning }
            // The new backup is recorded; the rotation it allows follows (a failure of it does
            // not undo the backup: the next one rotates again).
            var deleted = 0
            do { deleted = try applyRetention(id) } catch {
                logger.warning("retention after a backup failed", metadata: ["tenure.database_id": "\(id)", "tenure.error": "\(error.message)"])
            }
            document = ["backup": backup, "retention": ["deleted": deleted]]
        case .drill:
            let drill = try runDrill(job, progress: progress)
            document = ["drill": drillDocument(drill)]
        case .restore:
            guard let backup = job.arguments["backup_id"] else { throw TenureError(.internal, "restore job \(job.id) has no backup_id") }
            let backupID = try BackupID(parsing: backup)
            let record = try restoreDatabase(try DatabaseID(parsing: job.subject), from: backupID, progress: progress)
            document = ["database": databaseDocument(record), "backup_id": backupID.rawValue]
        case .upgrade:
            let upgraded = try upgradeUpload(try UploadID(parsing: job.subject), progress: progress)
            document = ["upload": uploadDocument(upgraded, hold: configuration.upgradeHold)]
        case .export:
            throw TenureError(.internal, "export job \(job.id) is run by the replica streaming it, not by a worker")
        case .move:
            let moved = try runMove(job, progress: progress)
            var database = databaseDocument(moved.record)
            let server = try catalog.server(named: moved.record.serverName)
            database["connection_url"] = "postgresql://\(moved.record.postgresRole)@\(server.publicHost):\(server.publicPort)/\(moved.record.postgresDatabase)"
            document = ["database": database, "downtime_seconds": (moved.downtime * 1000).rounded() / 1000]
        case .duplicate:
            let record = try runDuplicate(job, progress: progress)
            document = ["database": databaseDocument(record), "source_id": job.arguments["source"] ?? ""]
        case .purge:
            let id = try DatabaseID(parsing: job.subject)
            let count = try catalog.backups(databaseID: id).filter { $0.state != .deleted }.count
            Failpoint.purgeBeforeDelete.hit()
            try deleteBackups(id)
            try catalog.audit(
                at: clock.now(), databaseID: id.rawValue, actor: actor, action: "backups_deleted", from: nil, to: nil, reason: nil,
                detail: ["backups": String(count), "job_id": job.id.rawValue])
            try issueDatabaseCertificate(id)
            document = ["database_id": id.rawValue, "backups_deleted": count]
        }
        let data = (try? JSONSerialization.data(withJSONObject: document, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

/// A job as the API and `--json` show it. `progress` is the live counter when this process
/// runs the job, else what its worker last reported.
public func jobDocument(_ job: JobRecord, live: TransferProgress? = nil, now: Date) -> [String: Any] {
    var bytes = job.progress["bytes"] ?? 0
    var rows = job.progress["rows"] ?? 0
    if let live {
        bytes = job.kind == .backup || job.kind == .export ? live.compressedBytes.load(ordering: .relaxed) : live.rawBytes.load(ordering: .relaxed)
        rows = live.rows.load(ordering: .relaxed)
    }
    let elapsed = job.startedAt.map { (job.finishedAt ?? now).timeIntervalSince($0) } ?? 0
    var document: [String: Any] = [
        "id": job.id.rawValue, "kind": job.kind.rawValue, job.kind.subjectIsUpload ? "upload_id" : "database_id": job.subject,
        "state": job.state.rawValue, "attempt": job.attempt, "max_attempts": job.maxAttempts, "cancel_requested": job.cancelRequested,
        "created_at": RFC3339.format(job.createdAt), "started_at": instant(job.startedAt), "finished_at": instant(job.finishedAt),
        "waiting_for": job.waitingFor.map { $0.rawValue as Any } ?? NSNull(), "replica": job.leaseOwner.map { $0 as Any } ?? NSNull(),
        "progress": [
            "bytes": bytes, "rows": rows, "bytes_per_second": elapsed > 0.001 && job.state == .running ? Int64(Double(bytes) / elapsed) : 0,
        ] as [String: Any],
        "result": NSNull(), "error": NSNull(),
    ]
    if let backup = job.arguments["backup_id"] { document["backup_id"] = backup }
    if let text = job.result, let result = try? JSONSerialization.jsonObject(with: Data(text.utf8)) { document["result"] = result }
    if let code = job.errorCode {
        let message = code == TenureError.Code.internal.rawValue && !(job.errorMessage ?? "").hasPrefix("attempt ")
            ? "internal error; the server log has the details" : (job.errorMessage ?? "")
        document["error"] = ["code": code, "message": message]
    }
    return document
}
