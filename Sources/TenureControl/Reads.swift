import Foundation
import TenureCatalog
import TenureCore

/// Reads and conditional writes as the adapters ask for them: each answers a typed not-found
/// for a missing subject, and `If-Match` (a version the caller saw) is checked here, not in a
/// handler, so the CLI and the HTTP API get the same rules.
extension Controller {
    public func database(_ id: DatabaseID) throws(TenureError) -> DatabaseRecord { try catalog.database(id) }

    /// A page of databases in id order, after `cursor`.
    public func databases(state: DatabaseState?, after cursor: DatabaseID?, limit: Int) throws(TenureError) -> [DatabaseRecord] {
        try catalog.databases(state: state, after: cursor, limit: limit)
    }

    /// A database's audit trail (or everyone's, without an id), newest last; not-found for an
    /// unknown id.
    public func auditTrail(_ id: DatabaseID?, limit: Int) throws(TenureError) -> [AuditEvent] {
        let events = try catalog.auditEvents(databaseID: id, limit: limit)
        if let id, events.isEmpty { _ = try catalog.database(id) }
        return events
    }

    public func backup(_ id: BackupID) throws(TenureError) -> BackupRecord { try catalog.backup(id) }

    public func servers() throws(TenureError) -> [ServerRecord] { try catalog.servers() }

    public func apiKeys() throws(TenureError) -> [APIKeyRecord] { try catalog.apiKeys() }

    /// A database's backups, oldest first; not-found for an unknown id.
    public func backups(of id: DatabaseID) throws(TenureError) -> [BackupRecord] {
        _ = try catalog.database(id)
        return try catalog.backups(databaseID: id)
    }

    public func upload(_ id: UploadID) throws(TenureError) -> UploadRecord { try catalog.upload(id) }

    public func uploads(state: UploadState?, after cursor: UploadID?, limit: Int) throws(TenureError) -> [UploadRecord] {
        try catalog.uploads(state: state, after: cursor, limit: limit)
    }

    /// Migrations applied to the catalog and known to this binary.
    public func migrationStatus() throws(TenureError) -> (applied: Int, known: Int) { try catalog.migrationStatus() }

    public func queuedJobCount() throws(TenureError) -> Int { try catalog.queuedJobCount() }

    /// A transition that happens only if the database is still at version `ifMatch` (412
    /// otherwise, before and while it applies).
    public func apply(
        _ event: LifecycleEvent, to id: DatabaseID, reason: String?, newPassword: Bool, ifMatch: Int64?
    ) throws(TenureError) -> TransitionOutcome {
        guard let ifMatch else { return try apply(event, to: id, reason: reason, newPassword: newPassword) }
        let current = try catalog.database(id)
        guard current.version == ifMatch else { throw Self.stale(id, current.version, ifMatch) }
        do {
            return try apply(event, to: id, reason: reason, newPassword: newPassword, expectedVersion: ifMatch)
        } catch where error.code == .concurrentModification {
            throw Self.stale(id, try catalog.database(id).version, ifMatch)
        }
    }

    /// A deletion request (the name as confirmation) that happens only at version `ifMatch`.
    public func requestDeletion(_ id: DatabaseID, confirmName: String, ifMatch: Int64?) throws(TenureError) -> TransitionOutcome {
        if let ifMatch {
            let current = try catalog.database(id)
            guard current.version == ifMatch else { throw Self.stale(id, current.version, ifMatch, destroying: true) }
        }
        return try requestDeletion(id, confirmName: confirmName)
    }

    static func stale(_ id: DatabaseID, _ current: Int64, _ expected: Int64, destroying: Bool = false) -> TenureError {
        TenureError(
            .preconditionFailed,
            destroying
                ? "database \(id) changed since you fetched it (If-Match: version \(expected), now \(current)); nothing was destroyed"
                : "database \(id) is at version \(current), not \(expected) (If-Match); fetch it again",
            context: ["database_id": id.rawValue, "version": String(current)])
    }
}
