import Foundation
import TenureCore
import TenurePQ

/// A data key as the catalog holds it: wrapped by the master key `masterKeyID`.
public struct WrappedDataKey: Sendable {
    public var id: DataKeyID
    /// `db_…` or `up_…`.
    public var owner: String
    public var wrapped: [UInt8]
    public var masterKeyID: String
    public var createdAt: Date

    public init(id: DataKeyID, owner: String, wrapped: [UInt8], masterKeyID: String, createdAt: Date) {
        self.id = id
        self.owner = owner
        self.wrapped = wrapped
        self.masterKeyID = masterKeyID
        self.createdAt = createdAt
    }
}

/// A signed deletion certificate as stored (both fields base64).
public struct CertificateRecord: Sendable {
    public var subject: String
    public var payload: String
    public var signature: String
    public var keyID: String
    public var issuedAt: Date

    public init(subject: String, payload: String, signature: String, keyID: String, issuedAt: Date) {
        self.subject = subject
        self.payload = payload
        self.signature = signature
        self.keyID = keyID
        self.issuedAt = issuedAt
    }
}

extension Catalog {
    static let dataKeyColumns = "id, owner, wrapped, master_key_id, extract(epoch FROM created_at)::text AS created_at"

    /// Inserts the owner's key unless it has one; returns the one it has either way.
    public func ensureDataKey(_ key: WrappedDataKey) throws(TenureError) -> WrappedDataKey {
        try connection.query(
            """
            INSERT INTO data_keys (id, owner, wrapped, master_key_id, created_at) VALUES ($1, $2, $3, $4, to_timestamp($5::float8))
            ON CONFLICT (owner) DO NOTHING
            """,
            [key.id.rawValue, key.owner, SHA256.hex(key.wrapped), key.masterKeyID, epoch(key.createdAt)])
        guard let stored = try dataKey(owner: key.owner) else { throw TenureError(.internal, "the data key of \(key.owner) vanished as it was made") }
        return stored
    }

    public func dataKey(owner: String) throws(TenureError) -> WrappedDataKey? {
        try dataKeys(where: "owner = $1", [owner]).first
    }

    public func dataKey(_ id: DataKeyID) throws(TenureError) -> WrappedDataKey? {
        try dataKeys(where: "id = $1", [id.rawValue]).first
    }

    /// Every key not wrapped by `masterKeyID` (key rotation's work list), or all with nil.
    public func dataKeys(notWrappedBy masterKeyID: String? = nil) throws(TenureError) -> [WrappedDataKey] {
        guard let masterKeyID else { return try dataKeys(where: "true", []) }
        return try dataKeys(where: "master_key_id <> $1", [masterKeyID])
    }

    /// One data key per master key in use (the start-up check opens each).
    public func dataKeySamples() throws(TenureError) -> [WrappedDataKey] {
        try dataKeys(where: "id IN (SELECT DISTINCT ON (master_key_id) id FROM data_keys ORDER BY master_key_id, id)", [])
    }

    /// The master keys the stored data keys need.
    public func masterKeyIDsInUse() throws(TenureError) -> [String] {
        try connection.query("SELECT DISTINCT master_key_id FROM data_keys ORDER BY 1").rows.map { $0[0] ?? "" }
    }

    /// Re-wraps one key, only if it is still wrapped the way the caller read it.
    @discardableResult
    public func rewrapDataKey(_ id: DataKeyID, from oldMasterKeyID: String, wrapped: [UInt8], masterKeyID: String) throws(TenureError) -> Bool {
        try connection.query(
            "UPDATE data_keys SET wrapped = $3, master_key_id = $4 WHERE id = $1 AND master_key_id = $2 RETURNING id",
            [id.rawValue, oldMasterKeyID, SHA256.hex(wrapped), masterKeyID]).rows.count == 1
    }

    /// Deletes the owner's key row (call inside the tombstone's transaction); its id, if it had one.
    public func deleteDataKey(owner: String) throws(TenureError) -> DataKeyID? {
        try connection.query("DELETE FROM data_keys WHERE owner = $1 RETURNING id", [owner]).rows.first.map { DataKeyID(unchecked: $0[0] ?? "") }
    }

    /// When and with whose destruction a data key was destroyed (from the audit trail), if it was.
    public func dataKeyDestruction(_ id: String) throws(TenureError) -> (at: Date, owner: String, action: String)? {
        let result = try connection.query(
            """
            SELECT extract(epoch FROM at)::text AS at, database_id, action FROM audit_events
            WHERE detail->>'data_key_id' = $1 ORDER BY id LIMIT 1
            """, [id])
        guard let row = result.rows.first, let at = date(row[0]) else { return nil }
        return (at, row[1] ?? "", row[2] ?? "")
    }

    private func dataKeys(where condition: String, _ parameters: [String?]) throws(TenureError) -> [WrappedDataKey] {
        let result = try connection.query("SELECT \(Self.dataKeyColumns) FROM data_keys WHERE \(condition) ORDER BY created_at, id", parameters)
        return result.rows.indices.map { row in
            WrappedDataKey(
                id: DataKeyID(unchecked: result[row, "id"]!), owner: result[row, "owner"]!,
                wrapped: hexBytes(result[row, "wrapped"] ?? "") ?? [], masterKeyID: result[row, "master_key_id"]!,
                createdAt: date(result[row, "created_at"])!)
        }
    }

    // MARK: - Deletion certificates

    public func insertCertificate(_ record: CertificateRecord) throws(TenureError) {
        try connection.query(
            """
            INSERT INTO deletion_certificates (subject, payload, signature, key_id, issued_at) VALUES ($1, $2, $3, $4, to_timestamp($5::float8))
            ON CONFLICT (subject) DO NOTHING
            """,
            [record.subject, record.payload, record.signature, record.keyID, epoch(record.issuedAt)])
    }

    public func certificate(subject: String) throws(TenureError) -> CertificateRecord? {
        let result = try connection.query(
            "SELECT subject, payload, signature, key_id, extract(epoch FROM issued_at)::text AS issued_at FROM deletion_certificates WHERE subject = $1",
            [subject])
        guard !result.rows.isEmpty else { return nil }
        return CertificateRecord(
            subject: result[0, "subject"]!, payload: result[0, "payload"]!, signature: result[0, "signature"]!, keyID: result[0, "key_id"]!,
            issuedAt: date(result[0, "issued_at"])!)
    }
}

extension Catalog {
    /// The audit trail of one subject (`db_…` or `up_…`), oldest first.
    public func auditEvents(subject: String, limit: Int = 10_000) throws(TenureError) -> [AuditEvent] {
        let result = try connection.query(
            """
            SELECT id, extract(epoch FROM at)::text AS at, database_id, actor, action, from_state, to_state, reason, detail::text AS detail
            FROM audit_events WHERE database_id = $1 ORDER BY id LIMIT $2
            """, [subject, String(limit)])
        return result.rows.indices.map { row in
            AuditEvent(
                id: Int64(result[row, "id"]!)!, at: date(result[row, "at"])!, databaseID: result[row, "database_id"], actor: result[row, "actor"]!,
                action: result[row, "action"]!, fromState: result[row, "from_state"], toState: result[row, "to_state"],
                reason: result[row, "reason"], detail: result[row, "detail"] ?? "{}")
        }
    }
}
