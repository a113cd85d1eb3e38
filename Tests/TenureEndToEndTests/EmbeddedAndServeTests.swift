import Foundation
import Testing
import TenureCore
import TenureEmbedded
import TenureTestSupport

/// The embedded default: no TENURE_CATALOG_URL, Tenure runs its own PostgreSQL under TENURE_HOME.
@Suite struct EmbeddedAndServeTests {
    func waitFor(_ timeout: TimeInterval, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.2)
        }
        return condition()
    }

    @Test func serveRunsTheClusterAndCommandsShareIt() throws {
        _ = try TestServer.shared()  // same machine prerequisites; the embedded cluster is separate
        let home = "/tmp/tenure-embedded-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: home) }
        let environment = ["TENURE_HOME": home, "TENURE_SWEEP_INTERVAL": "1s", "TENURE_HTTP_ADDRESS": "127.0.0.1:0"]

        // A command with no server running starts the cluster for itself and stops it after.
        let migrate = try runTenure(["migrate", "--json"], environment: environment)
        #expect(migrate.status == 0, "\(migrate)")
        let cluster = try EmbeddedCluster.forHome(home)
        #expect(cluster.isInitialized && !cluster.isRunning)

        let serve = try startTenure(["serve"], environment: environment)
        #expect(waitFor(60) { serve.currentOutput.contains("tenure serving") }, "\(serve.currentOutput)")
        #expect(waitFor(10) { serve.currentOutput.contains("expiry sweep finished") }, "\(serve.currentOutput)")
        #expect(cluster.isRunning)

        // Another shell, same TENURE_HOME: uses the running cluster and leaves it running.
        let created = try runTenure(["db", "create", "embedded-one", "--json"], environment: environment)
        #expect(created.status == 0, "\(created)")
        let url = try #require(created.json["connection_url"] as? String)
        #expect(canLogin(url))
        #expect(cluster.isRunning)

        serve.signal(SIGTERM)
        let stopped = serve.wait()
        #expect(stopped.status == 0, "\(stopped)")
        #expect(stopped.stderr.contains("embedded PostgreSQL stopped"))
        #expect(!cluster.isRunning)
        #expect(!stopped.stderr.contains(url.split(separator: ":")[2].split(separator: "@")[0]), "the password must never be logged")

        // A second serve reuses the data; Ctrl-C (SIGINT) stops it cleanly too.
        let again = try startTenure(["serve"], environment: environment)
        #expect(waitFor(60) { again.currentOutput.contains("tenure serving") }, "\(again.currentOutput)")
        let list = try runTenure(["db", "list", "--json"], environment: environment)
        #expect((list.json["databases"] as? [[String: Any]])?.map { $0["name"] as? String } == ["embedded-one"])
        // Only one serve per TENURE_HOME.
        let second = try runTenure(["serve"], environment: environment.merging(["TENURE_LOG_LEVEL": "error"]) { $1 })
        #expect(second.status != 0)
        again.signal(SIGINT)
        #expect(again.wait().status == 0)
        #expect(!cluster.isRunning)
        cluster.stopImmediately()
    }
}

/// RELIABILITY S8: no password in the server's statement log, the catalog, or any output but
/// the one-time creation response.
@Suite struct SecretTests {
    @Test func passwordsAppearOnlyInTheCreationResponse() throws {
        let world = try Fixture()
        let created = try world.tenure("db", "create", "secretive", "--plan", "paid", "--json")
        #expect(created.status == 0)
        let url = try #require(created.json["connection_url"] as? String)
        let id = try #require(created.json["id"] as? String)
        #expect(try world.tenure("db", "cancel", id).status == 0)
        let reactivated = try world.tenure("db", "reactivate", id, "--new-password", "--json")
        let newURL = try #require(reactivated.json["connection_url"] as? String)
        let passwords = [url, newURL].map { String($0.split(separator: ":")[2].split(separator: "@")[0]) }
        #expect(passwords.allSatisfy { $0.count == 32 })

        var outputs = [created.stderr, reactivated.stderr]
        for command in [["db", "show", id, "--json"], ["db", "list"], ["audit", id, "--json"], ["server", "list", "--json"], ["config", "--json"]] {
            let outcome = try world.tenure(command)
            outputs += [outcome.stdout, outcome.stderr]
        }
        let catalogText = try world.catalogRows(
            "SELECT coalesce(string_agg(t::text, ' '), '') FROM (SELECT * FROM audit_events) t UNION ALL SELECT coalesce(string_agg(d::text, ' '), '') FROM databases d UNION ALL SELECT coalesce(string_agg(i::text, ' '), '') FROM intents i"
        ).map { $0[0] ?? "" }.joined()
        let serverLog = world.server.log()
        #expect(serverLog.contains("CREATE ROLE"), "log_statement=all must be on for this test to mean anything")
        for password in passwords {
            #expect(!serverLog.contains(password), "a password reached the server log")
            #expect(!catalogText.contains(password), "a password reached the catalog")
            #expect(!outputs.contains { $0.contains(password) }, "a password was printed again")
        }
    }
}
