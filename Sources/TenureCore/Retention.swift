import Foundation

/// How many backups a database keeps (issue 15's policy): the newest `keepLast`, and as tiers
/// the newest verified backup of each of the last `keepDaily` UTC days, `keepWeekly` ISO weeks
/// and `keepMonthly` months that have one.
public struct RetentionPolicy: Sendable, Equatable {
    public var keepLast: Int
    public var keepDaily: Int
    public var keepWeekly: Int
    public var keepMonthly: Int

    public init(keepLast: Int = 1, keepDaily: Int = 7, keepWeekly: Int = 4, keepMonthly: Int = 3) {
        self.keepLast = max(1, keepLast)
        self.keepDaily = max(0, keepDaily)
        self.keepWeekly = max(0, keepWeekly)
        self.keepMonthly = max(0, keepMonthly)
    }
}

/// One backup as retention sees it.
public struct RetentionCandidate: Sendable, Equatable {
    public var id: String
    /// When the backup was taken (its snapshot).
    public var takenAt: Date
    public var state: BackupState
    /// Set when a restore drill of it passed.
    public var drillPassed: Bool

    public init(id: String, takenAt: Date, state: BackupState, drillPassed: Bool = false) {
        self.id = id
        self.takenAt = takenAt
        self.state = state
        self.drillPassed = drillPassed
    }
}

/// Why a backup is kept.
public enum RetentionReason: String, Sendable, CaseIterable, Comparable {
    case legalHold = "legal_hold"
    case newestVerified = "newest_verified"
    case newestDrilled = "newest_drilled"
    case last, daily, weekly, monthly
    /// Not verified, but no verified backup is newer (or it is still being written).
    case unsettled

    public static func < (a: Self, b: Self) -> Bool { allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)! }
}

/// What retention decided for one database: every backup is either kept (with its reasons)
/// or deleted; rows already `deleted` are left out.
public struct RetentionPlan: Sendable, Equatable {
    public var keep: [String: Set<RetentionReason>]
    public var delete: [String]
}

/// Retention as a pure function: no clock, no I/O. Periods are counted among those that have
/// a verified backup (as restic and borg count them), so an outage or a clock jump never
/// empties a tier; whatever the inputs, the newest verified backup, the newest one that
/// passed a drill and everything under a legal hold are kept.
public enum Retention {
    public static func plan(_ backups: [RetentionCandidate], policy: RetentionPolicy, legalHold: Bool) -> RetentionPlan {
        let live = backups.filter { $0.state != .deleted }
        var keep: [String: Set<RetentionReason>] = [:]
        func mark(_ id: String, _ reason: RetentionReason) { keep[id, default: []].insert(reason) }
        if legalHold {
            for backup in live { mark(backup.id, .legalHold) }
            return RetentionPlan(keep: keep, delete: [])
        }
        // Newest first; equal instants ordered by id so the plan never depends on input order.
        let verified = live.filter { $0.state == .verified }.sorted { ($0.takenAt, $0.id) > ($1.takenAt, $1.id) }
        if let newest = verified.first { mark(newest.id, .newestVerified) }
        if let drilled = verified.first(where: \.drillPassed) { mark(drilled.id, .newestDrilled) }
        for backup in verified.prefix(policy.keepLast) { mark(backup.id, .last) }
        keepNewestPerPeriod(verified, count: policy.keepDaily, reason: .daily, period: Self.day, mark: mark)
        keepNewestPerPeriod(verified, count: policy.keepWeekly, reason: .weekly, period: Self.isoWeek, mark: mark)
        keepNewestPerPeriod(verified, count: policy.keepMonthly, reason: .monthly, period: Self.month, mark: mark)
        // Not verified: kept while running, or while no verified backup is newer.
        let newestVerified = verified.first?.takenAt
        for backup in live where backup.state != .verified {
            if backup.state == .running || newestVerified.map({ backup.takenAt >= $0 }) ?? true { mark(backup.id, .unsettled) }
        }
        let delete = live.filter { keep[$0.id] == nil }.sorted { ($0.takenAt, $0.id) < ($1.takenAt, $1.id) }.map(\.id)
        return RetentionPlan(keep: keep, delete: delete)
    }

    /// The newest backup of each of the newest `count` periods that have one.
    private static func keepNewestPerPeriod(
        _ newestFirst: [RetentionCandidate], count: Int, reason: RetentionReason, period: (Date) -> String,
        mark: (String, RetentionReason) -> Void
    ) {
        guard count > 0 else { return }
        var seen = Set<String>()
        for backup in newestFirst {
            let key = period(backup.takenAt)
            guard !seen.contains(key) else { continue }
            seen.insert(key)
            mark(backup.id, reason)
            if seen.count == count { return }
        }
    }

    static let utc: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    static let iso: Calendar = {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    /// `2026-12-01`: the UTC day.
    static func day(_ date: Date) -> String {
        let parts = utc.dateComponents([.year, .month, .day], from: date)
        return "\(parts.year!)-\(parts.month!)-\(parts.day!)"
    }

    /// `2026-W49`: the ISO week (weeks start on Monday; the week-numbering year may differ
    /// from the calendar year around New Year).
    static func isoWeek(_ date: Date) -> String {
        let parts = iso.dateComponents([.yearForWeekOfYear, .weekOfYear], from: date)
        return "\(parts.yearForWeekOfYear!)-W\(parts.weekOfYear!)"
    }

    /// `2026-12`: the UTC month.
    static func month(_ date: Date) -> String {
        let parts = utc.dateComponents([.year, .month], from: date)
        return "\(parts.year!)-\(parts.month!)"
    }
}
