import Foundation
import Testing
import TenureCore
import TenureTestSupport

/// API keys (the groundwork of issue 5): shown once, stored only as hashes, scoped, revocable.
@Suite struct APIKeyTests {
    @Test func createListRevoke() throws {
        let world = try Fixture()
        let created = try world.tenure("apikey", "create", "control-panel", "--scope", "read,write", "--json")
        #expect(created.status == 0, "\(created)")
        let key = try #require(created.json["key"] as? String)
        let id = try #require(created.json["id"] as? String)
        #expect(key.hasPrefix("tenure_") && key.count == 39 && id.hasPrefix("key_"))
        #expect(created.json["scopes"] as? [String] == ["read", "write"])

        let list = try world.tenure("apikey", "list", "--json")
        #expect(!list.stdout.contains(key) && !list.stderr.contains(key))
        #expect((list.json["api_keys"] as? [[String: Any]])?.map { $0["state"] as? String } == ["active"])
        let stored = try world.catalogRows("SELECT coalesce(string_agg(k::text, ' '), '') FROM api_keys k")[0][0] ?? ""
        #expect(!stored.contains(key) && !stored.contains(String(key.dropFirst(7))), "the key itself must never be stored")
        #expect(!world.server.log().contains(String(key.dropFirst(7))), "the key must not reach the server log")

        let revoked = try world.tenure("apikey", "revoke", id, "--json")
        #expect(revoked.status == 0 && revoked.json["state"] as? String == "revoked", "\(revoked)")
        #expect(try world.tenure("apikey", "revoke", id).status == 4)
        #expect(try world.tenure("apikey", "revoke", "key_" + String(DatabaseID.random().rawValue.dropFirst(3))).status == 3)
        #expect(try world.tenure("apikey", "revoke", id.replacingOccurrences(of: "key_", with: "db_")).status == 2)
    }

    @Test func badScopesAndNames() throws {
        let world = try Fixture()
        #expect(try world.tenure("apikey", "create", "k", "--scope", "root").status == 2)
        #expect(try world.tenure("apikey", "create", "k").status == 2)
        #expect(try world.tenure("apikey", "create", "Bad Name", "--scope", "read").status == 2)
        #expect(try world.catalogRows("SELECT count(*) FROM api_keys") == [["0"]])
    }
}
