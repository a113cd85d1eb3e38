import Foundation
import TenureCatalog
import TenureCore
import TenureEngine
import TenurePQ

/// An extension created in a hosted database.
public struct AddedExtension: Sendable {
    public var name: String
    public var version: String
    /// False when the database already had it (the call changed nothing).
    public var created: Bool
}

extension Controller {
    /// Creates extension `name` in a live (trial or active) database with the server's
    /// administrator session, as managed platforms do for their customers: a trusted extension
    /// always, any other only when `TENURE_EXTENSIONS` lists it (refused otherwise, naming the
    /// list). The extension's tables, sequences and views are handed to the database's owner
    /// role. Idempotent: an extension already there is reported, not created twice. Audited.
    public func addExtension(_ id: DatabaseID, name: String) throws(TenureError) -> AddedExtension {
        let allowlistCheck = try ExtensionAllowlist([name])  // validates the name's spelling
        precondition(allowlistCheck.names == [name], "one validated name")
        let record = try catalog.database(id)
        guard record.state == .trial || record.state == .active else {
            throw TenureError(
                .lifecycleConflict, "database \(id) is \(record.state.rawValue); extensions are added to trial or active databases only",
                context: ["database_id": id.rawValue, "state": record.state.rawValue])
        }
        let server = try catalog.server(named: record.serverName)
        let session = try connectAdmin(server, database: record.postgresDatabase)
        defer { session.close() }
        try session.execute("SET search_path = pg_catalog")
        let available = try session.query(
            "SELECT bool_or(trusted)::text, max(version) FROM pg_catalog.pg_available_extension_versions WHERE name = $1", [name])
        guard let row = available.rows.first, row[1] != nil else {
            throw TenureError(.invalidRequest, "extension '\(name)' is not available on server \(server.name)", context: ["extension": name])
        }
        do { try configuration.extensions.check(name, trusted: row[0] == "true") } catch {
            throw TenureError(.invalidRequest, error.message.replacingOccurrences(of: "; ask the operator to list it", with: "; an operator lists it"), context: ["extension": name])
        }
        let existing = try session.query("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = $1", [name])
        if let version = existing.rows.first?[0] {
            return AddedExtension(name: name, version: version, created: false)
        }
        do { try ExtensionAllowlist.create(statement: "CREATE EXTENSION \(quoteIdentifier(name))", name: name, owner: record.postgresRole, on: session) } catch {
            throw TenureError(.invalidRequest, error.message, context: ["extension": name], sqlState: error.sqlState)
        }
        let version = try session.query("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = $1", [name]).rows.first?[0] ?? nil
        try catalog.audit(
            at: clock.now(), databaseID: id.rawValue, actor: actor, action: "extension_added", from: nil, to: nil, reason: nil,
            detail: ["extension": name, "version": version ?? ""])
        return AddedExtension(name: name, version: version ?? "", created: true)
    }
}
