import Foundation
import Testing
@testable import TenureCore

/// Every (state, event) pair, with and without a legal hold, before and after the deadlines.
@Suite struct LifecycleTableTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    static let policy = LifecyclePolicy()

    /// A lifecycle in `state`, as the catalog would hold it, created at t0.
    static func lifecycle(_ state: DatabaseState, held: Bool = false, plan: Plan = .trial) -> DatabaseLifecycle {
        let hold = held ? LegalHold(reason: "court order", since: t0) : nil
        switch state {
        case .provisioning:
            return DatabaseLifecycle(state: .provisioning, plan: plan, createdAt: t0, legalHold: hold)
        case .trial:
            return DatabaseLifecycle(state: .trial, plan: .trial, createdAt: t0, trialEndsAt: t0 + 15 * 86_400, legalHold: hold)
        case .active:
            return DatabaseLifecycle(state: .active, plan: .paid, createdAt: t0, legalHold: hold)
        case .deactivated:
            return DatabaseLifecycle(
                state: .deactivated, plan: .paid, createdAt: t0, deactivatedAt: t0 + 100, destroyAfter: t0 + 100 + 1_814_400, legalHold: hold)
        case .destroyed:
            return DatabaseLifecycle(state: .destroyed, plan: .paid, createdAt: t0, destroyedAt: t0 + 200, destructionReason: .deletionRequested)
        }
    }

    enum Expected: Equatable {
        case to(DatabaseState, LifecycleAction)
        case conflict
        case legalHold
    }

    /// (state, event) → outcome at an instant when every deadline has passed, without a hold.
    static let dueTable: [DatabaseState: [LifecycleEvent: Expected]] = [
        .provisioning: [
            .create: .conflict, .ready: .to(.trial, .recordOnly), .subscribe: .conflict, .cancel: .conflict, .trialEnd: .conflict,
            .reactivate: .conflict, .graceEnd: .conflict, .deletionRequest: .conflict, .hold: .to(.provisioning, .recordOnly), .release: .conflict,
        ],
        .trial: [
            .create: .conflict, .ready: .conflict, .subscribe: .to(.active, .recordOnly), .cancel: .conflict,
            .trialEnd: .to(.deactivated, .disableAccess), .reactivate: .conflict, .graceEnd: .conflict,
            .deletionRequest: .to(.destroyed, .destroy(.deletionRequested)), .hold: .to(.trial, .recordOnly), .release: .conflict,
        ],
        .active: [
            .create: .conflict, .ready: .conflict, .subscribe: .conflict, .cancel: .to(.deactivated, .disableAccess), .trialEnd: .conflict,
            .reactivate: .conflict, .graceEnd: .conflict, .deletionRequest: .to(.destroyed, .destroy(.deletionRequested)),
            .hold: .to(.active, .recordOnly), .release: .conflict,
        ],
        .deactivated: [
            .create: .conflict, .ready: .conflict, .subscribe: .conflict, .cancel: .conflict, .trialEnd: .conflict,
            // Past the grace period, reactivation is too late.
            .reactivate: .conflict, .graceEnd: .to(.destroyed, .destroy(.graceEnded)),
            .deletionRequest: .to(.destroyed, .destroy(.deletionRequested)), .hold: .to(.deactivated, .recordOnly), .release: .conflict,
        ],
        .destroyed: Dictionary(uniqueKeysWithValues: LifecycleEvent.allCases.map { ($0, Expected.conflict) }),
    ]

    static func outcome(_ lifecycle: DatabaseLifecycle, _ event: LifecycleEvent, at now: Date) -> (Expected, DatabaseLifecycle) {
        var copy = lifecycle
        do {
            let action = try copy.apply(event, now: now, policy: policy)
            return (.to(copy.state, action), copy)
        } catch {
            #expect(copy == lifecycle, "a refused event must not change the value")
            return (error.code == .legalHold ? .legalHold : .conflict, copy)
        }
    }

    @Test(arguments: DatabaseState.allCases)
    func everyEventWhenDue(state: DatabaseState) {
        let due = Self.t0 + 400 * 86_400
        for event in LifecycleEvent.allCases {
            let (got, _) = Self.outcome(Self.lifecycle(state), event, at: due)
            #expect(got == Self.dueTable[state]![event]!, "\(state) + \(event)")
        }
    }

    @Test(arguments: DatabaseState.allCases)
    func everyEventUnderLegalHold(state: DatabaseState) {
        guard state != .destroyed else { return }
        let due = Self.t0 + 400 * 86_400
        for event in LifecycleEvent.allCases {
            let (got, after) = Self.outcome(Self.lifecycle(state, held: true), event, at: due)
            var expected = Self.dueTable[state]![event]!
            switch event {
            case .hold: expected = .conflict  // already held
            case .release: expected = .to(state, .recordOnly)
            case .deletionRequest, .graceEnd:
                if case .to(.destroyed, _) = expected { expected = .legalHold }
            default: break
            }
            #expect(got == expected, "held \(state) + \(event)")
            if event == .release, case .to = got { #expect(after.legalHold == nil) }
        }
    }

    @Test func deadlinesNotYetReached() {
        let early = Self.t0 + 3_600
        #expect(Self.outcome(Self.lifecycle(.trial), .trialEnd, at: early).0 == .conflict)
        #expect(Self.outcome(Self.lifecycle(.deactivated), .graceEnd, at: early).0 == .conflict)
        #expect(Self.outcome(Self.lifecycle(.deactivated), .reactivate, at: early).0 == .to(.active, .enableAccess))
    }

    @Test func graceIsExactly1814400SecondsAfterDeactivation() throws {
        var active = Self.lifecycle(.active)
        let cancelledAt = Date(timeIntervalSince1970: 1_799_999_999.25)
        #expect(try active.cancel(now: cancelledAt, policy: Self.policy) == .disableAccess)
        #expect(active.deactivatedAt == cancelledAt)
        #expect(active.destroyAfter!.timeIntervalSince(cancelledAt) == 1_814_400)
        var early = active
        #expect(throws: TenureError.self) { try early.endGrace(now: cancelledAt + 1_814_399.9) }
        var onTime = active
        #expect(try onTime.endGrace(now: cancelledAt + 1_814_400) == .destroy(.graceEnded))
    }

    @Test func readyFollowsThePlan() throws {
        var trial = DatabaseLifecycle.create(plan: .trial, now: Self.t0).0
        _ = try trial.ready(now: Self.t0, policy: Self.policy)
        #expect(trial.state == .trial && trial.trialEndsAt == Self.t0 + 15 * 86_400)
        var paid = DatabaseLifecycle.create(plan: .paid, now: Self.t0).0
        _ = try paid.ready(now: Self.t0, policy: Self.policy)
        #expect(paid.state == .active && paid.trialEndsAt == nil)
    }

    @Test func reactivationClearsTheDeadline() throws {
        var deactivated = Self.lifecycle(.deactivated)
        _ = try deactivated.reactivate(now: Self.t0 + 1_000)
        #expect(deactivated.state == .active && deactivated.destroyAfter == nil && deactivated.deactivatedAt == nil)
    }
}
