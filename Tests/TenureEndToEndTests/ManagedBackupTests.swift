import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

@Suite struct ManagedBackupTests {
    func seed(_ url: String, rows: Int) throws {
        let tenant = try PostgresConnection(try ConnectionParameters(parsing: url))
        defer { tenant.close() }
        try tenant.execute("CREATE TABLE IF NOT EXISTS items (id integer PRIMARY KEY, label text); DELETE FROM items")
        try tenant.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, \(rows)) g")
    }

    func count(_ url: String) throws -> String? {
        let tenant = try PostgresConnection(try ConnectionParameters(parsing: url))
        defer { tenant.close() }
        return try tenant.query("SELECT count(*) FROM items").rows[0][0]
    }

    func leftoverDatabases(_ world: Fixture, _ id: String) throws -> [String] {
        try world.server.rows("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1", [id + "%"]).map { $0[0]! }
    }

    @Test func backupListRestoreAndDestroy() throws {
        let world = try Fixture()
        let (id, url) = try world.create("backed-up", plan: "paid")
        try seed(url, rows: 500)
        let backup = try world.tenure("db", "backup", id, "--json")
        #expect(backup.status == 0, "\(backup)")
        let backupID = try #require(backup.json["id"] as? String)
        let path = try #require(backup.json["path"] as? String)
        #expect(backupID.hasPrefix("bk_") && backup.json["state"] as? String == "verified" && backup.json["rows"] as? Int == 500)
        #expect(FileManager.default.fileExists(atPath: path))
        // The stored file is sealed: verify opens it with the database's key from the catalog.
        #expect(try world.tenure("verify", path).status == 0)
        #expect(FileManager.default.contents(atPath: path).map { Array($0.prefix(8)) } == Array("TNRCRYPT".utf8))
        let list = try world.tenure("db", "backups", id, "--json")
        #expect((list.json["backups"] as? [[String: Any]])?.map { $0["id"] as? String } == [backupID])

        // Change the data, then restore: the backup's contents come back, the password still works.
        try seed(url, rows: 7)
        let restore = try world.tenure("db", "restore", id, "--backup", backupID, "--json")
        #expect(restore.status == 0, "\(restore)")
        #expect(try count(url) == "500")
        #expect(try leftoverDatabases(world, id) == [id])
        let owner = try world.server.rows("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", [id])
        #expect(owner == [[id + "_owner"]])
        let acl = try world.server.rows("SELECT datacl::text FROM pg_database WHERE datname = $1", [id])[0][0] ?? ""
        #expect(!acl.contains("=c") && !acl.contains("=Tc"), "\(acl)")

        // A backup of another database is refused (D1), and a wrong-type id is a usage error.
        let (other, _) = try world.create("other-db", plan: "paid")
        let foreign = try world.tenure("db", "restore", other, "--backup", backupID)
        #expect(foreign.status == 2 && foreign.stderr.contains("belongs to database"), "\(foreign)")
        #expect(try world.tenure("db", "restore", id, "--backup", id).status == 2)
        #expect(try world.tenure("db", "restore", id, "--backup", BackupID.random().rawValue).status == 3)

        // Destroyed means gone: the backups too.
        #expect(try world.tenure("db", "destroy", id, "--confirm", "backed-up").status == 0)
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(!FileManager.default.fileExists(atPath: (path as NSString).deletingLastPathComponent))
        #expect(try world.catalogRows("SELECT state FROM backups WHERE database_id = $1", [id]) == [["deleted"]])
    }

    @Test func exportStreamsNativeAndSQL() throws {
        let world = try Fixture()
        let (id, url) = try world.create("exported", plan: "paid")
        try seed(url, rows: 300)
        let archive = world.home + "/export.tenure"
        try FileManager.default.createDirectory(atPath: world.home, withIntermediateDirectories: true)
        let export = try world.tenure("db", "export", id, "-o", archive, "--json")
        #expect(export.status == 0 && export.json["rows"] as? Int == 300, "\(export)")
        let target = "exported_copy_" + String(DatabaseID.random().rawValue.suffix(8))
        let restore = try runTenure(
            ["restore", archive, "--url", "postgresql://postgres@/\(target)?host=\(world.server.cluster.socketDirectory)&port=\(world.server.port)"],
            environment: [:])
        #expect(restore.status == 0, "\(restore)")
        #expect(try world.server.rows("SELECT count(*) FROM items", database: target) == [["300"]])
        let sql = try world.tenure("db", "export", id, "-o", world.home + "/export.sql.zst", "--format", "sql")
        #expect(sql.status == 0, "\(sql)")
        #expect(try world.catalogRows("SELECT count(*) FROM backups") == [["0"]], "an export stores nothing")
    }

    /// Kill -9 during a restore: before the swap the old database stays; after it, the next
    /// start finishes the swap. Never neither, never a mix.
    @Test(arguments: [("restore.after_load", "300"), ("restore.after_aside", "500")])
    func crashDuringRestore(failpoint: String, expected: String) throws {
        let world = try Fixture()
        let (id, url) = try world.create("restoring", plan: "paid")
        try seed(url, rows: 500)
        let backupID = try #require(try world.tenure("db", "backup", id, "--json").json["id"] as? String)
        try seed(url, rows: 300)
        let crashed = try world.tenure(["db", "restore", id, "--backup", backupID], environment: ["TENURE_FAILPOINT": failpoint])
        #expect(crashed.signal == SIGKILL, "\(crashed)")
        #expect(try world.tenure("db", "list").status == 0)  // the next start recovers
        #expect(try count(url) == expected)
        #expect(try leftoverDatabases(world, id) == [id])
        #expect(try world.catalogRows("SELECT count(*) FROM intents WHERE status = 'pending'") == [["0"]])
    }

    @Test func interruptedBackupNeverCountsAndNeverEvictsAGoodOne() throws {
        let world = try Fixture()
        let (id, url) = try world.create("interrupted", plan: "paid")
        try seed(url, rows: 50)
        let good = try #require(try world.tenure("db", "backup", id, "--json").json["path"] as? String)
        let crashed = try world.tenure(["db", "backup", id], environment: ["TENURE_FAILPOINT": "backup.before_publish", "TENURE_JOB_LEASE": "2s"])
        #expect(crashed.signal == SIGKILL)
        let list = try world.tenure("db", "backups", id, "--json")
        let states = (list.json["backups"] as? [[String: Any]] ?? []).map { $0["state"] as? String ?? "" }
        #expect(states == ["verified", "failed"], "\(list)")
        let files = try FileManager.default.contentsOfDirectory(atPath: (good as NSString).deletingLastPathComponent)
        #expect(files == [(good as NSString).lastPathComponent], "only the verified backup may remain: \(files)")
        // With no `tenure serve` running, the next backup command takes the dead job over
        // (its lease expired) before its own, instead of waiting behind it for ever.
        let next = try world.tenure(["db", "backup", id, "--json"], environment: ["TENURE_JOB_LEASE": "2s"])
        #expect(next.status == 0, "\(next)")
        let jobs = try world.tenure("job", "list", "--database", id, "--json").json["jobs"] as? [[String: Any]] ?? []
        #expect(jobs.map { $0["state"] as? String ?? "" } == ["succeeded", "succeeded", "succeeded"], "\(jobs)")
        #expect(jobs.last?["attempt"] as? Int == 1 && jobs[1]["attempt"] as? Int == 2, "the dead job was run again: \(jobs)")
    }
}
