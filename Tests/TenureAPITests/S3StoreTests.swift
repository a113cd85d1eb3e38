import Foundation
import Testing
import TenureEngine
import TenurePQ
import TenureTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The backup store in an object store through rclone, against a real S3-protocol server
/// (moto's standalone server from PyPI, started here on loopback): a scheduled backup lands as
/// an object, is listed, downloaded by range, drilled and restored from; an object altered in
/// the store is caught by a drill; destroying the database deletes its objects.
@Suite(.serialized) struct S3StoreTests {
    /// moto's S3 server on a free loopback port, with a versioned bucket, until deinit.
    final class S3Server {
        let process: ChildProcess
        let port: Int
        let environment: [String: String]

        init() throws {
            let moto = ProcessInfo.processInfo.environment["TENURE_MOTO"] ?? (APIFixture.repository + "/.build/tools/bin/moto_server")
            try #require(FileManager.default.isExecutableFile(atPath: moto), "moto_server not found at \(moto) (make tools installs it)")
            port = Self.freePort()
            process = try ChildProcess([moto, "-H", "127.0.0.1", "-p", String(port)], environment: ["PATH": "/usr/bin:/bin", "HOME": "/tmp"])
            environment = [
                "RCLONE_CONFIG_TENURES3_TYPE": "s3", "RCLONE_CONFIG_TENURES3_PROVIDER": "Other",
                "RCLONE_CONFIG_TENURES3_ENDPOINT": "http://127.0.0.1:\(port)", "RCLONE_CONFIG_TENURES3_ACCESS_KEY_ID": "test",
                "RCLONE_CONFIG_TENURES3_SECRET_ACCESS_KEY": "test", "RCLONE_CONFIG_TENURES3_REGION": "us-east-1", "RCLONE_CONFIG": "/dev/null",
            ]
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline, (try? rclone(["lsjson", "tenures3:"]).status) != 0 { usleep(200_000) }
            let made = try rclone(["mkdir", "tenures3:tenure-test"])
            try #require(made.status == 0, "\(made)")
            // moto answers a multipart upload into an unversioned bucket in a way rclone 1.60
            // cannot follow; a versioned bucket is also where a deleted object keeps versions.
            let versioned = try rclone(["backend", "versioning", "tenures3:tenure-test", "Enabled"])
            try #require(versioned.status == 0, "\(versioned)")
        }

        deinit {
            // moto's server (werkzeug) does not always end on SIGTERM.
            process.signal(SIGKILL)
            _ = process.wait()
        }

        func rclone(_ arguments: [String], input: [UInt8]? = nil) throws -> ChildProcess.Outcome {
            var environment = environment
            environment["PATH"] = "/usr/bin:/bin"
            environment["HOME"] = "/tmp"
            let child = try ChildProcess(["/usr/bin/rclone", "-q"] + arguments, environment: environment, input: input)
            return child.wait()
        }

        static func freePort() -> Int {
            let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(descriptor) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = 0
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) } }
            _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
            return Int(UInt16(bigEndian: address.sin_port))
        }
    }

    @Test func backupsGoToTheObjectStoreAndComeBack() throws {
        let s3 = try S3Server()
        var settings = s3.environment
        settings["TENURE_BACKUP_STORE"] = "rclone:tenures3:tenure-test/backups"
        settings["TENURE_BACKUP_INTERVAL"] = "3s"
        settings["TENURE_BACKUP_KEEP_LAST"] = "100"
        let api = try APIFixture(settings)
        let created = try api.create("offsite")
        let id = created["id"] as! String
        let url = created["connection_url"] as! String
        try fill(url, rows: 20_000)
        let before = try fingerprint(url, "items")

        // The scheduler's backup lands as an object of the size the catalog records.
        var backup: [String: Any] = [:]
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let list = try api.call("GET", "/v1/databases/\(id)/backups").json["backups"] as? [[String: Any]] ?? []
            if let first = list.first(where: { $0["state"] as? String == "verified" && $0["scheduled"] as? Bool == true }) {
                backup = first
                break
            }
            usleep(300_000)
        }
        let backupID = try #require(backup["id"] as? String, "no scheduled backup landed")
        let listed = try s3.rclone(["lsjson", "tenures3:tenure-test/backups/\(id)/"])
        let objects = (try? JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]]) ?? []
        let object = objects.first { $0["Name"] as? String == "\(backupID).tenure" }
        // The object is the archive sealed with the database's data key: its size is the plain
        // archive's plus the seal's header and one tag per segment.
        #expect(
            (object?["Size"] as? Int).map(Int64.init) == (backup["bytes"] as? Int).map { SealedFile.sealedSize(plain: Int64($0)) }, "\(objects) \(backup)")
        #expect(!FileManager.default.fileExists(atPath: api.home + "/backups/" + id), "nothing is kept on local disk")

        // Downloads: whole (it verifies), and a range equal to the object's bytes.
        let whole = try api.call("GET", "/v1/databases/\(id)/backups/\(backupID)/download")
        #expect(whole.status == 200 && whole.body.count == backup["bytes"] as? Int)
        let file = api.home + "-download.tenure"
        FileManager.default.createFile(atPath: file, contents: Data(whole.body))
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try api.tenure(["verify", file]).status == 0)
        let part = try api.call("GET", "/v1/databases/\(id)/backups/\(backupID)/download", headers: ["Range": "bytes=1000-1999"])
        #expect(part.status == 206 && Array(part.body) == Array(whole.body[1000..<2000]))

        // A drill and a restore read it back from the store.
        let drill = try api.call("POST", "/v1/drills", json: ["backup_id": backupID])
        #expect(drill.status == 202, "\(drill)")
        let drilled = try api.waitForJob(drill.json["id"] as! String)
        #expect(((drilled["result"] as? [String: Any])?["drill"] as? [String: Any])?["outcome"] as? String == "passed", "\(drilled)")
        try PostgresConnection(try ConnectionParameters(parsing: url)).execute("DELETE FROM items WHERE id % 3 = 0")
        let restore = try api.call("POST", "/v1/databases/\(id)/restore", json: ["backup_id": backupID])
        let restored = try api.waitForJob(restore.json["id"] as! String)
        #expect(restored["state"] as? String == "succeeded", "\(restored)")
        #expect(try fingerprint(url, "items") == before)

        // An object altered in the store is caught when it is read: the drill fails.
        let altered = Array(whole.body[0..<(whole.body.count / 2)]) + [0xde, 0xad] + Array(whole.body[(whole.body.count / 2 + 2)...])
        let put = try s3.rclone(["rcat", "tenures3:tenure-test/backups/\(id)/\(backupID).tenure"], input: altered)
        #expect(put.status == 0, "\(put)")
        #expect(
            (try? httpRequest(port: api.port, "GET", "/v1/databases/\(id)/backups/\(backupID)/download", headers: ["Authorization": "Bearer \(api.adminKey)"])) == nil,
            "a whole download of an altered object must end short")
        let second = try api.call("POST", "/v1/drills", json: ["backup_id": backupID])
        let failed = try api.waitForJob(second.json["id"] as! String)
        #expect(((failed["result"] as? [String: Any])?["drill"] as? [String: Any])?["outcome"] as? String == "failed", "\(failed)")
        #expect(try api.call("GET", "/v1/databases/\(id)/backups/\(backupID)").json["state"] as? String == "drill_failed")

        // Destroying the database deletes its objects from the store.
        #expect(try api.call("DELETE", "/v1/databases/\(id)?confirm=offsite").status == 200)
        let purges = try api.call("GET", "/v1/jobs?database_id=\(id)").json["jobs"] as? [[String: Any]] ?? []
        let purge = try #require(purges.first { $0["kind"] as? String == "purge" }, "\(purges)")
        #expect(try api.waitForJob(purge["id"] as! String)["state"] as? String == "succeeded")
        let after = try s3.rclone(["lsjson", "tenures3:tenure-test/backups/\(id)/"])
        let left = (try? JSONSerialization.jsonObject(with: Data(after.stdout.utf8)) as? [Any]) ?? []
        #expect(left.isEmpty, "\(after)")
        #expect(api.stop().status == 0)
    }

    @Test func aStoreThatGoesAwayFailsTheBackupAndKeepsTheOlderOnes() throws {
        let s3 = try S3Server()
        var settings = s3.environment
        settings["TENURE_BACKUP_STORE"] = "rclone:tenures3:tenure-test/backups"
        settings["TENURE_JOB_MAX_ATTEMPTS"] = "1"
        let api = try APIFixture(settings)
        let created = try api.create("store-gone")
        let id = created["id"] as! String
        try fill(created["connection_url"] as! String, rows: 2_000)
        let first = try api.waitForJob(try api.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String)
        try #require(first["state"] as? String == "succeeded", "\(first)")
        let kept = ((first["result"] as? [String: Any])?["backup"] as? [String: Any])?["id"] as? String
        // The store stops answering: the next backup fails, naming the store; the older stays.
        s3.process.signal(SIGKILL)
        _ = s3.process.wait()
        let second = try api.waitForJob(try api.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String)
        let error = second["error"] as? [String: Any] ?? [:]
        #expect(second["state"] as? String == "failed" && error["code"] as? String == "server.unreachable", "\(second)")
        #expect((error["message"] as? String ?? "").contains("backup store rclone:tenures3:tenure-test/backups"), "\(second)")
        let backups = try api.call("GET", "/v1/databases/\(id)/backups").json["backups"] as? [[String: Any]] ?? []
        #expect(backups.filter { $0["state"] as? String == "verified" }.compactMap { $0["id"] as? String } == [kept].compactMap { $0 }, "\(backups)")
        #expect(backups.contains { $0["state"] as? String == "failed" }, "\(backups)")
        let metrics = try api.call("GET", "/metrics", key: "").text
        #expect(metrics.contains("tenure_backup_store_errors_total 1"), "\(metrics)")
        #expect(api.stop().status == 0)
    }

    @Test func aStoreThatCannotBeUsedIsRefusedAtStart() throws {
        let s3 = try S3Server()
        let server = try TestServer.shared()
        let (_, catalog) = server.newCatalogURL()
        let home = "/tmp/tenure-s3-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: home) }
        var environment = s3.environment
        environment["TENURE_CATALOG_URL"] = catalog
        environment["TENURE_HOME"] = home
        environment["TENURE_HTTP_ADDRESS"] = "127.0.0.1:0"
        for (store, expected) in [
            ("rclone:nosuchremote:bucket", "TENURE_BACKUP_STORE=rclone:nosuchremote:bucket cannot be used"),
            ("rclone:", "TENURE_BACKUP_STORE='rclone:' must be a directory or rclone:REMOTE:PATH"),
        ] {
            environment["TENURE_BACKUP_STORE"] = store
            let outcome = try runTenure(["serve"], environment: environment)
            #expect(outcome.status != 0 && outcome.stderr.contains(expected), "\(outcome)")
        }
    }
}
