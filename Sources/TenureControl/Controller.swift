import Foundation
import Logging
import TenureCatalog
import TenureCore
import TenurePQ

/// A database just created: its record and its one-time credential.
public struct CreatedDatabase: Sendable {
    public var record: DatabaseRecord
    /// Shown once to its owner, never stored in clear, never logged.
    public var password: String
    public var connectionURL: String
}

/// The result of a transition.
public struct TransitionOutcome: Sendable {
    public var record: DatabaseRecord
    /// Set only when a new password was asked for (reactivate --new-password).
    public var newPassword: String?
    public var connectionURL: String?
}

/// Carries out lifecycle transitions on real PostgreSQL servers, with the catalog as the
/// source of truth. The use cases here are the only path from the CLI (and later the HTTP
/// API) to the servers. Thread: blocking; one controller per thread.
public final class Controller {
    public let catalog: Catalog
    public let configuration: TenureConfiguration
    public let clock: any WallClock
    /// Who acts, recorded in every audit event (`cli:root`, `sweep`, ...).
    public let actor: String
    let logger: Logger

    public init(catalog: Catalog, configuration: TenureConfiguration, clock: any WallClock, actor: String, logger: Logger) {
        self.catalog = catalog
        self.configuration = configuration
        self.clock = clock
        self.actor = actor
        self.logger = logger
    }

    var policy: LifecyclePolicy { configuration.policy }

    // MARK: - Servers

    /// How Tenure connects to `server` as an administrator.
    func adminParameters(_ server: ServerRecord, database: String = "postgres") throws(TenureError) -> ConnectionParameters {
        var parameters: ConnectionParameters
        if let url = server.adminURL {
            parameters = try ConnectionParameters(parsing: url, setting: "the admin URL of server '\(server.name)'")
        } else {
            parameters = catalog.parameters
        }
        parameters["dbname"] = database
        // Controller sessions never resolve unqualified names through a tenant's search_path.
        parameters["options"] = "-c search_path=pg_catalog"
        // A host that vanished is noticed by TCP keepalives; connecting has its own deadline.
        let deadlines = configuration.serverDeadlines
        if parameters["connect_timeout"] == nil { parameters["connect_timeout"] = String(deadlines.connect.components.seconds) }
        if parameters["keepalives"] == nil {
            parameters["keepalives"] = "1"
            parameters["keepalives_idle"] = "30"
            parameters["keepalives_interval"] = "10"
            parameters["keepalives_count"] = "3"
        }
        return parameters
    }

    /// A control session on a tenant server: every statement has the server's
    /// `statement_timeout` and `lock_timeout` and a client-side deadline a little longer, so a
    /// server that stops answering fails the operation, with its name, instead of holding it.
    func connectAdmin(_ server: ServerRecord, database: String = "postgres") throws(TenureError) -> PostgresConnection {
        let deadlines = configuration.serverDeadlines
        do {
            var parameters = try adminParameters(server, database: database)
            parameters["options"] = (parameters["options"] ?? "")
                + " -c statement_timeout=\(deadlines.statement.components.seconds * 1000) -c lock_timeout=\(deadlines.lock.components.seconds * 1000)"
            let connection = try PostgresConnection(parameters, applicationName: "tenure-controller")
            connection.deadline = deadlines.statement + .seconds(15)
            return connection
        } catch where error.code == .serverUnreachable {
            throw TenureError(
                .serverUnreachable, "tenant server '\(server.name)' is unreachable: \(error.message)", context: ["server": server.name.rawValue])
        }
    }

    /// Registers a tenant server after checking that Tenure can connect to it and may create
    /// roles and databases there. Nothing is stored if either check fails.
    public func addServer(name: String, url: String, publicHost: String?, publicPort: Int?, capacity: Int? = nil) throws(TenureError) -> ServerRecord {
        let serverName = try ServerName(validating: name)
        if let capacity, !(0...1_000_000).contains(capacity) {
            throw TenureError(.invalidRequest, "capacity must be a whole number from 0 to 1000000")
        }
        var parameters = try ConnectionParameters(parsing: url, setting: "--url")
        parameters["dbname"] = parameters["dbname"] ?? "postgres"
        let connection: PostgresConnection
        do {
            connection = try PostgresConnection(parameters.with(database: "postgres"), applicationName: "tenure-controller")
        } catch {
            throw TenureError(.serverUnreachable, "server '\(serverName)' is unreachable, nothing registered: \(error.message)")
        }
        defer { connection.close() }
        let rights = try connection.query("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
        let isSuper = rights[0, "rolsuper"] == "t"
        guard isSuper || (rights[0, "rolcreaterole"] == "t" && rights[0, "rolcreatedb"] == "t") else {
            throw TenureError(.invalidRequest, "the user in --url may not create roles and databases on server '\(serverName)'; nothing registered")
        }
        try hardenServer(connection)
        let host = parameters["host"].flatMap { $0.hasPrefix("/") ? nil : $0 } ?? "127.0.0.1"
        let record = ServerRecord(
            name: serverName, adminURL: url, publicHost: publicHost ?? host, publicPort: publicPort ?? Int(parameters["port"] ?? "5432") ?? 5432,
            createdAt: clock.now(), capacity: capacity ?? ServerRecord.defaultCapacity)
        try catalog.transaction { () throws(TenureError) in
            try catalog.addServer(record)
            try catalog.audit(at: record.createdAt, databaseID: nil, actor: actor, action: "server_add", from: nil, to: nil, reason: nil, detail: ["server": serverName.rawValue])
        }
        return record
    }

    /// Tenant isolation (RELIABILITY S1) also needs the server's other databases closed:
    /// PostgreSQL grants `CONNECT` and `TEMPORARY` on `postgres`, `template1` and every new
    /// database to PUBLIC. Revokes them wherever PUBLIC still has them. Idempotent; run at
    /// registration and before every create, so databases added later are closed too.
    func hardenServer(_ admin: PostgresConnection) throws(TenureError) {
        let open = try admin.query(
            "SELECT datname FROM pg_database WHERE datallowconn AND (has_database_privilege('public', oid, 'CONNECT') OR has_database_privilege('public', oid, 'TEMPORARY')) ORDER BY 1"
        )
        for row in open.rows {
            guard let name = row[0] else { continue }
            // Best effort on other databases: one may be dropped meanwhile (3D000), or have its
            // privileges changed by a concurrent session (XX000 "tuple concurrently updated").
            do throws(TenureError) {
                try admin.execute("REVOKE CONNECT, TEMPORARY ON DATABASE \(quoteIdentifier(name)) FROM PUBLIC")
                logger.notice("revoked CONNECT from PUBLIC on a tenant server's database", metadata: ["tenure.database": "\(name)"])
            } catch {
                logger.warning("could not revoke CONNECT from PUBLIC", metadata: ["tenure.database": "\(name)", "tenure.error": "\(error.message)"])
            }
        }
    }

    // MARK: - Create

    /// Creates a database: an owner role with a random SCRAM password, a database owned by
    /// it, `CONNECT` revoked from PUBLIC, the PG15 public-schema rules re-asserted. Recorded
    /// as an intent first; any failure rolls every step back and leaves nothing behind.
    public func createDatabase(name: String, plan: Plan, serverName: String?) throws(TenureError) -> CreatedDatabase {
        let databaseName = try DatabaseName(validating: name)
        let server = try placement(requested: serverName)
        let admin = try connectAdmin(server)
        defer { admin.close() }
        try hardenServer(admin)
        if try catalog.liveDatabaseExists(named: databaseName.rawValue) {
            throw TenureError(.nameTaken, "a live database named '\(databaseName)' already exists", context: ["name": databaseName.rawValue])
        }

        let now = clock.now()
        let id = DatabaseID.random()
        let (lifecycle, action) = DatabaseLifecycle.create(plan: plan, now: now)
        precondition(action == .provision, "create provisions")
        var record = DatabaseRecord(
            id: id, name: databaseName.rawValue, version: 1, serverName: server.name.rawValue, postgresDatabase: id.postgresDatabaseName,
            postgresRole: id.postgresRoleName, updatedAt: now, destroyedBy: nil, lifecycle: lifecycle)
        let intent = IntentRecord(
            id: .random(), kind: .createDatabase, databaseID: id, serverName: server.name.rawValue, postgresDatabase: record.postgresDatabase,
            postgresRole: record.postgresRole, lockKey: Int64.random(in: 1...Int64.max), createdAt: now)

        try catalog.lock(key: intent.lockKey)
        defer { try? catalog.unlock(key: intent.lockKey) }
        try recordProvisioning(record, intent: intent, plan: plan)
        Failpoint.createAfterIntent.hit()

        let password = Self.randomPassword()
        do throws(TenureError) {
            let verifier = try admin.scramVerifier(password: password, role: record.postgresRole)
            try admin.execute(
                "CREATE ROLE \(quoteIdentifier(record.postgresRole)) LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT \(configuration.planConnectionLimits[plan] ?? -1) PASSWORD \(quoteLiteral(verifier))"
            )
            Failpoint.createAfterRole.hit()
            try admin.execute(
                "CREATE DATABASE \(quoteIdentifier(record.postgresDatabase)) OWNER \(quoteIdentifier(record.postgresRole)) TEMPLATE template0 ENCODING 'UTF8'")
            Failpoint.createAfterDatabase.hit()
            try admin.execute("REVOKE ALL ON DATABASE \(quoteIdentifier(record.postgresDatabase)) FROM PUBLIC")
            try admin.execute(
                "GRANT CONNECT, TEMPORARY ON DATABASE \(quoteIdentifier(record.postgresDatabase)) TO \(quoteIdentifier(record.postgresRole))")
            let tenant = try connectAdmin(server, database: record.postgresDatabase)
            defer { tenant.close() }
            // PG15 rules, re-asserted: public is owned by pg_database_owner, PUBLIC may only use it.
            try tenant.execute(
                "ALTER SCHEMA public OWNER TO pg_database_owner; REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO PUBLIC")

            record = try recordReady(record, intent: intent.id, while: "being provisioned")
        } catch {
            logger.debug("create failed, rolling back", metadata: ["tenure.database_id": "\(id)"])
            do throws(TenureError) { try rollBackCreate(intent, reason: error.message) } catch let rollbackError {
                throw TenureError(
                    error.code, "\(error.message); rolling back also failed (\(rollbackError.message)), it will be finished at the next start",
                    context: error.context, sqlState: error.sqlState)
            }
            throw error
        }
        return CreatedDatabase(record: record, password: password, connectionURL: Self.connectionURL(record, server: server, password: password))
    }

    /// The catalog's side of a new database, in one transaction: a place reserved on its
    /// server, its provisioning row, its data key (it seals every stored backup of it), the
    /// create intent and the `create` audit event (`detail` added to it).
    func recordProvisioning(_ record: DatabaseRecord, intent: IntentRecord, plan: Plan, detail: [String: String] = [:]) throws(TenureError) {
        try catalog.transaction { () throws(TenureError) in
            try catalog.reservePlace(onServer: record.serverName)
            try catalog.insertDatabase(record)
            _ = try dataKey(owner: record.id.rawValue)
            try catalog.insertIntent(intent)
            try catalog.audit(
                at: intent.createdAt, databaseID: record.id.rawValue, actor: actor, action: LifecycleEvent.create.rawValue, from: nil,
                to: DatabaseState.provisioning.rawValue, reason: nil,
                detail: ["name": record.name, "plan": plan.rawValue, "server": record.serverName].merging(detail) { $1 })
        }
    }

    /// A provisioned database made ready, in one transaction: its row (only if it is still
    /// the version `record` read; otherwise "changed while it was `activity`"), the create
    /// intent closed, the `ready` audit event (with `detail`), and whatever `also` records.
    /// Returns the row as stored.
    func recordReady(
        _ record: DatabaseRecord, intent: IntentID, while activity: String, detail: [String: String] = [:],
        also: () throws(TenureError) -> Void = { () throws(TenureError) in }
    ) throws(TenureError) -> DatabaseRecord {
        let now = clock.now()
        var next = record
        _ = try next.lifecycle.ready(now: now, policy: policy)
        try catalog.transaction { () throws(TenureError) in
            guard try catalog.updateDatabase(next, expectedVersion: record.version, now: now) else {
                throw TenureError(.concurrentModification, "database \(record.id) changed while it was \(activity)")
            }
            try catalog.finishIntent(intent, status: .completed, now: now)
            try catalog.audit(
                at: now, databaseID: record.id.rawValue, actor: actor, action: LifecycleEvent.ready.rawValue, from: DatabaseState.provisioning.rawValue,
                to: next.state.rawValue, reason: nil, detail: detail)
            try also()
        }
        return try catalog.database(record.id)
    }

    static func connectionURL(_ record: DatabaseRecord, server: ServerRecord, password: String) -> String {
        let host = server.publicHost.contains(":") ? "[\(server.publicHost)]" : server.publicHost
        return "postgresql://\(record.postgresRole):\(password)@\(host):\(server.publicPort)/\(record.postgresDatabase)"
    }

    /// 32 characters from a 62-letter alphabet (190 bits), URL-safe without escaping.
    static func randomPassword() -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
        var generator = SystemRandomNumberGenerator()
        return String((0..<32).map { _ in alphabet.randomElement(using: &generator)! })
    }

    /// Undoes a create whose intent is pending: drops whatever exists on the server, then
    /// removes the provisioning row and closes the intent.
    func rollBackCreate(_ intent: IntentRecord, reason: String) throws(TenureError) {
        let server = try catalog.server(named: intent.serverName)
        let admin = try connectAdmin(server)
        defer { admin.close() }
        try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(intent.postgresDatabase)) WITH (FORCE)")
        try dropRole(intent.postgresRole, on: admin, server: intent.serverName)
        let now = clock.now()
        try catalog.transaction { () throws(TenureError) in
            try catalog.deleteProvisioningDatabase(intent.databaseID)
            try catalog.finishIntent(intent.id, status: .rolledBack, now: now)
            try catalog.audit(
                at: now, databaseID: intent.databaseID.rawValue, actor: actor, action: "create_rolled_back", from: DatabaseState.provisioning.rawValue,
                to: nil, reason: String(reason.prefix(500)))
        }
    }

    // MARK: - Transitions

    /// Applies `event` to a database: a compare-and-swap on its version, the action on its
    /// server, and the audit event, in one catalog transaction. `expectedVersion` (the
    /// sweep's) makes the call fail if the database changed since it was planned.
    public func apply(
        _ event: LifecycleEvent, to id: DatabaseID, reason: String? = nil, newPassword: Bool = false, expectedVersion: Int64? = nil
    ) throws(TenureError) -> TransitionOutcome {
        precondition(event != .create && event != .ready, "create and ready belong to createDatabase")
        if let reason {
            let trimmed = reason.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !trimmed.isEmpty, trimmed.count <= 500, !trimmed.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
                throw TenureError(.invalidRequest, "the reason must be 1–500 characters of text on one line")
            }
        }
        let current = try catalog.database(id)
        if let expectedVersion, expectedVersion != current.version {
            throw TenureError(.concurrentModification, "database \(id) changed since the sweep planned it; skipped", context: ["database_id": id.rawValue])
        }
        let now = clock.now()
        var next = current
        let action = try next.lifecycle.apply(event, now: now, policy: policy, holdReason: reason ?? "legal hold")
        switch action {
        case .provision:
            preconditionFailure("only create provisions")
        case .destroy(let destruction):
            next.destroyedBy = actor
            try destroy(current: current, next: next, event: event, destruction: destruction, now: now)
            return TransitionOutcome(record: try catalog.database(id), newPassword: nil, connectionURL: nil)
        case .recordOnly, .enableAccess, .disableAccess:
            var password: String?
            let server = try catalog.server(named: current.serverName)
            let conflict = TenureError(
                .concurrentModification, "database \(id) was changed by someone else at the same time; \(event.rawValue) not applied, check its state and retry",
                context: ["database_id": id.rawValue])
            func record() throws(TenureError) {
                try catalog.transaction { () throws(TenureError) in
                    guard try catalog.updateDatabase(next, expectedVersion: current.version, now: now) else { throw conflict }
                    try catalog.audit(
                        at: now, databaseID: id.rawValue, actor: actor, action: event.rawValue, from: current.state.rawValue, to: next.state.rawValue,
                        reason: reason)
                }
            }
            if case .recordOnly = action, event != .subscribe {
                try record()
            } else {
                // The server action runs with no catalog transaction open (no row lock held
                // while a tenant server answers, or does not): transitions of one database
                // take turns on an advisory lock instead, the version is checked again under
                // it, and the compare-and-swap is recorded after the action. If it cannot be
                // recorded, the server is put back as the recorded state wants it.
                try catalog.lockDatabase(id)
                defer { try? catalog.unlockDatabase(id) }
                guard try catalog.database(id).version == current.version else { throw conflict }
                do throws(TenureError) {
                    switch action {
                    case .enableAccess:
                        password = try enableAccess(current, server: server, newPassword: newPassword)
                    case .disableAccess:
                        try disableAccess(current, server: server)
                    case .recordOnly, .provision, .destroy:
                        break
                    }
                    if event == .subscribe {
                        // The paid plan's connection limit comes with the subscription.
                        let admin = try connectAdmin(server)
                        defer { admin.close() }
                        try admin.execute(
                            "ALTER ROLE \(quoteIdentifier(current.postgresRole)) CONNECTION LIMIT \(configuration.planConnectionLimits[next.lifecycle.plan] ?? -1)")
                    }
                    try record()
                } catch {
                    try? reconcileAccess(id, server: server)
                    // Changed meanwhile (a destruction does not take this lock, and may have
                    // dropped the role under the action): that is the conflict to report, not
                    // the server's error about a role that is gone.
                    if let recorded = try? catalog.database(id), recorded.version != current.version { throw conflict }
                    throw error
                }
            }
            let record = try catalog.database(id)
            return TransitionOutcome(
                record: record, newPassword: password, connectionURL: password.map { Self.connectionURL(record, server: server, password: $0) })
        }
    }

    /// A deletion request, confirmed by the database's name.
    public func requestDeletion(_ id: DatabaseID, confirmName: String) throws(TenureError) -> TransitionOutcome {
        let current = try catalog.database(id)
        guard confirmName == current.name else {
            throw TenureError(
                .confirmationMismatch,
                "the confirmation '\(printable(confirmName))' does not match the name of \(id) ('\(current.name)'); nothing was destroyed",
                context: ["database_id": id.rawValue])
        }
        return try apply(.deletionRequest, to: id, reason: "deletion requested")
    }

    private func enableAccess(_ record: DatabaseRecord, server: ServerRecord, newPassword: Bool) throws(TenureError) -> String? {
        let admin = try connectAdmin(server)
        defer { admin.close() }
        guard newPassword else {
            try admin.execute("ALTER ROLE \(quoteIdentifier(record.postgresRole)) LOGIN")
            return nil
        }
        let password = Self.randomPassword()
        let verifier = try admin.scramVerifier(password: password, role: record.postgresRole)
        try admin.execute("ALTER ROLE \(quoteIdentifier(record.postgresRole)) LOGIN PASSWORD \(quoteLiteral(verifier))")
        return password
    }

    /// Makes the role's login match the database's recorded state (after a transition whose
    /// server action ran but could not be recorded).
    private func reconcileAccess(_ id: DatabaseID, server: ServerRecord) throws(TenureError) {
        let recorded = try catalog.database(id)
        let admin = try connectAdmin(server)
        defer { admin.close() }
        switch recorded.state {
        case .trial, .active: try admin.execute("ALTER ROLE \(quoteIdentifier(recorded.postgresRole)) LOGIN")
        case .deactivated: try admin.execute("ALTER ROLE \(quoteIdentifier(recorded.postgresRole)) NOLOGIN")
        case .provisioning, .destroyed: break
        }
    }

    /// Login off first, so nobody reconnects; then every session of the role ends, including
    /// idle-in-transaction ones, waiting up to 10 s for each to be gone.
    private func disableAccess(_ record: DatabaseRecord, server: ServerRecord) throws(TenureError) {
        let admin = try connectAdmin(server)
        defer { admin.close() }
        try admin.execute("ALTER ROLE \(quoteIdentifier(record.postgresRole)) NOLOGIN")
        try admin.query(
            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
            [record.postgresRole])
    }

    // MARK: - Destroy

    /// Records the destruction (tombstone, intent, audit) in one transaction, then drops the
    /// database and role. If the drop fails, the intent stays pending and the next start or
    /// sweep finishes it; the database is never treated as alive again.
    private func destroy(current: DatabaseRecord, next: DatabaseRecord, event: LifecycleEvent, destruction: DestructionReason, now: Date)
        throws(TenureError)
    {
        let intent = IntentRecord(
            id: .random(), kind: .dropDatabase, databaseID: current.id, serverName: current.serverName, postgresDatabase: current.postgresDatabase,
            postgresRole: current.postgresRole, lockKey: Int64.random(in: 1...Int64.max), createdAt: now)
        try catalog.lock(key: intent.lockKey)
        defer { try? catalog.unlock(key: intent.lockKey) }
        try catalog.transaction { () throws(TenureError) in
            // Re-read under the row lock: a legal hold set a moment ago bumps the version,
            // and is refused here, when the destruction executes (RELIABILITY D6).
            let locked = try catalog.database(current.id, forUpdate: true)
            if let hold = locked.lifecycle.legalHold {
                throw TenureError(.legalHold, "\(event.rawValue) refused: \(current.id) is under a legal hold (\(hold.reason)); nothing was destroyed")
            }
            guard try catalog.updateDatabase(next, expectedVersion: current.version, now: now) else {
                throw TenureError(
                    .concurrentModification, "database \(current.id) was changed by someone else at the same time; nothing was destroyed",
                    context: ["database_id": current.id.rawValue])
            }
            // Its backups and restores, queued or running, are cancelled first (a running
            // backup stops at its next lease renewal; the store is deleted once it has).
            try catalog.cancelJobs(subject: current.id.rawValue, kinds: [.backup, .restore], now: now)
            try catalog.insertIntent(intent)
            // The data key goes with the tombstone: from this commit on, no copy of any of the
            // database's sealed backups can be opened, wherever it lies.
            var detail = current.lifecycle.destroyAfter.map { ["destroy_after": RFC3339.format($0)] } ?? [:]
            if let keyID = try catalog.deleteDataKey(owner: current.id.rawValue) { detail["data_key_id"] = keyID.rawValue }
            try catalog.audit(
                at: now, databaseID: current.id.rawValue, actor: actor, action: event.rawValue, from: current.state.rawValue,
                to: DatabaseState.destroyed.rawValue, reason: destruction.rawValue, detail: detail)
        }
        Failpoint.destroyAfterIntent.hit()
        do throws(TenureError) {
            try finishDrop(intent)
        } catch {
            throw TenureError(
                error.code,
                "the destruction of \(current.id) is recorded, but dropping it on server '\(current.serverName)' failed (\(error.message)); it will be finished at the next start or sweep",
                context: error.context, sqlState: error.sqlState)
        }
    }

    /// Drops a tenant role on a server (one already gone: nothing to do). A role that still
    /// owns objects or holds privileges in another database there (a copy restored beside its
    /// database with `tenure restore`, a drill still running) cannot be dropped; the error
    /// names those databases, so an operator knows what to remove before the retry.
    func dropRole(_ role: String, on admin: PostgresConnection, server: String) throws(TenureError) {
        do throws(TenureError) {
            try admin.execute("DROP ROLE IF EXISTS \(quoteIdentifier(role))")
        } catch {
            guard error.sqlState == "2BP01" else { throw error }
            let holders =
                (try? admin.query(
                    """
                    SELECT DISTINCT d.datname FROM pg_catalog.pg_shdepend s JOIN pg_catalog.pg_database d ON d.oid = s.dbid
                    WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
                      AND s.refobjid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)
                    ORDER BY 1
                    """, [role]
                ).rows.compactMap { $0[0] }) ?? []
            let names = holders.isEmpty ? "other databases" : (holders.count == 1 ? "database " : "databases ") + holders.map { "'\(printable($0))'" }.joined(separator: ", ")
            var context = error.context
            context["databases"] = holders.joined(separator: ",")
            throw TenureError(
                error.code,
                "role \(role) cannot be dropped on server '\(server)': it still owns objects or holds privileges in \(names) there (a copy restored beside it, or a drill still running); drop those databases or reassign what the role owns in them",
                context: context, sqlState: error.sqlState)
        }
    }

    /// Drops the database (even a half-dropped "invalid" one) and its role, then closes the intent.
    func finishDrop(_ intent: IntentRecord) throws(TenureError) {
        let server = try catalog.server(named: intent.serverName)
        let admin = try connectAdmin(server)
        defer { admin.close() }
        if try admin.query("SELECT 1 FROM pg_roles WHERE rolname = $1", [intent.postgresRole]).rows.count == 1 {
            try admin.execute("ALTER ROLE \(quoteIdentifier(intent.postgresRole)) NOLOGIN")
        }
        try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(intent.postgresDatabase)) WITH (FORCE)")
        Failpoint.destroyAfterDropDatabase.hit()
        try dropRole(intent.postgresRole, on: admin, server: intent.serverName)
        Failpoint.destroyAfterDropRole.hit()
        let now = clock.now()
        try catalog.transaction { () throws(TenureError) in
            // The backup store goes in a job of its own, in the database's turn (after its
            // cancelled backups have stopped), retried until done.
            _ = try catalog.insertJob(
                kind: .purge, subject: intent.databaseID.rawValue, arguments: [:], actor: actor, maxAttempts: max(5, configuration.jobs.retry.maxAttempts),
                now: now)
            try catalog.finishIntent(intent.id, status: .completed, now: now)
            try catalog.audit(
                at: now, databaseID: intent.databaseID.rawValue, actor: actor, action: "destroy_completed", from: nil, to: nil, reason: nil,
                detail: ["server": intent.serverName])
        }
    }

    // MARK: - Recovery

    public struct RecoveryAction: Sendable {
        public var intentID: IntentID
        public var databaseID: DatabaseID
        public var outcome: String
    }

    /// Finishes or rolls back every pending intent whose process is gone (its advisory lock
    /// is free): a create is rolled back, a drop is finished. Intents of running processes are
    /// left alone; a server that cannot be reached leaves its intents for next time.
    @discardableResult
    public func recover() throws(TenureError) -> [RecoveryAction] {
        var actions: [RecoveryAction] = []
        try recoverBackups()
        try recoverUploads()
        for intent in try catalog.pendingIntents() {
            guard try catalog.tryLock(key: intent.lockKey) else { continue }
            defer { try? catalog.unlock(key: intent.lockKey) }
            do throws(TenureError) {
                switch intent.kind {
                case .createDatabase:
                    // A duplicate's create belongs to its job while the job is unfinished.
                    if intent.detail["duplicate_of"] != nil, try !catalog.unfinishedJobs(subject: intent.databaseID.rawValue).isEmpty { continue }
                    try rollBackCreate(intent, reason: "interrupted create rolled back at start")
                    actions.append(RecoveryAction(intentID: intent.id, databaseID: intent.databaseID, outcome: "create rolled back"))
                case .dropDatabase:
                    try finishDrop(intent)
                    actions.append(RecoveryAction(intentID: intent.id, databaseID: intent.databaseID, outcome: "destroy finished"))
                case .restoreDatabase:
                    let outcome = try recoverRestore(intent)
                    actions.append(RecoveryAction(intentID: intent.id, databaseID: intent.databaseID, outcome: outcome))
                case .moveDatabase:
                    let outcome = try recoverMove(intent)
                    actions.append(RecoveryAction(intentID: intent.id, databaseID: intent.databaseID, outcome: outcome))
                }
                logger.notice(
                    "finished an interrupted operation",
                    metadata: ["tenure.database_id": "\(intent.databaseID)", "tenure.intent": "\(intent.kind.rawValue)"])
            } catch {
                logger.warning(
                    "could not finish an interrupted operation; will retry",
                    metadata: ["tenure.database_id": "\(intent.databaseID)", "tenure.error": "\(error.message)"])
            }
        }
        return actions
    }
}

// MARK: - Idempotent create (HTTP API)

/// The outcome of a create that may be a retry.
public enum CreateOutcome: Sendable {
    /// Created now; the credential is in `CreatedDatabase` and shown this once.
    case created(CreatedDatabase)
    /// A retry of an earlier request with the same key and body: its stored response (JSON,
    /// without the credential, which is never stored).
    case replayed(body: String)
}

/// Who sent an idempotent request and with what.
public struct IdempotencyClaim: Sendable {
    /// What the catalog records for a claim whose create finished (its column predates this
    /// layer and holds the value the API answered with then).
    static let finished = 201
    public var apiKeyID: String
    public var key: String
    public var requestHash: String

    public init(apiKeyID: String, key: String, requestHash: String) {
        self.apiKeyID = apiKeyID
        self.key = key
        self.requestHash = requestHash
    }
}

extension Controller {
    /// Creates a database once per Idempotency-Key: a retry with the same key and body gets
    /// the first result, another body is refused (422), a retry while the first still runs
    /// is a conflict (409). A failed create frees the key so that it can be retried.
    public func createDatabase(name: String, plan: Plan, serverName: String?, idempotency: IdempotencyClaim) throws(TenureError) -> CreateOutcome {
        guard (1...255).contains(idempotency.key.utf8.count), idempotency.key.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
            throw TenureError(.invalidRequest, "Idempotency-Key must be 1–255 visible ASCII characters")
        }
        let operation = "create_database"
        if let existing = try catalog.claimIdempotencyKey(
            apiKeyID: idempotency.apiKeyID, key: idempotency.key, operation: operation, requestHash: idempotency.requestHash, now: clock.now())
        {
            guard existing.operation == operation, existing.requestHash == idempotency.requestHash else {
                throw TenureError(
                    .idempotencyMismatch,
                    "Idempotency-Key '\(printable(idempotency.key))' was already used with a different request; use a new key for a new request")
            }
            guard existing.status != nil, let body = existing.response else {
                throw TenureError(.idempotencyInProgress, "a request with Idempotency-Key '\(printable(idempotency.key))' is still running; retry shortly")
            }
            return .replayed(body: body)
        }
        do throws(TenureError) {
            let created = try createDatabase(name: name, plan: plan, serverName: serverName)
            var document = databaseDocument(created.record)
            document["credential"] = "shown only in the first response"
            let body = String(
                decoding: (try? JSONSerialization.data(withJSONObject: document, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8),
                as: UTF8.self)
            // The catalog's status column (migration 0004) marks a finished claim; only a
            // creation is ever stored, so it is always the one value.
            try catalog.finishIdempotencyKey(apiKeyID: idempotency.apiKeyID, key: idempotency.key, status: IdempotencyClaim.finished, response: body)
            return .created(created)
        } catch {
            try? catalog.releaseIdempotencyKey(apiKeyID: idempotency.apiKeyID, key: idempotency.key)
            throw error
        }
    }
}
