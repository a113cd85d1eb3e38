import Foundation
import TenureCore
import TenurePQ

extension Catalog {
    static let uploadColumns = """
        id, state, version, label, format, server_name, pg_role, pg_database, generation, byte_count, statement_count, skipped_count,
        extract(epoch FROM created_at)::text AS created_at, extract(epoch FROM uploaded_at)::text AS uploaded_at,
        extract(epoch FROM last_run_at)::text AS last_run_at, extract(epoch FROM last_upgraded_at)::text AS last_upgraded_at,
        upgrade_count, extract(epoch FROM original_deleted_at)::text AS original_deleted_at, reject_reason, failed_script, failed_error,
        failed_sqlstate, applied_scripts::text AS applied_scripts, legal_hold_reason, extract(epoch FROM legal_hold_since)::text AS legal_hold_since,
        extract(epoch FROM destroyed_at)::text AS destroyed_at, destroyed_by, destroy_reason, cleanup_pending, lock_key,
        extract(epoch FROM updated_at)::text AS updated_at
        """

    public func insertUpload(_ record: UploadRecord) throws(TenureError) {
        try connection.query(
            """
            INSERT INTO uploads (id, state, version, label, server_name, pg_role, pg_database, generation, created_at, lock_key, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, to_timestamp($9::float8), $10, to_timestamp($9::float8))
            """,
            [
                record.id.rawValue, record.state.rawValue, String(record.version), record.label, record.serverName, record.postgresRole, record.postgresDatabase,
                String(record.generation), epoch(record.createdAt), String(record.lockKey),
            ])
    }

    public func upload(_ id: UploadID, forUpdate: Bool = false) throws(TenureError) -> UploadRecord {
        let result = try connection.query("SELECT \(Self.uploadColumns) FROM uploads WHERE id = $1\(forUpdate ? " FOR UPDATE" : "")", [id.rawValue])
        guard !result.rows.isEmpty else {
            throw TenureError(.uploadNotFound, "no upload with id \(id)", context: ["upload_id": id.rawValue])
        }
        return uploadRecord(result, 0)
    }

    /// Uploads in id order, optionally in one state, after a cursor.
    public func uploads(state: UploadState? = nil, after cursor: UploadID? = nil, limit: Int = 100_000) throws(TenureError) -> [UploadRecord] {
        let result = try connection.query(
            "SELECT \(Self.uploadColumns) FROM uploads WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
            [state?.rawValue, cursor?.rawValue, String(limit)])
        return result.rows.indices.map { uploadRecord(result, $0) }
    }

    /// Uploads whose data exists (the denominator of the uploads' blast-radius cap).
    public func liveUploadCount() throws(TenureError) -> Int {
        Int(try connection.query("SELECT count(*) AS n FROM uploads WHERE state IN ('uploaded', 'upgrading', 'upgraded', 'upgrade-failed')")[0, "n"]!)!
    }

    /// Writes every mutable field if the stored version is still `expectedVersion`; the
    /// version goes up by one. False when someone else changed the row meanwhile.
    public func updateUpload(_ record: UploadRecord, expectedVersion: Int64, now: Date) throws(TenureError) -> Bool {
        let scripts = String(decoding: (try? JSONSerialization.data(withJSONObject: record.appliedScripts)) ?? Data("[]".utf8), as: UTF8.self)
        let result = try connection.query(
            """
            UPDATE uploads SET state = $2, version = version + 1, format = $3, pg_database = $4, generation = $5, byte_count = $6,
                statement_count = $7, skipped_count = $8, uploaded_at = to_timestamp($9::float8), last_run_at = to_timestamp($10::float8),
                last_upgraded_at = to_timestamp($11::float8), upgrade_count = $12, original_deleted_at = to_timestamp($13::float8),
                reject_reason = $14, failed_script = $15, failed_error = $16, failed_sqlstate = $17, applied_scripts = $18::jsonb,
                legal_hold_reason = $19, legal_hold_since = to_timestamp($20::float8), destroyed_at = to_timestamp($21::float8),
                destroyed_by = $22, destroy_reason = $23, cleanup_pending = $24, updated_at = to_timestamp($25::float8)
            WHERE id = $1 AND version = $26
            """,
            [
                record.id.rawValue, record.state.rawValue, record.format, record.postgresDatabase, String(record.generation), String(record.byteCount),
                String(record.statementCount), String(record.skippedCount), record.uploadedAt.map(epoch), record.lastRunAt.map(epoch),
                record.lastUpgradedAt.map(epoch), String(record.upgradeCount), record.originalDeletedAt.map(epoch), record.rejectReason,
                record.failedScript, record.failedError, record.failedSQLState, scripts, record.legalHoldReason, record.legalHoldSince.map(epoch),
                record.destroyedAt.map(epoch), record.destroyedBy, record.destroyReason, record.cleanupPending ? "true" : "false", epoch(now),
                String(expectedVersion),
            ])
        return result.affectedRowCount == 1
    }

    private func uploadRecord(_ result: QueryResult, _ row: Int) -> UploadRecord {
        func text(_ column: String) -> String? { result[row, column] }
        var record = UploadRecord(
            id: UploadID(unchecked: text("id")!), label: text("label") ?? "", serverName: text("server_name")!, createdAt: date(text("created_at"))!,
            lockKey: Int64(text("lock_key")!)!)
        record.state = UploadState(rawValue: text("state")!) ?? .rejected
        record.version = Int64(text("version")!)!
        record.format = text("format")
        record.postgresRole = text("pg_role")!
        record.postgresDatabase = text("pg_database")
        record.generation = Int(text("generation")!)!
        record.byteCount = Int64(text("byte_count")!)!
        record.statementCount = Int64(text("statement_count")!)!
        record.skippedCount = Int64(text("skipped_count")!)!
        record.uploadedAt = date(text("uploaded_at"))
        record.lastRunAt = date(text("last_run_at"))
        record.lastUpgradedAt = date(text("last_upgraded_at"))
        record.upgradeCount = Int(text("upgrade_count")!)!
        record.originalDeletedAt = date(text("original_deleted_at"))
        record.rejectReason = text("reject_reason")
        record.failedScript = text("failed_script")
        record.failedError = text("failed_error")
        record.failedSQLState = text("failed_sqlstate")
        record.appliedScripts = (text("applied_scripts").flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String] }) ?? []
        record.legalHoldReason = text("legal_hold_reason")
        record.legalHoldSince = date(text("legal_hold_since"))
        record.destroyedAt = date(text("destroyed_at"))
        record.destroyedBy = text("destroyed_by")
        record.destroyReason = text("destroy_reason")
        record.cleanupPending = text("cleanup_pending") == "t"
        record.updatedAt = date(text("updated_at"))!
        return record
    }
}
