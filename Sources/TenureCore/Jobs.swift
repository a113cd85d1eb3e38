import Foundation

/// The long operations that run as durable jobs.
public enum JobKind: String, Sendable, CaseIterable, Codable {
    case backup, restore, upgrade
    /// A streamed export over HTTP: run by the replica that streams it, never by a worker;
    /// a row only so that it takes its turn among the database's jobs.
    case export
    /// The backup store of a destroyed database deleted.
    case purge
    /// A restore drill: a backup restored into a scratch database, checked, dropped.
    case drill
    /// A new database made from a live one's snapshot (subject: the new database).
    case duplicate
    /// A database moved to another server (subject: the database).
    case move

    /// Every failure of this kind is worth another attempt (a file system that refused once).
    public var retriesEveryFailure: Bool { self == .purge }

    /// Whether the job's subject is a database (`db_…`) or an upload (`up_…`).
    public var subjectIsUpload: Bool { self == .upgrade }
}

/// A job's state. `queued` and `running` are unfinished; the other three are final.
public enum JobState: String, Sendable, CaseIterable, Codable {
    case queued, running, succeeded, failed, cancelled

    public var isFinished: Bool {
        switch self {
        case .queued, .running: return false
        case .succeeded, .failed, .cancelled: return true
        }
    }
}

/// How one attempt of a job ended, as the worker (or a replica that found its lease
/// expired) reports it.
public enum JobAttemptEnd: Sendable, Equatable {
    case succeeded
    /// The work threw; `retryable` is `JobRetryPolicy.isRetryable(error.code)`.
    case failed(retryable: Bool)
    /// The work stopped because a cancel was asked for.
    case cancelled
    /// The process running the attempt stopped renewing its lease (it died or was paused).
    case leaseExpired
    /// The process let the job go on a graceful shutdown: the attempt does not count.
    case released
}

/// What becomes of the job after an attempt ended.
public enum JobDecision: Sendable, Equatable {
    case finish(JobState)
    /// Queued again, to run no earlier than `delay` from now.
    case retry(delay: Duration)
}

/// The retry rule as a pure function (table-tested): transient failures and dead processes
/// are retried up to `maxAttempts` attempts with exponential backoff; a cancel asked for
/// always wins; anything the request itself got wrong fails at once.
public struct JobRetryPolicy: Sendable, Equatable {
    /// The same policy for a job that was queued with its own limit of attempts (a purge's 5,
    /// a move's or a duplicate's 1): the job's row, not the configuration, says how many.
    public func limited(to maxAttempts: Int) -> JobRetryPolicy {
        var policy = self
        policy.maxAttempts = maxAttempts
        return policy
    }

    public var maxAttempts: Int
    public var baseDelay: Duration
    public var maxDelay: Duration

    public init(maxAttempts: Int = 3, baseDelay: Duration = .seconds(10), maxDelay: Duration = .seconds(300)) {
        self.maxAttempts = max(1, maxAttempts)
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
    }

    /// `attempt` is the number of the attempt that just ended (the first is 1).
    public func decide(attempt: Int, end: JobAttemptEnd, cancelRequested: Bool) -> JobDecision {
        switch end {
        case .succeeded: return .finish(.succeeded)
        case .cancelled: return .finish(.cancelled)
        case .released: return cancelRequested ? .finish(.cancelled) : .retry(delay: .zero)
        case .failed(let retryable):
            if cancelRequested { return .finish(.cancelled) }
            guard retryable, attempt < maxAttempts else { return .finish(.failed) }
            return .retry(delay: backoff(after: attempt))
        case .leaseExpired:
            if cancelRequested { return .finish(.cancelled) }
            // The dead attempt's leftovers are cleaned by whoever takes the job next, at once.
            return attempt < maxAttempts ? .retry(delay: .zero) : .finish(.failed)
        }
    }

    /// base × 2^(attempt−1), at most `maxDelay`.
    public func backoff(after attempt: Int) -> Duration {
        var delay = baseDelay
        for _ in 1..<max(1, attempt) {
            delay = delay * 2
            if delay >= maxDelay { return maxDelay }
        }
        return min(delay, maxDelay)
    }

    /// Failures worth another attempt: a server or the catalog out of reach, a timeout. An
    /// error PostgreSQL reported (a failing upgrade script, a permission) would only repeat,
    /// and so would a wrong request, a conflict or an internal error: those are final.
    /// An error PostgreSQL reported with a SQLSTATE of a server going away or restarting
    /// (class 08, connection exception; 57P01–57P03, shut down or not yet accepting
    /// connections) or of a transaction that lost a race (40001, 40P01) is transient too.
    public static func isRetryable(_ code: TenureError.Code, sqlState: String? = nil) -> Bool {
        switch code {
        case .serverUnreachable, .catalogUnavailable, .embeddedServer, .timeout: return true
        case .postgres:
            guard let sqlState else { return false }
            return sqlState.hasPrefix("08") || ["57P01", "57P02", "57P03", "40001", "40P01"].contains(sqlState)
        default: return false
        }
    }
}

/// One durable job (migration 0007).
public struct JobRecord: Sendable {
    public var id: JobID
    /// Request order; jobs of one subject run one at a time in this order.
    public var seq: Int64
    public var kind: JobKind
    /// The database (`db_…`) or upload (`up_…`) the job works on.
    public var subject: String
    public var arguments: [String: String]
    public var actor: String
    public var state: JobState
    public var attempt: Int
    public var maxAttempts: Int
    public var fence: Int64
    public var leaseOwner: String?
    public var leaseExpiresAt: Date?
    public var runAfter: Date
    public var cancelRequested: Bool
    /// Counters reported by the worker with each lease renewal (bytes, rows, bytes_per_second).
    public var progress: [String: Int64]
    /// The result document (JSON text) of a succeeded job.
    public var result: String?
    public var errorCode: String?
    public var errorMessage: String?
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    /// For a queued job: the unfinished job of the same subject just ahead of it.
    public var waitingFor: JobID?

    public init(
        id: JobID, seq: Int64, kind: JobKind, subject: String, arguments: [String: String], actor: String, state: JobState, attempt: Int,
        maxAttempts: Int, fence: Int64, leaseOwner: String?, leaseExpiresAt: Date?, runAfter: Date, cancelRequested: Bool,
        progress: [String: Int64], result: String?, errorCode: String?, errorMessage: String?, createdAt: Date, startedAt: Date?,
        finishedAt: Date?, waitingFor: JobID?
    ) {
        self.id = id
        self.seq = seq
        self.kind = kind
        self.subject = subject
        self.arguments = arguments
        self.actor = actor
        self.state = state
        self.attempt = attempt
        self.maxAttempts = maxAttempts
        self.fence = fence
        self.leaseOwner = leaseOwner
        self.leaseExpiresAt = leaseExpiresAt
        self.runAfter = runAfter
        self.cancelRequested = cancelRequested
        self.progress = progress
        self.result = result
        self.errorCode = errorCode
        self.errorMessage = errorMessage
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.waitingFor = waitingFor
    }
}

/// What a worker holds while it runs an attempt: publishing anything is allowed only while
/// the job row still carries this fence, is running and its lease has not expired.
public struct JobFence: Sendable, Equatable {
    public var jobID: JobID
    public var fence: Int64

    public init(jobID: JobID, fence: Int64) {
        self.jobID = jobID
        self.fence = fence
    }
}

/// A job taken by a worker: `reclaimed` when an earlier attempt's process stopped renewing
/// its lease (its leftovers must be cleaned before the work runs again).
public struct ClaimedJob: Sendable {
    public var job: JobRecord
    public var reclaimed: Bool

    public init(job: JobRecord, reclaimed: Bool) {
        self.job = job
        self.reclaimed = reclaimed
    }
}

/// The outcome of one lease renewal.
public enum LeaseRenewal: Sendable, Equatable {
    case renewed(cancelRequested: Bool)
    /// The row no longer carries this worker's fence: another replica took the job over, or it
    /// was finished. The worker must stop and publish nothing.
    case lost
}
