import Foundation
import Testing
import TenureCore

@Suite struct UploadHoldTests {
    static func at(_ text: String) -> Date { try! RFC3339.parse(text) }

    /// 4 calendar months in UTC, clamped to the end of the target month.
    @Test(arguments: [
        ("2026-10-31T12:00:00Z", "2027-02-28T12:00:00Z"),  // 31 Oct + 4 = end of Feb
        ("2027-10-31T12:00:00Z", "2028-02-29T12:00:00Z"),  // leap year
        ("2027-10-30T00:00:00Z", "2028-02-29T00:00:00Z"),
        ("2027-10-29T23:59:59Z", "2028-02-29T23:59:59Z"),
        ("2027-10-28T08:00:00Z", "2028-02-28T08:00:00Z"),
        ("2099-10-31T00:00:00Z", "2100-02-28T00:00:00Z"),  // 2100 is not a leap year
        ("2399-10-31T00:00:00Z", "2400-02-29T00:00:00Z"),  // 2400 is
        ("2026-08-31T06:30:00Z", "2026-12-31T06:30:00Z"),
        ("2026-09-30T00:00:00Z", "2027-01-30T00:00:00Z"),
        ("2026-11-30T10:00:00Z", "2027-03-30T10:00:00Z"),
        ("2026-12-31T23:59:59Z", "2027-04-30T23:59:59Z"),  // 31 Dec + 4 = end of April (30 days)
        ("2027-05-31T00:00:00Z", "2027-09-30T00:00:00Z"),
        ("2027-06-30T00:00:00Z", "2027-10-30T00:00:00Z"),
        ("2028-02-29T12:00:00Z", "2028-06-29T12:00:00Z"),
        ("2026-01-01T00:00:00Z", "2026-05-01T00:00:00Z"),
        ("1999-11-30T00:00:00Z", "2000-03-30T00:00:00Z"),
    ])
    func fourCalendarMonths(start: String, end: String) {
        #expect(UploadHold.months(4).end(from: Self.at(start)) == Self.at(end))
    }

    @Test func otherMonthCountsAndFixedDurations() {
        #expect(UploadHold.months(1).end(from: Self.at("2026-01-31T00:00:00Z")) == Self.at("2026-02-28T00:00:00Z"))
        #expect(UploadHold.months(1).end(from: Self.at("2028-01-31T00:00:00Z")) == Self.at("2028-02-29T00:00:00Z"))
        #expect(UploadHold.months(12).end(from: Self.at("2028-02-29T00:00:00Z")) == Self.at("2029-02-28T00:00:00Z"))
        #expect(UploadHold.months(16).end(from: Self.at("2026-10-31T00:00:00Z")) == Self.at("2028-02-29T00:00:00Z"))
        // Fractional seconds survive.
        let start = Self.at("2026-10-31T12:00:00Z").addingTimeInterval(0.25)
        #expect(UploadHold.months(4).end(from: start) == Self.at("2027-02-28T12:00:00Z").addingTimeInterval(0.25))
        #expect(UploadHold.fixed(.seconds(86_400)).end(from: Self.at("2026-10-31T12:00:00Z")) == Self.at("2026-11-01T12:00:00Z"))
    }

    @Test func parsing() throws {
        #expect(try UploadHold.parse("4mo") == .months(4))
        #expect(try UploadHold.parse("4 months") == .months(4))
        #expect(try UploadHold.parse("1 month") == .months(1))
        #expect(try UploadHold.parse("30d") == .fixed(.seconds(30 * 86_400)))
        #expect(UploadHold.default == .months(4))
        for bad in ["", "0mo", "-1mo", "x", "4", "1300mo", "4 weeksish"] {
            #expect(throws: TenureError.self, "\(bad)") { try UploadHold.parse(bad) }
        }
    }

    /// The hold runs from the upload before any successful upgrade, from the last success
    /// after; a legal hold blocks; the cap applies to the uploads' fleet.
    @Test func sweepPlan() {
        let uploaded = Self.at("2026-10-31T12:00:00Z")
        let plain = UploadCandidate(id: .random(), version: 1, state: .uploaded, uploadedAt: uploaded, lastUpgradedAt: nil, legalHold: false)
        let limits = SweepLimits(maximumDestroyFraction: 0.5, maximumDestroyCount: 10)
        func plan(_ candidates: [UploadCandidate], _ asOf: String, fleet: Int = 10) -> UploadSweepPlan {
            planUploadSweep(candidates: candidates, fleetSize: fleet, asOf: Self.at(asOf), hold: .default, limits: limits)
        }
        #expect(plan([plain], "2027-02-28T11:59:59Z").items.isEmpty)
        #expect(plan([plain], "2027-02-28T12:00:00Z").items.map(\.decision) == [.destroy])
        #expect(plan([plain], "2027-02-28T12:00:00Z").items.first?.deadline == Self.at("2027-02-28T12:00:00Z"))

        var upgraded = plain
        upgraded.state = .upgraded
        upgraded.lastUpgradedAt = Self.at("2026-12-31T09:00:00Z")
        #expect(plan([upgraded], "2027-04-30T08:59:59Z").items.isEmpty)
        #expect(plan([upgraded], "2027-04-30T09:00:00Z").items.map(\.decision) == [.destroy])

        var failed = upgraded
        failed.state = .upgradeFailed
        #expect(plan([failed], "2027-04-30T09:00:00Z").items.map(\.decision) == [.destroy])

        var held = plain
        held.legalHold = true
        #expect(plan([held], "2030-01-01T00:00:00Z").items.map(\.decision) == [.blockedByLegalHold])

        for state in [UploadState.uploading, .upgrading, .rejected, .destroyed] {
            var other = plain
            other.state = state
            #expect(plan([other], "2030-01-01T00:00:00Z").items.isEmpty, "\(state)")
        }

        let many = (0..<6).map { _ in UploadCandidate(id: .random(), version: 1, state: .uploaded, uploadedAt: uploaded, lastUpgradedAt: nil, legalHold: false) }
        let capped = plan(many, "2030-01-01T00:00:00Z", fleet: 10)
        #expect(capped.destroyCount == 6 && capped.refusal?.contains("6 of 10 live uploads") == true, "\(String(describing: capped.refusal))")
        #expect(plan(many, "2030-01-01T00:00:00Z", fleet: 12).refusal == nil)
    }
}
