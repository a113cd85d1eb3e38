import Foundation
import Testing
import TenureCore

/// The schedule's pure rules: each database's slot, spread over the interval by its id.
@Suite struct BackupScheduleTests {
    let day = BackupSchedule(interval: .seconds(86_400), maxAge: .seconds(26 * 3600))
    let epoch = Date(timeIntervalSince1970: 1_800_000_000)

    func id(_ n: Int) -> String { "db_" + String(String(n, radix: 32).reversed()).padding(toLength: 20, withPad: "a", startingAt: 0) }

    @Test func offsetsAreStableAndWithinTheInterval() {
        for n in 0..<200 {
            let offset = day.offset(of: id(n))
            #expect(offset >= 0 && offset < 86_400)
            #expect(offset == day.offset(of: id(n)))
        }
    }

    @Test func aThousandDatabasesSpreadOverTheInterval() {
        var buckets = [Int](repeating: 0, count: 24)
        for n in 0..<1000 { buckets[Int(day.offset(of: id(n)) / 3600)] += 1 }
        // About 42 an hour; none empty and none holding more than twice its share.
        #expect(buckets.allSatisfy { $0 > 10 && $0 < 84 }, "\(buckets)")
    }

    @Test func theCurrentSlotContainsNow() {
        for n in 0..<50 {
            for step in stride(from: 0.0, to: 3 * 86_400, by: 7_777) {
                let now = epoch.addingTimeInterval(step)
                let slot = day.currentSlot(of: id(n), now: now)
                #expect(slot <= now && now.timeIntervalSince(slot) < 86_400)
                #expect(day.nextSlot(of: id(n), now: now).timeIntervalSince(slot) == 86_400)
            }
        }
    }

    @Test func dueOncePerSlot() {
        let database = id(7)
        let slot = day.currentSlot(of: database, now: epoch)
        let cases: [(lastStarted: Date?, pending: Bool, due: Bool)] = [
            (nil, false, true),
            (nil, true, false),
            (slot.addingTimeInterval(-1), false, true),  // the last one was in the previous slot
            (slot.addingTimeInterval(-1), true, false),  // ... but one is queued
            (slot, false, false),  // started at the slot's start
            (slot.addingTimeInterval(60), false, false),  // a failed one this slot counts too
        ]
        for c in cases {
            #expect(day.isDue(id: database, lastStarted: c.lastStarted, pending: c.pending, now: epoch) == c.due, "\(c)")
            let next = day.nextDue(id: database, lastStarted: c.lastStarted, pending: c.pending, now: epoch)
            #expect(c.due ? next == epoch : next == slot.addingTimeInterval(86_400), "\(c)")
        }
    }

    @Test func staleAfterTheMaximumAge() {
        let now = epoch
        #expect(!day.isStale(newestVerified: now.addingTimeInterval(-3600), createdAt: now.addingTimeInterval(-864_000), now: now))
        #expect(!day.isStale(newestVerified: now.addingTimeInterval(-26 * 3600), createdAt: .distantPast, now: now))
        #expect(day.isStale(newestVerified: now.addingTimeInterval(-26 * 3600 - 1), createdAt: .distantPast, now: now))
        // Never backed up: stale once it is as old as the maximum age.
        #expect(!day.isStale(newestVerified: nil, createdAt: now.addingTimeInterval(-3600), now: now))
        #expect(day.isStale(newestVerified: nil, createdAt: now.addingTimeInterval(-27 * 3600), now: now))
    }

    @Test func aShortIntervalForTests() {
        let short = BackupSchedule(interval: .seconds(5), maxAge: .seconds(30))
        let offsets = Set((0..<20).map { Int(short.offset(of: id($0))) })
        #expect(offsets.count >= 4 && offsets.allSatisfy { (0..<5).contains($0) }, "\(offsets)")
    }
}
