import Foundation
import Testing
@testable import TenureCore

/// Backup retention (issue 15) as a table: backups in, what is kept and why, what goes.
@Suite struct RetentionTests {
    static func at(_ text: String) -> Date { try! RFC3339.parse(text) }

    /// One case: the backups (id = its instant, `f`/`r` suffix for failed/running, `*` for a
    /// passed drill), the policy, a hold, and the ids expected to be deleted.
    struct Case: Sendable, CustomStringConvertible {
        var name: String
        var backups: [String]
        var policy: RetentionPolicy
        var hold = false
        var deleted: [String]
        var description: String { name }
    }

    static func candidates(_ specs: [String]) -> [RetentionCandidate] {
        specs.map { spec in
            var text = spec
            var state = BackupState.verified
            var drilled = false
            if text.hasSuffix("*") { drilled = true; text.removeLast() }
            if text.hasSuffix(" f") { state = .failed; text.removeLast(2) }
            if text.hasSuffix(" r") { state = .running; text.removeLast(2) }
            return RetentionCandidate(id: spec, takenAt: at(text), state: state, drillPassed: drilled)
        }
    }

    static let november = (1...30).map { String(format: "2026-11-%02dT02:00:00Z", $0) }

    static let cases: [Case] = [
        Case(
            name: "a month of dailies under the defaults: 7 days, 4 ISO weeks, 1 month",
            backups: november, policy: RetentionPolicy(),
            // Kept: Nov 24-30 (days), 29 and 22 and 15 (weeks ending on Sundays), 30 (month).
            deleted: november.filter { !["24", "25", "26", "27", "28", "29", "30", "22", "15"].contains(String($0.dropFirst(8).prefix(2))) }),
        Case(
            name: "month and year ends: the newest of each of the last 3 months",
            backups: ["2025-12-31T23:59:59Z", "2026-01-01T00:00:01Z", "2026-01-31T23:00:00Z", "2026-02-28T12:00:00Z", "2026-03-01T00:00:00Z"],
            policy: RetentionPolicy(keepLast: 1, keepDaily: 0, keepWeekly: 0, keepMonthly: 3),
            deleted: ["2025-12-31T23:59:59Z", "2026-01-01T00:00:01Z"]),
        Case(
            name: "a leap day is a day and belongs to February",
            backups: ["2028-02-28T10:00:00Z", "2028-02-29T10:00:00Z", "2028-03-01T10:00:00Z"],
            policy: RetentionPolicy(keepLast: 1, keepDaily: 2, keepWeekly: 0, keepMonthly: 2),
            deleted: ["2028-02-28T10:00:00Z"]),
        Case(
            name: "ISO weeks across New Year: 2026-W53 runs to Sunday 3 January 2027",
            backups: ["2026-12-28T10:00:00Z", "2026-12-31T10:00:00Z", "2027-01-03T10:00:00Z", "2027-01-04T10:00:00Z"],
            policy: RetentionPolicy(keepLast: 1, keepDaily: 0, keepWeekly: 2, keepMonthly: 0),
            deleted: ["2026-12-28T10:00:00Z", "2026-12-31T10:00:00Z"]),
        Case(
            name: "gaps: periods are counted among those that have a backup",
            backups: ["2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z", "2026-03-10T10:00:00Z"],
            policy: RetentionPolicy(keepLast: 1, keepDaily: 3, keepWeekly: 0, keepMonthly: 0),
            deleted: []),
        Case(
            name: "several a day: only the newest of the day counts for the day",
            backups: ["2026-05-01T01:00:00Z", "2026-05-01T13:00:00Z", "2026-05-01T23:59:59Z", "2026-05-02T00:00:00Z"],
            policy: RetentionPolicy(keepLast: 1, keepDaily: 2, keepWeekly: 0, keepMonthly: 0),
            deleted: ["2026-05-01T01:00:00Z", "2026-05-01T13:00:00Z"]),
        Case(
            name: "keep last 3 and nothing else",
            backups: ["2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z", "2026-05-03T00:00:00Z", "2026-05-04T00:00:00Z"],
            policy: RetentionPolicy(keepLast: 3, keepDaily: 0, keepWeekly: 0, keepMonthly: 0),
            deleted: ["2026-05-01T00:00:00Z"]),
        Case(
            name: "a legal hold keeps everything",
            backups: november, policy: RetentionPolicy(keepLast: 1, keepDaily: 0, keepWeekly: 0, keepMonthly: 0), hold: true,
            deleted: []),
        Case(
            name: "failed ones go once a newer verified one exists; running ones stay",
            backups: ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z f", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z f", "2026-01-05T00:00:00Z r"],
            policy: RetentionPolicy(keepLast: 1, keepDaily: 0, keepWeekly: 0, keepMonthly: 0),
            deleted: ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z f"]),
        Case(
            name: "no verified backup at all: nothing is deleted",
            backups: ["2026-01-01T00:00:00Z f", "2026-01-02T00:00:00Z f"],
            policy: RetentionPolicy(keepLast: 1, keepDaily: 0, keepWeekly: 0, keepMonthly: 0),
            deleted: []),
        Case(
            name: "the newest backup that passed a drill is kept",
            backups: ["2026-01-01T00:00:00Z*", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"],
            policy: RetentionPolicy(keepLast: 1, keepDaily: 0, keepWeekly: 0, keepMonthly: 0),
            deleted: ["2026-01-02T00:00:00Z"]),
    ]

    @Test(arguments: cases) func table(_ test: Case) {
        let plan = Retention.plan(Self.candidates(test.backups), policy: test.policy, legalHold: test.hold)
        #expect(plan.delete == test.deleted.sorted(), "\(test.name)")
        #expect(Set(plan.keep.keys).union(plan.delete) == Set(test.backups), "every backup is decided: \(test.name)")
        #expect(Set(plan.keep.keys).isDisjoint(with: plan.delete))
    }

    /// Whatever the order and the policy, the newest verified backup is never deleted, and
    /// the plan does not depend on the input's order.
    @Test func theNewestVerifiedSurvivesAnyPolicyAndOrder() {
        let backups = Self.candidates(Self.november + ["2026-12-01T00:00:00Z f"])
        for policy in [RetentionPolicy(keepLast: 1, keepDaily: 0, keepWeekly: 0, keepMonthly: 0), RetentionPolicy()] {
            let plan = Retention.plan(backups, policy: policy, legalHold: false)
            #expect(plan.keep["2026-11-30T02:00:00Z"]?.contains(.newestVerified) == true)
            #expect(Retention.plan(backups.shuffled(), policy: policy, legalHold: false) == plan)
        }
        #expect(Retention.plan([], policy: RetentionPolicy(), legalHold: false) == RetentionPlan(keep: [:], delete: []))
        let deleted = RetentionCandidate(id: "gone", takenAt: Self.at("2026-01-01T00:00:00Z"), state: .deleted)
        #expect(Retention.plan([deleted], policy: RetentionPolicy(), legalHold: false) == RetentionPlan(keep: [:], delete: []))
    }
}
