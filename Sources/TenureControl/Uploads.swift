import Foundation
import Logging
import TenureCatalog
import TenureCore
import TenureEngine
import TenurePQ

#if canImport(Glibc)
import Glibc
#endif

/// The upgrade service (DESIGN.md section 1): an uploaded database is restored into a fresh
/// database owned by a fresh unprivileged role, upgraded by the scripts on a copy, kept for
/// the hold after its last successful upgrade, then destroyed with everything it left.
///
/// Everything that comes from an upload, and every upgrade script over its data, runs in
/// sessions whose login role is the upload's role; the role may log in only while Tenure
/// works on it, with a password Tenure makes for that run and never stores.
extension Controller {
    // MARK: - Upload

    /// Receives an upload from `source` and restores it while it arrives. On success the
    /// upload is `uploaded`; on any failure it is `rejected` with the reason, and its
    /// database and role are gone before this returns.
    public func createUpload(source: any ByteSource, label: String, serverName: String? = nil, progress: TransferProgress = TransferProgress())
        throws(TenureError) -> UploadRecord
    {
        let label = try Self.validLabel(label)
        let server = try catalog.server(named: serverName ?? ServerName.defaultServer.rawValue)
        let now = clock.now()
        var record = UploadRecord(id: .random(), label: label, serverName: server.name.rawValue, createdAt: now, lockKey: Int64.random(in: 1...Int64.max))
        record.postgresDatabase = record.databaseName(generation: 0)
        try catalog.lock(key: record.lockKey)
        defer { try? catalog.unlock(key: record.lockKey) }
        try catalog.transaction { () throws(TenureError) in
            try catalog.insertUpload(record)
            _ = try dataKey(owner: record.id.rawValue)
            try catalog.audit(
                at: now, databaseID: record.id.rawValue, actor: actor, action: "upload", from: nil, to: UploadState.uploading.rawValue, reason: nil,
                detail: ["label": label, "server": server.name.rawValue])
        }
        let admin = try connectAdmin(server)
        defer { admin.close() }
        var watchdog: RoleWatchdog?
        do throws(TenureError) {
            try hardenServer(admin)
            let password = Self.randomPassword()
            let verifier = try admin.scramVerifier(password: password, role: record.postgresRole)
            let role = quoteIdentifier(record.postgresRole)
            let database = quoteIdentifier(record.postgresDatabase!)
            try admin.execute(
                "CREATE ROLE \(role) LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 16 PASSWORD \(quoteLiteral(verifier))")
            try admin.execute("CREATE DATABASE \(database) OWNER \(role) TEMPLATE template0 ENCODING 'UTF8'")
            Failpoint.uploadAfterDatabase.hit()
            try admin.execute("REVOKE ALL ON DATABASE \(database) FROM PUBLIC")
            try admin.execute("GRANT CONNECT, TEMPORARY ON DATABASE \(database) TO \(role)")
            try reassertPublicSchema(server, database: record.postgresDatabase!)
            watchdog = try RoleWatchdog(parameters: try adminParameters(server), role: record.postgresRole, limit: configuration.uploadLimits.statementTimeout, logger: logger)
            var importer = UploadImporter(
                target: try roleParameters(server, database: record.postgresDatabase!, role: record.postgresRole, password: password),
                jobs: configuration.engineJobs, limits: configuration.uploadLimits, pgRestorePath: configuration.pgRestorePath)
            importer.extensions = configuration.extensions
            importer.extensionAdmin = try adminParameters(server, database: record.postgresDatabase!)
            let summary = try importer.run(source: source, progress: progress)
            watchdog?.stop()
            watchdog = nil
            try endRoleAccess(admin, role: record.postgresRole)
            try checkUploadedDatabase(server, database: record.postgresDatabase!, role: record.postgresRole)
            try reassertPublicSchema(server, database: record.postgresDatabase!)
            Failpoint.uploadBeforeFinish.hit()
            let finished = clock.now()
            var next = record
            next.state = try UploadLifecycle.next(record.state, on: .restored, id: record.id.rawValue)
            next.format = summary.format.rawValue
            next.byteCount = summary.byteCount
            next.statementCount = summary.statementCount
            next.skippedCount = summary.skippedCount
            next.uploadedAt = finished
            try catalog.transaction { () throws(TenureError) in
                guard try catalog.updateUpload(next, expectedVersion: record.version, now: finished) else {
                    throw TenureError(.concurrentModification, "upload \(record.id) changed while it was being restored")
                }
                try catalog.audit(
                    at: finished, databaseID: record.id.rawValue, actor: actor, action: "uploaded", from: UploadState.uploading.rawValue,
                    to: UploadState.uploaded.rawValue, reason: nil,
                    detail: uploadedDetail(summary))
            }
            return try catalog.upload(record.id)
        } catch {
            watchdog?.stop()
            var reason = error.message
            if watchdog?.cancelledCount ?? 0 > 0, error.sqlState == "57014" {
                reason = "a statement ran longer than the limit of \(PolicyDuration.format(configuration.uploadLimits.statementTimeout)) (TENURE_UPLOAD_STATEMENT_TIMEOUT) and was cancelled"
            }
            logger.notice("upload rejected", metadata: ["tenure.upload_id": "\(record.id)", "tenure.reason": "\(printable(reason, limit: 300))"])
            do throws(TenureError) {
                try rejectUpload(record.id, reason: reason)
            } catch let cleanupError {
                logger.error(
                    "could not clean up a rejected upload; recovery will finish it",
                    metadata: ["tenure.upload_id": "\(record.id)", "tenure.error": "\(cleanupError.message)"])
            }
            let code: TenureError.Code = error.code == .bodyTooLarge || error.code == .cancelled ? error.code : .uploadRejected
            var context = error.context
            context["upload_id"] = record.id.rawValue
            context["postgres_message"] = nil
            throw TenureError(code, "upload \(record.id) rejected: \(reason); nothing was kept", context: context, sqlState: error.sqlState)
        }
    }

    static func validLabel(_ label: String) throws(TenureError) -> String {
        guard label.count <= 200, !label.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw TenureError(.invalidRequest, "the upload's name must be at most 200 characters of text on one line")
        }
        return label
    }

    /// Marks an upload rejected (its data being cleaned up), then removes its database and role.
    func rejectUpload(_ id: UploadID, reason: String) throws(TenureError) {
        let current = try catalog.upload(id)
        let now = clock.now()
        var next = current
        next.state = try UploadLifecycle.next(current.state, on: .reject, id: id.rawValue)
        next.rejectReason = String(reason.prefix(2000))
        next.cleanupPending = true
        next.postgresDatabase = nil
        try catalog.transaction { () throws(TenureError) in
            guard try catalog.updateUpload(next, expectedVersion: current.version, now: now) else {
                throw TenureError(.concurrentModification, "upload \(id) changed while it was being rejected")
            }
            try catalog.audit(
                at: now, databaseID: id.rawValue, actor: actor, action: "upload_rejected", from: current.state.rawValue, to: UploadState.rejected.rawValue,
                reason: String(reason.prefix(500)))
        }
        try finishUploadCleanup(try catalog.upload(id))
    }

    /// How an upload's own role connects: the server's admin parameters with the role's name
    /// and this run's password. Never printed (the description redacts the password).
    func roleParameters(_ server: ServerRecord, database: String, role: String, password: String) throws(TenureError) -> ConnectionParameters {
        var parameters = try adminParameters(server, database: database)
        parameters["options"] = nil
        parameters["user"] = role
        parameters["password"] = password
        parameters["passfile"] = "/dev/null"
        return parameters
    }

    /// The PG15 public-schema rules, as for every tenant database.
    func reassertPublicSchema(_ server: ServerRecord, database: String) throws(TenureError) {
        let tenant = try connectAdmin(server, database: database)
        defer { tenant.close() }
        try tenant.execute("ALTER SCHEMA public OWNER TO pg_database_owner; REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO PUBLIC")
    }

    /// The role may not log in outside Tenure's runs; its sessions end now.
    func endRoleAccess(_ admin: PostgresConnection, role: String) throws(TenureError) {
        guard try admin.query("SELECT 1 FROM pg_roles WHERE rolname = $1", [role]).rows.count == 1 else { return }
        try admin.execute("ALTER ROLE \(quoteIdentifier(role)) NOLOGIN")
        try admin.query("SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()", [role])
    }

    /// After a restore or an upgrade: the role is still unprivileged (RELIABILITY S2), no
    /// object name holds a line break (CVE-2025-8715), and the object count is in bounds.
    func checkUploadedDatabase(_ server: ServerRecord, database: String, role: String) throws(TenureError) {
        let admin = try connectAdmin(server, database: database)
        defer { admin.close() }
        let rights = try admin.query(
            "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls AS privileged FROM pg_roles WHERE rolname = $1", [role])
        guard rights.rows.count == 1, rights[0, "privileged"] == "f" else {
            throw TenureError(.uploadRejected, "the upload's role gained a privilege; refused")
        }
        let names = try admin.query(
            """
            SELECT kind, name FROM (
              SELECT 'schema' AS kind, nspname::text AS name FROM pg_namespace
              UNION ALL SELECT 'relation', relname::text FROM pg_class
              UNION ALL SELECT 'column', attname::text FROM pg_attribute
              UNION ALL SELECT 'function', proname::text FROM pg_proc
              UNION ALL SELECT 'type', typname::text FROM pg_type
              UNION ALL SELECT 'constraint', conname::text FROM pg_constraint
              UNION ALL SELECT 'trigger', tgname::text FROM pg_trigger
              UNION ALL SELECT 'policy', polname::text FROM pg_policy
              UNION ALL SELECT 'rule', rulename::text FROM pg_rewrite
              UNION ALL SELECT 'extension', extname::text FROM pg_extension
              UNION ALL SELECT 'operator', oprname::text FROM pg_operator
              UNION ALL SELECT 'collation', collname::text FROM pg_collation
              UNION ALL SELECT 'statistics', stxname::text FROM pg_statistic_ext
              UNION ALL SELECT 'publication', pubname::text FROM pg_publication
            ) AS names WHERE name ~ '[\\n\\r]' LIMIT 1
            """)
        if let row = names.rows.first {
            throw TenureError(
                .uploadRejected,
                "a \(row[0] ?? "object") name contains a line break ('\(printable(row[1] ?? ""))'); object names with newlines are refused (CVE-2025-8715)")
        }
        let count = try admin.query(
            """
            SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast')
                 + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')) AS n
            """)[0, "n"].flatMap { Int($0) } ?? 0
        if count > configuration.uploadLimits.maximumObjects {
            throw TenureError(.uploadRejected, "the upload holds \(count) objects, more than TENURE_UPLOAD_MAX_OBJECTS=\(configuration.uploadLimits.maximumObjects)")
        }
    }

    // MARK: - Upgrade

    /// The upgrade scripts, in name order (byte order of the file names).
    public func upgradeScripts() throws(TenureError) -> [String] {
        let directory = configuration.upgradeScriptsDirectory
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw TenureError(.invalidConfiguration, "the upgrade scripts directory \(directory) does not exist (TENURE_UPGRADE_SCRIPTS)")
        }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".sql") && !$0.hasPrefix(".") }
        return names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// Applies the upgrade scripts to a copy of the upload's current data, each script in its
    /// own transaction, as the upload's role. Success: the copy becomes the result, the
    /// previous data (the original, after the first success) is dropped, the hold restarts.
    /// Failure: the copy is dropped, the previous data stays, the failing script and
    /// PostgreSQL's error are kept; the error is thrown as well.
    public func upgradeUpload(_ id: UploadID, progress: TransferProgress = TransferProgress()) throws(TenureError) -> UploadRecord {
        let scripts = try upgradeScripts()
        let current = try catalog.upload(id)
        let upgrading = try UploadLifecycle.next(current.state, on: .upgradeStart, id: id.rawValue)
        guard let source = current.postgresDatabase else { throw TenureError(.internal, "upload \(id) has no database") }
        guard try catalog.tryLock(key: current.lockKey) else {
            throw TenureError(.lifecycleConflict, "upload \(id) is busy (another process works on it); retry shortly", context: ["upload_id": id.rawValue])
        }
        defer { try? catalog.unlock(key: current.lockKey) }
        let started = clock.now()
        var running = current
        running.state = upgrading
        running.lastRunAt = started
        running.generation = current.generation + 1
        try catalog.transaction { () throws(TenureError) in
            guard try catalog.updateUpload(running, expectedVersion: current.version, now: started) else {
                throw TenureError(.concurrentModification, "upload \(id) was changed by someone else at the same time; not upgraded, retry")
            }
            try catalog.audit(
                at: started, databaseID: id.rawValue, actor: actor, action: "upgrade_started", from: current.state.rawValue, to: UploadState.upgrading.rawValue,
                reason: nil, detail: ["scripts": String(scripts.count)])
        }
        running = try catalog.upload(id)
        let server = try catalog.server(named: current.serverName)
        let admin = try connectAdmin(server)
        defer { admin.close() }
        let copy = running.databaseName(generation: running.generation)
        let role = quoteIdentifier(current.postgresRole)
        var watchdog: RoleWatchdog?
        var failedScript: String?
        let adminInterrupter = admin.interrupter
        progress.onStop { adminInterrupter.interrupt() }
        do throws(TenureError) {
            try watching(server, "upgrade", progress: progress) { () throws(TenureError) in
                try endRoleAccess(admin, role: current.postgresRole)
                try admin.query("SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [source])
                // Copying a big database takes as long as it takes: no control-statement deadline.
                try admin.execute("SET statement_timeout = 0")
                admin.deadline = nil
                try admin.execute("CREATE DATABASE \(quoteIdentifier(copy)) TEMPLATE \(quoteIdentifier(source)) OWNER \(role)")
                admin.deadline = configuration.serverDeadlines.statement + .seconds(15)
                try admin.execute("RESET statement_timeout")
                Failpoint.upgradeAfterCopy.hit()
                try admin.execute("REVOKE ALL ON DATABASE \(quoteIdentifier(copy)) FROM PUBLIC")
                try admin.execute("GRANT CONNECT, TEMPORARY ON DATABASE \(quoteIdentifier(copy)) TO \(role)")
                let password = Self.randomPassword()
                let verifier = try admin.scramVerifier(password: password, role: current.postgresRole)
                try admin.execute("ALTER ROLE \(role) LOGIN PASSWORD \(quoteLiteral(verifier))")
                watchdog = try RoleWatchdog(parameters: try adminParameters(server), role: current.postgresRole, limit: configuration.uploadLimits.statementTimeout, logger: logger)
                let session = try PostgresConnection(try roleParameters(server, database: copy, role: current.postgresRole, password: password), applicationName: "tenure-upgrade")
                defer { session.close() }
                let sessionInterrupter = session.interrupter
                progress.onStop { sessionInterrupter.interrupt() }
                for script in scripts {
                    if progress.isCancelled { throw TenureError(.cancelled, "the upgrade was cancelled; the previous result is kept") }
                    failedScript = script
                    try applyScript(configuration.upgradeScriptsDirectory + "/" + script, name: script, on: session)
                }
                failedScript = nil
                session.close()
                watchdog?.stop()
                watchdog = nil
                try endRoleAccess(admin, role: current.postgresRole)
                try checkUploadedDatabase(server, database: copy, role: current.postgresRole)
                try reassertPublicSchema(server, database: copy)
            }
        } catch {
            watchdog?.stop()
            try? endRoleAccess(admin, role: current.postgresRole)
            try? admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(copy)) WITH (FORCE)")
            let message = error.context["postgres_message"] ?? error.message
            let failed = clock.now()
            var next = running
            next.state = (try? UploadLifecycle.next(running.state, on: .upgradeFail)) ?? .upgradeFailed
            next.failedScript = failedScript
            next.failedError = String(message.prefix(2000))
            next.failedSQLState = error.sqlState
            try catalog.transaction { () throws(TenureError) in
                guard try catalog.updateUpload(next, expectedVersion: running.version, now: failed) else {
                    throw TenureError(.concurrentModification, "upload \(id) changed during its upgrade")
                }
                try catalog.audit(
                    at: failed, databaseID: id.rawValue, actor: actor, action: "upgrade_failed", from: UploadState.upgrading.rawValue,
                    to: UploadState.upgradeFailed.rawValue, reason: String(message.prefix(500)), detail: ["script": failedScript ?? ""])
            }
            let place = failedScript.map { "in script \($0)" } ?? "before the scripts ran"
            var context = error.context
            context["upload_id"] = id.rawValue
            if let failedScript { context["script"] = failedScript }
            throw TenureError(
                error.code == .cancelled ? .cancelled : .postgres,
                "the upgrade of \(id) failed \(place): \(message); the previous data is kept", context: context, sqlState: error.sqlState)
        }
        let finished = clock.now()
        var next = running
        next.state = try UploadLifecycle.next(running.state, on: .upgradeSucceed, id: id.rawValue)
        next.postgresDatabase = copy
        next.lastUpgradedAt = finished
        next.upgradeCount += 1
        next.appliedScripts = scripts
        next.failedScript = nil
        next.failedError = nil
        next.failedSQLState = nil
        let firstSuccess = next.originalDeletedAt == nil
        if firstSuccess { next.originalDeletedAt = finished }
        do throws(TenureError) {
        try catalog.transaction { () throws(TenureError) in
            guard try catalog.updateUpload(next, expectedVersion: running.version, now: finished) else {
                throw TenureError(.concurrentModification, "upload \(id) changed during its upgrade")
            }
            try catalog.audit(
                at: finished, databaseID: id.rawValue, actor: actor, action: "upgraded", from: UploadState.upgrading.rawValue, to: UploadState.upgraded.rawValue,
                reason: nil, detail: ["scripts": scripts.joined(separator: ","), "hold_until": RFC3339.format(configuration.upgradeHold.end(from: finished))])
            if firstSuccess {
                try catalog.audit(
                    at: finished, databaseID: id.rawValue, actor: actor, action: "original_deleted", from: nil, to: nil,
                    reason: "the original upload is deleted after the first successful upgrade")
            }
        }
        } catch {
            // Not recorded (the catalog failed, or this job attempt lost its lease): the copy
            // goes, the previous data stays; recovery marks the run failed.
            try? admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(copy)) WITH (FORCE)")
            throw error
        }
        // The previous data (the original or the last result) is no longer needed.
        try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(source)) WITH (FORCE)")
        removeResultFiles(id, keepingGeneration: next.generation)
        return try catalog.upload(id)
    }

    /// The audit detail of a finished upload: its format, size and statements, and the zip
    /// members read past (the first 100 names).
    func uploadedDetail(_ summary: UploadImportSummary) -> [String: String] {
        var detail = ["format": summary.format.rawValue, "bytes": String(summary.byteCount), "statements": String(summary.statementCount)]
        if !summary.ignoredMembers.isEmpty {
            detail["ignored_members"] = summary.ignoredMembers.prefix(100).joined(separator: ", ")
            detail["ignored_member_count"] = String(summary.ignoredMembers.count)
        }
        return detail
    }

    /// One script in one transaction, split by Tenure's lexer (no psql meta-commands).
    func applyScript(_ path: String, name: String, on session: PostgresConnection) throws(TenureError) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TenureError(.invalidConfiguration, "cannot read upgrade script \(path)")
        }
        let lexer = SQLLexer(maximumStatementBytes: configuration.uploadLimits.maximumStatementBytes)
        try session.execute("BEGIN")
        do throws(TenureError) {
            let runner = StatementRunner(connection: session, lexer: lexer, limits: configuration.uploadLimits, policy: false)
            let emit: (SQLEvent) throws(TenureError) -> Void = { (event) throws(TenureError) in try runner.handle(event) }
            try Array(data).withBytes { (bytes) throws(TenureError) in try lexer.feed(bytes, emit: emit) }
            try lexer.finish(emit: emit)
            try session.execute("COMMIT")
        } catch {
            try? session.execute("ROLLBACK")
            throw error
        }
    }

    // MARK: - Results

    func uploadDirectory(_ id: UploadID) -> String { configuration.uploadDirectory + "/" + id.rawValue }

    /// The key that serializes result files and their deletion for one upload.
    func filesLockKey(_ record: UploadRecord) -> Int64 { record.lockKey == Int64.max ? 1 : record.lockKey + 1 }

    /// The downloadable file of the upgraded result in `format`, made on first request (a
    /// verified archive published by rename) and kept until the result changes.
    public func uploadResultFile(_ id: UploadID, format: BackupFormat) throws(TenureError) -> (path: String, record: UploadRecord) {
        let record = try catalog.upload(id)
        guard record.lastUpgradedAt != nil, record.state != .destroyed, let database = record.postgresDatabase else {
            throw TenureError(
                .lifecycleConflict, "upload \(id) has no upgraded result yet (it is \(record.state.rawValue)); run an upgrade first", context: ["upload_id": id.rawValue])
        }
        let generation = Int(database.split(separator: "_g").last.flatMap { Int($0) } ?? record.generation)
        let path = uploadDirectory(id) + "/result-g\(generation)" + (format == .native ? ".tenure" : ".sql.zst")
        if FileManager.default.fileExists(atPath: path) { return (path, record) }
        try catalog.lock(key: filesLockKey(record))
        defer { try? catalog.unlock(key: filesLockKey(record)) }
        if FileManager.default.fileExists(atPath: path) { return (path, record) }
        guard try catalog.upload(id).postgresDatabase == database else {
            throw TenureError(.concurrentModification, "the result of upload \(id) changed meanwhile; ask again")
        }
        do { try FileManager.default.createDirectory(atPath: uploadDirectory(id), withIntermediateDirectories: true) } catch {
            throw TenureError(.internal, "cannot create \(uploadDirectory(id)): \(error.localizedDescription)")
        }
        let server = try catalog.server(named: record.serverName)
        let sink = try AtomicFileSink(path: path, publishOnFinish: false)
        do throws(TenureError) {
            var options = BackupOptions(
                source: try adminParameters(server, database: database), jobs: configuration.engineJobs, format: format, pgDump: pgDump, createdAt: clock.now())
            let key = try ArchiveKey.load(home: configuration.home, create: true)
            options.signingKey = key
            // Sealed with the upload's data key: only a download (which opens it) is plain.
            _ = try runBackup(options, sink: try sealing(sink, owner: id.rawValue))
            if format == .native {
                let verified = try runVerify(source: try SealedFile.open(try DescriptorSource(path: sink.temporaryPath), keys: keyLookup), key: key)
                guard verified.signature == .valid else { throw TenureError(.internal, "the result archive's signature did not check out") }
            }
            try sink.publish()
        } catch {
            sink.abort()
            throw error
        }
        try catalog.audit(at: clock.now(), databaseID: id.rawValue, actor: actor, action: "result_prepared", from: nil, to: nil, reason: nil, detail: ["format": format.rawValue])
        return (path, record)
    }

    /// The plain size of a result file and its bytes `first ..< first + count` (all with nil),
    /// opened with the upload's data key.
    public func openUploadResult(_ path: String, first: Int64 = 0, count: Int64? = nil) throws(TenureError) -> (size: Int64, source: any ByteSource) {
        let size = try SealedFile.plainSize(of: try DescriptorSource(path: path), storedBytes: fileSize(path))
        let count = count ?? (size - first)
        let source = try SealedFile.openRange(plainSize: size, first: first, count: count, keys: keyLookup) { (offset, length) throws(TenureError) in
            let file = try DescriptorSource(path: path)
            try file.seek(to: offset)
            return file
        }
        return (size, source)
    }

    func fileSize(_ path: String) throws(TenureError) -> Int64 {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path), let size = attributes[.size] as? NSNumber else {
            throw TenureError(.lifecycleConflict, "the result file \((path as NSString).lastPathComponent) is gone; ask again")
        }
        return size.int64Value
    }

    func removeResultFiles(_ id: UploadID, keepingGeneration generation: Int?) {
        let directory = uploadDirectory(id)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            if let generation, name.hasPrefix("result-g\(generation).") || name.hasPrefix(".result-g\(generation).") { continue }
            unlink(directory + "/" + name)
        }
    }

    // MARK: - Delete, hold

    /// A deletion request: destroys the upload at once (databases, role, files), unless a
    /// legal hold blocks it. The tombstone row and the audit trail remain.
    public func deleteUpload(_ id: UploadID, reason: String = "deletion requested", expectedVersion: Int64? = nil) throws(TenureError) -> UploadRecord {
        let current = try catalog.upload(id)
        if let expectedVersion, expectedVersion != current.version {
            throw TenureError(.concurrentModification, "upload \(id) changed since the sweep planned it; skipped", context: ["upload_id": id.rawValue])
        }
        if current.state == .destroyed {
            if current.cleanupPending { try finishUploadCleanup(current) }
            return try catalog.upload(id)
        }
        _ = try UploadLifecycle.next(current.state, on: .destroy, id: id.rawValue)
        let now = clock.now()
        try catalog.transaction { () throws(TenureError) in
            let locked = try catalog.upload(id, forUpdate: true)
            if let hold = locked.legalHoldReason {
                throw TenureError(.legalHold, "upload \(id) is under a legal hold (\(hold)); nothing was destroyed", context: ["upload_id": id.rawValue])
            }
            var next = locked
            next.state = try UploadLifecycle.next(locked.state, on: .destroy, id: id.rawValue)
            next.destroyedAt = now
            next.destroyedBy = actor
            next.destroyReason = reason
            next.cleanupPending = true
            next.postgresDatabase = nil
            guard try catalog.updateUpload(next, expectedVersion: current.version, now: now) else {
                throw TenureError(.concurrentModification, "upload \(id) was changed by someone else at the same time; nothing was destroyed")
            }
            try catalog.cancelJobs(subject: id.rawValue, kinds: [.upgrade], now: now)
            // The data key goes with the tombstone (its sealed result files are unreadable from here).
            let keyID = try catalog.deleteDataKey(owner: id.rawValue)
            try catalog.audit(
                at: now, databaseID: id.rawValue, actor: actor, action: "upload_destroyed", from: current.state.rawValue, to: UploadState.destroyed.rawValue,
                reason: reason, detail: keyID.map { ["data_key_id": $0.rawValue] } ?? [:])
        }
        Failpoint.uploadDestroyAfterRecord.hit()
        try finishUploadCleanup(try catalog.upload(id))
        return try catalog.upload(id)
    }

    /// Drops every database of the upload (all generations), its role and its files, then
    /// clears `cleanup_pending`. Idempotent; recovery calls it again after a crash.
    func finishUploadCleanup(_ record: UploadRecord) throws(TenureError) {
        let server = try catalog.server(named: record.serverName)
        let admin = try connectAdmin(server)
        defer { admin.close() }
        try endRoleAccess(admin, role: record.postgresRole)
        let pattern = record.id.rawValue + "\\_g%"
        for row in try admin.query("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1", [pattern]).rows {
            guard let name = row[0] else { continue }
            try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(name)) WITH (FORCE)")
        }
        try dropRole(record.postgresRole, on: admin, server: server.name.rawValue)
        try catalog.lock(key: filesLockKey(record))
        defer { try? catalog.unlock(key: filesLockKey(record)) }
        let directory = uploadDirectory(record.id)
        // What is deleted, for the certificate: name, bytes and XXH64 of each stored file.
        var files: [String] = []
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted() where !name.hasPrefix(".") {
            guard let source = try? DescriptorSource(path: directory + "/" + name) else { continue }
            let hashing = HashingSource(source)
            try? hashing.drain()
            files.append("\(name):\(hashing.count):\(XXH64.hex(hashing.digest))")
        }
        if FileManager.default.fileExists(atPath: directory) {
            do { try FileManager.default.removeItem(atPath: directory) } catch {
                throw TenureError(.internal, "cannot delete the files of \(record.id) in \(directory): \(error.localizedDescription)")
            }
        }
        let now = clock.now()
        let current = try catalog.upload(record.id)
        if current.cleanupPending {
            var next = current
            next.cleanupPending = false
            try catalog.transaction { () throws(TenureError) in
                guard try catalog.updateUpload(next, expectedVersion: current.version, now: now) else {
                    throw TenureError(.concurrentModification, "upload \(record.id) changed during its cleanup")
                }
                try catalog.audit(
                    at: now, databaseID: record.id.rawValue, actor: actor, action: "upload_cleanup_completed", from: nil, to: nil, reason: nil,
                    detail: files.isEmpty ? [:] : ["files": files.joined(separator: ";")])
            }
        }
        try issueUploadCertificate(record.id)
    }

    /// Sets (`reason` given) or lifts a legal hold: while set, nothing destroys the upload.
    public func setUploadHold(_ id: UploadID, reason: String?) throws(TenureError) -> UploadRecord {
        if let reason {
            let trimmed = reason.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !trimmed.isEmpty, trimmed.count <= 500, !trimmed.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
                throw TenureError(.invalidRequest, "the reason must be 1–500 characters of text on one line")
            }
        }
        let current = try catalog.upload(id)
        guard current.state != .destroyed else {
            throw TenureError(.lifecycleConflict, "upload \(id) is destroyed; there is nothing to hold", context: ["upload_id": id.rawValue])
        }
        if reason != nil, current.legalHoldReason != nil {
            throw TenureError(.lifecycleConflict, "upload \(id) is already under a legal hold", context: ["upload_id": id.rawValue])
        }
        if reason == nil, current.legalHoldReason == nil {
            throw TenureError(.lifecycleConflict, "upload \(id) is not under a legal hold", context: ["upload_id": id.rawValue])
        }
        let now = clock.now()
        var next = current
        next.legalHoldReason = reason
        next.legalHoldSince = reason == nil ? nil : now
        try catalog.transaction { () throws(TenureError) in
            guard try catalog.updateUpload(next, expectedVersion: current.version, now: now) else {
                throw TenureError(.concurrentModification, "upload \(id) was changed by someone else at the same time; retry")
            }
            try catalog.audit(
                at: now, databaseID: id.rawValue, actor: actor, action: reason == nil ? "release" : "hold", from: nil, to: nil, reason: reason)
        }
        return try catalog.upload(id)
    }

    // MARK: - Sweep and recovery

    func makeUploadPlan(at instant: Date) throws(TenureError) -> UploadSweepPlan {
        let candidates = try catalog.uploads().filter { $0.state.holdsData }.map(\.candidate)
        return planUploadSweep(
            candidates: candidates, fleetSize: try catalog.liveUploadCount(), asOf: instant, hold: configuration.upgradeHold, limits: configuration.sweepLimits)
    }

    /// Uploads a crashed process left: cleanups finished, interrupted uploads rejected,
    /// interrupted upgrades failed (their copy dropped, the previous data kept).
    func recoverUploads() throws(TenureError) {
        for record in try catalog.uploads() where record.cleanupPending || record.state == .uploading || record.state == .upgrading {
            guard try catalog.tryLock(key: record.lockKey) else { continue }
            defer { try? catalog.unlock(key: record.lockKey) }
            let fresh = try catalog.upload(record.id)
            do throws(TenureError) {
                switch fresh.state {
                case .uploading:
                    try rejectUpload(fresh.id, reason: "interrupted (Tenure stopped during the upload)")
                case .upgrading:
                    let server = try catalog.server(named: fresh.serverName)
                    let admin = try connectAdmin(server)
                    defer { admin.close() }
                    try endRoleAccess(admin, role: fresh.postgresRole)
                    let copy = fresh.databaseName(generation: fresh.generation)
                    if copy != fresh.postgresDatabase { try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(copy)) WITH (FORCE)") }
                    let now = clock.now()
                    var next = fresh
                    next.state = try UploadLifecycle.next(fresh.state, on: .upgradeFail, id: fresh.id.rawValue)
                    next.failedError = "interrupted (Tenure stopped during the upgrade)"
                    next.failedScript = nil
                    next.failedSQLState = nil
                    try catalog.transaction { () throws(TenureError) in
                        guard try catalog.updateUpload(next, expectedVersion: fresh.version, now: now) else { return }
                        try catalog.audit(
                            at: now, databaseID: fresh.id.rawValue, actor: actor, action: "upgrade_failed", from: UploadState.upgrading.rawValue,
                            to: UploadState.upgradeFailed.rawValue, reason: "interrupted")
                    }
                default:
                    if fresh.cleanupPending { try finishUploadCleanup(fresh) }
                }
            } catch {
                logger.warning("could not finish an interrupted upload; will retry", metadata: ["tenure.upload_id": "\(record.id)", "tenure.error": "\(error.message)"])
            }
        }
    }
}

/// Cancels any statement of `role` that has been running longer than `limit` (COPY data
/// transfers excepted), from an admin session of its own, polling once a second. The
/// server's `statement_timeout` is a session setting the upload could change; this is not.
final class RoleWatchdog: @unchecked Sendable {
    private let stopped = Locked(false)
    private let done = DispatchSemaphore(value: 0)
    private let cancelled = Locked(0)
    var cancelledCount: Int { cancelled.withLock { $0 } }

    init(parameters: ConnectionParameters, role: String, limit: Duration, logger: Logger) throws(TenureError) {
        let connection = try PostgresConnection(parameters, applicationName: "tenure-watchdog")
        let seconds = String(limit.components.seconds)
        let box = ConnectionBox(connection)
        Thread { [stopped, done, cancelled] in
            defer {
                box.connection.close()
                done.signal()
            }
            while !stopped.withLock({ $0 }) {
                let result = try? box.connection.query(
                    """
                    SELECT count(pg_cancel_backend(pid)) AS n FROM pg_stat_activity
                    WHERE usename = $1 AND state = 'active' AND clock_timestamp() - query_start > make_interval(secs => $2::float8)
                      AND query !~* '^(\\s|--[^\\n]*\\n)*copy\\s'
                    """, [role, seconds])
                if let count = result.flatMap({ Int($0[0, "n"] ?? "0") }), count > 0 {
                    cancelled.withLock { $0 += count }
                    logger.notice("cancelled a statement of an upload that ran past its limit", metadata: ["tenure.role": "\(role)"])
                }
                usleep(500_000)
            }
        }.start()
    }

    func stop() {
        guard !stopped.withLock({ let was = $0; $0 = true; return was }) else { return }
        done.wait()
    }

    deinit { stop() }
}

final class ConnectionBox: @unchecked Sendable {
    let connection: PostgresConnection
    init(_ connection: PostgresConnection) { self.connection = connection }
}
