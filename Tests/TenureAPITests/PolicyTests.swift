import Foundation
import Testing
import TenureCore
import TenureEmbedded
import TenurePQ
import TenureTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The backup policy on a real fleet: two tenant servers, a short interval, the per-server
/// limit, retention, the status; restore drills passing and catching an altered backup.
@Suite(.serialized) struct PolicyTests {
    /// The most backup jobs that ran at once on each server, from the jobs' recorded times.
    static func peakConcurrency(_ api: APIFixture) throws -> [String: Int] {
        let rows = try api.catalogRows(
            """
            SELECT server_name, extract(epoch FROM started_at)::text, extract(epoch FROM finished_at)::text FROM jobs
            WHERE kind = 'backup' AND state = 'succeeded' AND server_name IS NOT NULL
            """)
        var events: [String: [(Double, Int)]] = [:]
        for row in rows {
            events[row[0]!, default: []] += [(Double(row[1]!)!, 1), (Double(row[2]!)!, -1)]
        }
        return events.mapValues { list in
            var running = 0
            var peak = 0
            for (_, delta) in list.sorted(by: { ($0.0, $0.1) < ($1.0, $1.1) }) {
                running += delta
                peak = max(peak, running)
            }
            return peak
        }
    }

    @Test func scheduledBackupsAreSpreadRotatedAndHeldToThePerServerLimit() throws {
        let second = try ExtraServer("policy", maxConnections: 60)
        defer { withExtendedLifetime(second) {} }
        let interval = 6.0
        let api = try APIFixture([
            "TENURE_BACKUP_INTERVAL": "6s", "TENURE_BACKUP_CONCURRENCY_PER_SERVER": "1", "TENURE_BACKUP_KEEP_LAST": "2", "TENURE_BACKUP_KEEP_DAILY": "0",
            "TENURE_BACKUP_KEEP_WEEKLY": "0", "TENURE_BACKUP_KEEP_MONTHLY": "0", "TENURE_HTTP_MAX_TRANSFERS": "4", "TENURE_JOBS": "1",
        ])
        try second.add(to: api, as: "second")
        var ids: [String] = []
        for n in 0..<6 {
            let created = try api.call("POST", "/v1/databases", json: ["name": "fleet-\(n)", "server": n % 2 == 0 ? "default" : "second"])
            try #require(created.status == 201, "\(created)")
            ids.append(created.json["id"] as! String)
            try fill(created.json["connection_url"] as! String, rows: 300)
        }
        // Every database backed up by the scheduler at least three times.
        let deadline = Date().addingTimeInterval(120)
        var counts: [String: Int] = [:]
        while Date() < deadline {
            let rows = try api.catalogRows(
                "SELECT subject, count(*)::text FROM jobs WHERE kind = 'backup' AND actor = 'scheduler' AND state = 'succeeded' GROUP BY subject")
            counts = Dictionary(uniqueKeysWithValues: rows.map { ($0[0]!, Int($0[1]!)!) })
            if ids.allSatisfy({ (counts[$0] ?? 0) >= 3 }) { break }
            usleep(500_000)
        }
        #expect(ids.allSatisfy { (counts[$0] ?? 0) >= 3 }, "\(counts)")
        // Never more than one backup at once on a server.
        let peaks = try Self.peakConcurrency(api)
        #expect(peaks["default"] == 1 && peaks["second"] == 1, "\(peaks)")
        // Each database's jobs were queued at its own slot: its offset in the interval.
        let schedule = BackupSchedule(interval: .seconds(6))
        for id in ids {
            let created = try api.catalogRows(
                "SELECT extract(epoch FROM created_at)::text FROM jobs WHERE subject = $1 AND actor = 'scheduler' ORDER BY seq", [id]
            ).map { Double($0[0]!)! }
            for instant in created.dropFirst() {
                let lateness = (instant - schedule.offset(of: id)).truncatingRemainder(dividingBy: interval)
                #expect(lateness >= 0 && lateness < 2.5, "\(id): queued \(lateness) s after its slot")
            }
        }
        // Status: six live databases, none stale, each keeping its two newest verified backups.
        let status = try api.call("GET", "/v1/backup-status")
        #expect(status.status == 200)
        let totals = status.json["totals"] as? [String: Any] ?? [:]
        #expect(totals["databases"] as? Int == 6 && totals["stale"] as? Int == 0 && totals["schedule"] as? String == "on", "\(totals)")
        for entry in status.json["databases"] as? [[String: Any]] ?? [] {
            // Two, or three for the moment between a new backup and its rotation.
            #expect((2...3).contains(entry["backups_kept"] as? Int ?? 0) && entry["next_due_at"] is String && entry["stale"] as? Bool == false, "\(entry)")
        }
        #expect((try api.call("GET", "/v1/backup-status?stale=true").json["databases"] as? [Any])?.isEmpty == true)
        #expect(try api.call("GET", "/v1/backup-status?stale=maybe").status == 400)
        let metrics = String(decoding: try api.call("GET", "/metrics").body, as: UTF8.self)
        #expect(metrics.contains("tenure_backups_stale 0") && metrics.contains("tenure_backup_retention_deleted_total"), "\(metrics.prefix(400))")
        #expect(api.stop().status == 0)
        // Retention: the two newest verified backups of each database, and only their files.
        for id in ids {
            let verified = try api.catalogRows("SELECT path FROM backups WHERE database_id = $1 AND state = 'verified'", [id]).map { $0[0]! }
            let deleted = try api.catalogRows("SELECT id FROM backups WHERE database_id = $1 AND state = 'deleted'", [id])
            #expect(verified.count == 2 && deleted.count >= 1, "\(id): \(verified.count) verified, \(deleted.count) deleted")
            let files = (try? FileManager.default.contentsOfDirectory(atPath: api.home + "/backups/" + id)) ?? []
            #expect(Set(files.map { id + "/" + $0 }) == Set(verified), "\(files) vs \(verified)")
        }
        let cli = try api.tenure(["backup-status", "--json"])
        #expect(cli.status == 0 && (cli.json["totals"] as? [String: Any])?["databases"] as? Int == 6, "\(cli)")
    }

    @Test func drillsPassAndCatchABackupAlteredInTheStore() throws {
        let api = try APIFixture(["TENURE_DRILL_INTERVAL": "8s", "TENURE_DRILL_COUNT": "1"])
        var ids: [String] = []
        var backups: [String] = []
        for name in ["drilled-good", "drilled-bad"] {
            let created = try api.create(name)
            ids.append(created["id"] as! String)
            try fill(created["connection_url"] as! String, rows: 3_000)
            let job = try api.call("POST", "/v1/databases/\(ids.last!)/backups").json["id"] as! String
            let done = try api.waitForJob(job)
            try #require(done["state"] as? String == "succeeded", "\(done)")
            backups.append(((done["result"] as! [String: Any])["backup"] as! [String: Any])["id"] as! String)
        }
        // The second backup altered in the store: a few bytes in its middle.
        let path = api.home + "/backups/\(ids[1])/\(backups[1]).tenure"
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: size / 2)
        try handle.write(contentsOf: Data([0xde, 0xad, 0xbe, 0xef]))
        try handle.close()
        // The scheduler drills both (one per interval, never-drilled first). A tick may drill
        // the second backup between its backup and the write above; it passes then, and it is
        // drilled once more by hand (the scheduler drills a backup once).
        var drills: [[String: Any]] = []
        func drilled(_ backup: String, _ outcome: String) -> Bool {
            drills.contains { $0["backup_id"] as? String == backup && $0["outcome"] as? String == outcome }
        }
        var again = false
        let deadline = Date().addingTimeInterval(90)
        while Date() < deadline {
            drills = try api.call("GET", "/v1/drills").json["drills"] as? [[String: Any]] ?? []
            if drilled(backups[0], "passed") && drilled(backups[1], "failed") { break }
            if drilled(backups[1], "passed") && !again {
                again = true
                #expect(try api.call("POST", "/v1/drills", json: ["backup_id": backups[1]]).status == 202)
            }
            usleep(500_000)
        }
        #expect(drilled(backups[0], "passed") && drilled(backups[1], "failed") && !drilled(backups[0], "failed"), "\(drills)")
        if let bad = drills.first(where: { $0["backup_id"] as? String == backups[1] && $0["outcome"] as? String == "failed" }) {
            let detail = bad["detail"] as? [String: Any] ?? [:]
            #expect(!(detail["error"] as? String ?? "").isEmpty, "\(bad)")
        }
        // The altered backup no longer counts: not verified, not restorable, audited, alerting.
        let good = try api.call("GET", "/v1/databases/\(ids[0])/backups/\(backups[0])").json
        #expect(good["state"] as? String == "verified" && good["drill_outcome"] as? String == "passed" && good["drilled_at"] is String, "\(good)")
        let bad = try api.call("GET", "/v1/databases/\(ids[1])/backups/\(backups[1])").json
        #expect(bad["state"] as? String == "drill_failed" && bad["drill_outcome"] as? String == "failed", "\(bad)")
        #expect(try api.call("POST", "/v1/databases/\(ids[1])/restore", json: ["backup_id": backups[1]]).status == 409)
        #expect(try api.call("GET", "/v1/databases/\(ids[1])/backups/\(backups[1])/download").status == 409)
        let actions = (try api.call("GET", "/v1/databases/\(ids[1])/audit").json["events"] as? [[String: Any]] ?? []).compactMap { $0["action"] as? String }
        #expect(actions.contains("drill_failed"), "\(actions)")
        usleep(2_500_000)
        let metrics = String(decoding: try api.call("GET", "/metrics").body, as: UTF8.self)
        #expect(metrics.contains(#"tenure_drills_total{outcome="failed"} 1"#) && metrics.contains("tenure_backups_drill_failed 1"), "\(metrics)")
        // The scratch database of a drill whose process died on its last attempt: the next drill drops it.
        _ = try api.server.rows("CREATE DATABASE tenure_drill_0000000000deadbeef00")
        // Asked for: a drill of a database's newest verified backup; none left for the other.
        let asked = try api.call("POST", "/v1/drills", json: ["database_id": ids[0]])
        #expect(asked.status == 202, "\(asked)")
        let askedDone = try api.waitForJob(asked.json["id"] as! String)
        #expect(((askedDone["result"] as? [String: Any])?["drill"] as? [String: Any])?["outcome"] as? String == "passed", "\(askedDone)")
        #expect(try api.call("POST", "/v1/drills", json: ["database_id": ids[1]]).status == 409)
        #expect(try api.call("POST", "/v1/drills", json: [:] as [String: Any]).status == 400)
        let status = try api.call("GET", "/v1/backup-status").json
        let entries = status["databases"] as? [[String: Any]] ?? []
        #expect(entries.first { $0["database_id"] as? String == ids[0] }?["last_drill_outcome"] as? String == "passed", "\(entries)")
        #expect((status["totals"] as? [String: Any])?["drill_failed_backups"] as? Int == 1)
        // No scratch database is left on the drill server.
        let scratch = try api.server.rows("SELECT datname FROM pg_database WHERE datname LIKE 'tenure_drill_%'")
        #expect(scratch.isEmpty, "\(scratch)")
        let cli = try api.tenure(["drill", "list", "--database", ids[0], "--json"])
        #expect(cli.status == 0 && ((cli.json["drills"] as? [Any])?.count ?? 0) >= 2, "\(cli)")
        let run = try api.tenure(["drill", "run", "--backup", backups[0], "--json"])
        #expect(run.status == 0 && run.json["outcome"] as? String == "passed", "\(run)")
        // A whole download checks the stored bytes against those verified: once the file is
        // altered in the store, the download ends short instead of delivering it.
        let whole = try api.call("GET", "/v1/databases/\(ids[0])/backups/\(backups[0])/download")
        #expect(whole.status == 200)
        let goodPath = api.home + "/backups/\(ids[0])/\(backups[0]).tenure"
        let goodHandle = try #require(FileHandle(forUpdatingAtPath: goodPath))
        try goodHandle.seek(toOffset: UInt64(whole.body.count / 3))
        try goodHandle.write(contentsOf: Data([0x00, 0xff, 0x00, 0xff]))
        try goodHandle.close()
        #expect(
            (try? httpRequest(port: api.port, "GET", "/v1/databases/\(ids[0])/backups/\(backups[0])/download", headers: ["Authorization": "Bearer \(api.adminKey)"])) == nil)
        #expect(api.stop().status == 0)
    }
}
