import Foundation
import TenureCore
import TenurePQ

/// What the backup policy knows of one live database (trial, active or deactivated).
public struct BackupFacts: Sendable {
    public var databaseID: DatabaseID
    public var name: String
    public var state: String
    public var serverName: String
    public var createdAt: Date
    public var legalHold: Bool
    /// When its newest backup of any state was started (a failed one counts for the schedule).
    public var lastStarted: Date?
    /// Its newest verified backup: id, when taken, when last drilled.
    public var newestVerifiedID: BackupID?
    public var newestVerifiedAt: Date?
    public var newestVerifiedDrilledAt: Date?
    /// Verified and drill-failed backups in the store.
    public var kept: Int
    /// A backup job of it is queued or running.
    public var pending: Bool
    public var lastDrillAt: Date?
    public var lastDrillOutcome: DrillOutcome?
}

/// One restore drill as recorded.
public struct DrillRecord: Sendable {
    public var id: DrillID
    public var backupID: BackupID
    public var databaseID: DatabaseID
    public var serverName: String
    public var jobID: JobID?
    public var startedAt: Date
    public var finishedAt: Date
    public var durationMilliseconds: Int64
    public var outcome: DrillOutcome
    public var detail: [String: String]

    public init(
        id: DrillID, backupID: BackupID, databaseID: DatabaseID, serverName: String, jobID: JobID?, startedAt: Date, finishedAt: Date,
        outcome: DrillOutcome, detail: [String: String]
    ) {
        self.id = id
        self.backupID = backupID
        self.databaseID = databaseID
        self.serverName = serverName
        self.jobID = jobID
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        durationMilliseconds = max(0, Int64(finishedAt.timeIntervalSince(startedAt) * 1000))
        self.outcome = outcome
        self.detail = detail
    }
}

extension Catalog {
    /// The policy's view of every live database, in id order.
    public func backupFacts(databaseID: DatabaseID? = nil) throws(TenureError) -> [BackupFacts] {
        let result = try connection.query(
            """
            SELECT d.id, d.name, d.state, d.server_name, extract(epoch FROM d.created_at)::text AS created_at, d.legal_hold,
                extract(epoch FROM (SELECT max(b.started_at) FROM backups b WHERE b.database_id = d.id))::text AS last_started,
                nv.id AS newest_id, extract(epoch FROM nv.started_at)::text AS newest_at, extract(epoch FROM nv.drilled_at)::text AS newest_drilled_at,
                (SELECT count(*) FROM backups b WHERE b.database_id = d.id AND b.state IN ('verified', 'drill_failed'))::text AS kept,
                EXISTS (SELECT 1 FROM jobs j WHERE j.subject = d.id AND j.kind = 'backup' AND j.state IN ('queued', 'running')) AS pending,
                extract(epoch FROM ld.finished_at)::text AS drill_at, ld.outcome AS drill_outcome
            FROM databases d
            LEFT JOIN LATERAL (SELECT b.id, b.started_at, b.drilled_at FROM backups b WHERE b.database_id = d.id AND b.state = 'verified'
                               ORDER BY b.started_at DESC, b.id DESC LIMIT 1) nv ON true
            LEFT JOIN LATERAL (SELECT x.finished_at, x.outcome FROM drills x WHERE x.database_id = d.id ORDER BY x.finished_at DESC LIMIT 1) ld ON true
            WHERE d.state IN ('trial', 'active', 'deactivated') AND ($1::text IS NULL OR d.id = $1)
            ORDER BY d.id
            """, [databaseID?.rawValue])
        return result.rows.indices.map { row in
            BackupFacts(
                databaseID: DatabaseID(unchecked: result[row, "id"]!), name: result[row, "name"]!, state: result[row, "state"]!,
                serverName: result[row, "server_name"]!, createdAt: date(result[row, "created_at"])!, legalHold: result[row, "legal_hold"] == "t",
                lastStarted: date(result[row, "last_started"]), newestVerifiedID: result[row, "newest_id"].map { BackupID(unchecked: $0) },
                newestVerifiedAt: date(result[row, "newest_at"]), newestVerifiedDrilledAt: date(result[row, "newest_drilled_at"]),
                kept: Int(result[row, "kept"]!) ?? 0, pending: result[row, "pending"] == "t", lastDrillAt: date(result[row, "drill_at"]),
                lastDrillOutcome: result[row, "drill_outcome"].flatMap { DrillOutcome(rawValue: $0) })
        }
    }

    /// The scheduler's lock: one replica schedules at a time.
    public func tryLockScheduler() throws(TenureError) -> Bool {
        try connection.query("SELECT pg_try_advisory_lock(7309, 3) AS ok")[0, "ok"] == "t"
    }

    public func unlockScheduler() throws(TenureError) {
        try connection.query("SELECT pg_advisory_unlock(7309, 3)")
    }

    /// Marks one backup deleted (retention; its file is removed by the caller first).
    public func markBackupDeleted(_ id: BackupID, now: Date) throws(TenureError) {
        try connection.query(
            "UPDATE backups SET state = 'deleted', finished_at = coalesce(finished_at, to_timestamp($2::float8)) WHERE id = $1 AND state <> 'deleted'",
            [id.rawValue, epoch(now)])
    }

    /// Drill jobs the scheduler queued since `since`.
    public func scheduledDrillCount(since: Date) throws(TenureError) -> Int {
        Int(
            try connection.query(
                "SELECT count(*)::text AS n FROM jobs WHERE kind = 'drill' AND actor = 'scheduler' AND created_at >= to_timestamp($1::float8)", [epoch(since)]
            )[0, "n"]!) ?? 0
    }

    /// Records a drill and its outcome on the backup: a failed drill takes the backup out of
    /// the verified ones.
    public func recordDrill(_ drill: DrillRecord) throws(TenureError) {
        let detail = (try? JSONSerialization.data(withJSONObject: drill.detail, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        try connection.query(
            """
            INSERT INTO drills (id, backup_id, database_id, server_name, job_id, started_at, finished_at, duration_ms, outcome, detail)
            VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8), to_timestamp($7::float8), $8, $9, $10::jsonb)
            """,
            [
                drill.id.rawValue, drill.backupID.rawValue, drill.databaseID.rawValue, drill.serverName, drill.jobID?.rawValue, epoch(drill.startedAt),
                epoch(drill.finishedAt), String(drill.durationMilliseconds), drill.outcome.rawValue, detail,
            ])
        try connection.query(
            """
            UPDATE backups SET drilled_at = to_timestamp($2::float8), drill_outcome = $3,
                state = CASE WHEN $3 = 'failed' AND state = 'verified' THEN 'drill_failed' ELSE state END
            WHERE id = $1
            """, [drill.backupID.rawValue, epoch(drill.finishedAt), drill.outcome.rawValue])
    }

    /// Drills newest first, optionally of one database or backup; `before` pages.
    public func drills(databaseID: DatabaseID?, backupID: BackupID?, limit: Int, before: Date? = nil) throws(TenureError) -> [DrillRecord] {
        let result = try connection.query(
            """
            SELECT id, backup_id, database_id, server_name, job_id, extract(epoch FROM started_at)::text AS started_at,
                extract(epoch FROM finished_at)::text AS finished_at, outcome, detail::text AS detail
            FROM drills WHERE ($1::text IS NULL OR database_id = $1) AND ($2::text IS NULL OR backup_id = $2)
                AND ($4::float8 IS NULL OR finished_at < to_timestamp($4::float8))
            ORDER BY finished_at DESC, id DESC LIMIT $3
            """, [databaseID?.rawValue, backupID?.rawValue, String(limit), before.map(epoch)])
        return result.rows.indices.map { row in
            let detail = result[row, "detail"].flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] } ?? [:]
            return DrillRecord(
                id: DrillID(unchecked: result[row, "id"]!), backupID: BackupID(unchecked: result[row, "backup_id"]!),
                databaseID: DatabaseID(unchecked: result[row, "database_id"]!), serverName: result[row, "server_name"]!,
                jobID: result[row, "job_id"].map { JobID(unchecked: $0) }, startedAt: date(result[row, "started_at"])!,
                finishedAt: date(result[row, "finished_at"])!, outcome: DrillOutcome(rawValue: result[row, "outcome"]!) ?? .failed,
                detail: detail.mapValues { "\($0)" })
        }
    }
}
