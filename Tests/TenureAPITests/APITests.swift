import Foundation
import Testing
import TenureCore
import TenureEngine
import TenurePQ
import TenureTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The HTTP API against a running `tenure serve` on a real PostgreSQL. Every response is
/// checked against docs/openapi.json by `APIFixture.call`.
@Suite(.serialized) struct APITests {
    @Test func wholeLifecycleOverHTTP() throws {
        let api = try APIFixture()
        let created = try api.create("shop")
        let id = created["id"] as! String
        #expect(created["state"] as? String == "trial")
        let url = try #require(created["connection_url"] as? String)
        let connection = try PostgresConnection(try ConnectionParameters(parsing: url))
        connection.close()

        let shown = try api.call("GET", "/v1/databases/\(id)")
        #expect(shown.status == 200 && shown.json["connection_url"] == nil && shown.header("etag") == "\"\(shown.json["version"]!)\"")

        #expect(try api.call("POST", "/v1/databases/\(id)/subscribe").json["state"] as? String == "active")
        #expect(try api.call("POST", "/v1/databases/\(id)/subscribe").status == 409)
        // If-Match with a stale version: 412, nothing changes.
        #expect(try api.call("POST", "/v1/databases/\(id)/cancel", headers: ["If-Match": "\"1\""]).status == 412)
        let version = try api.call("GET", "/v1/databases/\(id)").json["version"] as! Int
        let cancelled = try api.call("POST", "/v1/databases/\(id)/cancel", headers: ["If-Match": "\"\(version)\""])
        #expect(cancelled.json["state"] as? String == "deactivated" && cancelled.json["destroy_after"] is String)
        let reactivated = try api.call("POST", "/v1/databases/\(id)/reactivate", json: ["new_password": true])
        #expect(reactivated.json["state"] as? String == "active" && reactivated.json["connection_url"] is String)

        // Legal hold: admin scope; blocks the deletion request until lifted.
        #expect(try api.call("PUT", "/v1/databases/\(id)/legal-hold", json: ["reason": "case 42"]).json["legal_hold"] as? Bool == true)
        #expect(try api.call("DELETE", "/v1/databases/\(id)?confirm=shop").status == 409)
        #expect(try api.call("DELETE", "/v1/databases/\(id)/legal-hold").json["legal_hold"] as? Bool == false)
        // Forecast: a trial database due at a later instant is planned, nothing changes.
        let other = try api.create("other")["id"] as! String
        let forecast = try api.call("GET", "/v1/expiry?as_of=2099-01-01T00:00:00Z").json
        #expect((forecast["items"] as! [[String: Any]]).contains { $0["id"] as? String == other && $0["outcome"] as? String == "planned" })
        #expect(try api.call("GET", "/v1/databases/\(other)").json["state"] as? String == "trial")

        #expect(try api.call("DELETE", "/v1/databases/\(id)?confirm=wrong").status == 400)
        #expect(try api.call("DELETE", "/v1/databases/\(id)").status == 400)
        let destroyed = try api.call("DELETE", "/v1/databases/\(id)?confirm=shop")
        #expect(destroyed.json["state"] as? String == "destroyed")
        #expect(try !api.server.databaseExists(id))
        let actions = (try api.call("GET", "/v1/databases/\(id)/audit").json["events"] as! [[String: Any]]).map { $0["action"] as! String }
        #expect(actions.starts(with: ["create", "ready", "subscribe", "cancel", "reactivate", "hold", "release", "deletion_request"]), "\(actions)")
        #expect((try api.call("GET", "/v1/databases/\(id)/audit").json["events"] as! [[String: Any]]).allSatisfy { ($0["actor"] as! String).hasPrefix("api:key_") })

        // List: filter by state, cursor pagination.
        for index in 0..<3 { _ = try api.create("page-\(index)") }
        #expect((try api.call("GET", "/v1/databases?state=destroyed").json["databases"] as! [Any]).count == 1)
        var seen: [String] = []
        var cursor: String?
        repeat {
            let page = try api.call("GET", "/v1/databases?limit=2" + (cursor.map { "&cursor=\($0)" } ?? "")).json
            seen += (page["databases"] as! [[String: Any]]).map { $0["id"] as! String }
            cursor = page["next_cursor"] as? String
        } while cursor != nil
        #expect(seen.count == 5 && Set(seen).count == 5 && seen == seen.sorted())
    }

    @Test func idempotentCreateMakesOneDatabase() throws {
        let api = try APIFixture()
        let first = try api.call("POST", "/v1/databases", json: ["name": "once", "plan": "paid"], headers: ["Idempotency-Key": "req-1"])
        #expect(first.status == 201 && first.json["connection_url"] is String)
        let again = try api.call("POST", "/v1/databases", json: ["plan": "paid", "name": "once"], headers: ["Idempotency-Key": "req-1"])
        #expect(again.status == 201 && again.header("idempotent-replayed") == "true", "\(again)")
        #expect(again.json["id"] as? String == first.json["id"] as? String && again.json["connection_url"] == nil)
        let different = try api.call("POST", "/v1/databases", json: ["name": "twice"], headers: ["Idempotency-Key": "req-1"])
        #expect(different.status == 422 && different.json["code"] as? String == "request.idempotency_mismatch")
        #expect(try api.catalogRows("SELECT count(*) FROM databases")[0][0] == "1")
        // Without a key, the same name again is a conflict, not a second database.
        #expect(try api.call("POST", "/v1/databases", json: ["name": "once"]).status == 409)
        // A failed create frees its key: the retry runs again.
        #expect(try api.call("POST", "/v1/databases", json: ["name": "Bad"], headers: ["Idempotency-Key": "req-2"]).status == 400)
        #expect(try api.call("POST", "/v1/databases", json: ["name": "good"], headers: ["Idempotency-Key": "req-2"]).status == 201)
    }

    @Test func exportStreamsAnArchiveThatRestores() throws {
        let api = try APIFixture()
        let created = try api.create("exported")
        let id = created["id"] as! String
        try fill(created["connection_url"] as! String, rows: 20_000)
        let response = try api.call("GET", "/v1/databases/\(id)/export")
        #expect(response.status == 200 && response.header("transfer-encoding") == "chunked")
        #expect(response.header("content-disposition") == "attachment; filename=\"exported.tenure\"")
        let path = api.home + "-export.tenure"
        defer { unlink(path) }
        FileManager.default.createFile(atPath: path, contents: Data(response.body))
        #expect(try api.tenure(["verify", path]).status == 0)
        let target = "restored_\(UInt32.random(in: 0...UInt32.max))"
        var parameters = api.server.parameters(database: target)
        let restore = try api.tenure(["restore", path, "--url", parameters.description])
        #expect(restore.status == 0, "\(restore)")
        parameters = api.server.parameters(database: target)
        #expect(try fingerprint(parameters.description, "items") == fingerprint(created["connection_url"] as! String, "items"))
        let sql = try api.call("GET", "/v1/databases/\(id)/export?format=sql")
        #expect(sql.status == 200 && Array(sql.body.prefix(4)) == [0x28, 0xB5, 0x2F, 0xFD])
        #expect(try api.call("GET", "/v1/databases/\(id)/export?format=zip").status == 400)
    }

    @Test func backupJobRangedDownloadAndRestoreJob() throws {
        let api = try APIFixture()
        let created = try api.create("backed")
        let id = created["id"] as! String
        let url = created["connection_url"] as! String
        try fill(url, rows: 5_000)
        let accepted = try api.call("POST", "/v1/databases/\(id)/backups")
        #expect(accepted.status == 202 && accepted.header("location") == "/v1/jobs/\(accepted.json["id"]!)")
        let job = try api.waitForJob(accepted.json["id"] as! String)
        #expect(job["state"] as? String == "succeeded", "\(job)")
        let backup = ((job["result"] as! [String: Any])["backup"] as! [String: Any])
        let backupID = backup["id"] as! String
        let listed = try api.call("GET", "/v1/databases/\(id)/backups").json["backups"] as! [[String: Any]]
        #expect(listed.map { $0["id"] as! String } == [backupID] && listed[0]["path"] == nil)
        #expect(try api.call("GET", "/v1/databases/\(id)/backups/\(backupID)").json["state"] as? String == "verified")

        let download = "/v1/databases/\(id)/backups/\(backupID)/download"
        let whole = try api.call("GET", download)
        #expect(whole.status == 200 && whole.header("accept-ranges") == "bytes" && whole.body.count == backup["bytes"] as! Int)
        // A download broken after 10000 bytes resumes where it stopped.
        let head = try api.call("GET", download, headers: ["Range": "bytes=0-9999"])
        #expect(head.status == 206 && head.body.count == 10_000 && head.header("content-range") == "bytes 0-9999/\(whole.body.count)")
        let tail = try api.call("GET", download, headers: ["Range": "bytes=10000-", "If-Range": whole.header("etag")!])
        #expect(tail.status == 206 && head.body + tail.body == whole.body)
        let suffix = try api.call("GET", download, headers: ["Range": "bytes=-100"])
        #expect(suffix.body == Array(whole.body.suffix(100)))
        for bad in ["bytes=\(whole.body.count)-", "bytes=5-2", "bytes=0-1,4-5", "pages=1-2", "bytes=x-y"] {
            let refused = try api.call("GET", download, headers: ["Range": bad])
            #expect(refused.status == 416 && refused.header("content-range") == "bytes */\(whole.body.count)", "\(bad): \(refused)")
        }
        // Another database's backup is not this one's.
        let stranger = try api.create("stranger")["id"] as! String
        #expect(try api.call("GET", "/v1/databases/\(stranger)/backups/\(backupID)/download").status == 400)

        // Restore job: the data comes back as it was at the backup.
        let before = try fingerprint(url, "items")
        let connection = try PostgresConnection(try ConnectionParameters(parsing: url))
        try connection.execute("DELETE FROM items WHERE id % 2 = 0")
        connection.close()
        let restore = try api.call("POST", "/v1/databases/\(id)/restore", json: ["backup_id": backupID])
        #expect(restore.status == 202)
        let restored = try api.waitForJob(restore.json["id"] as! String)
        #expect(restored["state"] as? String == "succeeded", "\(restored)")
        #expect(try fingerprint(url, "items") == before)
        #expect(try api.call("POST", "/v1/jobs/\(restore.json["id"]!)/cancel").status == 409)
        #expect(try api.call("POST", "/v1/databases/\(id)/restore", json: ["backup_id": id]).status == 400)
    }

    @Test func clientDisconnectDuringExportLeavesNothingAndLimitsHold() throws {
        // No scheduled backups: a new database is due at once, and the scheduler's backup job
        // could take the one transfer slot before the export (seen once in CI).
        let api = try APIFixture(["TENURE_HTTP_MAX_TRANSFERS": "1", "TENURE_BACKUP_INTERVAL": "off", "TENURE_DRILL_INTERVAL": "off"])
        let created = try api.create("big")
        let id = created["id"] as! String
        try fill(created["connection_url"] as! String, rows: 400_000)
        let connection = try HTTPConnection(port: api.port)
        try connection.send(method: "GET", path: "/v1/databases/\(id)/export", headers: ["Authorization": "Bearer \(api.adminKey)"])
        let (status, _) = try connection.readHead()
        #expect(status == 200)
        #expect(try connection.readSome(100_000) >= 100_000)
        // The one transfer slot is taken: a second export and a backup job wait their turn or get 429.
        let second = try api.call("GET", "/v1/databases/\(id)/export")
        #expect(second.status == 429 && second.header("retry-after") != nil, "\(second)")
        connection.close()
        // The export notices, stops and frees its slot; its backend sessions go away.
        let deadline = Date().addingTimeInterval(60)
        var metrics = ""
        while Date() < deadline {
            metrics = try api.call("GET", "/metrics", key: "").text
            if metrics.contains("tenure_exports_running 0") { break }
            usleep(200_000)
        }
        #expect(metrics.contains("tenure_exports_running 0"), "\(metrics)")
        #expect(!metrics.contains("db_"), "a tenant id leaked into a metric label")
        #expect(try api.server.rows("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'tenure%'", [id])[0][0] == "0")
        #expect(try api.catalogRows("SELECT count(*) FROM audit_events WHERE action = 'export'")[0][0] == "0")
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: api.home)) ?? []
        #expect(leftovers.allSatisfy { !$0.contains("export") && !$0.hasSuffix(".tmp") }, "\(leftovers)")
        // The slot is free again: an export now completes.
        #expect(try api.call("GET", "/v1/databases/\(id)/export?format=sql").status == 200)
        let stopped = api.stop()
        #expect(stopped.stdout.contains("tenure_") && stopped.stderr.contains("export failed"))
    }

    @Test func authMatrix() throws {
        let api = try APIFixture()
        let id = try api.create("guarded")["id"] as! String
        let reader = try api.key("reader", scopes: "read")
        let writer = try api.key("writer", scopes: "write")
        let revoked = try api.key("gone", scopes: "admin")
        #expect(try api.tenure(["apikey", "revoke", revoked.id]).status == 0)
        let path = "/v1/databases/\(id)"
        for header in ["", "Bearer", "Bearer nope", "Basic dXNlcjpwYXNz", "Bearer tenure_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "Bearer \(revoked.key)"] {
            let response = try api.call("GET", path, key: "", headers: header.isEmpty ? [:] : ["Authorization": header])
            #expect(response.status == 401 && response.header("www-authenticate") != nil, "\(header): \(response)")
            #expect(response.json["detail"] as? String == "a valid API key is required: send Authorization: Bearer <key>")
        }
        #expect(try api.call("GET", path, key: reader.key).status == 200)
        #expect(try api.call("POST", "\(path)/subscribe", key: reader.key).status == 403)
        #expect(try api.call("GET", "\(path)/export", key: reader.key).status == 403)
        #expect(try api.call("POST", "/v1/databases", key: reader.key, json: ["name": "nope"]).status == 403)
        #expect(try api.call("PUT", "\(path)/legal-hold", key: writer.key, json: ["reason": "x"]).status == 403)
        #expect(try api.call("POST", "\(path)/subscribe", key: writer.key).status == 200)
        #expect(try api.call("PUT", "\(path)/legal-hold", json: ["reason": "x"]).status == 200)
        // Health, readiness, metrics and the document need no key.
        for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] { #expect(try api.call("GET", open, key: "").status == 200) }
        // No key material in the server's output but the first-start admin key, printed once.
        let outcome = api.stop()
        #expect(!outcome.stderr.contains(reader.key) && !outcome.stderr.contains(api.adminKey) && !outcome.stdout.contains(reader.key))
    }

    @Test func badInputGetsProblemsAndChangesNothing() throws {
        let api = try APIFixture()
        let id = try api.create("steady")["id"] as! String
        let before = try api.catalogRows("SELECT id, state, version FROM databases ORDER BY id")
        let cases: [(String, String, [UInt8]?, [String: String], Int, String)] = [
            ("POST", "/v1/databases", Array(#"{"name": "x""#.utf8), ["Content-Type": "application/json"], 400, "request.invalid"),
            ("POST", "/v1/databases", Array(#"[1, 2]"#.utf8), ["Content-Type": "application/json"], 400, "request.invalid"),
            ("POST", "/v1/databases", Array(#"{"name": "x", "colour": "red"}"#.utf8), ["Content-Type": "application/json"], 400, "request.invalid"),
            ("POST", "/v1/databases", Array(#"{"name": 5}"#.utf8), ["Content-Type": "application/json"], 400, "request.invalid"),
            ("POST", "/v1/databases", Array(#"{"name": "Not A Label"}"#.utf8), ["Content-Type": "application/json"], 400, "request.invalid_name"),
            ("POST", "/v1/databases", Array(#"{"name": "x", "plan": "gold"}"#.utf8), ["Content-Type": "application/json"], 400, "request.invalid"),
            ("POST", "/v1/databases", Array(#"{"name": "x"}"#.utf8), ["Content-Type": "text/plain"], 400, "request.invalid"),
            ("POST", "/v1/databases", [UInt8](repeating: 0x20, count: 2 << 20), ["Content-Type": "application/json"], 413, "request.too_large"),
            ("GET", "/v1/databases/bk_0000000000000000000a", nil, [:], 400, "request.invalid_id"),
            ("GET", "/v1/databases/db_123", nil, [:], 400, "request.invalid_id"),
            ("GET", "/v1/databases/db_00000000000000000000", nil, [:], 404, "database.not_found"),
            ("GET", "/v1/jobs/db_00000000000000000000", nil, [:], 400, "request.invalid_id"),
            ("GET", "/v1/jobs/job_00000000000000000000", nil, [:], 404, "job.not_found"),
            ("GET", "/v1/databases?state=sleeping", nil, [:], 400, "request.invalid"),
            ("GET", "/v1/databases?limit=0", nil, [:], 400, "request.invalid"),
            ("GET", "/v1/databases?colour=red", nil, [:], 400, "request.invalid"),
            ("GET", "/v1/expiry?as_of=yesterday", nil, [:], 400, "request.invalid"),
            ("GET", "/v1/nowhere", nil, [:], 404, "request.not_found"),
            ("PUT", "/v1/databases", Array(#"{}"#.utf8), ["Content-Type": "application/json"], 405, "request.method_not_allowed"),
            ("DELETE", "/v1/jobs/job_00000000000000000000", nil, [:], 405, "request.method_not_allowed"),
            ("PUT", "/v1/databases/\(id)/legal-hold", Array(#"{}"#.utf8), ["Content-Type": "application/json"], 400, "request.invalid"),
            ("PUT", "/v1/databases/\(id)/legal-hold", Array(#"{"reason": "two\nlines"}"#.utf8), ["Content-Type": "application/json"], 400, "request.invalid"),
            ("POST", "/v1/databases/\(id)/reactivate", Array(#"{"new_password": 1}"#.utf8), ["Content-Type": "application/json"], 400, "request.invalid"),
            ("POST", "/v1/databases/\(id)/cancel", nil, ["If-Match": "banana"], 400, "request.invalid"),
            // Refused by the HTTP parser (a control character in a header value): still problem+json.
            ("POST", "/v1/databases/\(id)/cancel", nil, ["X-Note": "a\u{01}b"], 400, "request.invalid"),
            ("POST", "/v1/databases/\(id)/restore", Array(#"{"backup_id": "bk_00000000000000000000"}"#.utf8), ["Content-Type": "application/json"], 404, "backup.not_found"),
        ]
        for (method, path, body, headers, status, code) in cases {
            let response = try api.call(method, path, body: body, headers: headers)
            #expect(response.status == status && response.json["code"] as? String == code, "\(method) \(path): \(response)")
            #expect(response.json["type"] as? String == "urn:tenure:problem:\(code)" && response.json["detail"] is String)
        }
        #expect(try api.call("PUT", "/v1/databases", body: [], headers: [:]).header("allow") == "GET, POST, HEAD")
        #expect(try api.catalogRows("SELECT id, state, version FROM databases ORDER BY id") == before)
    }

    @Test func concurrentConflictingCallsOneWins() throws {
        let api = try APIFixture()
        let id = try api.create("raced")["id"] as! String
        let statuses = Locked<[Int]>([])
        DispatchQueue.concurrentPerform(iterations: 4) { index in
            let path = index % 2 == 0 ? "/v1/databases/\(id)/subscribe" : "/v1/databases/\(id)?confirm=raced"
            let response = try? httpRequest(port: api.port, index % 2 == 0 ? "POST" : "DELETE", path, headers: ["Authorization": "Bearer \(api.adminKey)"])
            statuses.withLock { $0.append(response?.status ?? 0) }
        }
        let all = statuses.withLock { $0 }.sorted()
        #expect(all.filter { $0 == 200 }.count >= 1 && all.allSatisfy { $0 == 200 || $0 == 409 }, "\(all)")
        let final = try api.call("GET", "/v1/databases/\(id)").json
        let events = try api.catalogRows("SELECT action FROM audit_events WHERE database_id = $1 AND action IN ('subscribe', 'deletion_request')", [id])
        #expect(events.count == all.filter { $0 == 200 }.count, "\(events) \(all) \(final)")
    }

    /// POST /v1/databases/{id}/extensions: a listed untrusted extension is created (201),
    /// again is 200 and changes nothing, a trusted one needs no listing, an unlisted untrusted
    /// one and an unknown one are 400, a deactivated database is 409; every one audited.
    @Test func extensionsOfAHostedDatabase() throws {
        try installTestExtension()
        let api = try APIFixture(["TENURE_EXTENSIONS": "tenure_config_test"])
        let id = try api.create("ext-shop")["id"] as! String
        let created = try api.call("POST", "/v1/databases/\(id)/extensions", json: ["name": "tenure_config_test"])
        #expect(created.status == 201 && created.json["created"] as? Bool == true && created.json["version"] as? String == "1.0", "\(created.json)")
        let again = try api.call("POST", "/v1/databases/\(id)/extensions", json: ["name": "tenure_config_test"])
        #expect(again.status == 200 && again.json["created"] as? Bool == false)
        #expect(try api.call("POST", "/v1/databases/\(id)/extensions", json: ["name": "citext"]).status == 201)
        let refused = try api.call("POST", "/v1/databases/\(id)/extensions", json: ["name": "pageinspect"])
        #expect(refused.status == 400 && (refused.json["detail"] as? String ?? "").contains("listed: tenure_config_test"), "\(refused.json)")
        #expect(try api.call("POST", "/v1/databases/\(id)/extensions", json: ["name": "no_such_extension"]).status == 400)
        #expect(try api.call("POST", "/v1/databases/\(id)/extensions", json: ["name": "Bad Name"]).status == 400)
        #expect(try api.call("POST", "/v1/databases/\(id)/extensions", json: [:]).status == 400)
        let database = try api.server.rows("SELECT pg_database, pg_role FROM databases WHERE id = $1", [id], database: api.catalogName)
        if let row = database.first, let name = row[0], let role = row[1] {
            #expect(try api.server.rows("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'tenure_settings'", database: name) == [[role]])
        }
        let actions = (try api.call("GET", "/v1/databases/\(id)/audit").json["events"] as! [[String: Any]]).map { $0["action"] as! String }
        #expect(actions.filter { $0 == "extension_added" }.count == 2, "\(actions)")
        _ = try api.call("POST", "/v1/databases/\(id)/subscribe")
        _ = try api.call("POST", "/v1/databases/\(id)/cancel")
        #expect(try api.call("POST", "/v1/databases/\(id)/extensions", json: ["name": "citext"]).status == 409)
    }

    @Test func servedDocumentIsTheRepositoryOne() throws {
        let api = try APIFixture()
        let served = try api.call("GET", "/openapi.json", key: "")
        let onDisk = try Data(contentsOf: URL(fileURLWithPath: APIFixture.repository + "/docs/openapi.json"))
        // The resource is served byte for byte; docs/openapi.json is a link to it.
        #expect(Data(served.body) == onDisk, "the served document differs from docs/openapi.json: rebuild")
        #expect(served.header("content-type") == "application/json")
        #expect(try api.call("GET", "/readyz", key: "").json["status"] as? String == "ready")
    }
}
