import Foundation
import Testing
import TenureCore
import TenureTestSupport

/// Each bad input: a clear message, a non-zero exit, and nothing changed.
@Suite struct BadInputTests {
    /// This test's catalog rows, and the server objects of every database its catalog ever
    /// mentioned (other tests share the server, so only our own names are compared).
    func footprint(_ world: Fixture) throws -> [String] {
        let rows = (try? world.catalogRows(
            "SELECT 'db ' || id || ' ' || state FROM databases UNION ALL SELECT 'intent ' || database_id || ' ' || status FROM intents UNION ALL SELECT 'audit ' || count(*) FROM audit_events ORDER BY 1"
        ).map { $0[0]! }) ?? []
        let ids = (try? world.catalogRows("SELECT DISTINCT database_id FROM audit_events WHERE database_id IS NOT NULL").map { $0[0]! }) ?? []
        let objects = try ids.map { id in "\(id) database:\(try world.server.databaseExists(id)) role:\(try world.server.roleExists(id + "_owner"))" }
        return rows + objects.sorted()
    }

    @Test func invalidNamesAreRefusedAndLeaveNothing() throws {
        let world = try Fixture()
        _ = try world.create("existing")
        let before = try footprint(world)
        let names = [
            "UPPER", String(repeating: "a", count: 64), String(repeating: "b", count: 100), "quo'te", "dq\"uote",
            "new\nline", "caf\u{e9}", "-lead", "trail-", "under_score", "", "semi;colon", "back\\slash",
        ]
        for name in names {
            let outcome = try world.tenure("db", "create", "--json", "--", name)
            #expect(outcome.status == 2, "name \(name.debugDescription): \(outcome)")
            // (A NUL cannot travel through argv; the unit tests cover it. "" is refused by the parser.)
            if !name.isEmpty {
                #expect(outcome.stderr.contains("invalid database name"), "\(outcome)")
                #expect((outcome.json["error"] as? [String: Any])?["code"] as? String == "request.invalid_name")
            }
        }
        let duplicate = try world.tenure("db", "create", "existing")
        #expect(duplicate.status == 4 && duplicate.stderr.contains("already exists"), "\(duplicate)")
        #expect(try footprint(world) == before)
    }

    @Test func wrongAndUnknownIDs() throws {
        let world = try Fixture()
        let (id, _) = try world.create("ids", plan: "paid")
        let suffix = String(id.dropFirst(3))
        for command in [["db", "show"], ["db", "cancel"], ["db", "release"], ["audit"]] {
            let wrongType = try world.tenure(command + ["bk_" + suffix])
            #expect(wrongType.status == 2 && wrongType.stderr.contains("backup id"), "\(command): \(wrongType)")
            let upload = try world.tenure(command + ["up_" + suffix])
            #expect(upload.status == 2 && upload.stderr.contains("upload id"), "\(upload)")
            let garbage = try world.tenure(command + ["db_'; DROP TABLE databases; --"])
            #expect(garbage.status == 2, "\(garbage)")
        }
        let destroyWrongType = try world.tenure("db", "destroy", "bk_" + suffix, "--confirm", "ids")
        #expect(destroyWrongType.status == 2)
        #expect(try world.server.databaseExists(id))
        let unknown = try world.tenure("db", "show", DatabaseID.random().rawValue, "--json")
        #expect(unknown.status == 3 && (unknown.json["error"] as? [String: Any])?["code"] as? String == "database.not_found", "\(unknown)")
        #expect(try world.tenure("db", "cancel", DatabaseID.random().rawValue).status == 3)
    }

    @Test func transitionsNotAllowedFromTheCurrentState() throws {
        let world = try Fixture()
        let (trial, _) = try world.create("trial-db")
        let cancelTrial = try world.tenure("db", "cancel", trial, "--json")
        #expect(cancelTrial.status == 4 && (cancelTrial.json["error"] as? [String: Any])?["code"] as? String == "lifecycle.conflict", "\(cancelTrial)")
        #expect(try world.tenure("db", "reactivate", trial).status == 4)
        #expect(try world.tenure("db", "release", trial).status == 4)
        #expect(try world.tenure("db", "subscribe", trial).status == 0)
        #expect(try world.tenure("db", "subscribe", trial).status == 4)
        #expect(try world.state(trial) == "active")
        let badState = try world.tenure("db", "list", "--state", "sleeping")
        #expect(badState.status == 2, "\(badState)")
        let badPlan = try world.tenure("db", "create", "plan-x", "--plan", "gold")
        #expect(badPlan.status == 2)
        let badReason = try world.tenure("db", "hold", trial, "--reason", "two\nlines")
        #expect(badReason.status == 2)
        let badConfig = try world.tenure("db", "list", environment: ["TENURE_GRACE_PERIOD": "three weeks"])
        #expect(badConfig.status == 2 && badConfig.stderr.contains("TENURE_GRACE_PERIOD"), "\(badConfig)")
        #expect(try world.tenure("no-such-command").status == 2)
    }

    @Test func unreachableServers() throws {
        let world = try Fixture()
        try world.tenure("migrate")
        let before = try footprint(world)
        let unreachable = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2"
        let add = try world.tenure("server", "add", "far", "--url", unreachable)
        #expect(add.status == 1 && add.stderr.contains("unreachable"), "\(add)")
        let list = try world.tenure("server", "list", "--json")
        #expect((list.json["servers"] as? [[String: Any]])?.map { $0["name"] as? String } == ["default"])
        let unknownServer = try world.tenure("db", "create", "placed", "--server", "nowhere")
        #expect(unknownServer.status == 3, "\(unknownServer)")

        // A server registered while reachable, unreachable later: create fails, leaves nothing.
        _ = try world.catalogRows(
            "INSERT INTO tenant_servers (name, admin_url, public_host, public_port, created_at) VALUES ('gone', $1, '127.0.0.1', 1, now())", [unreachable])
        let create = try world.tenure("db", "create", "placed", "--server", "gone")
        #expect(create.status == 1 && create.stderr.contains("unreachable"), "\(create)")
        #expect(try footprint(world) == before)

        let badCatalog = try runTenure(["db", "list"], environment: ["TENURE_CATALOG_URL": unreachable, "TENURE_HOME": world.home])
        #expect(badCatalog.status == 1 && badCatalog.stderr.contains("catalog"), "\(badCatalog)")
        let badURL = try runTenure(["db", "list"], environment: ["TENURE_CATALOG_URL": "postgresql://x:secretpw@host:notaport/db", "TENURE_HOME": world.home])
        #expect(badURL.status != 0 && !badURL.stderr.contains("secretpw"), "\(badURL)")
    }

    @Test func secondServerAndPlacement() throws {
        let world = try Fixture()
        let url = "postgresql://postgres@/postgres?host=\(world.server.cluster.socketDirectory)&port=\(world.server.port)"
        let add = try world.tenure("server", "add", "second", "--url", url, "--public-host", "127.0.0.1", "--public-port", String(world.server.port), "--json")
        #expect(add.status == 0, "\(add)")
        #expect(try world.tenure("server", "add", "second", "--url", url).status == 4)
        let placed = try world.tenure("db", "create", "placed", "--server", "second", "--json")
        #expect(placed.status == 0 && placed.json["server"] as? String == "second", "\(placed)")
        #expect(canLogin(placed.json["connection_url"] as! String))
    }
}
