import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

/// Drives the built `tenure` binary against a real PostgreSQL server.
@Suite struct LifecycleEndToEndTests {
    @Test func wholeLifecycleToDestruction() throws {
        let world = try Fixture(["TENURE_GRACE_PERIOD": "3s"])
        let (id, url) = try world.create("shop-one")
        let record = try world.show(id)
        #expect(record["state"] as? String == "trial")
        #expect(record["trial_ends_at"] is String)
        let role = id + "_owner"

        // Role invariants (S2): no privileges, SCRAM password, no PUBLIC on the database, no CREATE on public.
        let rights = try world.server.rows(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin, left(rolpassword, 14) FROM pg_authid WHERE rolname = $1",
            [role])
        #expect(rights.first == ["f", "f", "f", "f", "f", "t", "SCRAM-SHA-256$"])
        let acl = try world.server.rows("SELECT datacl::text FROM pg_database WHERE datname = $1", [id])[0][0] ?? ""
        #expect(!acl.contains("=c") && !acl.contains("=Tc"), "PUBLIC must not be able to connect: \(acl)")
        let publicCreate = try world.server.rows("SELECT has_schema_privilege('public', 'public', 'CREATE')", database: id)[0][0]
        #expect(publicCreate == "f")
        #expect(canLogin(url))
        // The tenant cannot reach another database.
        #expect((try? PostgresConnection(try ConnectionParameters(parsing: url).with(database: "postgres"))) == nil)

        #expect(try world.tenure("db", "subscribe", id).status == 0)
        #expect(try world.state(id) == "active")

        // Open sessions, one idle in a transaction, are ended by the cancellation.
        let idle = try PostgresConnection(try ConnectionParameters(parsing: url))
        try idle.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        try idle.execute("BEGIN; SELECT 1")
        let cancel = try world.tenure("db", "cancel", id, "--json")
        #expect(cancel.status == 0, "\(cancel)")
        #expect(cancel.json["state"] as? String == "deactivated")
        #expect(cancel.json["destroy_after"] is String)
        #expect((try? idle.query("SELECT 1")) == nil, "an idle-in-transaction session survived deactivation")
        #expect(!canLogin(url))
        #expect(try world.server.rows("SELECT v FROM kept", database: id) == [["still here"]], "data must stay intact")

        #expect(try world.tenure("db", "reactivate", id).status == 0)
        #expect(canLogin(url), "reactivation without --new-password keeps the password")
        #expect(try world.tenure("db", "cancel", id).status == 0)

        // Nothing is due before the grace period ends.
        let early = try world.tenure("expire", "--json")
        #expect(early.status == 0, "\(early)")
        #expect((early.json["items"] as? [Any])?.isEmpty == true)
        Thread.sleep(forTimeInterval: 3.5)
        let expire = try world.tenure("expire", "--json")
        #expect(expire.status == 0, "\(expire)")
        let items = expire.json["items"] as? [[String: Any]] ?? []
        #expect(items.count == 1 && items.first?["id"] as? String == id && items.first?["outcome"] as? String == "done")

        #expect(try !world.server.databaseExists(id))
        #expect(try !world.server.roleExists(role))
        let tombstone = try world.show(id)
        #expect(tombstone["state"] as? String == "destroyed")
        #expect(tombstone["destroy_reason"] as? String == "grace_ended")
        #expect(tombstone["destroyed_by"] as? String == "cli:test")
        #expect(tombstone["name"] as? String == "shop-one")

        let audit = try world.tenure("audit", id, "--json")
        let actions = (audit.json["events"] as? [[String: Any]] ?? []).map { $0["action"] as? String ?? "" }
        // The backup store goes last, in the purge job the completed drop queued; then the
        // deletion certificate is issued.
        #expect(
            actions == [
                "create", "ready", "subscribe", "cancel", "reactivate", "cancel", "grace_end", "destroy_completed", "backups_deleted",
                "deletion_certificate_issued",
            ])
        #expect(try world.tenure("db", "certificate", id).status == 0)
        #expect(try world.tenure("db", "reactivate", id).status == 4)
    }

    @Test func newPasswordOnlyWhenAsked() throws {
        let world = try Fixture()
        let (id, url) = try world.create("pw", plan: "paid")
        #expect(try world.state(id) == "active")
        #expect(try world.tenure("db", "cancel", id).status == 0)
        let reactivated = try world.tenure("db", "reactivate", id, "--new-password", "--json")
        #expect(reactivated.status == 0)
        let newURL = try #require(reactivated.json["connection_url"] as? String)
        #expect(newURL != url && canLogin(newURL) && !canLogin(url))
    }

    @Test func deletionRequestNeedsTheName() throws {
        let world = try Fixture()
        let (id, _) = try world.create("to-delete", plan: "paid")
        let wrong = try world.tenure("db", "destroy", id, "--confirm", "other")
        #expect(wrong.status == 2 && wrong.stderr.contains("does not match"))
        #expect(try world.server.databaseExists(id))
        let destroyed = try world.tenure("db", "destroy", id, "--confirm", "to-delete", "--json")
        #expect(destroyed.status == 0, "\(destroyed)")
        #expect(destroyed.json["destroy_reason"] as? String == "deletion_requested")
        #expect(try !world.server.databaseExists(id) && !world.server.roleExists(id + "_owner"))
        #expect(try world.tenure("db", "destroy", id, "--confirm", "to-delete").status == 4)
        // The name is free again once the old database is a tombstone.
        _ = try world.create("to-delete")
    }

    @Test func legalHoldBlocksDestructionUntilReleased() throws {
        let world = try Fixture(["TENURE_GRACE_PERIOD": "1s"])
        let (id, _) = try world.create("held", plan: "paid")
        #expect(try world.tenure("db", "hold", id, "--reason", "litigation 42").status == 0)
        #expect(try world.show(id)["legal_hold"] as? Bool == true)
        let refused = try world.tenure("db", "destroy", id, "--confirm", "held")
        #expect(refused.status == 4 && refused.stderr.contains("legal hold"), "\(refused)")
        #expect(try world.tenure("db", "cancel", id).status == 0)
        Thread.sleep(forTimeInterval: 1.5)
        let blocked = try world.tenure("expire", "--json")
        #expect(blocked.status == 0)
        #expect((blocked.json["items"] as? [[String: Any]])?.first?["action"] as? String == "blocked_by_legal_hold")
        #expect(try world.server.databaseExists(id))
        #expect(try world.tenure("db", "release", id).status == 0)
        #expect(try world.tenure("db", "release", id).status == 4)
        #expect(try world.tenure("expire").status == 0)
        #expect(try world.state(id) == "destroyed")
        #expect(try !world.server.databaseExists(id))
    }

    @Test func dryRunListsExactlyWhatTheSweepDoes() throws {
        let world = try Fixture(["TENURE_GRACE_PERIOD": "2s", "TENURE_TRIAL_PERIOD": "2s", "TENURE_MAX_DESTROY_FRACTION": "1"])
        let trial = try world.create("t1").id
        let paid = try world.create("p1", plan: "paid").id
        let kept = try world.create("k1", plan: "paid").id
        #expect(try world.tenure("db", "cancel", paid).status == 0)
        let future = RFC3339.format(Date().addingTimeInterval(60))
        let forecast = try world.tenure("expire", "--dry-run", "--as-of", future, "--json")
        #expect(forecast.status == 0, "\(forecast)")
        let planned = (forecast.json["items"] as? [[String: Any]] ?? []).map { "\($0["id"]!) \($0["action"]!) \($0["rule"]!)" }.sorted()
        #expect(planned == ["\(paid) destroy grace_end", "\(trial) deactivate trial_end"].sorted())
        #expect((forecast.json["items"] as? [[String: Any]] ?? []).allSatisfy { $0["deadline"] is String })
        // A dry run changes nothing.
        #expect(try world.state(paid) == "deactivated" && world.state(trial) == "trial")
        Thread.sleep(forTimeInterval: 2.5)
        let now = try world.tenure("expire", "--dry-run", "--json")
        let run = try world.tenure("expire", "--json")
        let dry = (now.json["items"] as? [[String: Any]] ?? []).map { "\($0["id"]!) \($0["action"]!)" }.sorted()
        let real = (run.json["items"] as? [[String: Any]] ?? []).map { "\($0["id"]!) \($0["action"]!)" }.sorted()
        #expect(dry == real && dry.count == 2)
        #expect(try world.state(paid) == "destroyed" && world.state(trial) == "deactivated" && world.state(kept) == "active")
        // --as-of only with --dry-run.
        #expect(try world.tenure("expire", "--as-of", future).status == 2)
        #expect(try world.tenure("expire", "--dry-run", "--as-of", "next week").status == 2)
    }

    @Test func blastRadiusCapDestroysNothing() throws {
        let world = try Fixture(["TENURE_GRACE_PERIOD": "1s"])
        let ids = try (0..<3).map { try world.create("fleet-\($0)", plan: "paid").id }
        for id in ids { #expect(try world.tenure("db", "cancel", id).status == 0) }
        Thread.sleep(forTimeInterval: 1.5)
        let dry = try world.tenure("expire", "--dry-run", "--json")
        #expect(dry.status == 4 && (dry.json["refusal"] as? String)?.contains("TENURE_MAX_DESTROY_FRACTION") == true, "\(dry)")
        let run = try world.tenure("expire", "--json")
        #expect(run.status == 4, "\(run)")
        for id in ids {
            #expect(try world.state(id) == "deactivated")
            #expect(try world.server.databaseExists(id))
        }
        let audit = try world.tenure("audit", "--json")
        #expect((audit.json["events"] as? [[String: Any]] ?? []).contains { $0["action"] as? String == "sweep_destroy_refused" })
        let count = try world.tenure("expire", "--json", environment: ["TENURE_MAX_DESTROY_FRACTION": "1", "TENURE_MAX_DESTROY_COUNT": "2"])
        #expect(count.status == 4 && (count.json["refusal"] as? String)?.contains("TENURE_MAX_DESTROY_COUNT") == true)
        let allowed = try world.tenure("expire", "--json", environment: ["TENURE_MAX_DESTROY_FRACTION": "1"])
        #expect(allowed.status == 0, "\(allowed)")
        for id in ids { #expect(try world.state(id) == "destroyed") }
    }

    @Test func sweepRefusesWhenTheClockWentBackwards() throws {
        let world = try Fixture(["TENURE_GRACE_PERIOD": "1s", "TENURE_MAX_DESTROY_FRACTION": "1"])
        let (id, _) = try world.create("clock", plan: "paid")
        #expect(try world.tenure("db", "cancel", id).status == 0)
        Thread.sleep(forTimeInterval: 1.5)
        // A previous sweep recorded an instant an hour ahead of now: our clock went backwards.
        _ = try world.catalogRows("INSERT INTO sweeps (as_of, started_at, outcome) VALUES (now() + interval '1 hour', now(), 'completed')")
        let run = try world.tenure("expire", "--json")
        #expect(run.status == 4 && (run.json["refusal"] as? String)?.contains("backwards") == true, "\(run)")
        #expect(try world.state(id) == "deactivated")
        #expect(try world.server.databaseExists(id))
    }
}
