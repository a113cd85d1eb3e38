import Foundation
import TenureCatalog
import TenureCore

/// Deletion certificates (`docs/deletion-certificate.md`): when a destruction has completed
/// (tombstone and key row gone in one transaction, database and role dropped, every stored
/// file deleted) Tenure signs a JSON statement of it with its Ed25519 signing key. Issued once
/// per subject, idempotently: a crash before it is issued is finished by the next purge or
/// cleanup, which issues it then.
extension Controller {
    static let certificateFormat = "tenure-deletion-certificate"

    /// Issues the certificate of a destroyed database whose backups were purged (no-op if issued).
    func issueDatabaseCertificate(_ id: DatabaseID) throws(TenureError) {
        guard try catalog.certificate(subject: id.rawValue) == nil else { return }
        let record = try catalog.database(id)
        guard record.state == .destroyed else { return }
        let events = try catalog.auditEvents(subject: id.rawValue)
        let destruction = events.last { $0.toState == DatabaseState.destroyed.rawValue }
        let store = configuration.backupStore
        let backups: [[String: Any]] = try catalog.backups(databaseID: id).filter { $0.state == .deleted && $0.byteCount != nil }.map { backup in
            [
                "id": backup.id.rawValue, "bytes": backup.byteCount ?? 0, "checksum": backup.digest.map { "xxh64:" + $0 } ?? NSNull(),
                "location": store.description + "/" + backup.path, "taken_at": RFC3339.format(backup.startedAt),
            ]
        }
        let facts: [String: Any] = [
            "subject": [
                "kind": "database", "id": id.rawValue, "name": record.name, "server": record.serverName,
                "postgres_database": record.postgresDatabase, "postgres_role": record.postgresRole,
            ] as [String: Any],
            "created_at": RFC3339.format(record.lifecycle.createdAt),
            "destroyed_at": instant(record.lifecycle.destroyedAt ?? destruction?.at),
            "reason": record.lifecycle.destructionReason?.rawValue ?? destruction?.reason ?? NSNull(),
            "actor": record.destroyedBy ?? destruction?.actor ?? NSNull(),
            "backups": backups,
        ]
        try issue(subject: id.rawValue, facts: facts, events: events, destruction: destruction)
    }

    /// Issues the certificate of a destroyed upload whose cleanup finished (no-op if issued).
    func issueUploadCertificate(_ id: UploadID) throws(TenureError) {
        guard try catalog.certificate(subject: id.rawValue) == nil else { return }
        let record = try catalog.upload(id)
        guard record.state == .destroyed, !record.cleanupPending else { return }
        let events = try catalog.auditEvents(subject: id.rawValue)
        let destruction = events.last { $0.action == "upload_destroyed" }
        let cleanup = events.last { $0.action == "upload_cleanup_completed" }
        let files = (cleanup.flatMap { jsonObject($0.detail)["files"] as? String }).map { text in
            text.split(separator: ";").compactMap { (entry) -> [String: Any]? in
                let parts = entry.split(separator: ":")
                guard parts.count == 3 else { return nil }
                return ["name": String(parts[0]), "bytes": Int64(parts[1]) ?? 0, "checksum": "xxh64:" + parts[2]]
            }
        } ?? []
        let facts: [String: Any] = [
            "subject": [
                "kind": "upload", "id": id.rawValue, "name": record.label, "server": record.serverName,
                "postgres_database": id.rawValue + "_g*", "postgres_role": record.postgresRole,
            ] as [String: Any],
            "created_at": RFC3339.format(record.createdAt),
            "destroyed_at": instant(record.destroyedAt),
            "reason": record.destroyReason ?? NSNull(),
            "actor": record.destroyedBy ?? NSNull(),
            "backups": files.map { file -> [String: Any] in
                var entry = file
                entry["location"] = uploadDirectory(id) + "/" + (file["name"] as? String ?? "")
                return entry
            },
        ]
        try issue(subject: id.rawValue, facts: facts, events: events, destruction: destruction)
    }

    private func issue(subject: String, facts: [String: Any], events: [AuditEvent], destruction: AuditEvent?) throws(TenureError) {
        let key = try signingKey()
        let now = clock.now()
        let keyID = destruction.flatMap { jsonObject($0.detail)["data_key_id"] as? String }
        var document = facts
        document["format"] = Self.certificateFormat
        document["version"] = 1
        document["data_key"] = [
            "id": keyID ?? NSNull(), "destroyed_at": instant(destruction?.at),
            "note": keyID == nil
                ? "no data key was ever made for this subject: nothing of it was stored sealed"
                : "the key row was deleted in the transaction that wrote the tombstone; every sealed copy is unreadable from then on",
        ] as [String: Any]
        document["audit_event_ids"] = events.map(\.id)
        document["issued_at"] = RFC3339.format(now)
        document["issuer"] = ["key_id": key.keyID, "algorithm": "Ed25519"]
        let payload = Array((try? JSONSerialization.data(withJSONObject: document, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8))
        let record = CertificateRecord(
            subject: subject, payload: Data(payload).base64EncodedString(), signature: Data(key.sign(payload)).base64EncodedString(),
            keyID: key.keyID, issuedAt: now)
        try catalog.transaction { () throws(TenureError) in
            try catalog.insertCertificate(record)
            try catalog.audit(
                at: now, databaseID: subject, actor: actor, action: "deletion_certificate_issued", from: nil, to: nil, reason: nil,
                detail: ["key_id": key.keyID])
        }
    }

    /// The deletion certificate of a database: 409 while it is not destroyed, 404 until issued.
    public func databaseCertificate(_ id: DatabaseID) throws(TenureError) -> CertificateRecord {
        try certificate(
            of: "database \(id)", subject: id.rawValue, context: ["database_id": id.rawValue], state: try catalog.database(id).state.rawValue,
            pending: "its backups are still being deleted")
    }

    /// The deletion certificate of an upload: 409 while it is not destroyed, 404 until issued.
    public func uploadCertificate(_ id: UploadID) throws(TenureError) -> CertificateRecord {
        try certificate(
            of: "upload \(id)", subject: id.rawValue, context: ["upload_id": id.rawValue], state: try catalog.upload(id).state.rawValue,
            pending: "its databases and files are still being deleted")
    }

    private func certificate(of what: String, subject: String, context: [String: String], state: String, pending: String) throws(TenureError)
        -> CertificateRecord
    {
        guard state == "destroyed" else {
            throw TenureError(.lifecycleConflict, "\(what) is \(state), not destroyed: there is no deletion certificate", context: context)
        }
        guard let certificate = try catalog.certificate(subject: subject) else {
            throw TenureError(
                .certificateNotFound, "the deletion of \(subject) has not completed yet (\(pending)); the certificate is issued when it has", context: context)
        }
        return certificate
    }
}

/// The certificate as served and printed: `{"payload", "signature", "key_id"}`.
public func certificateDocument(_ record: CertificateRecord) -> [String: Any] {
    ["payload": record.payload, "signature": record.signature, "key_id": record.keyID]
}

/// What `tenure certificate verify` found.
public struct CertificateCheck: Sendable {
    public var keyID: String
    public var subject: String
    public var destroyedAt: String
    public var backups: Int
}

/// Checks a certificate document against an Ed25519 public key (raw 32 bytes): the signature
/// over the payload's bytes, the key id, the format. Any failure is an error saying which.
public func verifyCertificate(_ text: [UInt8], publicKey: [UInt8]) throws(TenureError) -> CertificateCheck {
    guard let object = try? JSONSerialization.jsonObject(with: Data(text)) as? [String: Any],
        let payloadText = object["payload"] as? String, let signatureText = object["signature"] as? String, let keyID = object["key_id"] as? String
    else {
        throw TenureError(.invalidRequest, "not a deletion certificate: expected a JSON object with payload, signature and key_id")
    }
    guard let payload = Data(base64Encoded: payloadText), let signature = Data(base64Encoded: signatureText) else {
        throw TenureError(.invalidRequest, "the certificate's payload or signature is not base64")
    }
    guard keyID == SigningKey.keyID(publicKey: publicKey) else {
        throw TenureError(
            .invalidRequest, "the certificate names signing key \(printable(keyID)), not the given key \(SigningKey.keyID(publicKey: publicKey))")
    }
    guard SigningKey.verify(Array(signature), of: Array(payload), publicKey: publicKey) else {
        throw TenureError(.invalidRequest, "the certificate's signature does not verify: it was altered, or not signed by key \(keyID)")
    }
    guard let facts = try? JSONSerialization.jsonObject(with: payload) as? [String: Any], facts["format"] as? String == Controller.certificateFormat,
        let subject = facts["subject"] as? [String: Any], let issuer = facts["issuer"] as? [String: Any], issuer["key_id"] as? String == keyID
    else {
        throw TenureError(.invalidRequest, "the signed payload is not a Tenure deletion certificate")
    }
    return CertificateCheck(
        keyID: keyID, subject: subject["id"] as? String ?? "", destroyedAt: facts["destroyed_at"] as? String ?? "",
        backups: (facts["backups"] as? [Any])?.count ?? 0)
}

func jsonObject(_ text: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
}
