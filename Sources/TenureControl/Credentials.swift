import Foundation
import TenureCatalog
import TenureCore
import TenurePQ

extension Controller {
    /// A new password for the database's owner role, shown once and never stored: the old one
    /// stops working when this returns; with `endSessions`, the role's open sessions end too.
    /// Takes its turn with the database's transitions; the role's login stays as its state wants
    /// it (a deactivated database keeps login disabled and gets the password for later).
    public func rotateCredentials(_ id: DatabaseID, endSessions: Bool) throws(TenureError) -> TransitionOutcome {
        let current = try catalog.database(id)
        switch current.state {
        case .trial, .active, .deactivated: break
        case .provisioning, .destroyed:
            throw TenureError(
                .lifecycleConflict, "a \(current.state.rawValue) database has no credentials to rotate", context: ["database_id": id.rawValue])
        }
        let server = try catalog.server(named: current.serverName)
        try catalog.lockDatabase(id)
        defer { try? catalog.unlockDatabase(id) }
        let locked = try catalog.database(id)
        guard locked.state != .destroyed else {
            throw TenureError(.lifecycleConflict, "database \(id) was destroyed meanwhile; nothing was changed", context: ["database_id": id.rawValue])
        }
        let admin = try connectAdmin(server)
        defer { admin.close() }
        let password = Self.randomPassword()
        let verifier = try admin.scramVerifier(password: password, role: locked.postgresRole)
        try admin.execute("ALTER ROLE \(quoteIdentifier(locked.postgresRole)) PASSWORD \(quoteLiteral(verifier))")
        var ended = 0
        if endSessions {
            let result = try admin.query(
                "SELECT count(pg_terminate_backend(pid, 10000))::text FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
                [locked.postgresRole])
            ended = Int(result.rows.first?[0] ?? "0") ?? 0
        }
        try catalog.audit(
            at: clock.now(), databaseID: id.rawValue, actor: actor, action: "credentials_rotated", from: nil, to: nil, reason: nil,
            detail: ["end_sessions": endSessions ? "true" : "false", "sessions_ended": String(ended)])
        return TransitionOutcome(record: locked, newPassword: password, connectionURL: Self.connectionURL(locked, server: server, password: password))
    }
}
