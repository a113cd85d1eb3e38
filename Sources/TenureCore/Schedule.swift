import Foundation

/// When each database is backed up: every `interval`, at a slot of its own spread over the
/// interval by a stable hash of its id (FNV-1a, the same on every replica and every run), so
/// a fleet does not start at once. Pure: the caller brings the clock and the catalog's facts.
public struct BackupSchedule: Sendable, Equatable {
    public var interval: Duration
    /// A database whose newest verified backup is older than this is stale.
    public var maxAge: Duration

    public init(interval: Duration = .seconds(86_400), maxAge: Duration = .seconds(93_600)) {
        self.interval = interval
        self.maxAge = maxAge
    }

    var intervalSeconds: Double { Self.seconds(interval) }

    /// The database's offset in the interval, in [0, interval).
    public func offset(of id: String) -> Double {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in id.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        let milliseconds = max(1, UInt64(intervalSeconds * 1000))
        return Double(hash % milliseconds) / 1000
    }

    /// The start of the database's slot that contains `now` (the latest slot at or before it).
    public func currentSlot(of id: String, now: Date) -> Date {
        let t = now.timeIntervalSince1970 - offset(of: id)
        let slots = (t / intervalSeconds).rounded(.down)
        return Date(timeIntervalSince1970: slots * intervalSeconds + offset(of: id))
    }

    /// The next slot after `now`.
    public func nextSlot(of id: String, now: Date) -> Date {
        currentSlot(of: id, now: now).addingTimeInterval(intervalSeconds)
    }

    /// Whether a backup is due: none was started in the current slot (a failed attempt counts,
    /// so a failing database is tried once a slot, plus its job's retries) and none is queued
    /// or running.
    public func isDue(id: String, lastStarted: Date?, pending: Bool, now: Date) -> Bool {
        guard !pending else { return false }
        guard let lastStarted else { return true }
        return lastStarted < currentSlot(of: id, now: now)
    }

    /// When the database's next backup is due: now if due, else its next slot.
    public func nextDue(id: String, lastStarted: Date?, pending: Bool, now: Date) -> Date {
        isDue(id: id, lastStarted: lastStarted, pending: pending, now: now) ? now : nextSlot(of: id, now: now)
    }

    /// Whether a database whose newest verified backup was taken at `newestVerified` is stale
    /// (one never backed up is stale once it is `maxAge` old).
    public func isStale(newestVerified: Date?, createdAt: Date, now: Date) -> Bool {
        now.timeIntervalSince(newestVerified ?? createdAt) > Self.seconds(maxAge)
    }

    public static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
