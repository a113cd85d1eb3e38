import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

/// Tenant operations (issue 17, the parts built so far): credential rotation, placement by
/// capacity across two servers, draining, the plans' connection limits.
@Suite(.serialized) struct TenantOperationsTests {
    func connect(_ url: String) -> PostgresConnection? {
        guard let parameters = try? ConnectionParameters(parsing: url) else { return nil }
        return try? PostgresConnection(parameters)
    }

    @Test func rotatingCredentialsRefusesTheOldPasswordAndEndsSessionsWhenAsked() throws {
        let api = try APIFixture(["TENURE_BACKUP_INTERVAL": "off", "TENURE_DRILL_INTERVAL": "off"])
        let created = try api.create("rotated", plan: "paid")
        let id = created["id"] as! String
        let oldURL = created["connection_url"] as! String
        let session = try #require(connect(oldURL))
        defer { session.close() }

        // Without end_sessions: a new password, the old one refused, the open session untouched.
        let rotated = try api.call("POST", "/v1/databases/\(id)/credentials/rotate", json: [:] as [String: Any])
        #expect(rotated.status == 200 && rotated.header("cache-control") == "no-store", "\(rotated)")
        let newURL = try #require(rotated.json["connection_url"] as? String)
        #expect(newURL != oldURL)
        #expect(!canConnect(oldURL) && canConnect(newURL))
        #expect((try? session.query("SELECT 1")) != nil)

        // With end_sessions (the CLI): the role's sessions end too.
        let cli = try api.tenure(["db", "rotate-password", id, "--end-sessions", "--json"])
        #expect(cli.status == 0, "\(cli)")
        let third = try #require(cli.json["connection_url"] as? String)
        #expect(!canConnect(newURL) && canConnect(third))
        #expect((try? session.query("SELECT 1")) == nil, "the open session was ended")
        let actions = (try api.call("GET", "/v1/databases/\(id)/audit").json["events"] as? [[String: Any]] ?? []).compactMap { $0["action"] as? String }
        #expect(actions.filter { $0 == "credentials_rotated" }.count == 2, "\(actions)")
        // No password in the audit trail or the catalog.
        let trail = String(decoding: try api.call("GET", "/v1/databases/\(id)/audit").body, as: UTF8.self)
        #expect(!trail.contains(String(third.split(separator: ":")[2].split(separator: "@")[0])))
        // Bad input: unknown field, destroyed database.
        #expect(try api.call("POST", "/v1/databases/\(id)/credentials/rotate", json: ["end": true]).status == 400)
        #expect(try api.call("DELETE", "/v1/databases/\(id)?confirm=rotated").status == 200)
        #expect(try api.call("POST", "/v1/databases/\(id)/credentials/rotate", json: [:] as [String: Any]).status == 409)
        #expect(api.stop().status == 0)
    }

    func canConnect(_ url: String) -> Bool {
        guard let connection = connect(url) else { return false }
        connection.close()
        return true
    }

    @Test func placementSpreadsByCapacityDrainsAndRefusesAFullFleet() throws {
        let api = try APIFixture(["TENURE_BACKUP_INTERVAL": "off", "TENURE_DRILL_INTERVAL": "off"])
        let second = try ExtraServer("placement")
        try second.add(to: api, as: "second")
        #expect(try api.tenure(["server", "update", "default", "--capacity", "2"]).status == 0)
        let updated = try api.tenure(["server", "update", "second", "--capacity", "4", "--json"])
        #expect(updated.status == 0 && updated.json["capacity"] as? Int == 4, "\(updated)")
        // Six creates fill both: default takes 2, second 4 (always the lower share in use).
        var placed: [String: Int] = [:]
        for index in 1...6 {
            let created = try api.create("placed-\(index)")
            placed[created["server"] as? String ?? "?", default: 0] += 1
        }
        #expect(placed == ["default": 2, "second": 4], "\(placed)")
        let servers = try api.call("GET", "/v1/servers").json["servers"] as? [[String: Any]] ?? []
        #expect(servers.map { $0["placed"] as? Int } == [2, 4] && servers.allSatisfy { ($0["bytes"] as? Int ?? 0) > 0 }, "\(servers)")
        #expect(!(servers.map { $0["admin_url"] as? String ?? "" }.joined().contains("password")))
        // Full: 409 over HTTP, exit 4 from the CLI, nothing made.
        let full = try api.call("POST", "/v1/databases", json: ["name": "one-too-many", "plan": "trial"])
        #expect(full.status == 409, "\(full)")
        #expect(try api.tenure(["db", "create", "one-too-many"]).status == 4)
        #expect((try api.call("GET", "/v1/databases").json["databases"] as? [Any])?.count == 6)
        // Draining: no new placements there, even when named, even with room.
        #expect(try api.tenure(["server", "update", "second", "--capacity", "10"]).status == 0)
        #expect(try api.tenure(["server", "drain", "default"]).status == 0)
        #expect(try api.create("after-drain")["server"] as? String == "second")
        let named = try api.call("POST", "/v1/databases", json: ["name": "named-draining", "plan": "trial", "server": "default"])
        #expect(named.status == 409, "\(named)")
        let list = try api.tenure(["server", "list", "--json"])
        let states = (list.json["servers"] as? [[String: Any]] ?? []).map { "\($0["name"] as? String ?? ""):\($0["state"] as? String ?? "")" }
        #expect(states == ["default:draining", "second:active"], "\(list)")
        #expect(try api.tenure(["server", "update", "second", "--state", "sideways"]).status == 2)
        #expect(try api.tenure(["server", "update", "nowhere", "--capacity", "3"]).status == 3)
        // One place left and four creates racing for it: one is made, three are refused (exit
        // 4), the capacity is not overshot, and the refused ones leave no role or database.
        #expect(try api.tenure(["server", "update", "second", "--capacity", "6"]).status == 0)
        final class Statuses: @unchecked Sendable {
            let lock = NSLock()
            var values: [Int] = []
        }
        let raced = Statuses()
        DispatchQueue.concurrentPerform(iterations: 4) { index in
            let status = (try? api.tenure(["db", "create", "race-\(index)"]))?.status
            raced.lock.withLock { raced.values.append(status.map { Int($0) } ?? -1) }
        }
        #expect(raced.values.sorted() == [0, 4, 4, 4], "\(raced.values)")
        let after = try api.call("GET", "/v1/servers").json["servers"] as? [[String: Any]] ?? []
        #expect(after.map { $0["placed"] as? Int } == [2, 6], "\(after)")
        let roles = try second.rows("SELECT count(*)::text FROM pg_roles WHERE rolname LIKE 'db\\_%'")
        #expect(roles == [["6"]], "\(roles)")
        #expect(api.stop().status == 0)
    }

    @Test func plansSetTheOwnersConnectionLimit() throws {
        let api = try APIFixture(["TENURE_BACKUP_INTERVAL": "off", "TENURE_DRILL_INTERVAL": "off", "TENURE_PLAN_CONNECTION_LIMITS": "trial=2,paid=7"])
        let created = try api.create("limited")
        let id = created["id"] as! String
        func limit() throws -> [[String?]] { try api.server.rows("SELECT rolconnlimit::text FROM pg_roles WHERE rolname = $1", [id + "_owner"]) }
        #expect(try limit() == [["2"]])
        let sessions = (0..<2).compactMap { _ in connect(created["connection_url"] as! String) }
        #expect(sessions.count == 2)
        #expect(!canConnect(created["connection_url"] as! String), "a third session is over the trial's limit")
        sessions.forEach { $0.close() }
        #expect(try api.call("POST", "/v1/databases/\(id)/subscribe").status == 200)
        #expect(try limit() == [["7"]])
        #expect(api.stop().status == 0)
    }

    @Test func aDuplicateIsOneSnapshotOfALiveSourceNeutralizedOnAnotherServer() throws {
        let scripts = "/tmp/tenure-neutralize-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: scripts, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scripts) }
        try "UPDATE customers SET email = 'customer' || id || '@example.invalid';\n".write(toFile: scripts + "/0001_mail.sql", atomically: true, encoding: .utf8)
        try "UPDATE settings SET value = 'off' WHERE key = 'outgoing_mail';\n".write(toFile: scripts + "/0002_settings.sql", atomically: true, encoding: .utf8)
        let api = try APIFixture(["TENURE_BACKUP_INTERVAL": "off", "TENURE_DRILL_INTERVAL": "off", "TENURE_NEUTRALIZE_SCRIPTS": scripts])
        let second = try ExtraServer("duplicate")
        try second.add(to: api, as: "second")
        let created = try api.create("production", plan: "paid")
        let id = created["id"] as! String
        let url = created["connection_url"] as! String
        let setup = try #require(connect(url))
        try setup.execute(
            """
            CREATE TABLE customers (id integer PRIMARY KEY, email text NOT NULL);
            INSERT INTO customers SELECT g, 'person' || g || '@customer.example' FROM generate_series(1, 2000) g;
            CREATE TABLE products (id integer PRIMARY KEY, label text, price numeric(10,2));
            INSERT INTO products SELECT g, md5(g::text), g / 7.0 FROM generate_series(1, 20000) g;
            CREATE TABLE settings (key text PRIMARY KEY, value text);
            INSERT INTO settings VALUES ('outgoing_mail', 'on');
            CREATE TABLE events (id bigserial PRIMARY KEY, note text);
            """)
        setup.close()
        let products = try fingerprint(url, "products")
        let customers = try fingerprint(url, "customers")

        // The source takes writes all along.
        let stop = Locked(false)
        let written = Locked(0)
        let writer = Thread {
            guard let session = self.connect(url) else { return }
            defer { session.close() }
            while !stop.withLock({ $0 }) {
                if (try? session.execute("INSERT INTO events (note) VALUES ('written while copying')")) != nil { written.withLock { $0 += 1 } }
            }
        }
        writer.start()
        defer { stop.withLock { $0 = true } }
        while written.withLock({ $0 }) < 50 { usleep(10_000) }
        let accepted = try api.call(
            "POST", "/v1/databases/\(id)/duplicate", json: ["name": "production-copy", "plan": "trial", "server": "second", "neutralize": true])
        #expect(accepted.status == 202 && accepted.header("cache-control") == "no-store", "\(accepted)")
        let copyURL = try #require(accepted.json["connection_url"] as? String)
        let copyID = try #require(accepted.json["new_database_id"] as? String)
        #expect(accepted.json["kind"] as? String == "duplicate" && accepted.json["database_id"] as? String == copyID)
        let done = try api.waitForJob(accepted.json["id"] as! String)
        #expect(done["state"] as? String == "succeeded", "\(done)")
        let after = written.withLock { $0 }
        stop.withLock { $0 = true }
        #expect(after > 50)

        // On the second server, reachable with the password of the 202, owned by its own role.
        #expect(copyURL.contains(":\(second.port)/"))
        let copy = try #require(connect(copyURL))
        defer { copy.close() }
        #expect(try fingerprint(copyURL, "products") == products)
        // One snapshot: the copy's events are exactly the first n the source had (no gaps).
        let events = try copy.query("SELECT count(*)::text AS n, coalesce(max(id), 0)::text AS m FROM events")
        #expect(events[0, "n"] == events[0, "m"] && Int(events[0, "n"] ?? "0")! >= 50, "\(events.rows)")
        // Neutralized, the copy only: the source keeps its data.
        #expect(try copy.query("SELECT count(*)::text AS n FROM customers WHERE email NOT LIKE '%@example.invalid'")[0, "n"] == "0")
        #expect(try copy.query("SELECT value FROM settings")[0, "value"] == "off")
        #expect(try fingerprint(url, "customers") == customers)
        let owners = try copy.query("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").rows.map { $0[0] ?? "" }
        #expect(owners == [copyID + "_owner"], "\(owners)")
        let shown = try api.call("GET", "/v1/databases/\(copyID)").json
        #expect(shown["state"] as? String == "trial" && shown["server"] as? String == "second" && shown["name"] as? String == "production-copy")
        let sourceTrail = (try api.call("GET", "/v1/databases/\(id)/audit").json["events"] as? [[String: Any]] ?? []).compactMap { $0["action"] as? String }
        #expect(sourceTrail.contains("duplicate_requested") && sourceTrail.contains("duplicated"), "\(sourceTrail)")

        // The CLI, same server, no neutralize; then bad input, each refused with nothing made.
        let cli = try api.tenure(["db", "duplicate", id, "--name", "second-copy", "--server", "default", "--json"])
        #expect(cli.status == 0 && cli.json["state"] as? String == "succeeded", "\(cli)")
        let cliURL = try #require(cli.json["connection_url"] as? String)
        #expect(try connect(cliURL)?.query("SELECT count(*)::text AS n FROM customers WHERE email LIKE '%@example.invalid'")[0, "n"] == "0")
        #expect(try api.call("POST", "/v1/databases/\(id)/duplicate", json: ["name": "production-copy"]).status == 409)
        #expect(try api.call("POST", "/v1/databases/\(id)/duplicate", json: ["name": "elsewhere", "server": "nowhere"]).status == 404)
        #expect(try api.call("POST", "/v1/databases/\(id)/duplicate", json: ["plan": "paid"]).status == 400)
        #expect(try api.tenure(["server", "drain", "second"]).status == 0)
        #expect(try api.call("POST", "/v1/databases/\(id)/duplicate", json: ["name": "drained", "server": "second"]).status == 409)
        let databases = (try api.call("GET", "/v1/databases").json["databases"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(databases.sorted() == ["production", "production-copy", "second-copy"], "\(databases)")
        #expect(api.stop().status == 0)
    }

    @Test func aMoveKeepsEveryCommittedWriteAndAKillAtEachStepLeavesItOnExactlyOneServer() throws {
        // A short lease: the next command takes over the killed one's job at once.
        let api = try APIFixture(["TENURE_BACKUP_INTERVAL": "off", "TENURE_DRILL_INTERVAL": "off", "TENURE_JOB_LEASE": "2s"])
        let second = try ExtraServer("move")
        try second.add(to: api, as: "second")
        let created = try api.create("moving", plan: "paid")
        let id = created["id"] as! String
        let original = created["connection_url"] as! String
        try fill(original, rows: 3000)
        let ports = ["default": api.server.port, "second": second.port]
        func url(on server: String) -> String {
            original.replacingOccurrences(of: ":\(api.server.port)/", with: ":\(ports[server]!)/")
        }
        func placements() throws -> [String] {
            var found: [String] = []
            for (name, rows) in [
                ("default", try api.server.rows("SELECT count(*)::text FROM pg_database WHERE datname = $1", [id])),
                ("second", try second.rows("SELECT count(*)::text FROM pg_database WHERE datname = $1", [id])),
            ] where rows == [["1"]] { found.append(name) }
            return found
        }

        // Over HTTP: a write committed just before is there after; the result has the downtime.
        try PostgresConnection(try ConnectionParameters(parsing: original)).execute("INSERT INTO items (id, label) VALUES (999999, 'just before')")
        let before = try fingerprint(original, "items")
        let accepted = try api.call("POST", "/v1/databases/\(id)/move", json: ["server": "second"])
        #expect(accepted.status == 202 && accepted.json["kind"] as? String == "move", "\(accepted)")
        let done = try api.waitForJob(accepted.json["id"] as! String)
        #expect(done["state"] as? String == "succeeded", "\(done)")
        let result = done["result"] as? [String: Any] ?? [:]
        #expect((result["downtime_seconds"] as? Double ?? -1) >= 0)
        #expect(((result["database"] as? [String: Any])?["connection_url"] as? String ?? "").contains(":\(second.port)/"), "\(result)")
        #expect(try placements() == ["second"])
        #expect(try api.server.rows("SELECT count(*)::text FROM pg_roles WHERE rolname = $1", [id + "_owner"]) == [["0"]])
        #expect(!canConnect(url(on: "default")) && canConnect(url(on: "second")), "the same password, on the new server")
        #expect(try fingerprint(url(on: "second"), "items") == before)
        let trail = (try api.call("GET", "/v1/databases/\(id)/audit").json["events"] as? [[String: Any]] ?? []).compactMap { $0["action"] as? String }
        #expect(trail.contains("move_started") && trail.contains("moved") && trail.contains("move_completed"), "\(trail)")
        // Bad input: nothing queued.
        #expect(try api.call("POST", "/v1/databases/\(id)/move", json: ["server": "second"]).status == 409)
        #expect(try api.call("POST", "/v1/databases/\(id)/move", json: ["server": "nowhere"]).status == 404)
        #expect(try api.call("POST", "/v1/databases/\(id)/move", json: [:] as [String: Any]).status == 400)
        #expect(api.stop().status == 0)

        // kill -9 at each step (the CLI runs the job itself): the next start leaves the database
        // on exactly one server, the one the catalog names, reachable, its data intact.
        var environment = api.environment
        for (failpoint, moves) in [
            ("move.after_freeze", false), ("move.after_copy", false), ("move.after_switch", true), ("move.after_enable", true),
        ] {
            let from = try api.tenure(["db", "show", id, "--json"]).json["server"] as? String ?? ""
            let to = from == "default" ? "second" : "default"
            environment["TENURE_FAILPOINT"] = failpoint
            let killed = try runTenure(["db", "move", id, "--server", to], environment: environment)
            #expect(killed.signal == SIGKILL, "\(failpoint): \(killed)")
            #expect(try api.tenure(["db", "list"]).status == 0)
            let now = try api.tenure(["db", "show", id, "--json"]).json["server"] as? String ?? ""
            #expect(now == (moves ? to : from), "\(failpoint)")
            let found = try placements()
            #expect(found == [now], "\(failpoint): \(found)")
            #expect(canConnect(url(on: now)), "\(failpoint): reachable where the catalog says")
            #expect(try fingerprint(url(on: now), "items") == before, "\(failpoint)")
        }
        // And the CLI's own move, to the end.
        let from = try api.tenure(["db", "show", id, "--json"]).json["server"] as? String ?? ""
        let to = from == "default" ? "second" : "default"
        let moved = try api.tenure(["db", "move", id, "--server", to, "--json"])
        #expect(moved.status == 0, "\(moved)")
        let found = try placements()
        let moved2 = try fingerprint(url(on: to), "items")
        #expect(found == [to] && moved2 == before)

        // Refused with nothing queued: a draining or a full target.
        let back = to == "default" ? "second" : "default"
        #expect(try api.tenure(["server", "drain", back]).status == 0)
        #expect(try api.tenure(["db", "move", id, "--server", back]).status == 4)
        #expect(try api.tenure(["server", "update", back, "--state", "active", "--capacity", "0"]).status == 0)
        #expect(try api.tenure(["db", "move", id, "--server", back]).status == 4)
        #expect(try api.tenure(["server", "update", back, "--capacity", "10"]).status == 0)
        // A deactivated database moves and stays deactivated (login off on the new server).
        #expect(try api.tenure(["db", "cancel", id]).status == 0)
        #expect(try api.tenure(["db", "move", id, "--server", back]).status == 0)
        #expect(try api.tenure(["db", "show", id, "--json"]).json["state"] as? String == "deactivated")
        let login = back == "second"
            ? try second.rows("SELECT rolcanlogin::text FROM pg_roles WHERE rolname = $1", [id + "_owner"])
            : try api.server.rows("SELECT rolcanlogin::text FROM pg_roles WHERE rolname = $1", [id + "_owner"])
        #expect(login == [["false"]], "\(login)")
        #expect(try placements() == [back])
        // A destroyed database is not moved.
        #expect(try api.tenure(["db", "destroy", id, "--confirm", "moving"]).status == 0)
        #expect(try api.tenure(["db", "move", id, "--server", to]).status == 4)
    }

    @Test func drainWithMoveEmptiesAServer() throws {
        let api = try APIFixture(["TENURE_BACKUP_INTERVAL": "off", "TENURE_DRILL_INTERVAL": "off", "TENURE_JOB_LEASE": "2s"])
        let second = try ExtraServer("drain")
        try second.add(to: api, as: "second")
        var urls: [String: String] = [:]
        var prints: [String: String] = [:]
        for name in ["drained-a", "drained-b"] {
            let created = try api.call("POST", "/v1/databases", json: ["name": name, "plan": "paid", "server": "second"])
            try #require(created.status == 201, "\(created)")
            let id = created.json["id"] as! String
            urls[id] = created.json["connection_url"] as? String
            try fill(urls[id]!, rows: 500)
            prints[id] = try fingerprint(urls[id]!, "items")
        }
        let drained = try api.tenure(["server", "drain", "second", "--move", "--json"])
        #expect(drained.status == 0 && (drained.json["moved"] as? [Any])?.count == 2 && drained.json["state"] as? String == "draining", "\(drained)")
        // Empty: no tenant database or role left there; every database on default, intact.
        #expect(try second.rows("SELECT count(*)::text FROM pg_database WHERE datname LIKE 'db\\_%'") == [["0"]])
        #expect(try second.rows("SELECT count(*)::text FROM pg_roles WHERE rolname LIKE 'db\\_%'") == [["0"]])
        for (id, url) in urls {
            #expect(try api.tenure(["db", "show", id, "--json"]).json["server"] as? String == "default")
            let moved = url.replacingOccurrences(of: ":\(second.port)/", with: ":\(api.server.port)/")
            #expect(try fingerprint(moved, "items") == prints[id])
        }
        let servers = try api.call("GET", "/v1/servers").json["servers"] as? [[String: Any]] ?? []
        #expect(servers.first { $0["name"] as? String == "second" }?["placed"] as? Int == 0, "\(servers)")
        #expect(api.stop().status == 0)
    }
}
