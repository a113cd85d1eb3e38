import Foundation
import Testing
import TenureCore
import TenureTestSupport

@Suite struct ConcurrencyAndCrashTests {
    /// Two processes act on one database at once: exactly one wins, the other gets a conflict.
    @Test(arguments: ["cancel", "destroy"])
    func twoProcessesOneWinner(command: String) throws {
        let world = try Fixture()
        for round in 0..<3 {
            let name = "race-\(round)"
            let (id, _) = try world.create(name, plan: "paid")
            let arguments = command == "cancel" ? ["db", "cancel", id] : ["db", "destroy", id, "--confirm", name]
            let first = try world.start(arguments)
            let second = try world.start(arguments)
            let outcomes = [first.wait(), second.wait()]
            #expect(outcomes.map(\.status).sorted() == [0, 4], "\(outcomes)")
            let events = try world.catalogRows("SELECT count(*) FROM audit_events WHERE database_id = $1 AND action = $2", [id, command == "cancel" ? "cancel" : "deletion_request"])
            #expect(events == [["1"]])
        }
    }

    /// Kill -9 at each named step of create: the next start rolls it back completely.
    @Test(arguments: ["create.after_intent", "create.after_role", "create.after_database"])
    func crashDuringCreate(failpoint: String) throws {
        let world = try Fixture()
        try world.tenure("migrate")
        let crashed = try world.tenure(["db", "create", "crashy"], environment: ["TENURE_FAILPOINT": failpoint])
        #expect(crashed.signal == SIGKILL, "\(crashed)")
        let pending = try world.catalogRows("SELECT database_id, pg_role FROM intents WHERE status = 'pending'")
        #expect(pending.count == 1)
        let id = pending[0][0]!
        #expect(try world.catalogRows("SELECT state FROM databases WHERE id = $1", [id]) == [["provisioning"]])

        // The next start (any command) finishes the work: rolled back, nothing left.
        let next = try world.tenure("db", "list", "--json")
        #expect(next.status == 0, "\(next)")
        #expect((next.json["databases"] as? [Any])?.isEmpty == true)
        #expect(try !world.server.databaseExists(id) && !world.server.roleExists(id + "_owner"))
        #expect(try world.catalogRows("SELECT status FROM intents") == [["rolled_back"]])
        let audit = try world.tenure("audit", id, "--json")
        #expect((audit.json["events"] as? [[String: Any]] ?? []).map { $0["action"] as? String } == ["create", "create_rolled_back"])
        // The name can be used again.
        _ = try world.create("crashy")
    }

    /// Kill -9 at each named step of destroy: the next start finishes the destruction.
    @Test(arguments: ["destroy.after_intent", "destroy.after_drop_database", "destroy.after_drop_role"])
    func crashDuringDestroy(failpoint: String) throws {
        let world = try Fixture()
        let (id, _) = try world.create("doomed", plan: "paid")
        let crashed = try world.tenure(["db", "destroy", id, "--confirm", "doomed"], environment: ["TENURE_FAILPOINT": failpoint])
        #expect(crashed.signal == SIGKILL, "\(crashed)")
        #expect(try world.catalogRows("SELECT count(*) FROM intents WHERE status = 'pending'") == [["1"]])
        #expect(try world.state(id) == "destroyed")  // opening a session already recovered it
        #expect(try !world.server.databaseExists(id) && !world.server.roleExists(id + "_owner"))
        #expect(try world.catalogRows("SELECT kind, status FROM intents ORDER BY created_at") == [["create_database", "completed"], ["drop_database", "completed"]])
    }

    /// An interrupted DROP DATABASE leaves an "invalid" database (55000 on connect):
    /// recovery finishes the drop instead of treating it as healthy or absent.
    @Test func halfDroppedDatabaseIsFinished() throws {
        let world = try Fixture()
        let (id, url) = try world.create("half", plan: "paid")
        let crashed = try world.tenure(["db", "destroy", id, "--confirm", "half"], environment: ["TENURE_FAILPOINT": "destroy.after_intent"])
        #expect(crashed.signal == SIGKILL)
        // What PostgreSQL 15.4+ leaves when DROP DATABASE is interrupted.
        _ = try world.server.rows("UPDATE pg_database SET datconnlimit = -2 WHERE datname = $1", [id])
        #expect(!canLogin(url))
        let recovery = try world.tenure("migrate")
        #expect(recovery.status == 0, "\(recovery)")
        #expect(try !world.server.databaseExists(id) && !world.server.roleExists(id + "_owner"))
        #expect(try world.catalogRows("SELECT status FROM intents WHERE kind = 'drop_database'") == [["completed"]])
    }

    /// A process still working on its intent is never "recovered" by another one.
    @Test func liveIntentsAreLeftAlone() throws {
        let world = try Fixture()
        try world.tenure("migrate")
        _ = try world.catalogRows(
            "INSERT INTO intents (id, kind, database_id, server_name, pg_database, pg_role, status, created_at, lock_key) VALUES ('in_00000000000000000000', 'create_database', 'db_00000000000000000000', 'default', 'db_00000000000000000000', 'db_00000000000000000000_owner', 'pending', now(), 4242)"
        )
        // Hold the intent's lock from another session, as its running owner would.
        let owner = try world.server.connect(database: world.catalogName)
        try owner.query("SELECT pg_advisory_lock(4242::bigint)")
        #expect(try world.tenure("db", "list").status == 0)
        #expect(try world.catalogRows("SELECT status FROM intents") == [["pending"]])
        owner.close()
        #expect(try world.tenure("db", "list").status == 0)
        #expect(try world.catalogRows("SELECT status FROM intents") == [["rolled_back"]])
    }

    /// Only one sweep runs at a time across processes.
    @Test func oneSweepAtATime() throws {
        let world = try Fixture()
        try world.tenure("migrate")
        let holder = try world.server.connect(database: world.catalogName)
        try holder.query("SELECT pg_advisory_lock(7309, 2)")
        let blocked = try world.tenure("expire", "--json")
        #expect(blocked.status == 4 && (blocked.json["error"] as? [String: Any])?["code"] as? String == "sweep.running", "\(blocked)")
        holder.close()
        #expect(try world.tenure("expire").status == 0)
    }
}
