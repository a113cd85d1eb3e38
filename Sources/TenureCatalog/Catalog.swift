import Foundation
import TenureCore
import TenurePQ

/// The catalog: Tenure's own PostgreSQL database, the source of truth for every tenant.
///
/// A thin store over one libpq session. Every transition is a compare-and-swap on
/// `databases.version` plus its audit row in one transaction (the caller opens it with
/// `transaction`). Thread: blocking; one catalog per thread.
public final class Catalog {
    public let connection: PostgresConnection
    public let parameters: ConnectionParameters
    /// Set while this catalog serves one attempt of a durable job: every transaction then
    /// checks, just before it commits, that the attempt still owns the job, so a worker that
    /// lost its lease (paused past it, or taken over) cannot publish anything.
    public var fence: JobFence?

    /// Opens the catalog, creating its database on the server if it does not exist yet.
    public init(parameters: ConnectionParameters) throws(TenureError) {
        self.parameters = parameters
        do {
            connection = try PostgresConnection(parameters, applicationName: "tenure-catalog")
        } catch where error.sqlState == "3D000" {
            let name = parameters["dbname"] ?? "tenure"
            let maintenance = try PostgresConnection(parameters.with(database: "postgres"), applicationName: "tenure-catalog")
            do {
                try maintenance.execute("CREATE DATABASE \(quoteIdentifier(name))")
            } catch where error.sqlState == "42P04" {
                // Created meanwhile by another process.
            }
            maintenance.close()
            connection = try PostgresConnection(parameters, applicationName: "tenure-catalog")
        } catch {
            throw TenureError(.catalogUnavailable, "the catalog is unreachable: \(error.message)", context: error.context)
        }
        try connection.execute("SET TIME ZONE 'UTC'; SET search_path = public, pg_catalog")
    }

    public func close() { connection.close() }

    public func transaction<T>(_ body: () throws(TenureError) -> T) throws(TenureError) -> T {
        try connection.transaction { () throws(TenureError) -> T in
            let value = try body()
            if let fence { try checkFence(fence) }
            return value
        }
    }

    // MARK: - Migrations

    /// Applies every embedded migration not applied yet, in order, each in its own
    /// transaction under an advisory lock; refuses to run when an applied migration's
    /// checksum differs from the embedded one. Returns the versions it applied.
    @discardableResult
    public func migrate() throws(TenureError) -> [Int] {
        try connection.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
            """)
        var applied: [Int] = []
        for migration in embeddedMigrations {
            let done: Bool = try transaction { () throws(TenureError) -> Bool in
                try connection.query("SELECT pg_advisory_xact_lock(7309, 1)")
                let checksum = try connection.query("SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex') AS sum", [migration.sql])[0, "sum"]!
                let existing = try connection.query("SELECT checksum FROM schema_migrations WHERE version = $1", [String(migration.version)])
                if let recorded = existing.rows.first?[0] {
                    guard recorded == checksum else {
                        throw TenureError(
                            .migrationChanged,
                            "catalog migration \(migration.name) was changed after it was applied (recorded checksum \(recorded.prefix(12))…, embedded \(checksum.prefix(12))…); migrations are forward-only: restore the file and add a new migration instead")
                    }
                    return false
                }
                try connection.execute(migration.sql)
                try connection.query(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    [String(migration.version), migration.name, checksum])
                return true
            }
            if done { applied.append(migration.version) }
        }
        return applied
    }

    /// The highest migration the catalog has, and the highest this binary knows.
    public func migrationStatus() throws(TenureError) -> (applied: Int, known: Int) {
        let result = try connection.query("SELECT coalesce(max(version), 0) AS v FROM schema_migrations")
        return (Int(result[0, "v"] ?? "0") ?? 0, embeddedMigrations.last?.version ?? 0)
    }

    // MARK: - Servers

    public func addServer(_ server: ServerRecord) throws(TenureError) {
        do {
            try connection.query(
                "INSERT INTO tenant_servers (name, admin_url, public_host, public_port, created_at, capacity, state) VALUES ($1, $2, $3, $4, to_timestamp($5::float8), $6, $7)",
                [
                    server.name.rawValue, server.adminURL, server.publicHost, String(server.publicPort), epoch(server.createdAt), String(server.capacity),
                    server.state.rawValue,
                ])
        } catch where error.sqlState == "23505" {
            throw TenureError(.serverExists, "a tenant server named '\(server.name)' is already registered", context: ["server": server.name.rawValue])
        }
    }

    /// Registers `default` if it is missing (idempotent).
    public func ensureDefaultServer(publicHost: String, publicPort: Int, now: Date) throws(TenureError) {
        try connection.query(
            "INSERT INTO tenant_servers (name, admin_url, public_host, public_port, created_at) VALUES ('default', NULL, $1, $2, to_timestamp($3::float8)) ON CONFLICT (name) DO NOTHING",
            [publicHost, String(publicPort), epoch(now)])
    }

    static let serverColumns = "name, admin_url, public_host, public_port, extract(epoch FROM created_at)::text AS created_at, capacity, state"

    /// Changes a server's capacity and/or state; false if there is no such server.
    public func updateServer(_ name: String, capacity: Int?, state: ServerState?) throws(TenureError) -> Bool {
        try connection.query(
            "UPDATE tenant_servers SET capacity = coalesce($2::integer, capacity), state = coalesce($3, state) WHERE name = $1 RETURNING name",
            [name, capacity.map { String($0) }, state?.rawValue]).rows.count == 1
    }

    /// Live (not destroyed) databases per server.
    public func placedCounts() throws(TenureError) -> [String: Int] {
        var counts: [String: Int] = [:]
        for row in try connection.query("SELECT server_name, count(*)::text FROM databases WHERE state <> 'destroyed' GROUP BY server_name").rows {
            counts[row[0] ?? ""] = Int(row[1] ?? "0") ?? 0
        }
        return counts
    }

    /// Inside a transaction that places a database on `name`: locks the server's row until
    /// the transaction ends and checks, under that lock, that it is active and below its
    /// capacity. Two creates racing for the last place are taken one after the other, and
    /// the second sees the first (its count is read after the lock is granted), so a
    /// capacity is never overshot. Throws a conflict otherwise.
    public func reservePlace(onServer name: String) throws(TenureError) {
        let server = try connection.query("SELECT capacity::text, state FROM tenant_servers WHERE name = $1 FOR UPDATE", [name])
        guard let row = server.rows.first else {
            throw TenureError(.serverNotFound, "no tenant server named '\(printable(name))'; see `tenure server list`", context: ["server": name])
        }
        let placed =
            Int((try connection.query("SELECT count(*)::text FROM databases WHERE server_name = $1 AND state <> 'destroyed'", [name]).rows.first?[0] ?? nil) ?? "0") ?? 0
        if let refusal = Self.placeRefusal(name, state: row[1] ?? "", placed: placed, capacity: Int(row[0] ?? "0") ?? 0) { throw refusal }
    }

    /// Why a server takes no new database (draining, or full), if it does not.
    public static func placeRefusal(_ name: String, state: String, placed: Int, capacity: Int) -> TenureError? {
        guard state == "active" else {
            return TenureError(.lifecycleConflict, "server '\(printable(name))' is draining: no new databases are placed there", context: ["server": name])
        }
        guard placed < capacity else {
            return TenureError(.lifecycleConflict, "server '\(printable(name))' is full (\(placed) of \(capacity) databases)", context: ["server": name])
        }
        return nil
    }

    public func servers() throws(TenureError) -> [ServerRecord] {
        let result = try connection.query(
            "SELECT \(Self.serverColumns) FROM tenant_servers ORDER BY name")
        return result.rows.indices.map { serverRecord(result, $0) }
    }

    public func server(named name: String) throws(TenureError) -> ServerRecord {
        let result = try connection.query(
            "SELECT \(Self.serverColumns) FROM tenant_servers WHERE name = $1",
            [name])
        guard !result.rows.isEmpty else {
            throw TenureError(.serverNotFound, "no tenant server named '\(printable(name))'; see `tenure server list`", context: ["server": name])
        }
        return serverRecord(result, 0)
    }

    private func serverRecord(_ result: QueryResult, _ row: Int) -> ServerRecord {
        ServerRecord(
            name: (try? ServerName(validating: result[row, "name"]!)) ?? .defaultServer, adminURL: result[row, "admin_url"],
            publicHost: result[row, "public_host"]!, publicPort: Int(result[row, "public_port"]!)!,
            createdAt: date(result[row, "created_at"])!, capacity: Int(result[row, "capacity"] ?? "") ?? ServerRecord.defaultCapacity,
            state: ServerState(rawValue: result[row, "state"] ?? "") ?? .active)
    }

    // MARK: - Databases

    static let databaseColumns = """
        id, name, state, version, plan, server_name, pg_database, pg_role, destroyed_by, destroy_reason,
        legal_hold_reason,
        extract(epoch FROM created_at)::text AS created_at, extract(epoch FROM updated_at)::text AS updated_at,
        extract(epoch FROM trial_ends_at)::text AS trial_ends_at, extract(epoch FROM deactivated_at)::text AS deactivated_at,
        extract(epoch FROM destroy_after)::text AS destroy_after, extract(epoch FROM destroyed_at)::text AS destroyed_at,
        extract(epoch FROM legal_hold_since)::text AS legal_hold_since
        """

    public func insertDatabase(_ record: DatabaseRecord) throws(TenureError) {
        let l = record.lifecycle
        do {
            try connection.query(
                """
                INSERT INTO databases (id, name, state, version, plan, server_name, pg_database, pg_role, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, to_timestamp($9::float8), to_timestamp($9::float8))
                """,
                [
                    record.id.rawValue, record.name, l.state.rawValue, String(record.version), l.plan.rawValue, record.serverName,
                    record.postgresDatabase, record.postgresRole, epoch(l.createdAt),
                ])
        } catch where error.sqlState == "23505" {
            throw TenureError(.nameTaken, "a live database named '\(record.name)' already exists", context: ["name": record.name])
        }
    }

    public func database(_ id: DatabaseID, forUpdate: Bool = false) throws(TenureError) -> DatabaseRecord {
        let result = try connection.query(
            "SELECT \(Self.databaseColumns) FROM databases WHERE id = $1\(forUpdate ? " FOR UPDATE" : "")", [id.rawValue])
        guard !result.rows.isEmpty else {
            throw TenureError(.databaseNotFound, "no database with id \(id)", context: ["database_id": id.rawValue])
        }
        return databaseRecord(result, 0)
    }

    public func databases(state: DatabaseState? = nil) throws(TenureError) -> [DatabaseRecord] {
        let result: QueryResult
        if let state {
            result = try connection.query("SELECT \(Self.databaseColumns) FROM databases WHERE state = $1 ORDER BY created_at, id", [state.rawValue])
        } else {
            result = try connection.query("SELECT \(Self.databaseColumns) FROM databases ORDER BY created_at, id")
        }
        return result.rows.indices.map { databaseRecord(result, $0) }
    }

    /// One page of databases in id order, after `cursor` (an id), at most `limit` rows.
    public func databases(state: DatabaseState?, after cursor: DatabaseID?, limit: Int) throws(TenureError) -> [DatabaseRecord] {
        let result = try connection.query(
            """
            SELECT \(Self.databaseColumns) FROM databases
            WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR id > $2)
            ORDER BY id LIMIT $3
            """,
            [state?.rawValue, cursor?.rawValue, String(limit)])
        return result.rows.indices.map { databaseRecord(result, $0) }
    }

    /// Whether a live (not destroyed) database already has this name.
    public func liveDatabaseExists(named name: String) throws(TenureError) -> Bool {
        try !connection.query("SELECT 1 FROM databases WHERE name = $1 AND state <> 'destroyed'", [name]).rows.isEmpty
    }

    /// Databases that are not destroyed: the fleet the blast-radius cap is measured against.
    public func liveDatabaseCount() throws(TenureError) -> Int {
        Int(try connection.query("SELECT count(*) AS n FROM databases WHERE state <> 'destroyed'")[0, "n"]!)!
    }

    /// Compare-and-swap: writes `record.lifecycle` if the stored version is still
    /// `expectedVersion`. Returns false when someone else changed the row first.
    public func updateDatabase(_ record: DatabaseRecord, expectedVersion: Int64, now: Date) throws(TenureError) -> Bool {
        let l = record.lifecycle
        let result = try connection.query(
            """
            UPDATE databases SET
                state = $3, plan = $4, version = version + 1, updated_at = to_timestamp($5::float8),
                trial_ends_at = to_timestamp($6::float8), deactivated_at = to_timestamp($7::float8),
                destroy_after = to_timestamp($8::float8), destroyed_at = to_timestamp($9::float8),
                destroy_reason = $10, destroyed_by = $11,
                legal_hold = $12::text IS NOT NULL, legal_hold_reason = $12, legal_hold_since = to_timestamp($13::float8)
            WHERE id = $1 AND version = $2
            """,
            [
                record.id.rawValue, String(expectedVersion), l.state.rawValue, l.plan.rawValue, epoch(now),
                l.trialEndsAt.map(epoch), l.deactivatedAt.map(epoch), l.destroyAfter.map(epoch), l.destroyedAt.map(epoch),
                l.destructionReason?.rawValue, record.destroyedBy, l.legalHold?.reason, l.legalHold.map { epoch($0.since) },
            ])
        return result.affectedRowCount == 1
    }

    /// Removes a database row that never left `provisioning` (a rolled-back create).
    /// Switches a database to another server (a move's one catalog step), compare-and-swap on its version.
    public func moveDatabase(_ id: DatabaseID, to server: String, expectedVersion: Int64, now: Date) throws(TenureError) -> Bool {
        try connection.query(
            "UPDATE databases SET server_name = $3, version = version + 1, updated_at = to_timestamp($4::float8) WHERE id = $1 AND version = $2",
            [id.rawValue, String(expectedVersion), server, epoch(now)]).affectedRowCount == 1
    }

    public func deleteProvisioningDatabase(_ id: DatabaseID) throws(TenureError) {
        try connection.query("DELETE FROM databases WHERE id = $1 AND state = 'provisioning'", [id.rawValue])
        // A create rolled back never stored anything: its data key goes with it.
        try connection.query("DELETE FROM data_keys WHERE owner = $1 AND NOT EXISTS (SELECT 1 FROM databases WHERE id = $1)", [id.rawValue])
    }

    private func databaseRecord(_ result: QueryResult, _ row: Int) -> DatabaseRecord {
        let hold = result[row, "legal_hold_reason"].map { LegalHold(reason: $0, since: date(result[row, "legal_hold_since"]) ?? Date(timeIntervalSince1970: 0)) }
        let lifecycle = DatabaseLifecycle(
            state: DatabaseState(rawValue: result[row, "state"]!)!, plan: Plan(rawValue: result[row, "plan"]!)!,
            createdAt: date(result[row, "created_at"])!, trialEndsAt: date(result[row, "trial_ends_at"]),
            deactivatedAt: date(result[row, "deactivated_at"]), destroyAfter: date(result[row, "destroy_after"]),
            destroyedAt: date(result[row, "destroyed_at"]), destructionReason: result[row, "destroy_reason"].flatMap(DestructionReason.init(rawValue:)),
            legalHold: hold)
        return DatabaseRecord(
            id: DatabaseID(unchecked: result[row, "id"]!), name: result[row, "name"]!, version: Int64(result[row, "version"]!)!,
            serverName: result[row, "server_name"]!, postgresDatabase: result[row, "pg_database"]!, postgresRole: result[row, "pg_role"]!,
            updatedAt: date(result[row, "updated_at"])!, destroyedBy: result[row, "destroyed_by"], lifecycle: lifecycle)
    }

    // MARK: - Intents

    public func insertIntent(_ intent: IntentRecord) throws(TenureError) {
        try connection.query(
            """
            INSERT INTO intents (id, kind, database_id, server_name, pg_database, pg_role, status, created_at, lock_key, detail)
            VALUES ($1, $2, $3, $4, $5, $6, 'pending', to_timestamp($7::float8), $8, $9::jsonb)
            """,
            [
                intent.id.rawValue, intent.kind.rawValue, intent.databaseID.rawValue, intent.serverName, intent.postgresDatabase,
                intent.postgresRole, epoch(intent.createdAt), String(intent.lockKey), jsonText(intent.detail),
            ])
    }

    public func finishIntent(_ id: IntentID, status: IntentStatus, now: Date) throws(TenureError) {
        precondition(status != .pending, "an intent finishes completed or rolled back")
        try connection.query(
            "UPDATE intents SET status = $2, finished_at = to_timestamp($3::float8) WHERE id = $1 AND status = 'pending'",
            [id.rawValue, status.rawValue, epoch(now)])
    }

    public func pendingIntents() throws(TenureError) -> [IntentRecord] {
        let result = try connection.query(
            """
            SELECT id, kind, database_id, server_name, pg_database, pg_role, lock_key, extract(epoch FROM created_at)::text AS created_at,
                   detail::text AS detail
            FROM intents WHERE status = 'pending' ORDER BY created_at, id
            """)
        return result.rows.indices.map { row in
            IntentRecord(
                id: IntentID(unchecked: result[row, "id"]!), kind: IntentKind(rawValue: result[row, "kind"]!)!,
                databaseID: DatabaseID(unchecked: result[row, "database_id"]!), serverName: result[row, "server_name"]!,
                postgresDatabase: result[row, "pg_database"]!, postgresRole: result[row, "pg_role"]!,
                lockKey: Int64(result[row, "lock_key"]!)!, createdAt: date(result[row, "created_at"])!,
                detail: (try? JSONDecoder().decode([String: String].self, from: Data((result[row, "detail"] ?? "{}").utf8))) ?? [:])
        }
    }

    // MARK: - API keys

    public func insertAPIKey(_ record: APIKeyRecord, keyHash: String) throws(TenureError) {
        try connection.query(
            "INSERT INTO api_keys (id, name, scopes, key_hash, created_at) VALUES ($1, $2, $3::text[], $4, to_timestamp($5::float8))",
            [record.id.rawValue, record.name, "{" + record.scopes.map(\.rawValue).joined(separator: ",") + "}", keyHash, epoch(record.createdAt)])
    }

    public func apiKeys() throws(TenureError) -> [APIKeyRecord] {
        try apiKeys(where: "true", [])
    }

    private func apiKeys(where condition: String, _ parameters: [String?]) throws(TenureError) -> [APIKeyRecord] {
        let result = try connection.query(
            """
            SELECT id, name, array_to_string(scopes, ',') AS scopes, extract(epoch FROM created_at)::text AS created_at,
                   extract(epoch FROM revoked_at)::text AS revoked_at, extract(epoch FROM last_used_at)::text AS last_used_at
            FROM api_keys WHERE \(condition) ORDER BY created_at, id
            """, parameters)
        return result.rows.indices.map { row in
            APIKeyRecord(
                id: APIKeyID(unchecked: result[row, "id"]!), name: result[row, "name"]!,
                scopes: result[row, "scopes"]!.split(separator: ",").compactMap { APIScope(rawValue: String($0)) },
                createdAt: date(result[row, "created_at"])!, revokedAt: date(result[row, "revoked_at"]), lastUsedAt: date(result[row, "last_used_at"]))
        }
    }

    /// Revokes a key; false if it was already revoked. Throws `apiKeyNotFound` for an unknown id.
    public func revokeAPIKey(_ id: APIKeyID, now: Date) throws(TenureError) -> Bool {
        let result = try connection.query(
            "UPDATE api_keys SET revoked_at = to_timestamp($2::float8) WHERE id = $1 AND revoked_at IS NULL", [id.rawValue, epoch(now)])
        if result.affectedRowCount == 1 { return true }
        guard try !connection.query("SELECT 1 FROM api_keys WHERE id = $1", [id.rawValue]).rows.isEmpty else {
            throw TenureError(.apiKeyNotFound, "no API key with id \(id)", context: ["api_key_id": id.rawValue])
        }
        return false
    }

    /// The live key with this hash, if any (for authenticating a request).
    public func apiKey(hash: String) throws(TenureError) -> APIKeyRecord? {
        try apiKeys(where: "key_hash = $1 AND revoked_at IS NULL", [hash]).first
    }

    // MARK: - Idempotency keys

    /// A stored idempotent request: its body hash and, when finished, its response.
    public struct IdempotentRequest: Sendable {
        public var operation: String
        public var requestHash: String
        public var status: Int?
        public var response: String?
    }

    /// Claims `key` for a new request. Returns nil when this call claimed it (go ahead),
    /// or the request that holds it already.
    public func claimIdempotencyKey(apiKeyID: String, key: String, operation: String, requestHash: String, now: Date) throws(TenureError)
        -> IdempotentRequest?
    {
        let inserted = try connection.query(
            """
            INSERT INTO idempotency_keys (api_key_id, key, operation, request_hash, created_at)
            VALUES ($1, $2, $3, $4, to_timestamp($5::float8)) ON CONFLICT DO NOTHING
            """,
            [apiKeyID, key, operation, requestHash, epoch(now)])
        if inserted.affectedRowCount == 1 { return nil }
        let result = try connection.query(
            "SELECT operation, request_hash, status, response FROM idempotency_keys WHERE api_key_id = $1 AND key = $2", [apiKeyID, key])
        guard !result.rows.isEmpty else {
            throw TenureError(.concurrentModification, "Idempotency-Key '\(printable(key))' changed while it was being claimed; retry")
        }
        return IdempotentRequest(
            operation: result[0, "operation"]!, requestHash: result[0, "request_hash"]!, status: result[0, "status"].flatMap { Int($0) },
            response: result[0, "response"])
    }

    public func finishIdempotencyKey(apiKeyID: String, key: String, status: Int, response: String) throws(TenureError) {
        try connection.query(
            "UPDATE idempotency_keys SET status = $3, response = $4 WHERE api_key_id = $1 AND key = $2", [apiKeyID, key, String(status), response])
    }

    /// Frees a key whose request failed, so that a retry may run it again.
    public func releaseIdempotencyKey(apiKeyID: String, key: String) throws(TenureError) {
        try connection.query("DELETE FROM idempotency_keys WHERE api_key_id = $1 AND key = $2 AND status IS NULL", [apiKeyID, key])
    }

    /// Forgets idempotency records older than `cutoff` (run by the sweep service).
    public func expireIdempotencyKeys(before cutoff: Date) throws(TenureError) {
        try connection.query("DELETE FROM idempotency_keys WHERE created_at < to_timestamp($1::float8)", [epoch(cutoff)])
    }

    // MARK: - Backups

    static let backupColumns = """
        id, database_id, state, format, path, byte_count, row_count, table_count, error, lock_key, scheduled, drill_outcome, xxh64,
        extract(epoch FROM started_at)::text AS started_at, extract(epoch FROM finished_at)::text AS finished_at,
        extract(epoch FROM drilled_at)::text AS drilled_at
        """

    public func insertBackup(_ backup: BackupRecord) throws(TenureError) {
        try connection.query(
            """
            INSERT INTO backups (id, database_id, state, format, path, started_at, lock_key, scheduled)
            VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8), $7, $8)
            """,
            [
                backup.id.rawValue, backup.databaseID.rawValue, backup.state.rawValue, backup.format, backup.path, epoch(backup.startedAt),
                String(backup.lockKey), backup.scheduled ? "true" : "false",
            ])
    }

    /// Ends a backup; `digest` is the XXH64 (hex) of the bytes a verified backup stored.
    public func finishBackup(
        _ id: BackupID, state: BackupState, byteCount: Int64?, rowCount: Int64?, tableCount: Int?, error: String?, digest: String? = nil, now: Date
    ) throws(TenureError) {
        try connection.query(
            """
            UPDATE backups SET state = $2, byte_count = $3, row_count = $4, table_count = $5, error = $6, finished_at = to_timestamp($7::float8),
                xxh64 = $8
            WHERE id = $1
            """,
            [id.rawValue, state.rawValue, byteCount.map { String($0) }, rowCount.map { String($0) }, tableCount.map { String($0) }, error, epoch(now), digest])
    }

    public func backups(databaseID: DatabaseID? = nil, state: BackupState? = nil) throws(TenureError) -> [BackupRecord] {
        var conditions: [String] = []
        var parameters: [String?] = []
        if let databaseID {
            parameters.append(databaseID.rawValue)
            conditions.append("database_id = $\(parameters.count)")
        }
        if let state {
            parameters.append(state.rawValue)
            conditions.append("state = $\(parameters.count)")
        }
        let filter = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        let result = try connection.query("SELECT \(Self.backupColumns) FROM backups\(filter) ORDER BY started_at, id", parameters)
        return result.rows.indices.map { backupRecord(result, $0) }
    }

    /// How many backups are in `state`, fleet-wide.
    public func backupCount(state: BackupState) throws(TenureError) -> Int {
        Int(try connection.query("SELECT count(*)::text FROM backups WHERE state = $1", [state.rawValue]).rows.first?[0] ?? "0") ?? 0
    }

    public func backup(_ id: BackupID) throws(TenureError) -> BackupRecord {
        let result = try connection.query("SELECT \(Self.backupColumns) FROM backups WHERE id = $1", [id.rawValue])
        guard !result.rows.isEmpty else {
            throw TenureError(.backupNotFound, "no backup with id \(id)", context: ["backup_id": id.rawValue])
        }
        return backupRecord(result, 0)
    }

    /// Marks every backup of a database deleted (its files are removed by the caller).
    public func deleteBackups(of databaseID: DatabaseID, now: Date) throws(TenureError) {
        try connection.query(
            "UPDATE backups SET state = 'deleted', finished_at = coalesce(finished_at, to_timestamp($2::float8)) WHERE database_id = $1 AND state <> 'deleted'",
            [databaseID.rawValue, epoch(now)])
    }

    private func backupRecord(_ result: QueryResult, _ row: Int) -> BackupRecord {
        var record = BackupRecord(
            id: BackupID(unchecked: result[row, "id"]!), databaseID: DatabaseID(unchecked: result[row, "database_id"]!), state: BackupState(rawValue: result[row, "state"]!) ?? .failed,
            format: result[row, "format"]!, path: result[row, "path"]!, startedAt: date(result[row, "started_at"])!,
            lockKey: Int64(result[row, "lock_key"]!)!)
        record.byteCount = result[row, "byte_count"].flatMap { Int64($0) }
        record.rowCount = result[row, "row_count"].flatMap { Int64($0) }
        record.tableCount = result[row, "table_count"].flatMap { Int($0) }
        record.error = result[row, "error"]
        record.finishedAt = date(result[row, "finished_at"])
        record.scheduled = result[row, "scheduled"] == "t"
        record.digest = result[row, "xxh64"]
        record.drilledAt = date(result[row, "drilled_at"])
        record.drillOutcome = result[row, "drill_outcome"].flatMap { DrillOutcome(rawValue: $0) }
        return record
    }

    /// Session advisory locks mark the process carrying out an intent: a crashed process's
    /// locks vanish with its session, which is how recovery tells abandoned work from running work.
    public func lock(key: Int64) throws(TenureError) {
        try connection.query("SELECT pg_advisory_lock($1::bigint)", [String(key)])
    }

    public func tryLock(key: Int64) throws(TenureError) -> Bool {
        try connection.query("SELECT pg_try_advisory_lock($1::bigint) AS ok", [String(key)])[0, "ok"] == "t"
    }

    public func unlock(key: Int64) throws(TenureError) {
        try connection.query("SELECT pg_advisory_unlock($1::bigint)", [String(key)])
    }

    /// Transitions of one database take turns across processes on this lock (two-key form,
    /// its own key space), held while its server action runs instead of a row lock.
    public func lockDatabase(_ id: DatabaseID) throws(TenureError) {
        try connection.query("SELECT pg_advisory_lock(7310, hashtext($1))", [id.rawValue])
    }

    public func unlockDatabase(_ id: DatabaseID) throws(TenureError) {
        try connection.query("SELECT pg_advisory_unlock(7310, hashtext($1))", [id.rawValue])
    }

    /// The expiry sweep's cross-process lock (two-key form: a key space apart from intents').
    public func tryLockSweep() throws(TenureError) -> Bool {
        try connection.query("SELECT pg_try_advisory_lock(7309, 2) AS ok")[0, "ok"] == "t"
    }

    public func unlockSweep() throws(TenureError) {
        try connection.query("SELECT pg_advisory_unlock(7309, 2)")
    }

    // MARK: - Audit

    public func audit(
        at: Date, databaseID: String?, actor: String, action: String, from: String?, to: String?, reason: String?,
        detail: [String: String] = [:]
    ) throws(TenureError) {
        let json = jsonText(detail)
        try connection.query(
            """
            INSERT INTO audit_events (at, database_id, actor, action, from_state, to_state, reason, detail)
            VALUES (to_timestamp($1::float8), $2, $3, $4, $5, $6, $7, $8::jsonb)
            """,
            [epoch(at), databaseID, actor, action, from, to, reason, json])
    }

    public func auditEvents(databaseID: DatabaseID? = nil, limit: Int = 1000) throws(TenureError) -> [AuditEvent] {
        let columns = "id, extract(epoch FROM at)::text AS at, database_id, actor, action, from_state, to_state, reason, detail::text AS detail"
        let result: QueryResult
        if let databaseID {
            result = try connection.query("SELECT \(columns) FROM audit_events WHERE database_id = $1 ORDER BY id LIMIT $2", [databaseID.rawValue, String(limit)])
        } else {
            result = try connection.query("SELECT * FROM (SELECT \(columns) FROM audit_events ORDER BY id DESC LIMIT $1) AS recent ORDER BY id", [String(limit)])
        }
        return result.rows.indices.map { row in
            AuditEvent(
                id: Int64(result[row, "id"]!)!, at: date(result[row, "at"])!, databaseID: result[row, "database_id"], actor: result[row, "actor"]!,
                action: result[row, "action"]!, fromState: result[row, "from_state"], toState: result[row, "to_state"],
                reason: result[row, "reason"], detail: result[row, "detail"] ?? "{}")
        }
    }

    // MARK: - Sweeps

    public func lastSweepInstant() throws(TenureError) -> Date? {
        date(try connection.query("SELECT extract(epoch FROM max(as_of))::text AS t FROM sweeps")[0, "t"])
    }

    /// The catalog server's clock, only to sanity-check ours (never for decisions).
    public func serverNow() throws(TenureError) -> Date {
        date(try connection.query("SELECT extract(epoch FROM clock_timestamp())::text AS t")[0, "t"])!
    }

    /// Starts a sweep row; its id is the fencing token.
    public func beginSweep(asOf: Date, startedAt: Date) throws(TenureError) -> Int64 {
        Int64(
            try connection.query(
                "INSERT INTO sweeps (as_of, started_at, outcome) VALUES (to_timestamp($1::float8), to_timestamp($2::float8), 'running') RETURNING id",
                [epoch(asOf), epoch(startedAt)])[0, "id"]!)!
    }

    public func endSweep(id: Int64, outcome: String, finishedAt: Date, detail: [String: String]) throws(TenureError) {
        let json = jsonText(detail)
        try connection.query(
            "UPDATE sweeps SET outcome = $2, finished_at = to_timestamp($3::float8), detail = $4::jsonb WHERE id = $1",
            [String(id), outcome, epoch(finishedAt), json])
    }

    /// True while `token` is the newest sweep: a sweep that was overtaken does nothing more.
    public func isLatestSweep(_ token: Int64) throws(TenureError) -> Bool {
        try connection.query("SELECT NOT EXISTS (SELECT 1 FROM sweeps WHERE id > $1) AS latest", [String(token)])[0, "latest"] == "t"
    }
}

func jsonText(_ object: [String: String]) -> String {
    String(decoding: (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8), as: UTF8.self)
}

/// Seconds since 1970 with microseconds, as PostgreSQL's `to_timestamp` takes them.
func epoch(_ date: Date) -> String {
    String(format: "%.6f", date.timeIntervalSince1970)
}

func date(_ text: String?) -> Date? {
    guard let text, let seconds = Double(text) else { return nil }
    return Date(timeIntervalSince1970: seconds)
}
