import Foundation
import Logging
import ServiceLifecycle
import TenureControl
import TenureCore

/// The durable job worker of this replica as a swift-service-lifecycle service, and the
/// transfer slots it shares with streamed exports. Jobs themselves live in the catalog: any
/// replica answers for any job, across restarts.
final class JobService: Service, Sendable {
    let worker: JobWorker
    let metrics: ServerMetrics

    init(pool: ControlPool, metrics: ServerMetrics) {
        self.metrics = metrics
        worker = pool.makeJobWorker { report in
            metrics.add("tenure_jobs_total", [("kind", report.job.kind.rawValue), ("outcome", report.recorded ? report.state.rawValue : "refused")])
            metrics.record("tenure_job_duration_seconds", [("kind", report.job.kind.rawValue)], .milliseconds(Int64(report.seconds * 1000)))
            if report.error?.context["backup_store"] != nil { metrics.add("tenure_backup_store_errors_total") }
            guard report.state == .succeeded else { return }
            let result = report.result.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] } ?? [:]
            switch report.job.kind {
            case .backup:
                metrics.add("tenure_backup_bytes_total", [], Double(report.bytes))
                let deleted = (result["retention"] as? [String: Any])?["deleted"] as? Int ?? 0
                if deleted > 0 { metrics.add("tenure_backup_retention_deleted_total", [], Double(deleted)) }
            case .restore:
                metrics.add("tenure_restore_bytes_total", [], Double(report.bytes))
            case .drill:
                let outcome = (result["drill"] as? [String: Any])?["outcome"] as? String ?? "failed"
                metrics.add("tenure_drills_total", [("outcome", outcome == "passed" ? "passed" : "failed")])
            case .upgrade, .export, .purge, .duplicate, .move:
                break
            }
        }
    }

    /// The live document of a job (live progress when this replica runs it).
    func document(_ job: JobRecord) -> [String: Any] {
        jobDocument(job, live: worker.progress(of: job.id), now: Date())
    }

    /// Takes a transfer slot for a streamed export or upload, or fails with 429. The job
    /// worker holds a slot for a moment each time it looks for a job to claim (so a claim never
    /// goes over the limit, even when nothing is claimable); a request arriving in that moment
    /// waits for the slot (up to a second) instead of being refused while one is free.
    func acquireTransfer() async throws(TenureError) {
        let limit = worker.slots.limit
        let deadline = ContinuousClock.now + .seconds(1)
        while !worker.slots.tryAcquire() {
            var cancelled = false
            if ContinuousClock.now < deadline {
                do { try await Task.sleep(for: .milliseconds(20)) } catch { cancelled = true }
            }
            if cancelled || ContinuousClock.now >= deadline {
                throw TenureError(
                    .limitExceeded, "\(limit) transfers (exports, backups, restores) are running, the most this server allows at once; retry later",
                    context: ["retry_after": "5", "limit": String(limit)])
            }
        }
        metrics.gauge("tenure_exports_running", adding: 1)
    }

    func releaseTransfer() {
        worker.slots.release()
        metrics.gauge("tenure_exports_running", adding: -1)
        worker.wake()
    }

    /// Starts the worker, and on graceful shutdown lets running jobs go (each cleans up and
    /// is released to another replica) before the process ends.
    func run() async throws {
        worker.start()
        try? await gracefulShutdown()
        let worker = self.worker
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let thread = Thread {
                worker.stop()
                continuation.resume()
            }
            thread.start()
        }
    }
}
