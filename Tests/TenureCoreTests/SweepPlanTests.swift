import Foundation
import Testing
@testable import TenureCore

@Suite struct SweepPlanTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func candidate(_ state: DatabaseState, held: Bool = false, deadline: TimeInterval) -> SweepCandidate {
        let hold = held ? LegalHold(reason: "audit", since: t0) : nil
        let lifecycle: DatabaseLifecycle
        switch state {
        case .trial: lifecycle = DatabaseLifecycle(state: .trial, plan: .trial, createdAt: t0, trialEndsAt: t0 + deadline, legalHold: hold)
        case .deactivated:
            lifecycle = DatabaseLifecycle(state: .deactivated, plan: .paid, createdAt: t0, deactivatedAt: t0, destroyAfter: t0 + deadline, legalHold: hold)
        default: lifecycle = DatabaseLifecycle(state: state, plan: .paid, createdAt: t0, legalHold: hold)
        }
        return SweepCandidate(id: .random(), name: "n", version: 3, lifecycle: lifecycle)
    }

    @Test func dueItemsOnly() {
        let candidates = [
            candidate(.trial, deadline: 10), candidate(.trial, deadline: 1_000), candidate(.deactivated, deadline: 10),
            candidate(.deactivated, deadline: 1_000), candidate(.deactivated, held: true, deadline: 10), candidate(.active, deadline: 0),
        ]
        let plan = planSweep(candidates: candidates, fleetSize: 100, asOf: t0 + 100, policy: LifecyclePolicy(), limits: SweepLimits())
        #expect(plan.items.count == 3)
        #expect(plan.items.filter { $0.decision == .deactivate }.count == 1)
        #expect(plan.items.filter { $0.decision == .destroy }.count == 1)
        #expect(plan.items.filter { $0.decision == .blockedByLegalHold }.count == 1)
        #expect(plan.refusal == nil)
        // Exactly at the deadline counts as due.
        let exact = planSweep(candidates: [candidate(.deactivated, deadline: 100)], fleetSize: 100, asOf: t0 + 100, policy: LifecyclePolicy(), limits: SweepLimits())
        #expect(exact.destroyCount == 1)
    }

    @Test func blastRadiusShare() {
        let due = (0..<3).map { _ in candidate(.deactivated, deadline: 0) }
        let refused = planSweep(candidates: due, fleetSize: 20, asOf: t0 + 1, policy: LifecyclePolicy(), limits: SweepLimits())
        #expect(refused.destroyCount == 3 && refused.refusal != nil && refused.destroyAllowance == 2)
        let allowed = planSweep(candidates: due, fleetSize: 30, asOf: t0 + 1, policy: LifecyclePolicy(), limits: SweepLimits())
        #expect(allowed.refusal == nil)
        // One destruction is always within the share cap (a small fleet can still expire).
        let single = planSweep(candidates: [due[0]], fleetSize: 1, asOf: t0 + 1, policy: LifecyclePolicy(), limits: SweepLimits())
        #expect(single.refusal == nil)
    }

    @Test func blastRadiusCount() {
        let due = (0..<4).map { _ in candidate(.deactivated, deadline: 0) }
        let limits = SweepLimits(maximumDestroyFraction: 1, maximumDestroyCount: 3)
        #expect(planSweep(candidates: due, fleetSize: 4, asOf: t0 + 1, policy: LifecyclePolicy(), limits: limits).refusal != nil)
        #expect(planSweep(candidates: Array(due.prefix(3)), fleetSize: 4, asOf: t0 + 1, policy: LifecyclePolicy(), limits: limits).refusal == nil)
        let none = SweepLimits(maximumDestroyFraction: 1, maximumDestroyCount: 0)
        #expect(planSweep(candidates: [due[0]], fleetSize: 4, asOf: t0 + 1, policy: LifecyclePolicy(), limits: none).refusal != nil)
    }

    @Test func deactivationsAreNotCapped() {
        let due = (0..<10).map { _ in candidate(.trial, deadline: 0) }
        let plan = planSweep(candidates: due, fleetSize: 10, asOf: t0 + 1, policy: LifecyclePolicy(), limits: SweepLimits())
        #expect(plan.items.count == 10 && plan.refusal == nil)
    }
}
