import Foundation
import Hummingbird
import TenureControl
import Logging
import ServiceLifecycle
import TenureCore

/// The backup policy's routes: the fleet's backup status and restore drills.
extension Routes {
    func registerPolicy(on v1: RouterGroup<APIContext>) {
        v1.get("backup-status") { request, context in try await backupStatus(request, context) }
        v1.get("drills") { request, context in try await listDrills(request, context) }
        v1.post("drills") { request, context in try await startDrill(request, context) }
    }

    func backupStatus(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        let query = try Query(request, allowed: ["stale"])
        let staleOnly: Bool
        switch query["stale"] {
        case nil, "false": staleOnly = false
        case "true": staleOnly = true
        case let other?: throw TenureError(.invalidRequest, "stale must be true or false, not '\(printable(other))'")
        }
        let status = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            try controller.backupStatus(staleOnly: staleOnly)
        }
        return jsonResponse(backupStatusDocument(status, now: Date()))
    }

    func listDrills(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        let query = try Query(request, allowed: ["database_id", "backup_id", "limit"])
        let databaseID = try query["database_id"].map { (text) throws(TenureError) in try DatabaseID(parsing: text) }
        let backupID = try query["backup_id"].map { (text) throws(TenureError) in try BackupID(parsing: text) }
        let limit = try query["limit"].map { (text) throws(TenureError) -> Int in
            guard let value = Int(text), (1...1000).contains(value) else { throw TenureError(.invalidRequest, "limit must be a whole number from 1 to 1000") }
            return value
        } ?? 100
        let drills = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            try controller.drills(databaseID: databaseID, backupID: backupID, limit: limit)
        }
        return jsonResponse(["drills": drills.map(drillDocument)])
    }

    func startDrill(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let body = try await JSONBody.read(request, context: context, allowed: ["backup_id", "database_id"], maximumByteCount: maximumBody)
        let backupID = try body.string("backup_id", required: false).map { (text) throws(TenureError) in try BackupID(parsing: text) }
        let databaseID = try body.string("database_id", required: false).map { (text) throws(TenureError) in try DatabaseID(parsing: text) }
        guard backupID != nil || databaseID != nil else { throw TenureError(.invalidRequest, "give backup_id or database_id") }
        let job = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            try controller.requestDrill(backupID: backupID, databaseID: databaseID)
        }
        return accepted(job)
    }
}

/// The backup scheduler of this replica: every tick a pass (which runs on one replica at a
/// time) queues due backups and drills; each pass also sets the fleet's freshness gauges.
struct ScheduleService: Service {
    let pool: ControlPool
    let jobs: JobService
    let metrics: ServerMetrics

    /// A tenth of the shorter of the backup and drill intervals, between 1 s and 30 s.
    var tick: Duration {
        let policy = pool.configuration.backupPolicy
        let interval = min(policy.interval ?? .seconds(300), policy.drillInterval ?? .seconds(300))
        return min(.seconds(30), max(.seconds(1), interval / 10))
    }

    func run() async throws {
        let logger = pool.logger
        while !Task.isShuttingDownGracefully {
            let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<ScheduleReport, TenureError>, Never>) in
                pool.detached(actor: "scheduler", name: "tenure-scheduler") { controller in
                    do throws(TenureError) {
                        continuation.resume(returning: .success(try controller.get().schedulePass()))
                    } catch {
                        continuation.resume(returning: .failure(error))
                    }
                }
            }
            switch result {
            case .success(let report):
                metrics.set("tenure_catalog_up", 1)
                if report.backupsQueued + report.drillsQueued > 0 {
                    metrics.add("tenure_backups_scheduled_total", [], Double(report.backupsQueued))
                    metrics.add("tenure_drills_scheduled_total", [], Double(report.drillsQueued))
                    jobs.worker.wake()
                }
                if let status = report.status {
                    metrics.set("tenure_backups_stale", Double(status.stale))
                    metrics.set("tenure_backup_newest_verified_oldest_age_seconds", status.oldestNewestVerifiedAge)
                    metrics.set("tenure_backups_drill_failed", Double(status.drillFailed))
                    metrics.set("tenure_databases_live", Double(status.databases))
                }
            case .failure(let error):
                if error.code == .catalogUnavailable { metrics.set("tenure_catalog_up", 0) }
                metrics.add("tenure_scheduler_errors_total")
                logger.error("backup scheduler pass failed", metadata: ["tenure.error": "\(error.message)"])
            }
            let tick = self.tick
            try? await cancelWhenGracefulShutdown {
                try await Task.sleep(for: tick)
            }
        }
    }
}
