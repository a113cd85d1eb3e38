import Foundation
import Testing
import TenurePQ
import TenureTestSupport

/// The upgrade service over HTTP; every response checked against docs/openapi.json.
@Suite(.serialized) struct UploadAPITests {
    @Test func uploadUpgradeDownloadDelete() throws {
        let scripts = "/tmp/tenure-api-scripts-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: scripts, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scripts) }
        try "ALTER TABLE items ADD COLUMN upgraded boolean NOT NULL DEFAULT true;\n".write(toFile: scripts + "/0001_flag.sql", atomically: true, encoding: .utf8)
        let api = try APIFixture(["TENURE_UPGRADE_SCRIPTS": scripts])
        var dump = "-- a plain SQL dump\nCREATE TABLE public.items (id integer PRIMARY KEY, label text);\nCOPY public.items (id, label) FROM stdin;\n"
        for row in 1...5000 { dump += "\(row)\titem \(row) with some text\n" }
        dump += "\\.\nALTER TABLE public.items OWNER TO someone_elsewhere;\n"

        let created = try api.call("POST", "/v1/uploads?name=items.sql", body: Array(dump.utf8), headers: ["Content-Type": "application/octet-stream"])
        #expect(created.status == 201, "\(created)")
        let id = try #require(created.json["id"] as? String)
        #expect(created.header("location") == "/v1/uploads/\(id)")
        #expect(created.json["state"] as? String == "uploaded" && created.json["format"] as? String == "sql" && created.json["skipped_statements"] as? Int == 1)
        #expect(try api.call("GET", "/v1/uploads/\(id)").json["name"] as? String == "items.sql")
        #expect((try api.call("GET", "/v1/uploads?state=uploaded").json["uploads"] as? [[String: Any]])?.count == 1)
        // Not upgraded yet: nothing to download.
        #expect(try api.call("GET", "/v1/uploads/\(id)/download").status == 409)

        let accepted = try api.call("POST", "/v1/uploads/\(id)/upgrade")
        #expect(accepted.status == 202 && accepted.json["kind"] as? String == "upgrade" && accepted.json["upload_id"] as? String == id, "\(accepted)")
        let job = try api.waitForJob(accepted.json["id"] as! String)
        #expect(job["state"] as? String == "succeeded", "\(job)")
        let upgraded = try api.call("GET", "/v1/uploads/\(id)").json
        #expect(upgraded["state"] as? String == "upgraded" && upgraded["applied_scripts"] as? [String] == ["0001_flag.sql"] && upgraded["result_available"] as? Bool == true)

        // Download, then resume from the middle: the bytes match.
        let whole = try api.call("GET", "/v1/uploads/\(id)/download")
        #expect(whole.status == 200 && whole.body.count > 1000, "\(whole.status)")
        let tail = try api.call("GET", "/v1/uploads/\(id)/download", headers: ["Range": "bytes=1000-"])
        #expect(tail.status == 206 && Array(whole.body[1000...]) == tail.body)
        #expect(try api.call("GET", "/v1/uploads/\(id)/download", headers: ["Range": "bytes=999999999-"]).status == 416)
        let file = api.home + "/result.tenure"
        try Data(whole.body).write(to: URL(fileURLWithPath: file))
        #expect(try runTenure(["verify", file], environment: [:]).status == 0)
        let sql = try api.call("GET", "/v1/uploads/\(id)/download?format=sql")
        #expect(sql.status == 200 && sql.header("content-type") == "application/zstd" && sql.body.starts(with: [0x28, 0xB5, 0x2F, 0xFD]))

        // A rejected upload: 422 naming it, nothing left.
        let hostile = try api.call("POST", "/v1/uploads", body: Array("SELECT 1;\n\\! id\n".utf8))
        #expect(hostile.status == 422 && hostile.json["code"] as? String == "upload.rejected", "\(hostile)")
        let rejectedID = try #require((hostile.json["context"] as? [String: Any])?["upload_id"] as? String)
        #expect(try api.call("GET", "/v1/uploads/\(rejectedID)").json["state"] as? String == "rejected")
        #expect(try !api.server.databaseExists(rejectedID + "_g0") && !api.server.roleExists(rejectedID + "_owner"))
        #expect(try api.call("POST", "/v1/uploads", body: Array((0..<2000).map { UInt8($0 % 256) })).status == 422)

        // Legal hold blocks deletion; deletion destroys everything.
        #expect(try api.call("PUT", "/v1/uploads/\(id)/legal-hold", json: ["reason": "audit"]).json["legal_hold"] as? Bool == true)
        #expect(try api.call("DELETE", "/v1/uploads/\(id)?confirm=\(id)").status == 409)
        #expect(try api.call("DELETE", "/v1/uploads/\(id)/legal-hold").json["legal_hold"] as? Bool == false)
        #expect(try api.call("DELETE", "/v1/uploads/\(id)").status == 400)
        let deleted = try api.call("DELETE", "/v1/uploads/\(id)?confirm=\(id)")
        #expect(deleted.status == 200 && deleted.json["state"] as? String == "destroyed")
        #expect(try api.server.rows("SELECT datname FROM pg_database WHERE datname LIKE $1", [id + "%"]).isEmpty)
        #expect(try !api.server.roleExists(id + "_owner"))
        #expect(!FileManager.default.fileExists(atPath: api.home + "/uploads/" + id))
        #expect(try api.call("GET", "/v1/uploads/db_00000000000000000000").status == 400)
        #expect(try api.call("GET", "/v1/uploads/up_00000000000000000000").status == 404)
        let expiry = try api.call("GET", "/v1/expiry")
        #expect((expiry.json["uploads"] as? [String: Any])?["fleet_size"] as? Int == 0)
        _ = api.stop()
    }
}
