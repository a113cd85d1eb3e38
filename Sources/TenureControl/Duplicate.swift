import Foundation
import TenureCatalog
import TenureCore
import TenureEngine
import TenurePQ

/// A duplicate accepted: the job that makes it and the new database's credential, shown once.
public struct DuplicateRequest: Sendable {
    public var job: JobRecord
    public var record: DatabaseRecord
    public var connectionURL: String
}

extension Controller {
    /// Accepts a duplicate of a live database: the new database's row (provisioning) and data
    /// key, its role on the target server with a new password (login disabled until the copy is
    /// ready), a `create_database` intent and the `duplicate` job, whose attempt owns the
    /// intent. The password is returned once and stored nowhere, not in the job either.
    public func requestDuplicate(_ sourceID: DatabaseID, name: String, plan: Plan, serverName: String?, neutralize: Bool) throws(TenureError)
        -> DuplicateRequest
    {
        let source = try catalog.database(sourceID)
        switch source.state {
        case .trial, .active: break
        case .provisioning, .deactivated, .destroyed:
            throw TenureError(
                .lifecycleConflict, "a \(source.state.rawValue) database cannot be duplicated", context: ["database_id": sourceID.rawValue])
        }
        let databaseName = try DatabaseName(validating: name)
        if neutralize { _ = try neutralizeScripts() }
        let server = try placement(requested: serverName)
        if try catalog.liveDatabaseExists(named: databaseName.rawValue) {
            throw TenureError(.nameTaken, "a live database named '\(databaseName)' already exists", context: ["name": databaseName.rawValue])
        }
        let now = clock.now()
        let id = DatabaseID.random()
        let (lifecycle, _) = DatabaseLifecycle.create(plan: plan, now: now)
        let record = DatabaseRecord(
            id: id, name: databaseName.rawValue, version: 1, serverName: server.name.rawValue, postgresDatabase: id.postgresDatabaseName,
            postgresRole: id.postgresRoleName, updatedAt: now, destroyedBy: nil, lifecycle: lifecycle)
        let intent = IntentRecord(
            id: .random(), kind: .createDatabase, databaseID: id, serverName: server.name.rawValue, postgresDatabase: record.postgresDatabase,
            postgresRole: record.postgresRole, lockKey: Int64.random(in: 1...Int64.max), createdAt: now,
            detail: ["duplicate_of": sourceID.rawValue])
        let admin = try connectAdmin(server)
        defer { admin.close() }
        try hardenServer(admin)
        try catalog.lock(key: intent.lockKey)
        defer { try? catalog.unlock(key: intent.lockKey) }
        try recordProvisioning(record, intent: intent, plan: plan, detail: ["duplicate_of": sourceID.rawValue])
        let password = Self.randomPassword()
        do throws(TenureError) {
            let verifier = try admin.scramVerifier(password: password, role: record.postgresRole)
            try admin.execute(
                "CREATE ROLE \(quoteIdentifier(record.postgresRole)) NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT \(configuration.planConnectionLimits[plan] ?? -1) PASSWORD \(quoteLiteral(verifier))"
            )
            let job = try catalog.transaction { () throws(TenureError) -> JobRecord in
                let job = try catalog.insertJob(
                    kind: .duplicate, subject: id.rawValue,
                    arguments: ["source": sourceID.rawValue, "neutralize": neutralize ? "true" : "false", "intent_id": intent.id.rawValue], actor: actor,
                    maxAttempts: 1, now: now, serverName: nil)
                try catalog.audit(
                    at: now, databaseID: sourceID.rawValue, actor: actor, action: "duplicate_requested", from: nil, to: nil, reason: nil,
                    detail: ["database_id": id.rawValue, "job_id": job.id.rawValue, "neutralize": neutralize ? "true" : "false"])
                return job
            }
            return DuplicateRequest(job: job, record: record, connectionURL: Self.connectionURL(record, server: server, password: password))
        } catch {
            try? rollBackCreate(intent, reason: "duplicate request failed: \(error.message)")
            throw error
        }
    }

    /// The `*.sql` files of `TENURE_NEUTRALIZE_SCRIPTS` in name order (an error if the
    /// directory cannot be read).
    func neutralizeScripts() throws(TenureError) -> [(name: String, sql: String)] {
        let directory = configuration.neutralizeScriptsDirectory
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
            throw TenureError(.invalidConfiguration, "TENURE_NEUTRALIZE_SCRIPTS \(directory) cannot be read")
        }
        var scripts: [(name: String, sql: String)] = []
        for name in names.sorted() where name.hasSuffix(".sql") {
            guard let text = try? String(contentsOfFile: directory + "/" + name, encoding: .utf8) else {
                throw TenureError(.invalidConfiguration, "neutralize script \(directory)/\(name) cannot be read as UTF-8")
            }
            scripts.append((name, text))
        }
        return scripts
    }

    /// The duplicate job: the source backed up from one snapshot and streamed straight into a
    /// restore on the target server (nothing staged on disk), objects handed to the new role,
    /// the neutralize scripts run as it (each in its own transaction), then login enabled and
    /// the database recorded ready. Any failure rolls the whole copy back (database, role,
    /// row); the source is only read.
    func runDuplicate(_ job: JobRecord, progress: TransferProgress) throws(TenureError) -> DatabaseRecord {
        let id = try DatabaseID(parsing: job.subject)
        let sourceID = try DatabaseID(parsing: job.arguments["source"] ?? "")
        guard let intent = try catalog.pendingIntents().first(where: { $0.databaseID == id && $0.kind == .createDatabase }) else {
            throw TenureError(.lifecycleConflict, "the duplicate \(id) was rolled back before its copy ran", context: ["database_id": id.rawValue])
        }
        try catalog.lock(key: intent.lockKey)
        defer { try? catalog.unlock(key: intent.lockKey) }
        do throws(TenureError) {
            return try copyForDuplicate(id, from: sourceID, neutralize: job.arguments["neutralize"] == "true", intent: intent, progress: progress)
        } catch {
            try? rollBackCreate(intent, reason: "duplicate failed: \(error.message)")
            throw error
        }
    }

    private func copyForDuplicate(_ id: DatabaseID, from sourceID: DatabaseID, neutralize: Bool, intent: IntentRecord, progress: TransferProgress)
        throws(TenureError) -> DatabaseRecord
    {
        let source = try catalog.database(sourceID)
        switch source.state {
        case .trial, .active: break
        case .provisioning, .deactivated, .destroyed:
            throw TenureError(.lifecycleConflict, "the source \(sourceID) became \(source.state.rawValue); nothing was copied", context: ["database_id": sourceID.rawValue])
        }
        let record = try catalog.database(id)
        let sourceServer = try catalog.server(named: source.serverName)
        let target = try catalog.server(named: record.serverName)
        // The source's role owns the objects in the archive; the copy's role owns them here.
        let oldRole = source.postgresRole
        let newRole = record.postgresRole
        try streamCopy(
            from: try adminParameters(sourceServer, database: source.postgresDatabase), to: try adminParameters(target, database: record.postgresDatabase),
            target: target, what: "the duplicate of \(sourceID)", progress: progress,
            schemaFilter: { (script, _) throws(TenureError) in script.replacingOccurrences(of: oldRole, with: newRole) })
        let admin = try connectAdmin(target)
        defer { admin.close() }
        let role = quoteIdentifier(newRole)
        try handOver(record.postgresDatabase, to: newRole, on: target, admin: admin)
        let copy = try connectAdmin(target, database: record.postgresDatabase)
        defer { copy.close() }
        var applied: [String] = []
        if neutralize {
            for script in try neutralizeScripts() {
                do throws(TenureError) {
                    try copy.execute("BEGIN; SET LOCAL ROLE \(role); SET LOCAL search_path TO \"$user\", public;\n\(script.sql)\n;\nCOMMIT")
                } catch {
                    try? copy.execute("ROLLBACK")
                    throw TenureError(error.code, "neutralize script \(script.name) failed: \(error.message)", context: error.context, sqlState: error.sqlState)
                }
                applied.append(script.name)
            }
        }
        try catalog.assertFence()
        try admin.execute("ALTER ROLE \(role) LOGIN")
        let actor = self.actor
        return try recordReady(
            record, intent: intent.id, while: "being duplicated", detail: ["duplicate_of": sourceID.rawValue, "neutralized": applied.joined(separator: ",")]
        ) { () throws(TenureError) in
            try catalog.audit(
                at: clock.now(), databaseID: sourceID.rawValue, actor: actor, action: "duplicated", from: nil, to: nil, reason: nil,
                detail: ["database_id": id.rawValue, "server": record.serverName])
        }
    }
}
