import Foundation

/// Parses policy durations such as `21d`, `36h`, `90s`, `15m` or `1d12h`.
///
/// Units: `w` (7 × 24 h), `d` (24 h), `h`, `m` (minutes), `s`. A day is always exactly
/// 86,400 s whatever the time zone or daylight saving, so a 21-day grace is 1,814,400 s.
public enum PolicyDuration {
    public static let maximumSeconds: Int64 = 100 * 366 * 86_400

    public static func parse(_ text: String, setting: String) throws(TenureError) -> Duration {
        func reject(_ why: String) -> TenureError {
            TenureError(
                .invalidConfiguration,
                "\(setting)='\(printable(text))' is not a valid duration (\(why)); write a number and a unit, such as 21d, 36h, 15m, 90s or 1d12h")
        }
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { throw reject("it is empty") }
        var total: Int64 = 0
        var digits = ""
        var sawUnit = false
        for character in trimmed {
            if character.isASCII, character.isNumber {
                digits.append(character)
                guard digits.count <= 12 else { throw reject("the number is too large") }
                continue
            }
            guard let value = Int64(digits) else { throw reject("a unit must follow a number") }
            let unitSeconds: Int64
            switch character {
            case "w": unitSeconds = 7 * 86_400
            case "d": unitSeconds = 86_400
            case "h": unitSeconds = 3_600
            case "m": unitSeconds = 60
            case "s": unitSeconds = 1
            default: throw reject("unknown unit '\(printable(String(character)))'")
            }
            total += value * unitSeconds
            guard total <= maximumSeconds else { throw reject("it is longer than 100 years") }
            digits = ""
            sawUnit = true
        }
        guard digits.isEmpty, sawUnit else { throw reject("every number needs a unit") }
        guard total > 0 else { throw reject("it must be longer than zero") }
        return .seconds(total)
    }

    /// Formats a duration in the same syntax, largest units first (`1814400s` → `21d`).
    public static func format(_ duration: Duration) -> String {
        var seconds = duration.components.seconds
        if seconds == 0 { return "0s" }
        var text = ""
        for (unit, size) in [("d", Int64(86_400)), ("h", 3_600), ("m", 60), ("s", 1)] where seconds >= size {
            text += "\(seconds / size)\(unit)"
            seconds %= size
        }
        return text
    }
}

extension Duration {
    /// Whole and fractional seconds, for `Date` arithmetic.
    public var timeInterval: TimeInterval {
        let parts = components
        return TimeInterval(parts.seconds) + TimeInterval(parts.attoseconds) / 1e18
    }
}

/// The retention policy: how long trials last and how long deactivated data is kept.
public struct LifecyclePolicy: Sendable, Equatable {
    public var trialPeriod: Duration
    public var gracePeriod: Duration

    public static let defaultTrialPeriod: Duration = .seconds(15 * 86_400)
    /// 21 × 24 h = 1,814,400 s after the instant of deactivation.
    public static let defaultGracePeriod: Duration = .seconds(21 * 86_400)

    public init(trialPeriod: Duration = defaultTrialPeriod, gracePeriod: Duration = defaultGracePeriod) {
        self.trialPeriod = trialPeriod
        self.gracePeriod = gracePeriod
    }
}

/// Limits on what one expiry sweep may destroy (RELIABILITY D4) and on clock sanity (D7).
public struct SweepLimits: Sendable, Equatable {
    /// Refuse when a sweep would destroy more than this share of the live fleet.
    public var maximumDestroyFraction: Double
    /// Refuse when a sweep would destroy more than this many databases.
    public var maximumDestroyCount: Int
    /// Refuse when this process's clock and the catalog server's disagree by more than this.
    public var maximumClockSkew: Duration

    public init(maximumDestroyFraction: Double = 0.10, maximumDestroyCount: Int = 50, maximumClockSkew: Duration = .seconds(300)) {
        self.maximumDestroyFraction = maximumDestroyFraction
        self.maximumDestroyCount = maximumDestroyCount
        self.maximumClockSkew = maximumClockSkew
    }
}

/// The one source of "now" for every decision. Injected; never `Date()` elsewhere in decisions.
public protocol WallClock: Sendable {
    func now() -> Date
}

public struct SystemWallClock: WallClock {
    public init() {}
    public func now() -> Date { Date() }
}

public struct FixedWallClock: WallClock {
    public let instant: Date
    public init(_ instant: Date) { self.instant = instant }
    public func now() -> Date { instant }
}

/// RFC 3339 instants, always in UTC with a `Z`, for output and `--as-of` input.
public enum RFC3339 {
    public static func format(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: false, timeZone: TimeZone(identifier: "UTC")!))
    }

    public static func parse(_ text: String, setting: String = "instant") throws(TenureError) -> Date {
        let withFraction = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
        let plain = Date.ISO8601FormatStyle()
        if let date = try? plain.parse(text) { return date }
        if let date = try? withFraction.parse(text) { return date }
        throw TenureError(
            .invalidRequest,
            "\(setting) '\(printable(text))' is not an RFC 3339 instant; write for example 2026-12-01T00:00:00Z")
    }
}
