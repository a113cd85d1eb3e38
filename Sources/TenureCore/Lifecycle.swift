import Foundation

/// States of a hosted database (DESIGN.md §1).
public enum DatabaseState: String, Sendable, CaseIterable, Codable {
    case provisioning, trial, active, deactivated, destroyed
}

public enum Plan: String, Sendable, CaseIterable, Codable {
    case trial, paid
}

/// Events that move a hosted database through its life.
public enum LifecycleEvent: String, Sendable, CaseIterable, Codable {
    case create
    case ready
    case subscribe
    case cancel
    case trialEnd = "trial_end"
    case reactivate
    case graceEnd = "grace_end"
    case deletionRequest = "deletion_request"
    case hold
    case release
}

/// Why a database was destroyed; stored in its tombstone.
public enum DestructionReason: String, Sendable, Codable {
    case graceEnded = "grace_ended"
    case deletionRequested = "deletion_requested"
}

/// What the controller must do on the servers after a transition is accepted.
public enum LifecycleAction: Equatable, Sendable {
    /// Create the role and database.
    case provision
    /// Nothing outside the catalog (the record changed, the servers did not).
    case recordOnly
    /// Allow login again.
    case enableAccess
    /// Disable login and end open sessions; keep the data.
    case disableAccess
    /// Drop the database and its role, delete its backups, keep a tombstone.
    case destroy(DestructionReason)
}

/// A legal hold: blocks every destruction until released.
public struct LegalHold: Equatable, Sendable {
    public var reason: String
    public var since: Date
    public init(reason: String, since: Date) {
        self.reason = reason
        self.since = since
    }
}

/// The lifecycle of one hosted database as a pure value: no I/O, no clock, no logging.
///
/// One mutating method per event; each is an exhaustive `switch` over the state with no
/// `default`, so a new state breaks the build in every handler. A method either returns the
/// action the controller must carry out, or throws and leaves the value unchanged.
public struct DatabaseLifecycle: Equatable, Sendable {
    public private(set) var state: DatabaseState
    public private(set) var plan: Plan
    public private(set) var createdAt: Date
    public private(set) var trialEndsAt: Date?
    public private(set) var deactivatedAt: Date?
    public private(set) var destroyAfter: Date?
    public private(set) var destroyedAt: Date?
    public private(set) var destructionReason: DestructionReason?
    public private(set) var legalHold: LegalHold?

    /// Rebuilds a lifecycle from its stored fields (the catalog is the source of truth).
    public init(
        state: DatabaseState, plan: Plan, createdAt: Date, trialEndsAt: Date? = nil, deactivatedAt: Date? = nil,
        destroyAfter: Date? = nil, destroyedAt: Date? = nil, destructionReason: DestructionReason? = nil,
        legalHold: LegalHold? = nil
    ) {
        self.state = state
        self.plan = plan
        self.createdAt = createdAt
        self.trialEndsAt = trialEndsAt
        self.deactivatedAt = deactivatedAt
        self.destroyAfter = destroyAfter
        self.destroyedAt = destroyedAt
        self.destructionReason = destructionReason
        self.legalHold = legalHold
    }

    /// `create`: a new record in `provisioning`.
    public static func create(plan: Plan, now: Date) -> (DatabaseLifecycle, LifecycleAction) {
        (DatabaseLifecycle(state: .provisioning, plan: plan, createdAt: now), .provision)
    }

    /// Applies `event`; the same methods the controller calls, for table tests and dry runs.
    public mutating func apply(_ event: LifecycleEvent, now: Date, policy: LifecyclePolicy, holdReason: String = "legal hold")
        throws(TenureError) -> LifecycleAction
    {
        switch event {
        case .create: throw conflict(event, "the database already exists")
        case .ready: return try ready(now: now, policy: policy)
        case .subscribe: return try subscribe(now: now)
        case .cancel: return try cancel(now: now, policy: policy)
        case .trialEnd: return try endTrial(now: now, policy: policy)
        case .reactivate: return try reactivate(now: now)
        case .graceEnd: return try endGrace(now: now)
        case .deletionRequest: return try requestDeletion(now: now)
        case .hold: return try hold(reason: holdReason, now: now)
        case .release: return try release(now: now)
        }
    }

    /// `ready`: provisioning finished on the server.
    public mutating func ready(now: Date, policy: LifecyclePolicy) throws(TenureError) -> LifecycleAction {
        switch state {
        case .provisioning:
            switch plan {
            case .trial:
                state = .trial
                trialEndsAt = now.addingTimeInterval(policy.trialPeriod.timeInterval)
            case .paid:
                state = .active
            }
            return .recordOnly
        case .trial, .active, .deactivated, .destroyed:
            throw conflict(.ready, "only a provisioning database can become ready")
        }
    }

    /// `subscribe`: a trial becomes a paid, active database.
    public mutating func subscribe(now: Date) throws(TenureError) -> LifecycleAction {
        switch state {
        case .trial:
            state = .active
            plan = .paid
            trialEndsAt = nil
            return .recordOnly
        case .active:
            throw conflict(.subscribe, "the database is already active (subscribed)")
        case .deactivated:
            throw conflict(.subscribe, "a deactivated database is reactivated, not subscribed; use reactivate")
        case .provisioning, .destroyed:
            throw conflict(.subscribe, "only a trial database can subscribe")
        }
    }

    /// `cancel`: an active database is deactivated and its grace period starts now.
    public mutating func cancel(now: Date, policy: LifecyclePolicy) throws(TenureError) -> LifecycleAction {
        switch state {
        case .active:
            deactivate(now: now, policy: policy)
            return .disableAccess
        case .trial:
            throw conflict(.cancel, "a trial is not cancelled: it ends by itself, or subscribe, or request deletion")
        case .deactivated:
            throw conflict(.cancel, "the database is already deactivated")
        case .provisioning, .destroyed:
            throw conflict(.cancel, "only an active database can be cancelled")
        }
    }

    /// `trial_end`: a trial past its end is deactivated and its grace period starts now.
    public mutating func endTrial(now: Date, policy: LifecyclePolicy) throws(TenureError) -> LifecycleAction {
        switch state {
        case .trial:
            guard let end = trialEndsAt, now >= end else {
                throw conflict(.trialEnd, "the trial has not ended yet")
            }
            deactivate(now: now, policy: policy)
            return .disableAccess
        case .provisioning, .active, .deactivated, .destroyed:
            throw conflict(.trialEnd, "only a trial can end")
        }
    }

    /// `reactivate`: a deactivated database within its grace period becomes active again.
    public mutating func reactivate(now: Date) throws(TenureError) -> LifecycleAction {
        switch state {
        case .deactivated:
            if let deadline = destroyAfter, now >= deadline {
                throw conflict(.reactivate, "the grace period ended at \(RFC3339.format(deadline)); the database is due for destruction")
            }
            state = .active
            plan = .paid
            trialEndsAt = nil
            deactivatedAt = nil
            destroyAfter = nil
            return .enableAccess
        case .active:
            throw conflict(.reactivate, "the database is already active")
        case .provisioning, .trial, .destroyed:
            throw conflict(.reactivate, "only a deactivated database can be reactivated")
        }
    }

    /// `grace_end`: a deactivated database past its grace period is destroyed, unless held.
    public mutating func endGrace(now: Date) throws(TenureError) -> LifecycleAction {
        switch state {
        case .deactivated:
            guard let deadline = destroyAfter, now >= deadline else {
                throw conflict(.graceEnd, "the grace period has not ended yet")
            }
            try refuseIfHeld(.graceEnd)
            destroy(now: now, reason: .graceEnded)
            return .destroy(.graceEnded)
        case .provisioning, .trial, .active, .destroyed:
            throw conflict(.graceEnd, "only a deactivated database has a grace period")
        }
    }

    /// `deletion_request`: the customer asks for their data to be destroyed now.
    public mutating func requestDeletion(now: Date) throws(TenureError) -> LifecycleAction {
        switch state {
        case .trial, .active, .deactivated:
            try refuseIfHeld(.deletionRequest)
            destroy(now: now, reason: .deletionRequested)
            return .destroy(.deletionRequested)
        case .provisioning:
            throw conflict(.deletionRequest, "the database is still being provisioned; retry when it is ready")
        case .destroyed:
            throw conflict(.deletionRequest, "the database is already destroyed")
        }
    }

    /// `hold`: a legal hold blocks every destruction until released.
    public mutating func hold(reason: String, now: Date) throws(TenureError) -> LifecycleAction {
        switch state {
        case .provisioning, .trial, .active, .deactivated:
            if legalHold != nil { throw conflict(.hold, "the database is already under a legal hold") }
            legalHold = LegalHold(reason: reason, since: now)
            return .recordOnly
        case .destroyed:
            throw conflict(.hold, "the database is destroyed; there is nothing left to hold")
        }
    }

    /// `release`: lifts a legal hold. Deadlines that passed meanwhile apply at the next sweep.
    public mutating func release(now: Date) throws(TenureError) -> LifecycleAction {
        switch state {
        case .provisioning, .trial, .active, .deactivated:
            if legalHold == nil { throw conflict(.release, "the database is not under a legal hold") }
            legalHold = nil
            return .recordOnly
        case .destroyed:
            throw conflict(.release, "the database is destroyed")
        }
    }

    private mutating func deactivate(now: Date, policy: LifecyclePolicy) {
        state = .deactivated
        deactivatedAt = now
        destroyAfter = now.addingTimeInterval(policy.gracePeriod.timeInterval)
    }

    private mutating func destroy(now: Date, reason: DestructionReason) {
        state = .destroyed
        destroyedAt = now
        destructionReason = reason
    }

    private func refuseIfHeld(_ event: LifecycleEvent) throws(TenureError) {
        if let hold = legalHold {
            throw TenureError(
                .legalHold,
                "\(event.rawValue) refused: the database is under a legal hold since \(RFC3339.format(hold.since)) (\(hold.reason)); release the hold first",
                context: ["event": event.rawValue, "state": state.rawValue])
        }
    }

    private func conflict(_ event: LifecycleEvent, _ why: String) -> TenureError {
        TenureError(
            .lifecycleConflict, "\(event.rawValue) is not allowed in state \(state.rawValue): \(why)",
            context: ["event": event.rawValue, "state": state.rawValue])
    }
}
