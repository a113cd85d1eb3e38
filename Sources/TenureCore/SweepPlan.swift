import Foundation

/// One database as the sweep planner sees it.
public struct SweepCandidate: Sendable, Equatable {
    public var id: DatabaseID
    public var name: String
    public var version: Int64
    public var lifecycle: DatabaseLifecycle

    public init(id: DatabaseID, name: String, version: Int64, lifecycle: DatabaseLifecycle) {
        self.id = id
        self.name = name
        self.version = version
        self.lifecycle = lifecycle
    }
}

/// The rule that makes a database due.
public enum SweepRule: String, Sendable, Codable {
    case trialEnd = "trial_end"
    case graceEnd = "grace_end"
}

/// What the sweep does with one due database.
public enum SweepDecision: String, Sendable, Codable {
    case deactivate
    case destroy
    /// Due for destruction but under a legal hold: nothing happens, and it is reported.
    case blockedByLegalHold = "blocked_by_legal_hold"
}

public struct SweepItem: Sendable, Equatable {
    public var id: DatabaseID
    public var name: String
    public var version: Int64
    public var rule: SweepRule
    public var deadline: Date
    public var decision: SweepDecision
}

/// Everything one sweep at `asOf` would do. The dry run prints this value; the real sweep
/// executes exactly this value (RELIABILITY D3).
public struct SweepPlan: Sendable, Equatable {
    public var asOf: Date
    public var items: [SweepItem]
    /// Databases that are not destroyed (the denominator of the blast-radius cap).
    public var fleetSize: Int
    /// How many destructions the cap allows in this sweep.
    public var destroyAllowance: Int
    /// Set when the blast-radius cap refuses every destruction of this sweep.
    public var refusal: String?

    public init(asOf: Date, items: [SweepItem], fleetSize: Int, destroyAllowance: Int, refusal: String?) {
        self.asOf = asOf
        self.items = items
        self.fleetSize = fleetSize
        self.destroyAllowance = destroyAllowance
        self.refusal = refusal
    }

    public var destroyCount: Int { items.filter { $0.decision == .destroy }.count }
}

/// Plans a sweep at `asOf` by running each candidate through the same lifecycle methods the
/// controller calls. Pure: the clock and the catalog are the caller's.
public func planSweep(candidates: [SweepCandidate], fleetSize: Int, asOf: Date, policy: LifecyclePolicy, limits: SweepLimits)
    -> SweepPlan
{
    var items: [SweepItem] = []
    for candidate in candidates.sorted(by: { $0.id.rawValue < $1.id.rawValue }) {
        var lifecycle = candidate.lifecycle
        switch lifecycle.state {
        case .trial:
            guard let end = lifecycle.trialEndsAt, (try? lifecycle.endTrial(now: asOf, policy: policy)) != nil else { continue }
            items.append(SweepItem(id: candidate.id, name: candidate.name, version: candidate.version, rule: .trialEnd, deadline: end, decision: .deactivate))
        case .deactivated:
            guard let deadline = lifecycle.destroyAfter, asOf >= deadline else { continue }
            let decision: SweepDecision = (try? lifecycle.endGrace(now: asOf)) != nil ? .destroy : .blockedByLegalHold
            items.append(SweepItem(id: candidate.id, name: candidate.name, version: candidate.version, rule: .graceEnd, deadline: deadline, decision: decision))
        case .provisioning, .active, .destroyed:
            continue
        }
    }
    let (allowance, shareAllowance) = destroyAllowance(fleetSize: fleetSize, limits: limits)
    var plan = SweepPlan(asOf: asOf, items: items, fleetSize: fleetSize, destroyAllowance: allowance, refusal: nil)
    plan.refusal = blastRadiusRefusal(count: plan.destroyCount, fleetSize: fleetSize, shareAllowance: shareAllowance, limits: limits, what: "databases")
    return plan
}

/// How many destructions one sweep may make in a fleet: (the cap, the share part of it).
/// At least one destruction is always within the share cap, or a fleet of fewer than ten
/// could never expire anything at the default 10 %.
func destroyAllowance(fleetSize: Int, limits: SweepLimits) -> (allowance: Int, share: Int) {
    let shareAllowance = max(1, Int((Double(fleetSize) * limits.maximumDestroyFraction).rounded(.down)))
    return (min(limits.maximumDestroyCount, shareAllowance), shareAllowance)
}

/// The blast-radius cap (RELIABILITY D4): why a sweep destroying `count` destroys nothing.
func blastRadiusRefusal(count: Int, fleetSize: Int, shareAllowance: Int, limits: SweepLimits, what: String) -> String? {
    if count > limits.maximumDestroyCount {
        return "the sweep would destroy \(count) \(what), more than TENURE_MAX_DESTROY_COUNT=\(limits.maximumDestroyCount); nothing is destroyed"
    }
    if count > shareAllowance {
        return "the sweep would destroy \(count) of \(fleetSize) live \(what), more than TENURE_MAX_DESTROY_FRACTION=\(limits.maximumDestroyFraction) of the fleet (at most \(shareAllowance)); nothing is destroyed"
    }
    return nil
}
