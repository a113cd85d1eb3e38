import Foundation
import Testing
import TenurePQ
import TenureTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Several `tenure serve` replicas on one catalog: durable jobs taken over when a replica
/// dies, a paused replica's late result refused, jobs of one database in request order.
@Suite(.serialized) struct ReplicaTests {
    static let lease = ["TENURE_JOB_LEASE": "3s", "TENURE_JOB_BACKOFF": "1s"]

    /// What a database's operations may leave behind: partial backup files, databases restored
    /// beside it or set aside, Tenure sessions on it.
    func leftovers(_ api: APIFixture, _ id: String) throws -> [String] {
        let directory = api.home + "/backups/" + id
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.contains("partial") }
        let databases = try api.server.rows(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND datname <> $1", [id]).map { $0[0] ?? "" }
        let sessions = try api.server.rows(
            "SELECT application_name || ' on ' || datname FROM pg_stat_activity WHERE application_name LIKE 'tenure%' AND starts_with(datname, $1)",
            [id]).map { "session " + ($0[0] ?? "") }
        return files + databases + sessions
    }

    @Test func aKilledReplicasBackupAndRestoreAreFinishedByAnother() throws {
        // Replica A dies (kill -9) just before it would publish a backup.
        let a = try APIFixture(Self.lease.merging(["TENURE_FAILPOINT": "backup.before_publish"]) { $1 })
        let created = try a.create("survivor")
        let id = created["id"] as! String
        let url = created["connection_url"] as! String
        try fill(url, rows: 20_000)
        let before = try fingerprint(url, "items")
        let backupJob = try a.call("POST", "/v1/databases/\(id)/backups")
        #expect(backupJob.status == 202)
        let backupJobID = backupJob.json["id"] as! String
        let died = try #require(a.process.waitForExit(seconds: 120), "replica A did not reach the failpoint")
        #expect(died.signal == SIGKILL)

        // Replica B, on the same catalog, takes the job over once A's lease has expired.
        let b = try APIFixture(Self.lease, joining: a)
        let backup = try b.waitForJob(backupJobID)
        #expect(backup["state"] as? String == "succeeded", "\(backup)")
        #expect(backup["attempt"] as? Int == 2, "\(backup)")
        let backupID = ((backup["result"] as? [String: Any])?["backup"] as? [String: Any])?["id"] as? String ?? ""
        // The dead attempt's backup failed; retention let it go once the new one was verified.
        #expect(try b.catalogRows("SELECT state FROM backups WHERE database_id = $1 ORDER BY started_at", [id]).map { $0[0] ?? "" } == ["deleted", "verified"])
        #expect(try leftovers(b, id).isEmpty)
        #expect(b.stop().status == 0)

        // Replica C dies with the restore loaded beside the database, before the swap.
        try PostgresConnection(try ConnectionParameters(parsing: url)).execute("DELETE FROM items WHERE id % 2 = 0")
        let c = try APIFixture(Self.lease.merging(["TENURE_FAILPOINT": "restore.after_load"]) { $1 }, joining: a)
        let restoreJob = try c.call("POST", "/v1/databases/\(id)/restore", json: ["backup_id": backupID])
        #expect(restoreJob.status == 202, "\(restoreJob)")
        let restoreJobID = restoreJob.json["id"] as! String
        let cDied = try #require(c.process.waitForExit(seconds: 120), "replica C did not reach the failpoint")
        #expect(cDied.signal == SIGKILL)

        // Replica D rolls the dead attempt back and restores again; the data is the backup's.
        let d = try APIFixture(Self.lease, joining: a)
        let restored = try d.waitForJob(restoreJobID)
        #expect(restored["state"] as? String == "succeeded", "\(restored)")
        #expect(restored["attempt"] as? Int == 2, "\(restored)")
        #expect(try fingerprint(url, "items") == before)
        let left = try leftovers(d, id)
        #expect(left.isEmpty, "\(left)")

        // A backup and a restore of one database requested back to back: in order, both succeed.
        let second = try d.call("POST", "/v1/databases/\(id)/backups").json
        let third = try d.call("POST", "/v1/databases/\(id)/restore", json: ["backup_id": backupID]).json
        if third["state"] as? String == "queued" {
            #expect(third["waiting_for"] as? String == second["id"] as? String, "\(third)")
        }
        let secondDone = try d.waitForJob(second["id"] as! String)
        let thirdDone = try d.waitForJob(third["id"] as! String)
        #expect(secondDone["state"] as? String == "succeeded" && thirdDone["state"] as? String == "succeeded", "\(secondDone) \(thirdDone)")
        #expect((thirdDone["started_at"] as? String ?? "") >= (secondDone["finished_at"] as? String ?? "~"), "\(secondDone) \(thirdDone)")

        // Any replica answers for any job, and lists them.
        let listed = try d.call("GET", "/v1/jobs?database_id=\(id)&limit=2")
        #expect(listed.status == 200 && (listed.json["jobs"] as? [Any])?.count == 2 && listed.json["next_cursor"] is String, "\(listed)")
        let rest = try d.call("GET", "/v1/jobs?database_id=\(id)&cursor=\(listed.json["next_cursor"] as! String)")
        #expect((rest.json["jobs"] as? [[String: Any]])?.map { $0["id"] as? String } == [restoreJobID, backupJobID], "\(rest)")
        let cli = try d.tenure(["job", "show", backupJobID, "--json"])
        #expect(cli.status == 0 && cli.json["state"] as? String == "succeeded", "\(cli)")
        #expect(d.stop().status == 0)
    }

    /// A replica killed (kill -9) in the middle of a destruction: the tombstone and its intent
    /// are in the catalog, so another replica's next sweep finishes the drop and then deletes
    /// the backups (the purge job); nothing of the database is left.
    @Test(arguments: ["destroy.after_intent", "destroy.after_drop_database"])
    func aKilledReplicasDestroyIsFinishedByAnother(failpoint: String) throws {
        let sweep = ["TENURE_SWEEP_INTERVAL": "1s"]
        let a = try APIFixture(Self.lease.merging(sweep) { $1 }.merging(["TENURE_FAILPOINT": failpoint]) { $1 })
        let created = try a.create("doomed")
        let id = created["id"] as! String
        try fill(created["connection_url"] as! String, rows: 1_000)
        let backup = try a.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String
        #expect(try a.waitForJob(backup)["state"] as? String == "succeeded")
        _ = try? httpRequest(port: a.port, "DELETE", "/v1/databases/\(id)?confirm=doomed", headers: ["Authorization": "Bearer \(a.adminKey)"])
        let died = try #require(a.process.waitForExit(seconds: 60), "replica A did not reach the failpoint")
        #expect(died.signal == SIGKILL)

        let b = try APIFixture(Self.lease.merging(sweep) { $1 }, joining: a)
        func remains() throws -> [String] {
            var left: [String] = []
            if try b.server.databaseExists(id) { left.append("database") }
            if try b.server.roleExists(id + "_owner") { left.append("role") }
            left += try b.catalogRows("SELECT kind || ' ' || status FROM intents WHERE database_id = $1 AND status <> 'completed'", [id]).map { $0[0] ?? "" }
            left += try b.catalogRows("SELECT 'backup ' || state FROM backups WHERE database_id = $1 AND state <> 'deleted'", [id]).map { $0[0] ?? "" }
            left += ((try? FileManager.default.contentsOfDirectory(atPath: b.home + "/backups/" + id)) ?? []).map { "file " + $0 }
            return left
        }
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, try !remains().isEmpty { usleep(250_000) }
        let left = try remains()
        #expect(left.isEmpty, "\(left)")
        #expect(try b.call("GET", "/v1/databases/\(id)").json["state"] as? String == "destroyed")
        let actions = try b.catalogRows("SELECT action FROM audit_events WHERE database_id = $1 ORDER BY at, id", [id]).map { $0[0] ?? "" }
        #expect(actions.contains("destroy_completed") && actions.contains("backups_deleted"), "\(actions)")
        #expect(b.stop().status == 0)
    }

    @Test func aPausedReplicasLateResultIsRefused() throws {
        // Replica A stops itself (SIGSTOP) with a backup complete but not yet published.
        let a = try APIFixture(Self.lease.merging(["TENURE_FAILPOINT": "backup.before_publish:stop"]) { $1 })
        let created = try a.create("paused")
        let id = created["id"] as! String
        try fill(created["connection_url"] as! String, rows: 5_000)
        let jobID = try a.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String
        #expect(a.process.waitUntilStopped(seconds: 120), "replica A did not stop at the failpoint")

        // B takes the job over after A's lease expired and finishes it.
        let b = try APIFixture(Self.lease, joining: a)
        let done = try b.waitForJob(jobID)
        #expect(done["state"] as? String == "succeeded" && done["attempt"] as? Int == 2, "\(done)")
        let result = ((done["result"] as? [String: Any])?["backup"] as? [String: Any])?["id"] as? String

        // A resumes: its attempt publishes nothing (its file is removed, its row failed).
        a.process.signal(SIGCONT)
        let deadline = Date().addingTimeInterval(30)
        var states: [String] = []
        while Date() < deadline {
            states = try b.catalogRows("SELECT state FROM backups WHERE database_id = $1 ORDER BY state", [id]).map { $0[0] ?? "" }
            if !states.contains("running") { break }
            usleep(200_000)
        }
        #expect(states == ["failed", "verified"], "\(states)")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: b.home + "/backups/" + id)) ?? []
        #expect(files == ["\(result ?? "?").tenure"], "\(files)")
        let job = try b.call("GET", "/v1/jobs/\(jobID)").json
        #expect(job["state"] as? String == "succeeded" && (job["result"] as? [String: Any]) != nil, "\(job)")
        let stoppedA = a.stop()
        #expect(stoppedA.stderr.contains("no longer") || stoppedA.stderr.contains("lease lost"), "\(stoppedA.stderr.suffix(2000))")
        #expect(b.stop().status == 0)
    }

    @Test func twoReplicasShareTheWork() throws {
        let a = try APIFixture(Self.lease)
        let b = try APIFixture(Self.lease, joining: a)
        var ids: [String] = []
        for name in ["one", "two", "three"] {
            let created = try a.create(name)
            try fill(created["connection_url"] as! String, rows: 2_000)
            ids.append(created["id"] as! String)
        }
        var jobs: [String] = []
        for (index, id) in (ids + ids).enumerated() {
            let api = index % 2 == 0 ? a : b
            jobs.append(try api.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String)
        }
        for job in jobs {
            let done = try a.waitForJob(job)
            #expect(done["state"] as? String == "succeeded" && done["attempt"] as? Int == 1, "\(done)")
        }
        // Job durations as histograms, requests too; no tenant id in any label.
        let metrics = try a.call("GET", "/metrics", key: "").text + b.call("GET", "/metrics", key: "").text
        #expect(metrics.contains("tenure_job_duration_seconds_count{kind=\"backup\"}"), "\(metrics)")
        #expect(metrics.contains("# TYPE tenure_http_request_duration_seconds histogram") && metrics.contains("tenure_jobs_total{kind=\"backup\",outcome=\"succeeded\"}"))
        #expect(!metrics.contains("db_") && !metrics.contains("job_0") && !metrics.contains("job_1"), "a tenant or job id leaked into a label")
        // A deletion over the API: the store goes in a purge job, run in the database's turn.
        let gone = ids[0]
        #expect(try a.call("DELETE", "/v1/databases/\(gone)?confirm=one").status == 200)
        let purges = try a.call("GET", "/v1/jobs?database_id=\(gone)").json["jobs"] as? [[String: Any]] ?? []
        let purge = try #require(purges.first { $0["kind"] as? String == "purge" }, "\(purges)")
        let purged = try a.waitForJob(purge["id"] as! String)
        // Two backups were taken; retention (newest of the day) had already let the first go.
        #expect(purged["state"] as? String == "succeeded" && (purged["result"] as? [String: Any])?["backups_deleted"] as? Int == 1, "\(purged)")
        #expect(!FileManager.default.fileExists(atPath: a.home + "/backups/" + gone))
        #expect(try a.catalogRows("SELECT DISTINCT state FROM backups WHERE database_id = $1", [gone]) == [["deleted"]])
        let ready = try b.call("GET", "/readyz", key: "")
        #expect(ready.status == 200 && (ready.json["replica"] as? String)?.isEmpty == false, "\(ready)")
        #expect(a.stop().status == 0)
        #expect(b.stop().status == 0)
        for id in ids { #expect(try leftovers(a, id).isEmpty) }
    }

    @Test func aGracefulStopHandsTheRunningJobToAnotherReplica() throws {
        // A long lease: only a release (not an expiry) lets B start the job soon after A stops.
        let a = try APIFixture(["TENURE_JOB_LEASE": "60s", "TENURE_FAILPOINT": "backup.before_publish:sleep"])
        let created = try a.create("handed")
        let id = created["id"] as! String
        try fill(created["connection_url"] as! String, rows: 2_000)
        let jobID = try a.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, try a.call("GET", "/v1/jobs/\(jobID)").json["state"] as? String != "running" { usleep(50_000) }
        let b = try APIFixture(["TENURE_JOB_LEASE": "60s"], joining: a)
        let running = try a.call("GET", "/readyz", key: "").json["running_jobs"] as? [[String: Any]]
        #expect(running?.first?["id"] as? String == jobID, "\(String(describing: running))")
        #expect(a.stop().status == 0)
        let stopped = Date()
        let done = try b.waitForJob(jobID, seconds: 40)
        #expect(done["state"] as? String == "succeeded", "\(done)")
        #expect(done["attempt"] as? Int == 1, "a released attempt does not count: \(done)")
        #expect(Date().timeIntervalSince(stopped) < 30, "B waited for the lease instead of the release")
        // The released attempt's backup failed; retention let it go once the new one was verified.
        #expect(try b.catalogRows("SELECT state FROM backups WHERE database_id = $1 ORDER BY state", [id]).map { $0[0] ?? "" } == ["deleted", "verified"])
        #expect(try leftovers(b, id).isEmpty)
        #expect(b.stop().status == 0)
    }

    @Test func anExportTakesItsTurnAmongTheJobs() throws {
        let api = try APIFixture(["TENURE_EXPORT_WAIT": "2s", "TENURE_FAILPOINT": "backup.before_publish:sleep"])
        let created = try api.create("turns")
        let id = created["id"] as! String
        try fill(created["connection_url"] as! String, rows: 600_000)
        // A backup runs (5 s at its publish step): an export waits 2 s, then 409 naming it.
        let backup = try api.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, try api.call("GET", "/v1/jobs/\(backup)").json["state"] as? String != "running" { usleep(50_000) }
        let started = Date()
        let busy = try api.call("GET", "/v1/databases/\(id)/export")
        #expect(busy.status == 409 && (busy.json["context"] as? [String: Any])?["job_id"] as? String == backup, "\(busy)")
        #expect(Date().timeIntervalSince(started) >= 1.9)
        #expect(try api.waitForJob(backup)["state"] as? String == "succeeded")

        // An export streams (its client reads slowly): a backup requested meanwhile waits for it.
        let connection = try HTTPConnection(port: api.port)
        try connection.send(method: "GET", path: "/v1/databases/\(id)/export", headers: ["Authorization": "Bearer \(api.adminKey)"])
        #expect(try connection.readHead().0 == 200)
        #expect(try connection.readSome(100_000) >= 100_000)
        let jobs = try api.call("GET", "/v1/jobs?database_id=\(id)").json["jobs"] as? [[String: Any]] ?? []
        let exportID = try #require(jobs.first { $0["kind"] as? String == "export" }?["id"] as? String, "\(jobs)")
        let waiting = try api.call("POST", "/v1/databases/\(id)/backups").json
        // (Unless the whole export already fit in the buffers between here and the client.)
        if waiting["state"] as? String == "queued" {
            #expect(waiting["waiting_for"] as? String == exportID, "\(waiting)")
        }
        usleep(300_000)
        connection.close()
        let done = try api.waitForJob(waiting["id"] as! String)
        #expect(done["state"] as? String == "succeeded", "\(done)")
        let export = try api.call("GET", "/v1/jobs/\(exportID)").json
        #expect(["succeeded", "cancelled", "failed"].contains(export["state"] as? String ?? ""), "\(export)")
        // In turn: the backup started only once the export had ended.
        #expect((done["started_at"] as? String ?? "") >= (export["finished_at"] as? String ?? "~"), "\(export) \(done)")
        #expect(try leftovers(api, id).isEmpty)
        #expect(api.stop().status == 0)
    }

    @Test func aKilledReplicasUpgradeIsFinishedByAnother() throws {
        let scripts = "/tmp/tenure-replica-scripts-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: scripts, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scripts) }
        try "ALTER TABLE items ADD COLUMN upgraded boolean NOT NULL DEFAULT true;\n".write(toFile: scripts + "/0001_flag.sql", atomically: true, encoding: .utf8)
        let common = Self.lease.merging(["TENURE_UPGRADE_SCRIPTS": scripts]) { $1 }
        // Replica A dies (kill -9) right after copying the upload's database for the upgrade.
        let a = try APIFixture(common.merging(["TENURE_FAILPOINT": "upgrade.after_copy"]) { $1 })
        var dump = "CREATE TABLE public.items (id integer PRIMARY KEY, label text);\nCOPY public.items (id, label) FROM stdin;\n"
        for row in 1...2000 { dump += "\(row)\titem \(row)\n" }
        dump += "\\.\n"
        let created = try a.call("POST", "/v1/uploads?name=items.sql", body: Array(dump.utf8), headers: ["Content-Type": "application/octet-stream"])
        let id = try #require(created.json["id"] as? String, "\(created)")
        let job = try a.call("POST", "/v1/uploads/\(id)/upgrade").json["id"] as! String
        let died = try #require(a.process.waitForExit(seconds: 120), "replica A did not reach the failpoint")
        #expect(died.signal == SIGKILL)
        // Replica B takes the job over: the dead attempt's copy is dropped, the upgrade redone.
        let b = try APIFixture(common, joining: a)
        let done = try b.waitForJob(job)
        #expect(done["state"] as? String == "succeeded" && done["attempt"] as? Int == 2, "\(done)")
        let upload = try b.call("GET", "/v1/uploads/\(id)").json
        #expect(upload["state"] as? String == "upgraded" && upload["applied_scripts"] as? [String] == ["0001_flag.sql"], "\(upload)")
        let databases = try b.server.rows("SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1", [id]).map { $0[0] ?? "" }
        #expect(databases.count == 1, "one database of the upload, the result: \(databases)")
        #expect(b.stop().status == 0)
    }
}
