import Foundation
import Logging
import TenureCatalog
import TenureCore
import TenureEngine
import TenurePQ

#if canImport(Glibc)
import Glibc
#endif

/// A managed backup just taken, with a plausibility warning (B8) when it looks wrong.
public struct BackupOutcome: Sendable {
    public var record: BackupRecord
    public var warning: String?
}

extension Controller {
    var pgDump: PgDump { PgDump(path: configuration.pgDumpPath) }

    /// The backup store (a directory, or an object store through rclone).
    var backupStore: any BackupStore { configuration.backupStore.open() }

    /// Backs a hosted database up into the backup store: written (a directory: under a
    /// temporary name, fsynced; an object store: streamed to its key), read back from the
    /// store and verified completely (the same bytes as written, every checksum, the
    /// signature), then published and only then recorded as `verified` (B3, B4). A failure is
    /// recorded as `failed`, removes what it wrote and never touches an older backup.
    public func backupDatabase(_ id: DatabaseID, scheduled: Bool = false, progress: TransferProgress = TransferProgress()) throws(TenureError) -> BackupOutcome {
        let database = try catalog.database(id)
        switch database.state {
        case .trial, .active, .deactivated: break
        case .provisioning, .destroyed:
            throw TenureError(.lifecycleConflict, "a \(database.state.rawValue) database cannot be backed up", context: ["database_id": id.rawValue])
        }
        let server = try catalog.server(named: database.serverName)
        let now = clock.now()
        let backupID = BackupID.random()
        var record = BackupRecord(
            id: backupID, databaseID: id, state: .running, format: "native", path: "\(id)/\(backupID).tenure", startedAt: now,
            lockKey: Int64.random(in: 1...Int64.max))
        record.scheduled = scheduled
        try catalog.lock(key: record.lockKey)
        defer { try? catalog.unlock(key: record.lockKey) }
        try catalog.insertBackup(record)
        let store = backupStore
        do throws(TenureError) {
            // A destroy that began meanwhile wins: it waits for running backups (their locks)
            // before it deletes the store, and a backup registered after that sees the state.
            let current = try catalog.database(id).state
            guard current != .destroyed else {
                throw TenureError(.lifecycleConflict, "database \(id) was destroyed while the backup started; nothing was kept", context: ["database_id": id.rawValue])
            }
            let writer = try store.create(record.path)
            // Sealed with the database's data key on its way to the store; counted and hashed
            // before sealing, so the recorded size and digest are the plain archive's (what a
            // download streams).
            let counted = CountingSink(try sealing(writer, owner: id.rawValue))
            var options = BackupOptions(
                source: try adminParameters(server, database: database.postgresDatabase), jobs: configuration.engineJobs, format: .native,
                pgDump: pgDump, createdAt: now)
            let key = try ArchiveKey.load(home: configuration.home, create: true)
            options.signingKey = key
            let summary = try watching(server, "backup", progress: progress) { () throws(TenureError) in
                try runBackup(options, sink: CancellableSink(counted, progress: progress), progress: progress)
            }
            // Read before the object is published: from then on any failure must remove it.
            let previous = try catalog.backups(databaseID: id, state: .verified).last
            do throws(TenureError) {
                // What the store holds, read back whole: every part's checksum, the manifest's
                // signature, and the same bytes (count and XXH64) as were written.
                let stored = HashingSource(try SealedFile.open(try writer.verificationSource(), keys: keyLookup))
                let verified = try runVerify(source: stored, key: key)
                guard verified.signature == .valid else { throw TenureError(.internal, "the new backup's signature did not check out") }
                try stored.drain()
                guard stored.count == counted.count, stored.digest == counted.digest else {
                    throw TenureError(
                        .internal,
                        "the backup store \(store.location) holds \(stored.count) bytes (XXH64 \(XXH64.hex(stored.digest))) where \(counted.count) (\(XXH64.hex(counted.digest))) were written")
                }
                Failpoint.backupBeforePublish.hit()
                if progress.isCancelled { throw TenureError(.cancelled, "the backup was cancelled; nothing was kept") }
                try writer.publish()
            } catch {
                writer.abort()
                throw error
            }
            let size: Int64? = counted.count
            let finished = clock.now()
            do throws(TenureError) {
                try catalog.transaction { () throws(TenureError) in
                    try catalog.finishBackup(
                        backupID, state: .verified, byteCount: size, rowCount: summary.rowCount, tableCount: summary.tableCount, error: nil,
                        digest: XXH64.hex(counted.digest), now: finished)
                    try catalog.audit(
                        at: finished, databaseID: id.rawValue, actor: actor, action: "backup", from: nil, to: nil, reason: nil,
                        detail: ["backup_id": backupID.rawValue, "bytes": String(size ?? 0), "rows": String(summary.rowCount)])
                }
            } catch {
                // Not recorded (the catalog failed, or this job attempt lost its lease): an
                // object no row calls verified must not stay in the store.
                try? store.delete(record.path)
                throw error
            }
            record = try catalog.backup(backupID)
            var warning: String?
            if let previous, let before = previous.byteCount, let after = record.byteCount, before > 64 << 10, after < before / 2 {
                warning = "this backup (\(after) bytes) is less than half the size of the previous one (\(previous.id), \(before) bytes); check the database"
                logger.warning("backup much smaller than the previous one", metadata: ["tenure.database_id": "\(id)", "tenure.backup_id": "\(backupID)"])
            }
            return BackupOutcome(record: record, warning: warning)
        } catch {
            try? catalog.finishBackup(backupID, state: .failed, byteCount: nil, rowCount: nil, tableCount: nil, error: String(error.message.prefix(1000)), now: clock.now())
            throw error
        }
    }

    /// Streams a fresh backup of a hosted database to `sink` (nothing is stored).
    public func exportDatabase(_ id: DatabaseID, format: BackupFormat, sink: any ByteSink, progress: TransferProgress = TransferProgress())
        throws(TenureError) -> BackupSummary
    {
        let database = try catalog.database(id)
        switch database.state {
        case .trial, .active, .deactivated: break
        case .provisioning, .destroyed:
            sink.abort()
            throw TenureError(.lifecycleConflict, "a \(database.state.rawValue) database cannot be exported", context: ["database_id": id.rawValue])
        }
        let server = try catalog.server(named: database.serverName)
        var options = BackupOptions(
            source: try adminParameters(server, database: database.postgresDatabase), jobs: configuration.engineJobs, format: format, pgDump: pgDump,
            createdAt: clock.now())
        options.signingKey = try ArchiveKey.load(home: configuration.home, create: true)
        let summary = try runBackup(options, sink: CancellableSink(sink, progress: progress), progress: progress)
        try catalog.audit(
            at: clock.now(), databaseID: id.rawValue, actor: actor, action: "export", from: nil, to: nil, reason: nil, detail: ["format": format.rawValue])
        return summary
    }

    /// A backup of this database, checked to belong to it (RELIABILITY D1).
    public func backupOf(_ id: DatabaseID, _ backupID: BackupID) throws(TenureError) -> BackupRecord {
        let backup = try catalog.backup(backupID)
        guard backup.databaseID == id else {
            throw TenureError(
                .invalidID, "backup \(backupID) belongs to database \(backup.databaseID), not to \(id); nothing was done",
                context: ["backup_id": backupID.rawValue, "database_id": id.rawValue])
        }
        return backup
    }

    /// A stored backup's plain bytes (`first ..< first + count`, or all), opened with its
    /// database's data key: a sealed backup of a destroyed database is `key.destroyed`.
    public func openStoredBackup(_ backup: BackupRecord, first: Int64 = 0, count: Int64? = nil) throws(TenureError) -> any ByteSource {
        let store = backupStore
        guard let count, let size = backup.byteCount, first > 0 || count < size else {
            return try SealedFile.open(try store.open(backup.path, offset: 0, length: nil), keys: keyLookup)
        }
        return try SealedFile.openRange(plainSize: size, first: first, count: count, keys: keyLookup) { (offset, length) throws(TenureError) in
            try store.open(backup.path, offset: offset, length: length)
        }
    }

    /// Replaces a database's contents with a verified backup. The backup is restored into a
    /// new database beside the old one; only when it is complete are the two swapped (old
    /// renamed aside, new renamed into place, old dropped), under an intent so a crash
    /// leaves either the old or the new database, never neither and never a mix (B6).
    public func restoreDatabase(_ id: DatabaseID, from backupID: BackupID, progress: TransferProgress = TransferProgress()) throws(TenureError)
        -> DatabaseRecord
    {
        let database = try catalog.database(id)
        let backup = try backupOf(id, backupID)
        guard backup.state == .verified else {
            throw TenureError(.lifecycleConflict, "backup \(backupID) is \(backup.state.rawValue); only verified backups can be restored")
        }
        switch database.state {
        case .trial, .active: break
        case .provisioning, .deactivated, .destroyed:
            throw TenureError(.lifecycleConflict, "a \(database.state.rawValue) database cannot be restored; reactivate it first", context: ["database_id": id.rawValue])
        }
        let server = try catalog.server(named: database.serverName)
        let suffix = String(IntentID.random().rawValue.dropFirst(3).prefix(12))
        let newName = "\(database.postgresDatabase)_new_\(suffix)"
        let asideName = "\(database.postgresDatabase)_old_\(suffix)"
        let now = clock.now()
        let intent = IntentRecord(
            id: .random(), kind: .restoreDatabase, databaseID: id, serverName: database.serverName, postgresDatabase: database.postgresDatabase,
            postgresRole: database.postgresRole, lockKey: Int64.random(in: 1...Int64.max), createdAt: now,
            detail: ["new": newName, "aside": asideName, "backup_id": backupID.rawValue])
        try catalog.lock(key: intent.lockKey)
        defer { try? catalog.unlock(key: intent.lockKey) }
        try catalog.transaction { () throws(TenureError) in
            try catalog.insertIntent(intent)
            try catalog.audit(
                at: now, databaseID: id.rawValue, actor: actor, action: "restore_started", from: nil, to: nil, reason: nil,
                detail: ["backup_id": backupID.rawValue])
        }
        let admin = try connectAdmin(server)
        defer { admin.close() }
        do throws(TenureError) {
            let source = try openStoredBackup(backup)
            var options = RestoreOptions(target: try adminParameters(server, database: newName), jobs: configuration.engineJobs)
            options.target["options"] = nil
            options.key = try ArchiveKey.load(home: configuration.home, create: false)
            options.grantPublicConnect = false
            _ = try watching(server, "restore", progress: progress) { () throws(TenureError) in
                try runRestore(source: source, options: options, progress: progress)
            }
            // Tenant rules on the new database before anyone can reach it.
            try handOver(newName, to: database.postgresRole, on: server, admin: admin)
            Failpoint.restoreAfterLoad.hit()
            // The swap cannot be undone: only an attempt that still owns its job may start it.
            try catalog.assertFence()
        } catch {
            try? admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(newName)) WITH (FORCE)")
            try? catalog.finishIntent(intent.id, status: .rolledBack, now: clock.now())
            throw error
        }
        try swapRestored(intent, admin: admin)
        return try catalog.database(id)
    }

    /// The tenant rules on a database loaded from an archive, before anyone can reach it: owned
    /// by `role`, closed to PUBLIC but for its owner, `public` owned by pg_database_owner.
    func handOver(_ database: String, to role: String, on server: ServerRecord, admin: PostgresConnection) throws(TenureError) {
        let owner = quoteIdentifier(role)
        try admin.execute("ALTER DATABASE \(quoteIdentifier(database)) OWNER TO \(owner)")
        try admin.execute("REVOKE ALL ON DATABASE \(quoteIdentifier(database)) FROM PUBLIC")
        try admin.execute("GRANT CONNECT, TEMPORARY ON DATABASE \(quoteIdentifier(database)) TO \(owner)")
        let fresh = try connectAdmin(server, database: database)
        defer { fresh.close() }
        try fresh.execute("ALTER SCHEMA public OWNER TO pg_database_owner; REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    }

    /// The swap: old aside, new into place, old dropped, intent completed. Each step is
    /// idempotent, so recovery can call it again after a crash past the point of no return.
    func swapRestored(_ intent: IntentRecord, admin: PostgresConnection) throws(TenureError) {
        let target = intent.postgresDatabase
        guard let newName = intent.detail["new"], let asideName = intent.detail["aside"] else {
            preconditionFailure("restore intent without names")
        }
        func exists(_ name: String) throws(TenureError) -> Bool {
            try !admin.query("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", [name]).rows.isEmpty
        }
        if try exists(newName) {
            if try exists(target) {
                try admin.query("SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [target])
                try admin.execute("ALTER DATABASE \(quoteIdentifier(target)) RENAME TO \(quoteIdentifier(asideName))")
            }
            Failpoint.restoreAfterAside.hit()
            try admin.execute("ALTER DATABASE \(quoteIdentifier(newName)) RENAME TO \(quoteIdentifier(target))")
        }
        try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(asideName)) WITH (FORCE)")
        let now = clock.now()
        try catalog.transaction { () throws(TenureError) in
            try catalog.finishIntent(intent.id, status: .completed, now: now)
            try catalog.audit(
                at: now, databaseID: intent.databaseID.rawValue, actor: actor, action: "restore_completed", from: nil, to: nil, reason: nil,
                detail: ["backup_id": intent.detail["backup_id"] ?? ""])
        }
    }

    /// Recovery of an interrupted restore: before the swap began (the target still in place and
    /// nothing set aside) the new copy is dropped and the old database stays; after, the swap
    /// is finished, since the new copy was complete before it started.
    func recoverRestore(_ intent: IntentRecord) throws(TenureError) -> String {
        let server = try catalog.server(named: intent.serverName)
        let admin = try connectAdmin(server)
        defer { admin.close() }
        let aside = intent.detail["aside"] ?? ""
        let new = intent.detail["new"] ?? ""
        let asideExists = try !admin.query("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", [aside]).rows.isEmpty
        let targetExists = try !admin.query("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", [intent.postgresDatabase]).rows.isEmpty
        if asideExists || !targetExists {
            try swapRestored(intent, admin: admin)
            return "restore finished"
        }
        try admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(new)) WITH (FORCE)")
        let now = clock.now()
        try catalog.transaction { () throws(TenureError) in
            try catalog.finishIntent(intent.id, status: .rolledBack, now: now)
            try catalog.audit(at: now, databaseID: intent.databaseID.rawValue, actor: actor, action: "restore_rolled_back", from: nil, to: nil, reason: nil)
        }
        return "restore rolled back"
    }

    /// Backups whose process died: marked failed, their temporary files removed (B3). Files
    /// of running backups (their lock is held) are never touched (D9).
    func recoverBackups() throws(TenureError) {
        for backup in try catalog.backups(state: .running) {
            guard try catalog.tryLock(key: backup.lockKey) else { continue }
            defer { try? catalog.unlock(key: backup.lockKey) }
            let store = backupStore
            store.removeLeftovers(of: backup.path)
            // Published but never recorded verified (the process died, or lost the catalog,
            // in between): not a backup anyone may count on.
            try store.delete(backup.path)
            try catalog.finishBackup(backup.id, state: .failed, byteCount: nil, rowCount: nil, tableCount: nil, error: "interrupted", now: clock.now())
        }
    }

    /// Destroyed means gone: every backup file of the database and its directory.
    func deleteBackups(_ id: DatabaseID) throws(TenureError) {
        // Wait for backups still running (each holds its advisory lock until it has published
        // or cleaned up), so that none can publish a file after the store is deleted.
        for running in try catalog.backups(databaseID: id, state: .running) {
            try catalog.lock(key: running.lockKey)
            try catalog.unlock(key: running.lockKey)
        }
        try backupStore.deleteDirectory(id.rawValue)
        try catalog.deleteBackups(of: id, now: clock.now())
    }
}
