import Foundation
import Testing
import TenurePQ
import TenureTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Provable deletion (issue 16): stored backups and upgrade results sealed with their owner's
/// data key, the key destroyed with the tombstone, signed deletion certificates checked with
/// implementations that are not Tenure's (Python's `cryptography`, the `openssl` command).
@Suite(.serialized) struct DeletionTests {
    static let marker = "tenure-marker-5e1f0c7a"
    static let quiet = ["TENURE_BACKUP_INTERVAL": "off", "TENURE_DRILL_INTERVAL": "off"]

    /// The tools' Python (PyPI's `cryptography` comes with moto there).
    var python: String {
        let moto = ProcessInfo.processInfo.environment["TENURE_MOTO"] ?? (APIFixture.repository + "/.build/tools/bin/moto_server")
        return (moto as NSString).deletingLastPathComponent + "/python3"
    }

    func seed(_ url: String) throws {
        let tenant = try PostgresConnection(try ConnectionParameters(parsing: url))
        defer { tenant.close() }
        try tenant.execute(
            "CREATE TABLE notes (id integer PRIMARY KEY, body text); INSERT INTO notes SELECT g, 'note ' || g || ' \(Self.marker) ' || md5(g::text) FROM generate_series(1, 20000) g")
    }

    /// Whether the marker is in the file's bytes, or in what any zstd frame in it decompresses to.
    func carriesMarker(_ path: String) throws -> Bool {
        let bytes = [UInt8](try #require(FileManager.default.contents(atPath: path)))
        let needle = Array(Self.marker.utf8)
        func contains(_ haystack: [UInt8]) -> Bool {
            guard haystack.count >= needle.count else { return false }
            return (0...(haystack.count - needle.count)).contains { haystack[$0] == needle[0] && Array(haystack[$0..<($0 + needle.count)]) == needle }
        }
        if contains(bytes) { return true }
        let magic: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD]
        for offset in 0..<max(0, bytes.count - 4) where bytes[offset] == magic[0] && Array(bytes[offset..<(offset + 4)]) == magic {
            let frames = try ChildProcess(["/usr/bin/zstd", "-dcq"], environment: ["PATH": "/usr/bin:/bin"], input: Array(bytes[offset...])).wait()
            if frames.stdout.contains(Self.marker) { return true }
        }
        return false
    }

    func restoreURL(_ api: APIFixture, _ name: String) -> String {
        api.server.parameters(database: name).description
    }

    /// Checks a certificate with Python's `cryptography`, with `openssl pkeyutl`, and with
    /// `tenure certificate verify`; true only if all three accept it.
    func externallyValid(_ api: APIFixture, certificate: [UInt8], pem: String, directory: String) throws -> (python: Bool, openssl: Bool, tenure: Bool) {
        let certificatePath = directory + "/certificate.json"
        let keyPath = directory + "/signing.pem"
        FileManager.default.createFile(atPath: certificatePath, contents: Data(certificate))
        try pem.write(toFile: keyPath, atomically: true, encoding: .utf8)
        let script = """
            import base64, json, sys
            from cryptography.hazmat.primitives.serialization import load_pem_public_key
            certificate = json.load(open(sys.argv[1]))
            key = load_pem_public_key(open(sys.argv[2], "rb").read())
            key.verify(base64.b64decode(certificate["signature"]), base64.b64decode(certificate["payload"]))
            print("valid")
            """
        let checked = try ChildProcess([python, "-c", script, certificatePath, keyPath], environment: ["PATH": "/usr/bin:/bin", "HOME": "/tmp"]).wait()
        let object = try #require(try JSONSerialization.jsonObject(with: Data(certificate)) as? [String: Any])
        FileManager.default.createFile(atPath: directory + "/payload.bin", contents: Data(base64Encoded: object["payload"] as? String ?? ""))
        FileManager.default.createFile(atPath: directory + "/signature.bin", contents: Data(base64Encoded: object["signature"] as? String ?? ""))
        let openssl = try ChildProcess(
            ["/usr/bin/openssl", "pkeyutl", "-verify", "-pubin", "-inkey", keyPath, "-rawin", "-in", directory + "/payload.bin", "-sigfile", directory + "/signature.bin"],
            environment: ["PATH": "/usr/bin:/bin"]
        ).wait()
        let tenure = try api.tenure(["certificate", "verify", certificatePath, "--public-key", keyPath])
        return (checked.status == 0 && checked.stdout.contains("valid"), openssl.status == 0, tenure.status == 0)
    }

    @Test func sealedBackupsDieWithTheirKeyAndTheCertificateVerifiesElsewhere() throws {
        let api = try APIFixture(Self.quiet)
        let created = try api.create("sealed", plan: "paid")
        let id = created["id"] as! String
        let url = created["connection_url"] as! String
        try seed(url)
        let before = try fingerprint(url, "notes")
        let job = try api.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String
        let done = try api.waitForJob(job)
        try #require(done["state"] as? String == "succeeded", "\(done)")
        let backupID = ((done["result"] as! [String: Any])["backup"] as! [String: Any])["id"] as! String
        let stored = api.home + "/backups/\(id)/\(backupID).tenure"

        // Stored: sealed, no byte of the marker in it, raw or decompressed. The plain download
        // has it (so the check above would have seen it).
        #expect(FileManager.default.contents(atPath: stored).map { Array($0.prefix(8)) } == Array("TNRCRYPT".utf8))
        #expect(try !carriesMarker(stored))
        let download = try api.call("GET", "/v1/databases/\(id)/backups/\(backupID)/download")
        #expect(download.status == 200)
        let plain = api.home + "/plain.tenure"
        FileManager.default.createFile(atPath: plain, contents: Data(download.body))
        #expect(try carriesMarker(plain))

        // A copy set aside restores while the database lives (its key comes from the catalog).
        let aside = api.home + "/aside.tenure"
        try FileManager.default.copyItem(atPath: stored, toPath: aside)
        let first = "sealed_copy_\(UInt32.random(in: 0...UInt32.max))"
        let restored = try api.tenure(["restore", aside, "--url", restoreURL(api, first)])
        #expect(restored.status == 0, "\(restored)")
        #expect(try api.server.rows("SELECT count(*) FROM notes", database: first) == [["20000"]])

        // The master key rotated: every backup still restores, in place and from the copy.
        let masters = try api.catalogRows("SELECT DISTINCT master_key_id FROM data_keys")
        let rotated = try api.tenure(["key", "rotate", "--json"])
        #expect(rotated.status == 0 && (rotated.json["data_keys_rewrapped"] as? Int ?? 0) >= 1, "\(rotated)")
        #expect(try api.catalogRows("SELECT DISTINCT master_key_id FROM data_keys") == [[rotated.json["to_key_id"] as? String]])
        #expect(masters != [[rotated.json["to_key_id"] as? String]])
        #expect(!FileManager.default.fileExists(atPath: api.home + "/master.key.next"))
        try PostgresConnection(try ConnectionParameters(parsing: url)).execute("DELETE FROM notes WHERE id % 2 = 0")
        let restore = try api.call("POST", "/v1/databases/\(id)/restore", json: ["backup_id": backupID])
        #expect(try api.waitForJob(restore.json["id"] as! String)["state"] as? String == "succeeded")
        #expect(try fingerprint(url, "notes") == before)
        let second = "sealed_copy_\(UInt32.random(in: 0...UInt32.max))"
        #expect(try api.tenure(["restore", aside, "--url", restoreURL(api, second)]).status == 0)

        // Destroyed: the key row goes in the tombstone's transaction; the copy set aside can no
        // longer be opened, by restore or by verify, and the error says when the key went.
        // The second copy restored beside it keeps objects of its role, so the role cannot be
        // dropped yet: the destruction is recorded (the key is gone), the error names the copy,
        // and once the copy is gone the next command finishes the drop.
        _ = try api.server.rows("DROP DATABASE \(first) WITH (FORCE)")
        let keyID = try #require(try api.catalogRows("SELECT id FROM data_keys WHERE owner = $1", [id]).first?[0] ?? nil)
        let deleted = try api.call("DELETE", "/v1/databases/\(id)?confirm=sealed")
        let deletedText = String(decoding: deleted.body, as: UTF8.self)
        #expect(deleted.status >= 500 && deletedText.contains("is recorded") && deletedText.contains("'\(second)'"), "\(deleted.status) \(deletedText)")
        #expect(try api.catalogRows("SELECT count(*) FROM data_keys WHERE owner = $1", [id]) == [["0"]])
        #expect(try api.catalogRows("SELECT state FROM databases WHERE id = $1", [id]) == [["destroyed"]])
        #expect(try api.call("GET", "/v1/databases/\(id)/deletion-certificate").status == 404)
        _ = try api.server.rows("DROP DATABASE \(second) WITH (FORCE)")
        let finished = try api.tenure(["db", "show", id])
        #expect(finished.status == 0, "\(finished)")
        var certificate = try api.call("GET", "/v1/databases/\(id)/deletion-certificate")
        let deadline = Date().addingTimeInterval(60)
        while certificate.status != 200 && Date() < deadline {
            usleep(200_000)
            certificate = try api.call("GET", "/v1/databases/\(id)/deletion-certificate")
        }
        #expect(certificate.status == 200, "\(certificate)")
        #expect(!FileManager.default.fileExists(atPath: stored))
        let third = "sealed_copy_\(UInt32.random(in: 0...UInt32.max))"
        let refused = try api.tenure(["restore", aside, "--url", restoreURL(api, third)])
        #expect(refused.status == 4 && refused.stderr.contains("was destroyed at") && refused.stderr.contains(keyID), "\(refused)")
        #expect(try api.server.rows("SELECT count(*) FROM pg_database WHERE datname = $1", [third]) == [["0"]])
        #expect(try api.tenure(["verify", aside]).status == 4)

        // The certificate: its facts, and its signature checked by Python and OpenSSL.
        let object = certificate.json
        let payload = try #require(Data(base64Encoded: object["payload"] as? String ?? ""))
        let facts = try #require(try JSONSerialization.jsonObject(with: payload) as? [String: Any])
        #expect((facts["subject"] as? [String: Any])?["id"] as? String == id)
        #expect((facts["subject"] as? [String: Any])?["postgres_role"] as? String == id + "_owner")
        #expect((facts["data_key"] as? [String: Any])?["id"] as? String == keyID)
        #expect((facts["backups"] as? [[String: Any]])?.map { $0["id"] as? String } == [backupID])
        #expect(((facts["audit_event_ids"] as? [Any])?.count ?? 0) >= 3)
        let pem = String(decoding: try api.call("GET", "/v1/signing-key").body, as: UTF8.self)
        #expect(pem.hasPrefix("-----BEGIN PUBLIC KEY-----"))
        #expect(try api.tenure(["signing-key"]).stdout.contains(pem.split(separator: "\n")[1]))
        let cli = try api.tenure(["db", "certificate", id])
        #expect(cli.status == 0 && cli.json["signature"] as? String == object["signature"] as? String, "\(cli)")
        let valid = try externallyValid(api, certificate: certificate.body, pem: pem, directory: api.home)
        #expect(valid.python && valid.openssl && valid.tenure, "\(valid)")
        // One byte changed in the signed payload: every checker refuses it.
        var altered = [UInt8](payload)
        altered[altered.count / 2] ^= 0x01
        var forged = object
        forged["payload"] = Data(altered).base64EncodedString()
        let forgedBytes = [UInt8](try JSONSerialization.data(withJSONObject: forged))
        let invalid = try externallyValid(api, certificate: forgedBytes, pem: pem, directory: api.home)
        #expect(!invalid.python && !invalid.openssl && !invalid.tenure, "\(invalid)")
        #expect(api.stop().status == 0)
    }

    @Test func aCrashBetweenKeyDestructionAndFileDeletionIsFinishedAtTheNextStart() throws {
        let api = try APIFixture(Self.quiet)
        let created = try api.create("crashing", plan: "paid")
        let id = created["id"] as! String
        try seed(created["connection_url"] as! String)
        let job = try api.call("POST", "/v1/databases/\(id)/backups").json["id"] as! String
        try #require(try api.waitForJob(job)["state"] as? String == "succeeded")
        var environment = api.environment
        environment["TENURE_FAILPOINT"] = "destroy.after_intent"
        let killed = try runTenure(["db", "destroy", id, "--confirm", "crashing"], environment: environment)
        #expect(killed.signal == SIGKILL, "\(killed)")
        // Killed after the tombstone: the key is gone already, the files not yet.
        #expect(try api.catalogRows("SELECT count(*) FROM data_keys WHERE owner = $1", [id]) == [["0"]])
        #expect(!((try? FileManager.default.contentsOfDirectory(atPath: api.home + "/backups/" + id)) ?? []).isEmpty)
        #expect(try api.call("GET", "/v1/databases/\(id)/deletion-certificate").status == 404)
        // The next start finishes the drop, deletes the files and issues the certificate.
        #expect(try api.tenure(["db", "list"]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: api.home + "/backups/" + id))
        #expect(try api.server.rows("SELECT count(*) FROM pg_database WHERE datname = $1", [id]) == [["0"]])
        let certificate = try api.tenure(["db", "certificate", id])
        #expect(certificate.status == 0, "\(certificate)")
        let file = api.home + "/crash-certificate.json"
        try certificate.stdout.write(toFile: file, atomically: true, encoding: .utf8)
        let verified = try api.tenure(["certificate", "verify", file, "--json"])
        #expect(verified.status == 0 && verified.json["subject"] as? String == id && verified.json["backups"] as? Int == 1, "\(verified)")
        #expect(api.stop().status == 0)
    }

    @Test func uploadsAreSealedAndCertifiedToo() throws {
        let scripts = api_scripts()
        defer { try? FileManager.default.removeItem(atPath: scripts) }
        var extra = Self.quiet
        extra["TENURE_UPGRADE_SCRIPTS"] = scripts
        let api = try APIFixture(extra)
        var dump = "CREATE TABLE public.notes (id integer PRIMARY KEY, body text);\nCOPY public.notes (id, body) FROM stdin;\n"
        for row in 1...5000 { dump += "\(row)\tnote \(row) \(Self.marker)\n" }
        dump += "\\.\n"
        let created = try api.call("POST", "/v1/uploads?name=notes.sql", body: Array(dump.utf8), headers: ["Content-Type": "application/octet-stream"])
        #expect(created.status == 201, "\(created)")
        let id = try #require(created.json["id"] as? String)
        let upgraded = try api.waitForJob(try api.call("POST", "/v1/uploads/\(id)/upgrade").json["id"] as! String)
        #expect(upgraded["state"] as? String == "succeeded", "\(upgraded)")
        let whole = try api.call("GET", "/v1/uploads/\(id)/download")
        #expect(whole.status == 200)
        let tail = try api.call("GET", "/v1/uploads/\(id)/download", headers: ["Range": "bytes=700-"])
        #expect(tail.status == 206 && tail.body == Array(whole.body[700...]))
        let plain = api.home + "/result-plain.tenure"
        FileManager.default.createFile(atPath: plain, contents: Data(whole.body))
        #expect(try carriesMarker(plain))
        let sql = try api.call("GET", "/v1/uploads/\(id)/download?format=sql")
        #expect(sql.status == 200)
        // Every file the upload keeps is sealed: no marker, raw or decompressed.
        let directory = api.home + "/uploads/" + id
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix("result-") }
        #expect(files.count == 2, "\(files)")
        for file in files { #expect(try !carriesMarker(directory + "/" + file), "\(file)") }
        let aside = api.home + "/result-aside.tenure"
        try FileManager.default.copyItem(atPath: directory + "/" + files.first { $0.hasSuffix(".tenure") }!, toPath: aside)
        #expect(try api.tenure(["verify", aside]).status == 0)

        #expect(try api.call("DELETE", "/v1/uploads/\(id)?confirm=\(id)").status == 200)
        #expect(try api.catalogRows("SELECT count(*) FROM data_keys WHERE owner = $1", [id]) == [["0"]])
        let certificate = try api.call("GET", "/v1/uploads/\(id)/deletion-certificate")
        #expect(certificate.status == 200, "\(certificate)")
        let facts = try #require(
            try JSONSerialization.jsonObject(with: Data(base64Encoded: certificate.json["payload"] as? String ?? "") ?? Data()) as? [String: Any])
        #expect((facts["subject"] as? [String: Any])?["kind"] as? String == "upload")
        #expect((facts["backups"] as? [Any])?.count == 2, "\(facts)")
        let pem = String(decoding: try api.call("GET", "/v1/signing-key").body, as: UTF8.self)
        let valid = try externallyValid(api, certificate: certificate.body, pem: pem, directory: api.home)
        #expect(valid.python && valid.openssl && valid.tenure, "\(valid)")
        let refused = try api.tenure(["verify", aside])
        #expect(refused.status == 4 && refused.stderr.contains("was destroyed at"), "\(refused)")
        #expect(try api.tenure(["upload", "certificate", id]).status == 0)
        #expect(api.stop().status == 0)
    }

    @Test func aMissingOrWrongMasterKeyRefusesToStartAndRotationSurvivesAKill() throws {
        let api = try APIFixture(Self.quiet)
        var ids: [String] = []
        for name in ["keyed-a", "keyed-b", "keyed-c"] {
            let created = try api.create(name, plan: "paid")
            ids.append(created["id"] as! String)
            if ids.count == 1 { try seed(created["connection_url"] as! String) }
        }
        let master = api.home + "/master.key"
        let original = try String(contentsOfFile: master, encoding: .utf8)
        // Missing: refused, and no new key is made over the catalog's wrapped keys.
        try FileManager.default.moveItem(atPath: master, toPath: master + ".saved")
        let missing = try api.tenure(["db", "list"])
        #expect(missing.status != 0 && missing.stderr.contains("TENURE_MASTER_KEY_FILE") && missing.stderr.contains("missing"), "\(missing)")
        #expect(!FileManager.default.fileExists(atPath: master))
        // Wrong: refused.
        try (String(repeating: "ab", count: 32) + "\n").write(toFile: master, atomically: true, encoding: .utf8)
        let wrong = try api.tenure(["db", "list"])
        #expect(wrong.status != 0 && wrong.stderr.contains("not the one"), "\(wrong)")
        // Unreadable: refused.
        try "not a key\n".write(toFile: master, atomically: true, encoding: .utf8)
        #expect(try api.tenure(["db", "list"]).status != 0)
        try FileManager.default.removeItem(atPath: master)
        try FileManager.default.moveItem(atPath: master + ".saved", toPath: master)
        #expect(try api.tenure(["db", "list"]).status == 0)

        // Rotation killed after its first re-wrap: both files there, keys wrapped by either,
        // everything still opens; running it again finishes it.
        var environment = api.environment
        environment["TENURE_FAILPOINT"] = "key_rotate.after_rewrap"
        let killed = try runTenure(["key", "rotate"], environment: environment)
        #expect(killed.signal == SIGKILL, "\(killed)")
        let current = try String(contentsOfFile: master, encoding: .utf8)
        #expect(FileManager.default.fileExists(atPath: master + ".next") && current == original)
        #expect(try api.catalogRows("SELECT count(DISTINCT master_key_id) FROM data_keys") == [["2"]])
        #expect(try api.tenure(["db", "list"]).status == 0)
        let job = try api.call("POST", "/v1/databases/\(ids[0])/backups").json["id"] as! String
        let done = try api.waitForJob(job)
        #expect(done["state"] as? String == "succeeded", "\(done)")
        let backupID = ((done["result"] as? [String: Any])?["backup"] as? [String: Any])?["id"] as? String ?? ""
        let again = try api.tenure(["key", "rotate", "--json"])
        #expect(again.status == 0, "\(again)")
        #expect(!FileManager.default.fileExists(atPath: master + ".next"))
        #expect(try api.catalogRows("SELECT count(DISTINCT master_key_id) FROM data_keys") == [["1"]])
        let restore = try api.call("POST", "/v1/databases/\(ids[0])/restore", json: ["backup_id": backupID])
        #expect(try api.waitForJob(restore.json["id"] as! String)["state"] as? String == "succeeded")
        #expect(api.stop().status == 0)
    }

    func api_scripts() -> String {
        let scripts = "/tmp/tenure-deletion-scripts-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: scripts, withIntermediateDirectories: true)
        return scripts
    }
}
