import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

@Suite struct CatalogAndIsolationTests {
    @Test func changedMigrationIsRefused() throws {
        let world = try Fixture()
        let first = try world.tenure("migrate", "--json")
        #expect(first.status == 0 && first.json["version"] as? Int == first.json["latest"] as? Int, "\(first)")
        #expect(try world.tenure("migrate").status == 0, "migrate is idempotent")
        _ = try world.catalogRows("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
        let refused = try world.tenure("migrate", "--json")
        #expect(refused.status == 4, "\(refused)")
        #expect((refused.json["error"] as? [String: Any])?["code"] as? String == "catalog.migration_changed")
        #expect(refused.stderr.contains("0001_initial.sql"))
        // Every command refuses to run on a catalog it cannot trust.
        #expect(try world.tenure("db", "list").status == 4)
    }

    /// RELIABILITY S1: a tenant's role reaches its own database and nothing else.
    @Test func tenantIsolationMatrix() throws {
        let world = try Fixture()
        let (a, urlA) = try world.create("tenant-a", plan: "paid")
        let (b, _) = try world.create("tenant-b", plan: "paid")
        let parameters = try ConnectionParameters(parsing: urlA)
        #expect(canLogin(urlA))
        for other in [b, "postgres", world.catalogName, "template1"] {
            #expect((try? PostgresConnection(parameters.with(database: other))) == nil, "tenant a reached \(other)")
        }
        let session = try PostgresConnection(parameters)
        defer { session.close() }
        let refused: [String] = [
            "CREATE DATABASE sneaky", "CREATE ROLE sneaky", "SET ROLE \(b)_owner", "SET ROLE postgres", "ALTER ROLE \(a)_owner SUPERUSER",
            "ALTER ROLE \(a)_owner CREATEDB", "COPY (SELECT 1) TO PROGRAM 'id'", "ALTER SYSTEM SET work_mem = '1GB'",
        ]
        for statement in refused {
            #expect((try? session.execute(statement)) == nil, "tenant a could run: \(statement)")
        }
        try session.execute("CREATE TABLE mine (v int); INSERT INTO mine VALUES (1)")
        #expect(try session.query("SELECT count(*) FROM mine").rows == [["1"]])
    }
}
