import Foundation
import TenureCore
import TenurePQ

extension Catalog {
    static let jobColumns = """
        j.id, j.seq, j.kind, j.subject, j.arguments::text AS arguments, j.actor, j.state, j.attempt, j.max_attempts, j.fence, j.lease_owner,
        extract(epoch FROM j.lease_expires_at)::text AS lease_expires_at, extract(epoch FROM j.run_after)::text AS run_after,
        j.cancel_requested, j.progress::text AS progress, j.result::text AS result, j.error->>'code' AS error_code,
        j.error->>'message' AS error_message, extract(epoch FROM j.created_at)::text AS created_at,
        extract(epoch FROM j.started_at)::text AS started_at, extract(epoch FROM j.finished_at)::text AS finished_at,
        CASE WHEN j.state = 'queued' THEN (SELECT a.id FROM jobs a WHERE a.subject = j.subject AND a.state IN ('queued', 'running')
            AND a.seq < j.seq ORDER BY a.seq DESC LIMIT 1) END AS waiting_for
        """

    private func jobRecord(_ result: QueryResult, _ row: Int) -> JobRecord {
        func object(_ text: String?) -> [String: Any] {
            guard let text, let value = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return [:] }
            return value
        }
        return JobRecord(
            id: JobID(unchecked: result[row, "id"]!), seq: Int64(result[row, "seq"]!)!, kind: JobKind(rawValue: result[row, "kind"]!)!,
            subject: result[row, "subject"]!, arguments: object(result[row, "arguments"]).compactMapValues { $0 as? String },
            actor: result[row, "actor"]!, state: JobState(rawValue: result[row, "state"]!)!, attempt: Int(result[row, "attempt"]!)!,
            maxAttempts: Int(result[row, "max_attempts"]!)!, fence: Int64(result[row, "fence"]!)!, leaseOwner: result[row, "lease_owner"],
            leaseExpiresAt: date(result[row, "lease_expires_at"]), runAfter: date(result[row, "run_after"])!,
            cancelRequested: result[row, "cancel_requested"] == "t",
            progress: object(result[row, "progress"]).compactMapValues { ($0 as? NSNumber)?.int64Value }, result: result[row, "result"],
            errorCode: result[row, "error_code"], errorMessage: result[row, "error_message"], createdAt: date(result[row, "created_at"])!,
            startedAt: date(result[row, "started_at"]), finishedAt: date(result[row, "finished_at"]),
            waitingFor: result[row, "waiting_for"].map { JobID(unchecked: $0) })
    }

    private static func json(_ object: [String: Any]) -> String {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    private static func errorJSON(_ error: TenureError?) -> String? {
        error.map { json(["code": $0.code.rawValue, "message": String($0.message.prefix(2000))]) }
    }

    private static func milliseconds(_ duration: Duration) -> String {
        String(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
    }

    // MARK: Requests and reads

    /// Queues a job. `serverName` (the tenant server it loads) holds backups and drills to
    /// the per-server limit when they are claimed.
    public func insertJob(
        kind: JobKind, subject: String, arguments: [String: String], actor: String, maxAttempts: Int, now: Date, serverName: String? = nil
    ) throws(TenureError) -> JobRecord {
        let id = JobID.random()
        try connection.query(
            """
            INSERT INTO jobs (id, kind, subject, arguments, actor, state, max_attempts, created_at, run_after, server_name)
            VALUES ($1, $2, $3, $4::jsonb, $5, 'queued', $6, to_timestamp($7::float8), clock_timestamp(), $8)
            """,
            [id.rawValue, kind.rawValue, subject, Self.json(arguments), actor, String(maxAttempts), epoch(now), serverName])
        return try job(id)
    }

    public func job(_ id: JobID) throws(TenureError) -> JobRecord {
        let result = try connection.query("SELECT \(Self.jobColumns) FROM jobs j WHERE j.id = $1", [id.rawValue])
        guard !result.rows.isEmpty else { throw TenureError(.jobNotFound, "no job with id \(id)", context: ["job_id": id.rawValue]) }
        return jobRecord(result, 0)
    }

    /// Newest first; `before` is the `seq` of the last job of the previous page.
    public func jobs(subject: String?, state: JobState?, kind: JobKind? = nil, limit: Int, before: Int64?) throws(TenureError) -> [JobRecord] {
        let result = try connection.query(
            """
            SELECT \(Self.jobColumns) FROM jobs j
            WHERE ($1::text IS NULL OR j.subject = $1) AND ($2::text IS NULL OR j.state = $2) AND ($3::bigint IS NULL OR j.seq < $3)
              AND ($5::text IS NULL OR j.kind = $5)
            ORDER BY j.seq DESC LIMIT $4
            """,
            [subject, state?.rawValue, before.map { String($0) }, String(limit), kind?.rawValue])
        return result.rows.indices.map { jobRecord(result, $0) }
    }

    /// Unfinished jobs of one subject, oldest first.
    public func unfinishedJobs(subject: String) throws(TenureError) -> [JobRecord] {
        let result = try connection.query(
            "SELECT \(Self.jobColumns) FROM jobs j WHERE j.subject = $1 AND j.state IN ('queued', 'running') ORDER BY j.seq", [subject])
        return result.rows.indices.map { jobRecord(result, $0) }
    }

    // MARK: Claims, leases, results

    /// Takes the oldest job that may run now, or nil: a queued job whose backoff has passed, or
    /// a running one whose lease expired (its process died or stopped), and only when no
    /// earlier job of its subject is unfinished. A job whose dead attempt was its last is
    /// finished as failed here (and the next one looked at). Replicas never take the same row:
    /// the candidate is locked with SKIP LOCKED and the claim commits with it.
    ///
    /// A queued backup or drill starts only while fewer than `perServer` backups and drills
    /// run on its tenant server; claims take turns on a transaction lock so that two replicas
    /// cannot both start the last allowed one.
    ///
    /// `started_at` (and `finished_at` in `endAttempt`) is `now` or the catalog server's clock
    /// when that is later: a `now` taken before the claim waited (a busy machine) would
    /// otherwise date the start before the end of the job it waited for.
    public func claimJob(
        owner: String, lease: Duration, policy: JobRetryPolicy, now: Date, only: JobID? = nil, perServer: Int = 1, movesPerServer: Int = 1
    ) throws(TenureError) -> ClaimedJob? {
        while true {
            let outcome: (claimed: ClaimedJob?, again: Bool) = try transaction { () throws(TenureError) in
                try connection.query("SELECT pg_advisory_xact_lock(7311)")
                let candidate = try connection.query(
                    """
                    SELECT \(Self.jobColumns) FROM jobs j
                    WHERE ((j.state = 'queued' AND j.run_after <= clock_timestamp()) OR (j.state = 'running' AND j.lease_expires_at < clock_timestamp()))
                      AND NOT EXISTS (SELECT 1 FROM jobs a WHERE a.subject = j.subject AND a.state IN ('queued', 'running') AND a.seq < j.seq)
                      AND ($1::text IS NULL OR j.id = $1
                           -- A worker for one job (the CLI's) also takes over a dead job ahead of
                           -- it on the same subject: with no replica running, nobody else would.
                           OR (j.state = 'running' AND j.subject = (SELECT o.subject FROM jobs o WHERE o.id = $1)))
                      AND (j.kind <> 'export' OR j.state = 'running' OR j.id = $1)
                      AND (j.kind NOT IN ('backup', 'drill') OR j.server_name IS NULL OR j.state = 'running'
                           OR (SELECT count(*) FROM jobs r WHERE r.state = 'running' AND r.server_name = j.server_name
                               AND r.kind IN ('backup', 'drill')) < $2)
                      -- Moves off one server (its name on the row) run at most $3 at once.
                      AND (j.kind <> 'move' OR j.server_name IS NULL OR j.state = 'running'
                           OR (SELECT count(*) FROM jobs r WHERE r.state = 'running' AND r.server_name = j.server_name AND r.kind = 'move') < $3)
                    ORDER BY j.seq LIMIT 1 FOR UPDATE OF j SKIP LOCKED
                    """, [only?.rawValue, String(perServer), String(movesPerServer)])
                guard !candidate.rows.isEmpty else { return (nil, false) }
                let job = jobRecord(candidate, 0)
                let reclaimed = job.state == .running
                if reclaimed {
                    // An export whose replica stopped streaming cannot be resumed elsewhere.
                    let decision = job.kind == .export
                        ? JobDecision.finish(.failed) : policy.limited(to: job.maxAttempts).decide(attempt: job.attempt, end: .leaseExpired, cancelRequested: job.cancelRequested)
                    switch decision {
                    case .finish(let state):
                        let error = state == .cancelled
                            ? TenureError(.cancelled, "cancelled; the process running it stopped")
                            : TenureError(
                                .internal, "attempt \(job.attempt) of \(job.maxAttempts) stopped: the process running it (\(job.leaseOwner ?? "?")) stopped renewing its lease")
                        try connection.query(
                            """
                            UPDATE jobs SET state = $2, error = $3::jsonb, finished_at = to_timestamp($4::float8), lease_owner = NULL, lease_expires_at = NULL
                            WHERE id = $1
                            """,
                            [job.id.rawValue, state.rawValue, Self.errorJSON(error), epoch(now)])
                        return (nil, true)
                    case .retry:
                        break
                    }
                }
                let claimed = try connection.query(
                    """
                    UPDATE jobs SET state = 'running', attempt = attempt + 1, fence = fence + 1, lease_owner = $2,
                        lease_expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond',
                        started_at = coalesce(started_at, greatest(to_timestamp($4::float8), clock_timestamp()))
                    WHERE id = $1 RETURNING id
                    """,
                    [job.id.rawValue, owner, Self.milliseconds(lease), epoch(now)])
                guard !claimed.rows.isEmpty else { return (nil, true) }
                return (ClaimedJob(job: try self.job(job.id), reclaimed: reclaimed), false)
            }
            if let claimed = outcome.claimed { return claimed }
            if !outcome.again { return nil }
        }
    }

    /// Extends the lease of a job this worker runs and stores its progress.
    public func renewLease(_ fence: JobFence, owner: String, lease: Duration, progress: [String: Int64]) throws(TenureError) -> LeaseRenewal {
        let result = try connection.query(
            """
            UPDATE jobs SET lease_expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond', progress = $5::jsonb
            WHERE id = $1 AND fence = $2 AND state = 'running' AND lease_owner = $4 RETURNING cancel_requested
            """,
            [fence.jobID.rawValue, String(fence.fence), Self.milliseconds(lease), owner, Self.json(progress)])
        guard let row = result.rows.first else { return .lost }
        return .renewed(cancelRequested: row[0] == "t")
    }

    /// Records how an attempt ended, only if the row still carries the worker's fence (false
    /// otherwise: the result is refused). A retry queues the job again after `delay`; a
    /// released job does not count the attempt.
    @discardableResult
    public func endAttempt(
        _ fence: JobFence, decision: JobDecision, released: Bool, result: String?, error: TenureError?, progress: [String: Int64], now: Date
    ) throws(TenureError) -> Bool {
        let updated: QueryResult
        switch decision {
        case .finish(let state):
            updated = try connection.query(
                """
                UPDATE jobs SET state = $3, result = $4::jsonb, error = $5::jsonb, progress = $6::jsonb,
                    finished_at = greatest(to_timestamp($7::float8), clock_timestamp()),
                    lease_owner = NULL, lease_expires_at = NULL
                WHERE id = $1 AND fence = $2 AND state = 'running'
                """,
                [fence.jobID.rawValue, String(fence.fence), state.rawValue, result, Self.errorJSON(error), Self.json(progress), epoch(now)])
        case .retry(let delay):
            updated = try connection.query(
                """
                UPDATE jobs SET state = 'queued', error = $3::jsonb, progress = $4::jsonb, lease_owner = NULL, lease_expires_at = NULL,
                    run_after = clock_timestamp() + $5::bigint * interval '1 millisecond', attempt = attempt - $6::int
                WHERE id = $1 AND fence = $2 AND state = 'running'
                """,
                [fence.jobID.rawValue, String(fence.fence), Self.errorJSON(error), Self.json(progress), Self.milliseconds(delay), released ? "1" : "0"])
        }
        return updated.affectedRowCount == 1
    }

    /// Inside a transaction that publishes a job's work: fails unless this attempt still owns
    /// the job (fence, running, lease not expired), and holds the row so that no replica can
    /// take the job over until the transaction ends.
    public func checkFence(_ fence: JobFence) throws(TenureError) {
        let result = try connection.query(
            "SELECT 1 FROM jobs WHERE id = $1 AND fence = $2 AND state = 'running' AND lease_expires_at > clock_timestamp() FOR SHARE",
            [fence.jobID.rawValue, String(fence.fence)])
        guard !result.rows.isEmpty else {
            throw TenureError(
                .cancelled, "job \(fence.jobID) is no longer this worker's (its lease expired or another replica took it over); nothing was published",
                context: ["job_id": fence.jobID.rawValue])
        }
    }

    // MARK: Cancels and retention

    /// A queued job is cancelled at once; a running one is asked to stop (its worker sees the
    /// request at its next lease renewal). Nil when the job has already finished.
    public func requestCancel(_ id: JobID, now: Date) throws(TenureError) -> JobRecord? {
        guard try !cancel(where: "id = $3", [id.rawValue], now: now).isEmpty else {
            _ = try job(id)
            return nil
        }
        return try job(id)
    }

    /// Cancels every unfinished job of `kinds` on a subject (a deletion cancels backups first).
    @discardableResult
    public func cancelJobs(subject: String, kinds: [JobKind], now: Date) throws(TenureError) -> [JobID] {
        try cancel(where: "subject = $3 AND kind = ANY($4::text[])", [subject, "{" + kinds.map(\.rawValue).joined(separator: ",") + "}"], now: now)
    }

    /// The one cancel: unfinished jobs matching `condition` (on parameters from $3) are asked to
    /// stop; queued ones are cancelled at once.
    private func cancel(where condition: String, _ parameters: [String?], now: Date) throws(TenureError) -> [JobID] {
        try connection.query(
            """
            UPDATE jobs SET cancel_requested = true,
                state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                finished_at = CASE WHEN state = 'queued' THEN to_timestamp($1::float8) ELSE finished_at END,
                error = CASE WHEN state = 'queued' THEN $2::jsonb ELSE error END
            WHERE state IN ('queued', 'running') AND \(condition) RETURNING id
            """,
            [epoch(now), Self.errorJSON(TenureError(.cancelled, "cancelled before it started"))] + parameters
        ).rows.map { JobID(unchecked: $0[0]!) }
    }

    /// Forgets finished jobs older than `before`.
    @discardableResult
    public func pruneJobs(finishedBefore before: Date) throws(TenureError) -> Int {
        try connection.query("DELETE FROM jobs WHERE finished_at < to_timestamp($1::float8)", [epoch(before)]).affectedRowCount
    }
}

extension Catalog {
    public func queuedJobCount() throws(TenureError) -> Int {
        Int(try connection.query("SELECT count(*) AS n FROM jobs WHERE state = 'queued'")[0, "n"] ?? "0") ?? 0
    }
}

extension Catalog {
    /// For a step outside the catalog that cannot be undone (a rename on a tenant server):
    /// fails unless this catalog's job attempt (if any) still owns its job.
    public func assertFence() throws(TenureError) {
        guard let fence else { return }
        try transaction { () throws(TenureError) in try checkFence(fence) }
    }
}
