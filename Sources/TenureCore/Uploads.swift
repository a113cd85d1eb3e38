import Foundation

/// The states of a database uploaded to the upgrade service (DESIGN.md section 1).
public enum UploadState: String, Sendable, CaseIterable, Codable {
    case uploading
    case uploaded
    case rejected
    case upgrading
    case upgraded
    case upgradeFailed = "upgrade-failed"
    case destroyed

    /// States whose data exists and waits for its hold to end.
    public var holdsData: Bool {
        switch self {
        case .uploaded, .upgraded, .upgradeFailed: return true
        case .uploading, .upgrading, .rejected, .destroyed: return false
        }
    }
}

/// Events that move an upload through its life.
public enum UploadEvent: String, Sendable, CaseIterable {
    /// The dump restored and passed the post-checks.
    case restored
    /// The dump was refused, or the restore failed or was interrupted.
    case reject
    case upgradeStart = "upgrade_start"
    case upgradeSucceed = "upgrade_succeed"
    /// A script failed, or the upgrade was cancelled or interrupted.
    case upgradeFail = "upgrade_fail"
    case destroy
}

/// The upgrade service's state machine as a pure function: no I/O, no clock. Every
/// transition the controller makes goes through `next`, which either answers the new state
/// or throws `lifecycle.conflict` naming the state and what was asked.
///
///     uploading --restored--> uploaded --upgrade_start--> upgrading --upgrade_succeed--> upgraded
///         |                      |                            '--upgrade_fail--> upgrade-failed
///         '--reject--> rejected  '--destroy--> destroyed    (upgraded and upgrade-failed: as uploaded)
public enum UploadLifecycle {
    public static func next(_ state: UploadState, on event: UploadEvent, id: String = "") throws(TenureError) -> UploadState {
        let upload = id.isEmpty ? "the upload" : "upload \(id)"
        func conflict(_ message: String) -> TenureError {
            TenureError(.lifecycleConflict, message, context: id.isEmpty ? [:] : ["upload_id": id])
        }
        switch event {
        case .restored, .reject:
            switch state {
            case .uploading: return event == .restored ? .uploaded : .rejected
            case .uploaded, .rejected, .upgrading, .upgraded, .upgradeFailed, .destroyed:
                throw conflict("\(upload) is \(state.rawValue), not uploading: it cannot be \(event == .restored ? "marked uploaded" : "rejected")")
            }
        case .upgradeStart:
            switch state {
            case .uploaded, .upgraded, .upgradeFailed: return .upgrading
            case .uploading, .upgrading: throw conflict("\(upload) is \(state.rawValue); wait until it finishes")
            case .rejected, .destroyed: throw conflict("a \(state.rawValue) upload cannot be upgraded")
            }
        case .upgradeSucceed, .upgradeFail:
            switch state {
            case .upgrading: return event == .upgradeSucceed ? .upgraded : .upgradeFailed
            case .uploading, .uploaded, .rejected, .upgraded, .upgradeFailed, .destroyed:
                throw conflict("\(upload) is \(state.rawValue), not upgrading: no upgrade can finish")
            }
        case .destroy:
            switch state {
            case .uploaded, .upgraded, .upgradeFailed, .rejected: return .destroyed
            case .uploading, .upgrading:
                throw conflict("\(upload) is \(state.rawValue); cancel the job or retry when it finishes; nothing was destroyed")
            case .destroyed: throw conflict("\(upload) is already destroyed")
            }
        }
    }
}

/// How long an upload's result is kept: calendar months in UTC, clamped to the month's end
/// (31 Oct + 4 months = the last day of February), or a fixed duration (for tests and
/// operators who want one). Default: 4 calendar months.
public enum UploadHold: Sendable, Equatable, CustomStringConvertible {
    case months(Int)
    case fixed(Duration)

    public static let `default` = UploadHold.months(4)

    /// `4mo`, `4 months`, `1 month`, or any policy duration (`30d`, `36h`).
    public static func parse(_ text: String, setting: String = "TENURE_UPGRADE_HOLD") throws(TenureError) -> UploadHold {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        for suffix in ["months", "month", "mo"] where trimmed.hasSuffix(suffix) {
            let number = trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)
            guard let value = Int(number), (1...1200).contains(value) else {
                throw TenureError(.invalidConfiguration, "\(setting)='\(printable(text))' must be 1 to 1200 months, such as 4mo, or a duration such as 120d")
            }
            return .months(value)
        }
        return .fixed(try PolicyDuration.parse(trimmed, setting: setting))
    }

    public var description: String {
        switch self {
        case .months(let count): return "\(count)mo"
        case .fixed(let duration): return PolicyDuration.format(duration)
        }
    }

    /// The instant the hold that started at `start` ends.
    public func end(from start: Date) -> Date {
        switch self {
        case .fixed(let duration): return start.addingTimeInterval(duration.timeInterval)
        case .months(let count): return Self.addingCalendarMonths(count, to: start)
        }
    }

    /// `count` calendar months after `date` in UTC, same time of day; a day past the end of
    /// the target month becomes its last day (31 Oct + 4 = 28 Feb, or 29 in a leap year).
    public static func addingCalendarMonths(_ count: Int, to date: Date) -> Date {
        let seconds = Int64(date.timeIntervalSince1970.rounded(.down))
        let fraction = date.timeIntervalSince1970 - Double(seconds)
        var days = seconds / 86_400
        var secondOfDay = seconds % 86_400
        if secondOfDay < 0 {
            secondOfDay += 86_400
            days -= 1
        }
        let (year, month, day) = civil(fromDays: days)
        let monthIndex = Int64(year) * 12 + Int64(month - 1) + Int64(count)
        let newYear = Int(monthIndex >= 0 ? monthIndex / 12 : (monthIndex - 11) / 12)
        let newMonth = Int(monthIndex - Int64(newYear) * 12) + 1
        let newDay = min(day, daysIn(month: newMonth, year: newYear))
        let newDays = daysFromCivil(year: newYear, month: newMonth, day: newDay)
        return Date(timeIntervalSince1970: Double(newDays * 86_400 + secondOfDay) + fraction)
    }

    public static func isLeap(_ year: Int) -> Bool { (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 }

    public static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    // Howard Hinnant's days-from-civil algorithms (proleptic Gregorian, UTC).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let m = Int64(month)
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + Int64(day) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civil(fromDays days: Int64) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (Int(m <= 2 ? y + 1 : y), Int(m), Int(d))
    }
}

/// One upload as the sweep planner sees it.
public struct UploadCandidate: Sendable, Equatable {
    public var id: UploadID
    public var version: Int64
    public var state: UploadState
    /// When the upload arrived (the hold's start before any successful upgrade).
    public var uploadedAt: Date
    /// The last successful upgrade, if any (the hold's start after it).
    public var lastUpgradedAt: Date?
    public var legalHold: Bool

    public init(id: UploadID, version: Int64, state: UploadState, uploadedAt: Date, lastUpgradedAt: Date?, legalHold: Bool) {
        self.id = id
        self.version = version
        self.state = state
        self.uploadedAt = uploadedAt
        self.lastUpgradedAt = lastUpgradedAt
        self.legalHold = legalHold
    }

    /// When the hold ends: `hold` after the last successful upgrade, or after the upload.
    public func holdEnds(_ hold: UploadHold) -> Date { hold.end(from: lastUpgradedAt ?? uploadedAt) }
}

public struct UploadSweepItem: Sendable, Equatable {
    public var id: UploadID
    public var version: Int64
    public var deadline: Date
    public var decision: SweepDecision
}

/// The uploads one sweep at `asOf` destroys; the cap applies to the uploads' own fleet.
public struct UploadSweepPlan: Sendable, Equatable {
    public var asOf: Date
    public var items: [UploadSweepItem]
    public var fleetSize: Int
    public var destroyAllowance: Int
    public var refusal: String?

    public init(asOf: Date, items: [UploadSweepItem], fleetSize: Int, destroyAllowance: Int, refusal: String?) {
        self.asOf = asOf
        self.items = items
        self.fleetSize = fleetSize
        self.destroyAllowance = destroyAllowance
        self.refusal = refusal
    }

    public var destroyCount: Int { items.filter { $0.decision == .destroy }.count }
}

/// Plans the uploads part of a sweep: every upload holding data whose hold ended is due;
/// one under a legal hold is reported, not destroyed. Pure.
public func planUploadSweep(candidates: [UploadCandidate], fleetSize: Int, asOf: Date, hold: UploadHold, limits: SweepLimits) -> UploadSweepPlan {
    var items: [UploadSweepItem] = []
    for candidate in candidates.sorted(by: { $0.id.rawValue < $1.id.rawValue }) where candidate.state.holdsData {
        let deadline = candidate.holdEnds(hold)
        guard asOf >= deadline else { continue }
        items.append(UploadSweepItem(id: candidate.id, version: candidate.version, deadline: deadline, decision: candidate.legalHold ? .blockedByLegalHold : .destroy))
    }
    let (allowance, shareAllowance) = destroyAllowance(fleetSize: fleetSize, limits: limits)
    var plan = UploadSweepPlan(asOf: asOf, items: items, fleetSize: fleetSize, destroyAllowance: allowance, refusal: nil)
    plan.refusal = blastRadiusRefusal(count: plan.destroyCount, fleetSize: fleetSize, shareAllowance: shareAllowance, limits: limits, what: "uploads")
    return plan
}
