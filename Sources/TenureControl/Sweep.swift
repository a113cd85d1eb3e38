import Foundation
import Logging
import TenureCatalog
import TenureCore

/// What a sweep did (or, for a dry run, would do).
public struct SweepReport: Sendable {
    public enum ItemOutcome: Sendable, Equatable {
        case planned
        case done
        case skipped(String)
        case refused(String)
    }

    public var dryRun: Bool
    public var plan: SweepPlan
    /// Parallel to `plan.items`.
    public var outcomes: [SweepReport.ItemOutcome]
    /// Set when the sweep as a whole refused to act (clock sanity).
    public var refusal: String?
    /// The fencing token of a real sweep.
    public var sweepID: Int64?
    public var recovered: [Controller.RecoveryAction]
    /// The upgrade service's part: uploads whose hold ended.
    public var uploadPlan: UploadSweepPlan
    /// Parallel to `uploadPlan.items`.
    public var uploadOutcomes: [SweepReport.ItemOutcome]
}

extension Controller {
    /// Runs (or, with `dryRun`, only plans) one expiry sweep at the clock's now, or at `asOf`
    /// for a dry run. The plan comes from the same pure planner in both cases, so a dry run
    /// lists exactly what a real sweep at that instant would do (RELIABILITY D3).
    public func sweep(dryRun: Bool, asOf: Date? = nil) throws(TenureError) -> SweepReport {
        precondition(dryRun || asOf == nil, "a real sweep runs at the clock's now")
        let now = clock.now()
        let instant = asOf ?? now
        if dryRun {
            let plan = try makePlan(at: instant)
            let uploadPlan = try makeUploadPlan(at: instant)
            return SweepReport(
                dryRun: true, plan: plan, outcomes: plan.items.map { _ in .planned }, refusal: try clockRefusal(now: now, checkHistory: asOf == nil),
                sweepID: nil, recovered: [], uploadPlan: uploadPlan, uploadOutcomes: uploadPlan.items.map { _ in .planned })
        }

        guard try catalog.tryLockSweep() else {
            throw TenureError(.sweepRunning, "another expiry sweep is running right now (it holds the catalog's sweep lock); nothing was done")
        }
        defer { try? catalog.unlockSweep() }

        if let refusal = try clockRefusal(now: now, checkHistory: true) {
            let plan = SweepPlan(asOf: now, items: [], fleetSize: try catalog.liveDatabaseCount(), destroyAllowance: 0, refusal: nil)
            try catalog.transaction { () throws(TenureError) in
                let id = try catalog.beginSweep(asOf: try catalog.lastSweepInstant() ?? now, startedAt: now)
                try catalog.endSweep(id: id, outcome: "refused", finishedAt: now, detail: ["reason": refusal])
                try catalog.audit(at: now, databaseID: nil, actor: actor, action: "sweep_refused", from: nil, to: nil, reason: refusal)
            }
            logger.error("expiry sweep refused", metadata: ["tenure.reason": "\(refusal)"])
            let uploadPlan = UploadSweepPlan(asOf: now, items: [], fleetSize: try catalog.liveUploadCount(), destroyAllowance: 0, refusal: nil)
            return SweepReport(
                dryRun: false, plan: plan, outcomes: [], refusal: refusal, sweepID: nil, recovered: [], uploadPlan: uploadPlan, uploadOutcomes: [])
        }

        let token = try catalog.beginSweep(asOf: now, startedAt: now)
        let recovered = try recover()
        let plan = try makePlan(at: now)
        if let refusal = plan.refusal {
            try catalog.audit(
                at: now, databaseID: nil, actor: actor, action: "sweep_destroy_refused", from: nil, to: nil, reason: refusal,
                detail: ["would_destroy": String(plan.destroyCount), "fleet": String(plan.fleetSize), "sweep": String(token)])
            logger.error("expiry sweep refused to destroy", metadata: ["tenure.reason": "\(refusal)"])
        }
        var outcomes: [SweepReport.ItemOutcome] = []
        for item in plan.items {
            switch item.decision {
            case .blockedByLegalHold:
                outcomes.append(.skipped("legal hold"))
                continue
            case .destroy where plan.refusal != nil:
                outcomes.append(.refused("blast-radius cap"))
                continue
            case .destroy, .deactivate:
                break
            }
            // Fencing: a sweep overtaken by a newer one (this process was paused) stops here.
            guard try catalog.isLatestSweep(token) else {
                outcomes.append(.skipped("a newer sweep took over"))
                continue
            }
            do throws(TenureError) {
                let event: LifecycleEvent = item.decision == .destroy ? .graceEnd : .trialEnd
                _ = try apply(event, to: item.id, reason: item.rule.rawValue, expectedVersion: item.version)
                outcomes.append(.done)
            } catch {
                outcomes.append(.skipped(error.message))
                logger.warning("sweep skipped a database", metadata: ["tenure.database_id": "\(item.id)", "tenure.error": "\(error.message)"])
            }
        }
        let uploadPlan = try makeUploadPlan(at: now)
        if let refusal = uploadPlan.refusal {
            try catalog.audit(
                at: now, databaseID: nil, actor: actor, action: "sweep_destroy_refused", from: nil, to: nil, reason: refusal,
                detail: ["would_destroy": String(uploadPlan.destroyCount), "fleet": String(uploadPlan.fleetSize), "sweep": String(token), "kind": "uploads"])
            logger.error("expiry sweep refused to destroy uploads", metadata: ["tenure.reason": "\(refusal)"])
        }
        var uploadOutcomes: [SweepReport.ItemOutcome] = []
        for item in uploadPlan.items {
            switch item.decision {
            case .blockedByLegalHold:
                uploadOutcomes.append(.skipped("legal hold"))
                continue
            case .destroy where uploadPlan.refusal != nil:
                uploadOutcomes.append(.refused("blast-radius cap"))
                continue
            case .destroy, .deactivate:
                break
            }
            guard try catalog.isLatestSweep(token) else {
                uploadOutcomes.append(.skipped("a newer sweep took over"))
                continue
            }
            do throws(TenureError) {
                _ = try deleteUpload(item.id, reason: "hold_end", expectedVersion: item.version)
                uploadOutcomes.append(.done)
            } catch {
                uploadOutcomes.append(.skipped(error.message))
                logger.warning("sweep skipped an upload", metadata: ["tenure.upload_id": "\(item.id)", "tenure.error": "\(error.message)"])
            }
        }
        let done = outcomes.filter { $0 == .done }.count
        let uploadsDone = uploadOutcomes.filter { $0 == .done }.count
        try catalog.endSweep(
            id: token, outcome: plan.refusal == nil && uploadPlan.refusal == nil ? "completed" : "refused", finishedAt: clock.now(),
            detail: [
                "due": String(plan.items.count), "done": String(done), "refusal": plan.refusal ?? "", "uploads_due": String(uploadPlan.items.count),
                "uploads_done": String(uploadsDone), "uploads_refusal": uploadPlan.refusal ?? "",
            ])
        return SweepReport(
            dryRun: false, plan: plan, outcomes: outcomes, refusal: nil, sweepID: token, recovered: recovered, uploadPlan: uploadPlan,
            uploadOutcomes: uploadOutcomes)
    }

    func makePlan(at instant: Date) throws(TenureError) -> SweepPlan {
        let candidates = try (catalog.databases(state: .trial) + catalog.databases(state: .deactivated)).map {
            SweepCandidate(id: $0.id, name: $0.name, version: $0.version, lifecycle: $0.lifecycle)
        }
        return planSweep(
            candidates: candidates, fleetSize: try catalog.liveDatabaseCount(), asOf: instant, policy: configuration.policy,
            limits: configuration.sweepLimits)
    }

    /// Clock sanity (RELIABILITY D7): refuse if our clock is behind the last sweep's instant,
    /// or disagrees with the catalog server's clock by more than the configured skew.
    func clockRefusal(now: Date, checkHistory: Bool) throws(TenureError) -> String? {
        if checkHistory, let last = try catalog.lastSweepInstant(), now < last {
            return "the clock went backwards: now is \(RFC3339.format(now)) but the last sweep ran at \(RFC3339.format(last)); nothing is done until the clock is fixed"
        }
        let server = try catalog.serverNow()
        let skew = abs(server.timeIntervalSince(now))
        if skew > configuration.sweepLimits.maximumClockSkew.timeInterval {
            return "this clock (\(RFC3339.format(now))) and the catalog server's (\(RFC3339.format(server))) differ by \(Int(skew)) s, more than TENURE_MAX_CLOCK_SKEW=\(PolicyDuration.format(configuration.sweepLimits.maximumClockSkew)); nothing is done"
        }
        return nil
    }
}
