import Foundation
import Logging
import TenureCatalog
import TenureCore
import TenureEngine
import TenurePQ

/// Transfer slots of one process, shared by jobs and streamed exports
/// (`TENURE_HTTP_MAX_TRANSFERS`).
public final class TransferSlots: Sendable {
    public let limit: Int
    private let used = Locked(0)

    public init(limit: Int) { self.limit = max(1, limit) }

    public func tryAcquire() -> Bool {
        used.withLock { used in
            guard used < limit else { return false }
            used += 1
            return true
        }
    }

    public func release() { used.withLock { $0 = max(0, $0 - 1) } }

    public var inUse: Int { used.withLock { $0 } }
}

/// How a job attempt run by this process ended, for metrics and logs.
public struct JobAttemptReport: Sendable {
    public var job: JobRecord
    public var state: JobState
    /// False when the catalog refused the result (the attempt had lost the job).
    public var recorded: Bool
    public var bytes: Int64
    public var seconds: Double
    /// The result document (JSON text) of a succeeded attempt.
    public var result: String? = nil
    /// What a failed attempt failed with.
    public var error: TenureError? = nil
}

/// Runs durable jobs in this process: claims the oldest runnable job while a transfer slot
/// is free, runs each on its own thread with its own catalog session (fenced), renews the
/// leases of what runs every third of `TENURE_JOB_LEASE` (and stops work whose job was
/// cancelled or taken over), and on `stop` lets running jobs go (cancelled, cleaned up, their
/// leases released) so that another replica takes them at once.
public final class JobWorker: Sendable {
    private struct Running {
        var job: JobRecord
        var fence: JobFence
        var progress: TransferProgress
        var cancelRequested = false
        var releasing = false
        var lost = false
        var started = ContinuousClock.now
    }

    private struct State {
        var running: [JobID: Running] = [:]
        var stopping = false
    }

    let parameters: ConnectionParameters
    let configuration: TenureConfiguration
    let logger: Logger
    public let slots: TransferSlots
    let onAttemptEnd: @Sendable (JobAttemptReport) -> Void
    /// Set for the CLI: this worker takes only this job.
    let only: JobID?
    private let state = Locked(State())
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)

    public var replicaID: String { configuration.jobs.replicaID }

    public init(
        catalogParameters: ConnectionParameters, configuration: TenureConfiguration, logger: Logger, slots: TransferSlots, only: JobID? = nil,
        onAttemptEnd: @escaping @Sendable (JobAttemptReport) -> Void = { _ in }
    ) {
        self.only = only
        parameters = catalogParameters
        self.configuration = configuration
        self.logger = logger
        self.slots = slots
        self.onAttemptEnd = onAttemptEnd
    }

    public func start() {
        let thread = Thread { self.loop() }
        thread.name = "tenure-job-worker"
        thread.start()
    }

    /// Looks for work now (a job was just queued here).
    public func wake() { wakeup.signal() }

    /// The live progress of a job this process runs.
    public func progress(of id: JobID) -> TransferProgress? { state.withLock { $0.running[id]?.progress } }

    /// A job this process runs outside the worker (a streamed export it took with
    /// `claimTurn`): its lease is renewed with the others' until `endAdopted`.
    public func adopt(_ job: JobRecord, progress: TransferProgress) {
        state.withLock { $0.running[job.id] = Running(job: job, fence: JobFence(jobID: job.id, fence: job.fence), progress: progress) }
    }

    /// Records how an adopted job ended (blocking: call it off the event loops).
    public func endAdopted(_ id: JobID, error: TenureError?) {
        guard let entry = state.withLock({ $0.running.removeValue(forKey: id) }) else { return }
        let final: JobState = error == nil ? .succeeded : (error?.code == .cancelled || entry.cancelRequested ? .cancelled : .failed)
        _ = record(entry.job, fence: entry.fence, decision: .finish(final), released: false, result: nil, error: error, progress: entry.progress)
        wakeup.signal()
    }

    /// Records how an attempt ended, if the row still carries its fence (false otherwise). The
    /// catalog may be restarting: a few tries, then the lease expires and another replica (or
    /// this one) takes the job over.
    private func record(
        _ job: JobRecord, fence: JobFence, decision: JobDecision, released: Bool, result: String?, error: TenureError?, progress: TransferProgress
    ) -> Bool {
        for tryNumber in 1...5 {
            do throws(TenureError) {
                let catalog = try Catalog(parameters: parameters)
                defer { catalog.close() }
                return try catalog.endAttempt(
                    fence, decision: decision, released: released, result: result, error: error, progress: Self.counters(job.kind, progress), now: Date())
            } catch let failure {
                logger.warning("could not record a job's outcome; retrying", metadata: ["tenure.job_id": "\(job.id)", "tenure.error": "\(failure.message)"])
                if tryNumber < 5 { Thread.sleep(forTimeInterval: 1) }
            }
        }
        return false
    }

    /// A cancel asked for through this replica, of a job it runs: stop now.
    public func cancelLocal(_ id: JobID) {
        let progress = state.withLock { state -> TransferProgress? in
            state.running[id]?.cancelRequested = true
            return state.running[id]?.progress
        }
        progress?.cancel()
    }

    public var runningJobs: [JobRecord] { state.withLock { $0.running.values.map(\.job).sorted { $0.seq < $1.seq } } }

    /// Stops taking jobs, stops what runs (each cleans up after itself, as on a cancel), records
    /// each as released so another replica takes it at once, and returns when all have ended
    /// or `timeout` has passed (a job still running then keeps its lease until it expires).
    public func stop(timeout: Duration = .seconds(60)) {
        let running = state.withLock { state -> [TransferProgress] in
            state.stopping = true
            for id in state.running.keys { state.running[id]?.releasing = true }
            return state.running.values.map(\.progress)
        }
        for progress in running { progress.cancel() }
        wakeup.signal()
        let seconds = Double(timeout.components.seconds)
        _ = finished.wait(timeout: .now() + seconds)
    }

    /// For the CLI: runs one job in this process when its turn comes (or follows the replica
    /// that took it) until it has finished, and returns its final row. A retry after a
    /// transient failure is waited for.
    public static func runToCompletion(
        _ id: JobID, catalog: Catalog, configuration: TenureConfiguration, logger: Logger, onWait: (JobRecord) -> Void = { _ in }
    ) throws(TenureError) -> JobRecord {
        let worker = JobWorker(catalogParameters: catalog.parameters, configuration: configuration, logger: logger, slots: TransferSlots(limit: 1), only: id)
        worker.start()
        defer { worker.stop() }
        var reported: JobID?
        while true {
            let job = try catalog.job(id)
            if job.state.isFinished { return job }
            if let ahead = job.waitingFor, ahead != reported {
                reported = ahead
                onWait(job)
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
    }

    // MARK: The loop

    private func loop() {
        var catalog: Catalog?
        var lastRenewal = ContinuousClock.now
        var lastPrune = ContinuousClock.now - .seconds(3600)
        let renewEvery = configuration.jobs.lease / 3
        let poll = min(Duration.seconds(1), renewEvery)
        while true {
            let (stopping, idle) = state.withLock { ($0.stopping, $0.running.isEmpty) }
            if stopping && idle { break }
            do throws(TenureError) {
                if catalog == nil || catalog?.connection.isHealthy == false {
                    catalog?.close()
                    catalog = nil
                    catalog = try Catalog(parameters: parameters)
                }
                guard let catalog else { continue }
                if ContinuousClock.now - lastRenewal >= renewEvery {
                    lastRenewal = ContinuousClock.now
                    try renewLeases(catalog)
                }
                if !stopping { try claim(catalog) }
                if ContinuousClock.now - lastPrune >= .seconds(3600) {
                    lastPrune = ContinuousClock.now
                    let before = Date().addingTimeInterval(-Double(configuration.jobs.retention.components.seconds))
                    let pruned = try catalog.pruneJobs(finishedBefore: before)
                    if pruned > 0 { logger.info("finished jobs forgotten", metadata: ["tenure.count": "\(pruned)"]) }
                }
            } catch {
                logger.warning("job worker: the catalog failed; retrying", metadata: ["tenure.error": "\(error.message)"])
                catalog?.close()
                catalog = nil
            }
            let seconds = Double(poll.components.seconds) + Double(poll.components.attoseconds) / 1e18
            _ = wakeup.wait(timeout: .now() + seconds)
        }
        catalog?.close()
        finished.signal()
    }

    private func claim(_ catalog: Catalog) throws(TenureError) {
        while slots.tryAcquire() {
            let claimed: ClaimedJob?
            do {
                claimed = try catalog.claimJob(
                    owner: replicaID, lease: configuration.jobs.lease, policy: configuration.jobs.retry, now: Date(), only: only,
                    perServer: configuration.backupPolicy.concurrencyPerServer, movesPerServer: configuration.moveConcurrencyPerServer)
            } catch {
                slots.release()
                throw error
            }
            guard let claimed else {
                slots.release()
                return
            }
            launch(claimed)
        }
    }

    private func renewLeases(_ catalog: Catalog) throws(TenureError) {
        let running = state.withLock { $0.running.values.filter { !$0.lost } }
        for entry in running {
            let progress = Self.counters(entry.job.kind, entry.progress)
            switch try catalog.renewLease(entry.fence, owner: replicaID, lease: configuration.jobs.lease, progress: progress) {
            case .renewed(let cancelRequested):
                guard cancelRequested, !entry.cancelRequested else { continue }
                state.withLock { $0.running[entry.job.id]?.cancelRequested = true }
                logger.notice("job cancel requested; stopping it", metadata: ["tenure.job_id": "\(entry.job.id)"])
                entry.progress.cancel()
            case .lost:
                state.withLock { $0.running[entry.job.id]?.lost = true }
                logger.warning(
                    "job lease lost (another replica took the job over, or it was finished); stopping this attempt",
                    metadata: ["tenure.job_id": "\(entry.job.id)", "tenure.attempt": "\(entry.job.attempt)"])
                entry.progress.cancel()
            }
        }
    }

    static func counters(_ kind: JobKind, _ progress: TransferProgress) -> [String: Int64] {
        [
            "bytes": kind == .backup || kind == .export ? progress.compressedBytes.load(ordering: .relaxed) : progress.rawBytes.load(ordering: .relaxed),
            "rows": progress.rows.load(ordering: .relaxed),
        ]
    }

    // MARK: One attempt

    private func launch(_ claimed: ClaimedJob) {
        let job = claimed.job
        let fence = JobFence(jobID: job.id, fence: job.fence)
        let progress = TransferProgress()
        state.withLock { $0.running[job.id] = Running(job: job, fence: fence, progress: progress) }
        logger.info(
            "job started",
            metadata: [
                "tenure.job_id": "\(job.id)", "tenure.kind": "\(job.kind.rawValue)", "tenure.subject": "\(job.subject)",
                "tenure.attempt": "\(job.attempt)", "tenure.reclaimed": "\(claimed.reclaimed)",
            ])
        let thread = Thread {
            let outcome = self.attempt(claimed, fence: fence, progress: progress)
            self.end(job, fence: fence, progress: progress, outcome: outcome)
        }
        thread.name = "tenure-job-\(job.kind.rawValue)"
        thread.stackSize = 8 << 20
        thread.start()
    }

    private func attempt(_ claimed: ClaimedJob, fence: JobFence, progress: TransferProgress) -> Result<String, TenureError> {
        do throws(TenureError) {
            let catalog = try Catalog(parameters: parameters)
            defer { catalog.close() }
            catalog.fence = fence
            let controller = Controller(catalog: catalog, configuration: configuration, clock: SystemWallClock(), actor: claimed.job.actor, logger: logger)
            // A dead or failed attempt's leftovers (partial files, half-restored databases,
            // intents) are finished or rolled back before the work runs again.
            if claimed.reclaimed || claimed.job.attempt > 1 { try controller.recover() }
            return .success(try controller.perform(claimed.job, progress: progress))
        } catch {
            return .failure(error)
        }
    }

    private func end(_ job: JobRecord, fence: JobFence, progress: TransferProgress, outcome: Result<String, TenureError>) {
        let entry = state.withLock { $0.running[job.id] }
        let releasing = entry?.releasing ?? false
        let cancelRequested = entry?.cancelRequested ?? false
        let lost = entry?.lost ?? false
        let end: JobAttemptEnd
        var result: String?
        var error: TenureError?
        switch outcome {
        case .success(let document):
            end = .succeeded
            result = document
        case .failure(let failure):
            error = failure
            if releasing, !cancelRequested {
                end = .released
            } else if cancelRequested || failure.code == .cancelled {
                end = .cancelled
            } else {
                end = .failed(retryable: job.kind.retriesEveryFailure || JobRetryPolicy.isRetryable(failure.code, sqlState: failure.sqlState))
            }
        }
        let decision = configuration.jobs.retry.limited(to: job.maxAttempts).decide(attempt: job.attempt, end: end, cancelRequested: cancelRequested)
        let recorded = !lost && record(job, fence: fence, decision: decision, released: end == .released, result: result, error: error, progress: progress)
        let finalState: JobState
        switch decision {
        case .finish(let state): finalState = state
        case .retry: finalState = .queued
        }
        if !recorded {
            logger.warning(
                "job outcome not recorded: this attempt no longer owns the job", metadata: ["tenure.job_id": "\(job.id)", "tenure.attempt": "\(job.attempt)"])
        } else if let error {
            logger.warning(
                "job attempt failed",
                metadata: ["tenure.job_id": "\(job.id)", "tenure.attempt": "\(job.attempt)", "tenure.next": "\(finalState.rawValue)", "tenure.error": "\(error.message)"])
        }
        logger.info("job attempt ended", metadata: ["tenure.job_id": "\(job.id)", "tenure.state": "\(finalState.rawValue)", "tenure.recorded": "\(recorded)"])
        let elapsed = ContinuousClock.now - (entry?.started ?? ContinuousClock.now)
        state.withLock { _ = $0.running.removeValue(forKey: job.id) }
        slots.release()
        onAttemptEnd(
            JobAttemptReport(
                job: job, state: finalState, recorded: recorded, bytes: Self.counters(job.kind, progress)["bytes"] ?? 0,
                seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, result: result, error: error))
        wakeup.signal()
    }
}
