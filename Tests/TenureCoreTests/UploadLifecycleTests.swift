import Testing
@testable import TenureCore

/// Every (state, event) pair of the upgrade service's state machine.
@Suite struct UploadLifecycleTests {
    /// (state, event) → the next state, or nil for a conflict.
    static let table: [UploadState: [UploadEvent: UploadState?]] = [
        .uploading: [.restored: .uploaded, .reject: .rejected, .upgradeStart: nil, .upgradeSucceed: nil, .upgradeFail: nil, .destroy: nil],
        .uploaded: [.restored: nil, .reject: nil, .upgradeStart: .upgrading, .upgradeSucceed: nil, .upgradeFail: nil, .destroy: .destroyed],
        .rejected: [.restored: nil, .reject: nil, .upgradeStart: nil, .upgradeSucceed: nil, .upgradeFail: nil, .destroy: .destroyed],
        .upgrading: [.restored: nil, .reject: nil, .upgradeStart: nil, .upgradeSucceed: .upgraded, .upgradeFail: .upgradeFailed, .destroy: nil],
        .upgraded: [.restored: nil, .reject: nil, .upgradeStart: .upgrading, .upgradeSucceed: nil, .upgradeFail: nil, .destroy: .destroyed],
        .upgradeFailed: [.restored: nil, .reject: nil, .upgradeStart: .upgrading, .upgradeSucceed: nil, .upgradeFail: nil, .destroy: .destroyed],
        .destroyed: [.restored: nil, .reject: nil, .upgradeStart: nil, .upgradeSucceed: nil, .upgradeFail: nil, .destroy: nil],
    ]

    @Test func tableCoversEveryPair() {
        #expect(Set(Self.table.keys) == Set(UploadState.allCases))
        for (state, row) in Self.table { #expect(Set(row.keys) == Set(UploadEvent.allCases), "\(state)") }
    }

    @Test(arguments: UploadState.allCases, UploadEvent.allCases)
    func transition(state: UploadState, event: UploadEvent) {
        let expected = Self.table[state]![event]!
        do {
            let next = try UploadLifecycle.next(state, on: event, id: "up_x")
            #expect(next == expected, "\(state) --\(event)--> \(next)")
        } catch {
            #expect(expected == nil, "\(state) --\(event)--> \(error)")
            #expect(error.code == .lifecycleConflict && error.context["upload_id"] == "up_x" && error.message.contains(state.rawValue), "\(error)")
        }
    }

    /// Only these states keep data waiting for its hold to end; they are the ones an upgrade
    /// may start from, and each of them may be destroyed.
    @Test func holdingStatesMayUpgradeAndBeDestroyed() throws {
        for state in UploadState.allCases where state.holdsData {
            #expect(try UploadLifecycle.next(state, on: .upgradeStart) == .upgrading)
            #expect(try UploadLifecycle.next(state, on: .destroy) == .destroyed)
        }
    }
}
