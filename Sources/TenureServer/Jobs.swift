import Foundation
import Logging
import ServiceLifecycle
import TenureCatalog
import TenureControl
import TenureCore
import TenureEngine
import TenurePQ

enum JobKind: String, Sendable {
    case backup, restore, upgrade
}

enum JobState: String, Sendable {
    case queued, running, succeeded, failed, cancelled

    var isFinished: Bool {
        switch self {
        case .queued, .running: return false
        case .succeeded, .failed, .cancelled: return true
        }
    }
}

/// What a job's work returns: its result document, as JSON bytes (plain values only).
typealias JobWork = @Sendable (Controller, TransferProgress) throws(TenureError) -> Data

/// One unit of long work (a backup or a restore), run on its own thread with its own
/// catalog session. Jobs live in memory: they report on work started by this process;
/// what they produce (backups, restored databases, audit events) is in the catalog.
final class Job: Sendable {
    struct Status: Sendable {
        var state: JobState = .queued
        var startedAt: Date?
        var finishedAt: Date?
        var result: Data?
        var error: TenureError?
    }

    let id = JobID.random()
    let kind: JobKind
    /// The database (backup, restore) or upload (upgrade) the job works on.
    let subject: String
    let actor: String
    let createdAt: Date
    let progress = TransferProgress()
    let work: JobWork
    let status = Locked(Status())

    init(kind: JobKind, subject: String, actor: String, createdAt: Date, work: @escaping JobWork) {
        self.kind = kind
        self.subject = subject
        self.actor = actor
        self.createdAt = createdAt
        self.work = work
    }

    func document(now: Date) -> [String: Any] {
        let status = self.status.withLock { $0 }
        let bytes = kind == .backup ? progress.compressedBytes.load(ordering: .relaxed) : progress.rawBytes.load(ordering: .relaxed)
        let rows = progress.rows.load(ordering: .relaxed)
        let elapsed = status.startedAt.map { (status.finishedAt ?? now).timeIntervalSince($0) } ?? 0
        var document: [String: Any] = [
            "id": id.rawValue, "kind": kind.rawValue, kind == .upgrade ? "upload_id" : "database_id": subject, "state": status.state.rawValue,
            "created_at": RFC3339.format(createdAt), "started_at": instant(status.startedAt), "finished_at": instant(status.finishedAt),
            "progress": [
                "bytes": bytes, "rows": rows,
                "bytes_per_second": elapsed > 0.001 ? Int64(Double(bytes) / elapsed) : 0,
            ] as [String: Any],
            "result": NSNull(), "error": NSNull(),
        ]
        if let data = status.result, let result = try? JSONSerialization.jsonObject(with: data) { document["result"] = result }
        if let error = status.error {
            let detail = error.code == .internal ? "internal error; the server log has the details" : error.message
            document["error"] = ["code": error.code.rawValue, "message": detail]
        }
        return document
    }
}

/// Runs jobs with at most `maximumTransfers` transfers at once (shared with streamed
/// exports), a bounded queue, and cancellation. A swift-service-lifecycle service: on
/// graceful shutdown it cancels what runs and waits for it to clean up.
final class JobRunner: Service, Sendable {
    private struct State {
        var jobs: [JobID: Job] = [:]
        var finishedOrder: [JobID] = []
        var queue: [Job] = []
        var transfersRunning = 0
        var shuttingDown = false
    }

    let catalogParameters: ConnectionParameters
    let configuration: TenureConfiguration
    let logger: Logger
    let metrics: ServerMetrics
    private let state = Locked(State())
    /// Finished jobs kept for `GET /v1/jobs/{id}`; the oldest are forgotten first.
    static let maximumFinishedJobs = 1000

    init(catalogParameters: ConnectionParameters, configuration: TenureConfiguration, logger: Logger, metrics: ServerMetrics) {
        self.catalogParameters = catalogParameters
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
    }

    /// Queues a job; 429 when the queue is full or the service is stopping.
    func submit(kind: JobKind, subject: String, actor: String, work: @escaping JobWork) throws(TenureError) -> Job {
        let job = Job(kind: kind, subject: subject, actor: actor, createdAt: Date(), work: work)
        let limit = configuration.http.maximumQueuedJobs
        let accepted = state.withLock { state -> Bool in
            guard !state.shuttingDown, state.queue.count < limit || state.transfersRunning < configuration.http.maximumTransfers else { return false }
            state.jobs[job.id] = job
            state.queue.append(job)
            return true
        }
        guard accepted else {
            throw TenureError(
                .limitExceeded, "too many jobs are waiting (limit \(limit)); retry later", context: ["retry_after": "10", "limit": String(limit)])
        }
        logger.info("job queued", metadata: ["tenure.job_id": "\(job.id)", "tenure.kind": "\(kind.rawValue)", "tenure.subject": "\(subject)"])
        dispatch()
        return job
    }

    func job(_ id: JobID) throws(TenureError) -> Job {
        guard let job = state.withLock({ $0.jobs[id] }) else {
            throw TenureError(.jobNotFound, "no job with id \(id) (jobs are kept in memory by the server that ran them)", context: ["job_id": id.rawValue])
        }
        return job
    }

    /// Cancels a queued job at once, or asks a running one to stop; a finished job is a 409.
    func cancel(_ id: JobID) throws(TenureError) -> Job {
        let job = try job(id)
        let outcome = state.withLock { state -> JobState in
            let current = job.status.withLock { $0.state }
            if current == .queued {
                state.queue.removeAll { $0.id == id }
                job.status.withLock {
                    $0.state = .cancelled
                    $0.finishedAt = Date()
                    $0.error = TenureError(.cancelled, "cancelled before it started")
                }
                state.finishedOrder.append(id)
                return .cancelled
            }
            return current
        }
        switch outcome {
        case .cancelled, .queued: break
        case .running: job.progress.cancel()
        case .succeeded, .failed:
            throw TenureError(.jobFinished, "job \(id) has already finished (\(outcome.rawValue)); there is nothing to cancel", context: ["job_id": id.rawValue])
        }
        updateGauges()
        return job
    }

    /// Takes a transfer slot for a streamed export, or fails with 429.
    func acquireTransfer() throws(TenureError) {
        let limit = configuration.http.maximumTransfers
        let acquired = state.withLock { state -> Bool in
            guard !state.shuttingDown, state.transfersRunning < limit else { return false }
            state.transfersRunning += 1
            return true
        }
        guard acquired else {
            throw TenureError(
                .limitExceeded, "\(limit) transfers (exports, backups, restores) are running, the most this server allows at once; retry later",
                context: ["retry_after": "5", "limit": String(limit)])
        }
        metrics.gauge("tenure_exports_running", adding: 1)
    }

    func releaseTransfer() {
        state.withLock { $0.transfersRunning -= 1 }
        metrics.gauge("tenure_exports_running", adding: -1)
        dispatch()
    }

    /// Starts queued jobs while slots are free. Decides under the lock, starts threads after.
    private func dispatch() {
        let limit = configuration.http.maximumTransfers
        let starting = state.withLock { state -> [Job] in
            var starting: [Job] = []
            while !state.shuttingDown, state.transfersRunning < limit, !state.queue.isEmpty {
                let job = state.queue.removeFirst()
                state.transfersRunning += 1
                job.status.withLock {
                    $0.state = .running
                    $0.startedAt = Date()
                }
                starting.append(job)
            }
            return starting
        }
        for job in starting { start(job) }
        updateGauges()
    }

    private func start(_ job: Job) {
        let parameters = catalogParameters
        let configuration = self.configuration
        let logger = self.logger
        let thread = Thread {
            let outcome: Result<Data, TenureError>
            do throws(TenureError) {
                let catalog = try Catalog(parameters: parameters)
                defer { catalog.close() }
                let controller = Controller(catalog: catalog, configuration: configuration, clock: SystemWallClock(), actor: job.actor, logger: logger)
                outcome = .success(try job.work(controller, job.progress))
            } catch {
                outcome = .failure(error)
            }
            self.finish(job, outcome)
        }
        thread.name = "tenure-job-\(job.kind.rawValue)"
        thread.stackSize = 8 << 20
        thread.start()
    }

    private func finish(_ job: Job, _ outcome: Result<Data, TenureError>) {
        let state: JobState
        switch outcome {
        case .success(let data):
            state = .succeeded
            job.status.withLock {
                $0.state = .succeeded
                $0.result = data
                $0.finishedAt = Date()
            }
            metrics.add(job.kind == .backup ? "tenure_backup_bytes_total" : "tenure_restore_bytes_total", [], Double(
                job.kind == .backup ? job.progress.compressedBytes.load(ordering: .relaxed) : job.progress.rawBytes.load(ordering: .relaxed)))
        case .failure(let error):
            state = error.code == .cancelled || job.progress.isCancelled ? .cancelled : .failed
            job.status.withLock {
                $0.state = state
                $0.error = error
                $0.finishedAt = Date()
            }
            logger.warning(
                "job failed", metadata: ["tenure.job_id": "\(job.id)", "tenure.state": "\(state.rawValue)", "tenure.error": "\(error.message)"])
        }
        metrics.add("tenure_jobs_total", [("kind", job.kind.rawValue), ("outcome", state.rawValue)])
        logger.info("job finished", metadata: ["tenure.job_id": "\(job.id)", "tenure.state": "\(state.rawValue)"])
        self.state.withLock { state in
            state.transfersRunning -= 1
            state.finishedOrder.append(job.id)
            while state.finishedOrder.count > Self.maximumFinishedJobs {
                state.jobs[state.finishedOrder.removeFirst()] = nil
            }
        }
        dispatch()
    }

    private func updateGauges() {
        let (running, queued) = state.withLock { state in
            (state.jobs.values.filter { $0.status.withLock { $0.state } == .running }.count, state.queue.count)
        }
        metrics.set("tenure_jobs_running", Double(running))
        metrics.set("tenure_jobs_queued", Double(queued))
    }

    /// Waits for graceful shutdown, then cancels queued and running jobs and waits (up to
    /// a minute) for the running ones to clean up after themselves.
    func run() async throws {
        try? await gracefulShutdown()
        let running = state.withLock { state -> [Job] in
            state.shuttingDown = true
            for job in state.queue {
                job.status.withLock {
                    $0.state = .cancelled
                    $0.finishedAt = Date()
                    $0.error = TenureError(.cancelled, "the server stopped before the job started")
                }
            }
            state.queue.removeAll()
            return state.jobs.values.filter { $0.status.withLock { $0.state } == .running }
        }
        for job in running { job.progress.cancel() }
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline, state.withLock({ $0.transfersRunning }) > 0 {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}
