import Foundation
import TenureCatalog
import TenureCore
import TenureEngine
import TenurePQ

extension Controller {
    /// Queues a move of a database to another server (a job in the database's turn: a backup
    /// or restore of it waits, or is waited for).
    public func requestMove(_ id: DatabaseID, to requested: String?) throws(TenureError) -> JobRecord {
        let record = try catalog.database(id)
        switch record.state {
        case .trial, .active, .deactivated: break
        case .provisioning, .destroyed:
            throw TenureError(.lifecycleConflict, "a \(record.state.rawValue) database cannot be moved", context: ["database_id": id.rawValue])
        }
        guard requested != record.serverName else {
            throw TenureError(.lifecycleConflict, "database \(id) is already on server '\(record.serverName)'", context: ["database_id": id.rawValue])
        }
        let target = try placement(requested: requested, excluding: record.serverName)
        let serverName = target.name.rawValue
        // The row names the server moved off, which bounds the moves running off it at once.
        let job = try catalog.insertJob(
            kind: .move, subject: id.rawValue, arguments: ["server": serverName], actor: actor, maxAttempts: 1, now: clock.now(), serverName: record.serverName)
        try catalog.audit(
            at: clock.now(), databaseID: id.rawValue, actor: actor, action: "move_requested", from: nil, to: nil, reason: nil,
            detail: ["server": serverName, "job_id": job.id.rawValue])
        return job
    }

    /// Stops new placements on a server and, with `move`, queues a move of every live
    /// database on it to the servers placement picks (at most `TENURE_MOVE_CONCURRENCY_PER_SERVER`
    /// run at once). Returns the server and the queued jobs.
    public func drainServer(_ name: String, move: Bool) throws(TenureError) -> (server: ServerRecord, jobs: [JobRecord]) {
        let server = try updateServer(name: name, capacity: nil, state: .draining)
        guard move else { return (server, []) }
        var jobs: [JobRecord] = []
        for database in try catalog.databases() where database.serverName == name {
            switch database.state {
            case .trial, .active, .deactivated: jobs.append(try requestMove(database.id, to: nil))
            case .provisioning, .destroyed: break
            }
        }
        return (server, jobs)
    }

    /// The move job. Writes are frozen first (login disabled, sessions ended), the database is
    /// streamed to the target (its role made there with the same password verifier), checked
    /// against the manifest as it loads, and the catalog switched in one transaction; only then
    /// is access enabled on the target and the source dropped. Before the switch any failure
    /// (or, after a crash, recovery) drops what the target got and gives the source its access
    /// back; after it, the move is finished forward. The result has the downtime.
    func runMove(_ job: JobRecord, progress: TransferProgress) throws(TenureError) -> (record: DatabaseRecord, downtime: Double) {
        let id = try DatabaseID(parsing: job.subject)
        let record = try catalog.database(id)
        switch record.state {
        case .trial, .active, .deactivated: break
        case .provisioning, .destroyed:
            throw TenureError(.lifecycleConflict, "a \(record.state.rawValue) database cannot be moved", context: ["database_id": id.rawValue])
        }
        let target = try placement(requested: job.arguments["server"])
        guard target.name.rawValue != record.serverName else {
            throw TenureError(.lifecycleConflict, "database \(id) is already on server '\(target.name)'")
        }
        let source = try catalog.server(named: record.serverName)
        let intent = IntentRecord(
            id: .random(), kind: .moveDatabase, databaseID: id, serverName: source.name.rawValue, postgresDatabase: record.postgresDatabase,
            postgresRole: record.postgresRole, lockKey: Int64.random(in: 1...Int64.max), createdAt: clock.now(),
            detail: ["from": source.name.rawValue, "to": target.name.rawValue])
        try catalog.lock(key: intent.lockKey)
        defer { try? catalog.unlock(key: intent.lockKey) }
        try catalog.lockDatabase(id)
        defer { try? catalog.unlockDatabase(id) }
        try catalog.transaction { () throws(TenureError) in
            guard try catalog.database(id).version == record.version else {
                throw TenureError(.concurrentModification, "database \(id) changed as its move began; nothing was moved")
            }
            try catalog.insertIntent(intent)
            try catalog.audit(
                at: clock.now(), databaseID: id.rawValue, actor: actor, action: "move_started", from: nil, to: nil, reason: nil,
                detail: ["from": source.name.rawValue, "to": target.name.rawValue])
        }
        let frozen = Date()
        do throws(TenureError) {
            let sourceAdmin = try connectAdmin(source)
            defer { sourceAdmin.close() }
            // Frozen: no session can write from here on, so the snapshot holds every commit.
            try sourceAdmin.execute("ALTER ROLE \(quoteIdentifier(record.postgresRole)) NOLOGIN")
            try sourceAdmin.query(
                "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()", [record.postgresRole])
            Failpoint.moveAfterFreeze.hit()
            let verifier = try sourceAdmin.query("SELECT rolpassword FROM pg_authid WHERE rolname = $1", [record.postgresRole]).rows.first?[0] ?? nil
            guard let verifier else {
                throw TenureError(.internal, "the password verifier of \(record.postgresRole) cannot be read on server '\(source.name)' (its admin role must be a superuser to move databases)")
            }
            let targetAdmin = try connectAdmin(target)
            defer { targetAdmin.close() }
            try hardenServer(targetAdmin)
            try targetAdmin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(record.postgresDatabase)) WITH (FORCE)")
            try dropRole(record.postgresRole, on: targetAdmin, server: target.name.rawValue)
            try targetAdmin.execute(
                "CREATE ROLE \(quoteIdentifier(record.postgresRole)) NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT \(configuration.planConnectionLimits[record.lifecycle.plan] ?? -1) PASSWORD \(quoteLiteral(verifier))"
            )
            try streamCopy(
                from: try adminParameters(source, database: record.postgresDatabase), to: try adminParameters(target, database: record.postgresDatabase),
                target: target, what: "the move of \(id)", progress: progress)
            try handOver(record.postgresDatabase, to: record.postgresRole, on: target, admin: targetAdmin)
            Failpoint.moveAfterCopy.hit()
            try catalog.assertFence()
            let now = clock.now()
            try catalog.transaction { () throws(TenureError) in
                try catalog.reservePlace(onServer: target.name.rawValue)
                guard try catalog.moveDatabase(id, to: target.name.rawValue, expectedVersion: record.version, now: now) else {
                    throw TenureError(.concurrentModification, "database \(id) changed during its move; it stays on '\(source.name)'")
                }
                try catalog.audit(
                    at: now, databaseID: id.rawValue, actor: actor, action: "moved", from: source.name.rawValue, to: target.name.rawValue, reason: nil,
                    detail: ["from": source.name.rawValue, "to": target.name.rawValue])
            }
        } catch {
            try? rollBackMove(intent)
            throw error
        }
        Failpoint.moveAfterSwitch.hit()
        try finishMove(intent)
        return (try catalog.database(id), Date().timeIntervalSince(frozen))
    }

    /// After the switch: access on the target as the state wants it, the source dropped, the
    /// intent completed. Idempotent (recovery calls it again).
    func finishMove(_ intent: IntentRecord) throws(TenureError) {
        let record = try catalog.database(intent.databaseID)
        let target = try catalog.server(named: record.serverName)
        let targetAdmin = try connectAdmin(target)
        defer { targetAdmin.close() }
        switch record.state {
        case .trial, .active: try targetAdmin.execute("ALTER ROLE \(quoteIdentifier(record.postgresRole)) LOGIN")
        case .provisioning, .deactivated, .destroyed: break
        }
        Failpoint.moveAfterEnable.hit()
        let source = try catalog.server(named: intent.detail["from"] ?? intent.serverName)
        let sourceAdmin = try connectAdmin(source)
        defer { sourceAdmin.close() }
        try sourceAdmin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(record.postgresDatabase)) WITH (FORCE)")
        try dropRole(record.postgresRole, on: sourceAdmin, server: source.name.rawValue)
        let now = clock.now()
        try catalog.transaction { () throws(TenureError) in
            try catalog.finishIntent(intent.id, status: .completed, now: now)
            try catalog.audit(
                at: now, databaseID: intent.databaseID.rawValue, actor: actor, action: "move_completed", from: nil, to: nil, reason: nil,
                detail: ["from": source.name.rawValue, "to": target.name.rawValue])
        }
    }

    /// Before the switch: whatever the target got is dropped and the source's access is back as
    /// the state wants it. Idempotent.
    func rollBackMove(_ intent: IntentRecord) throws(TenureError) {
        let record = try catalog.database(intent.databaseID)
        if let to = intent.detail["to"], to != record.serverName {
            let target = try catalog.server(named: to)
            let targetAdmin = try connectAdmin(target)
            defer { targetAdmin.close() }
            try targetAdmin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(record.postgresDatabase)) WITH (FORCE)")
            try dropRole(record.postgresRole, on: targetAdmin, server: target.name.rawValue)
        }
        let source = try catalog.server(named: record.serverName)
        let sourceAdmin = try connectAdmin(source)
        defer { sourceAdmin.close() }
        switch record.state {
        case .trial, .active: try sourceAdmin.execute("ALTER ROLE \(quoteIdentifier(record.postgresRole)) LOGIN")
        case .provisioning, .deactivated, .destroyed: break
        }
        let now = clock.now()
        try catalog.transaction { () throws(TenureError) in
            try catalog.finishIntent(intent.id, status: .rolledBack, now: now)
            try catalog.audit(
                at: now, databaseID: intent.databaseID.rawValue, actor: actor, action: "move_rolled_back", from: nil, to: nil, reason: nil,
                detail: ["from": intent.detail["from"] ?? "", "to": intent.detail["to"] ?? ""])
        }
    }

    /// Recovery of an interrupted move: forward if the catalog already names the target.
    func recoverMove(_ intent: IntentRecord) throws(TenureError) -> String {
        let record = try catalog.database(intent.databaseID)
        if record.serverName == intent.detail["to"] {
            try finishMove(intent)
            return "move finished"
        }
        try rollBackMove(intent)
        return "move rolled back"
    }

    /// A native backup of `source` streamed into a new database `target` names (its exact name),
    /// checked against the manifest as it loads; nothing on disk. Thread: blocks.
    func streamCopy(
        from source: ConnectionParameters, to destination: ConnectionParameters, target: ServerRecord, what: String, progress: TransferProgress,
        schemaFilter: (@Sendable (String, String) throws(TenureError) -> String)? = nil
    ) throws(TenureError) {
        let key = try ArchiveKey.load(home: configuration.home, create: true)
        var backup = BackupOptions(source: source, jobs: configuration.engineJobs, format: .native, pgDump: pgDump, createdAt: clock.now())
        backup.signingKey = key
        var restore = RestoreOptions(target: destination, jobs: configuration.engineJobs)
        restore.target["options"] = nil
        restore.key = key
        restore.grantPublicConnect = false
        restore.schemaFilter = schemaFilter
        let pipe = BytePipe(what: what)
        let failure = Locked<TenureError?>(nil)
        let done = DispatchSemaphore(value: 0)
        let options = backup
        let thread = Thread {
            do throws(TenureError) {
                _ = try runBackup(options, sink: CancellableSink(pipe, progress: progress), progress: TransferProgress())
            } catch {
                failure.withLock { $0 = error }
                pipe.fail(error)
            }
            done.signal()
        }
        thread.start()
        do throws(TenureError) {
            _ = try watching(target, what, progress: progress) { () throws(TenureError) in
                try runRestoreIntoNewDatabase(source: pipe, options: restore, progress: progress)
            }
        } catch {
            pipe.fail(error)
            done.wait()
            throw failure.withLock { $0 } ?? error
        }
        done.wait()
        if let failed = failure.withLock({ $0 }) { throw failed }
    }
}
