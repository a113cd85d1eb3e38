import Foundation
import Synchronization
import Testing
import TenureEmbedded
import TenurePQ
import TenureTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A tenant server that stops answering fails only operations on that server, within their
/// deadline and with its name; the API keeps answering about every other database.
@Suite(.serialized) struct DeadlineTests {
    @Test func aStoppedTenantServerFailsOnlyItsOwnOperations() throws {
        let second = try ExtraServer("stopped")
        defer { withExtendedLifetime(second) {} }
        // One catalog session for API requests: the stuck operation must not hold it.
        let api = try APIFixture(["TENURE_SERVER_CONNECT_TIMEOUT": "3s", "TENURE_SERVER_STATEMENT_TIMEOUT": "3s", "TENURE_HTTP_CATALOG_CONNECTIONS": "1"])
        try second.add(to: api, as: "second")
        let far = try api.call("POST", "/v1/databases", json: ["name": "far", "server": "second"])
        try #require(far.status == 201, "\(far)")
        let farID = far.json["id"] as! String
        let nearID = try api.create("near")["id"] as! String
        #expect(try api.call("POST", "/v1/databases/\(farID)/subscribe").status == 200)

        try second.pause(backends: false)
        // The operation on the stopped server, from another thread.
        let outcome = Mutex<(status: Int, code: String, seconds: Double)?>(nil)
        let thread = Thread {
            let started = Date()
            let response = try? api.call("POST", "/v1/databases/\(farID)/cancel")
            outcome.withLock { $0 = (response?.status ?? -1, response?.json["code"] as? String ?? "", Date().timeIntervalSince(started)) }
        }
        thread.start()
        usleep(300_000)
        // No catalog row lock is held while the stopped server is waited on.
        #expect(try api.catalogRows("SELECT id FROM databases WHERE id = $1 FOR UPDATE NOWAIT", [farID]).count == 1)
        // Meanwhile every request about the other database is answered within a second.
        for _ in 0..<5 {
            let started = Date()
            let near = try api.call("GET", "/v1/databases/\(nearID)")
            #expect(near.status == 200 && Date().timeIntervalSince(started) < 1, "\(near)")
            let subscribe = try api.call("GET", "/v1/databases?limit=5")
            #expect(subscribe.status == 200 && Date().timeIntervalSince(started) < 1)
            usleep(200_000)
        }
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, outcome.withLock({ $0 }) == nil { usleep(100_000) }
        let result = try #require(outcome.withLock { $0 }, "the operation on the stopped server never ended")
        #expect(result.status == 503 && result.code == "server.unreachable", "\(result)")
        #expect(result.seconds < 20, "\(result)")
        second.resume()
        // Nothing changed: the far database is still active, and works again once its server does.
        let shown = try api.call("GET", "/v1/databases/\(farID)").json
        #expect(shown["state"] as? String == "active", "\(shown)")
        #expect(try api.call("POST", "/v1/databases/\(farID)/cancel").status == 200)
        #expect(api.stop().status == 0)
    }

    /// A data job has no statement deadline, so what stops it is its server found not
    /// answering (or a cancel): a backup blocked on a lock goes on while its server answers,
    /// is stopped at once by a cancel, and fails naming its server once that server is stopped.
    @Test func aBlockedBackupIsReachedByACancelAndByItsServerStopping() throws {
        let second = try ExtraServer("stalled")
        defer { withExtendedLifetime(second) {} }
        let api = try APIFixture(["TENURE_SERVER_CONNECT_TIMEOUT": "3s", "TENURE_SERVER_STALL_PROBE": "2s", "TENURE_JOB_MAX_ATTEMPTS": "1"])
        try second.add(to: api, as: "second")
        let url = second.url()
        let far = try api.call("POST", "/v1/databases", json: ["name": "stalled", "server": "second"])
        try #require(far.status == 201, "\(far)")
        let farID = far.json["id"] as! String
        let tenantURL = far.json["connection_url"] as! String
        try fill(tenantURL, rows: 1_000)
        let nearID = try api.create("near")["id"] as! String
        let admin = try PostgresConnection(try ConnectionParameters(parsing: url), applicationName: "test")
        defer { admin.close() }
        func tenureSessions() throws -> Int {
            Int(try admin.query("SELECT count(*)::text AS n FROM pg_stat_activity WHERE application_name LIKE 'tenure%' OR application_name = 'pg_dump'")[0, "n"]!)!
        }
        func running(_ job: String) throws {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline, try api.call("GET", "/v1/jobs/\(job)").json["state"] as? String != "running" { usleep(50_000) }
        }

        // 1. Blocked on a lock the tenant holds: the server answers its probes, so it runs on.
        let locker = try PostgresConnection(try ConnectionParameters(parsing: tenantURL))
        try locker.execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        let first = try api.call("POST", "/v1/databases/\(farID)/backups").json["id"] as! String
        try running(first)
        sleep(6)
        #expect(try api.call("GET", "/v1/jobs/\(first)").json["state"] as? String == "running")
        // A cancel reaches it while it waits, not when the lock is released.
        let cancelled = Date()
        #expect(try api.call("POST", "/v1/jobs/\(first)/cancel").status == 202)
        let firstDone = try api.waitForJob(first, seconds: 30)
        #expect(firstDone["state"] as? String == "cancelled" && Date().timeIntervalSince(cancelled) < 10, "\(firstDone)")

        // 2. Blocked again, and then the whole server stops (SIGSTOP): the backup fails, naming
        // the server, while the API answers about the other database within a second.
        let second2 = try api.call("POST", "/v1/databases/\(farID)/backups").json["id"] as! String
        try running(second2)
        sleep(1)
        try second.pause(backends: true)
        let stalled = Date()
        var answered = 0
        while Date().timeIntervalSince(stalled) < 40 {
            let started = Date()
            let near = try api.call("GET", "/v1/databases/\(nearID)")
            #expect(near.status == 200 && Date().timeIntervalSince(started) < 1, "\(near)")
            answered += 1
            let job = try api.call("GET", "/v1/jobs/\(second2)").json
            if job["state"] as? String != "running" { break }
            usleep(250_000)
        }
        let secondDone = try api.waitForJob(second2, seconds: 5)
        let error = secondDone["error"] as? [String: Any] ?? [:]
        #expect(secondDone["state"] as? String == "failed" && error["code"] as? String == "server.unreachable", "\(secondDone)")
        #expect((error["message"] as? String ?? "").contains("'second'"), "\(secondDone)")
        #expect(Date().timeIntervalSince(stalled) < 20 && answered > 3)
        second.resume()

        // 3. The lock released, nothing of Tenure's is left on the server, and a backup works.
        try locker.execute("ROLLBACK")
        locker.close()
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, try tenureSessions() > 0 { usleep(200_000) }
        #expect(try tenureSessions() == 0)
        let third = try api.call("POST", "/v1/databases/\(farID)/backups").json["id"] as! String
        #expect(try api.waitForJob(third)["state"] as? String == "succeeded")
        let states = try api.catalogRows("SELECT state FROM backups WHERE database_id = $1 AND state = 'running'", [farID])
        #expect(states.isEmpty, "\(states)")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: api.home + "/backups/" + farID)) ?? []
        #expect(files.count == 1 && !files.contains { $0.contains("partial") }, "\(files)")
        #expect(api.stop().status == 0)
    }
}

/// The catalog's PostgreSQL restarted while a job runs: the replica reconnects, the attempt
/// that lost its session fails and the job is retried to success; nothing is left behind.
@Suite(.serialized) struct CatalogRestartTests {
    @Test func aJobSurvivesARestartOfTheCatalog() throws {
        let catalog = try ExtraServer("restart")
        defer { withExtendedLifetime(catalog) {} }
        let cluster = catalog.cluster
        let url = catalog.url(database: "tenure_catalog")
        let api = try APIFixture(["TENURE_CATALOG_URL": url, "TENURE_JOB_BACKOFF": "1s", "TENURE_FAILPOINT": "backup.before_publish:sleep"])
        let created = try api.create("restarted")
        let id = created["id"] as! String
        try fill(created["connection_url"] as! String, rows: 2_000)
        let job = try api.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, try api.call("GET", "/v1/jobs/\(job)").json["state"] as? String != "running" { usleep(50_000) }
        usleep(500_000)
        // While the backup waits at its publish step, the catalog's server restarts.
        try cluster.stop()
        try cluster.start()
        var done: [String: Any] = [:]
        let end = Date().addingTimeInterval(120)
        while Date() < end {
            let response = try httpRequest(port: api.port, "GET", "/v1/jobs/\(job)", headers: ["Authorization": "Bearer \(api.adminKey)"])
            if response.status == 200, let state = response.json["state"] as? String, !["queued", "running"].contains(state) {
                done = response.json
                break
            }
            usleep(200_000)
        }
        #expect(done["state"] as? String == "succeeded" && (done["attempt"] as? Int ?? 0) >= 2, "\(done)")
        let connection = try PostgresConnection(try ConnectionParameters(parsing: url))
        defer { connection.close() }
        let states = try connection.query("SELECT state FROM backups WHERE database_id = $1 ORDER BY state", [id]).rows.map { $0[0] ?? "" }
        #expect(states.filter { $0 == "verified" }.count == 1 && !states.contains("running"), "\(states)")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: api.home + "/backups/" + id)) ?? []
        #expect(files.count == 1 && !files.contains { $0.contains("partial") }, "\(files)")
        #expect(try api.call("GET", "/v1/databases/\(id)").status == 200)
        #expect(api.stop().status == 0)
    }
}
