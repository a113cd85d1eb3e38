import Foundation
import Testing
import TenureCore
import TenureEngine
import TenurePQ
import TenureTestSupport

@Suite struct RoundTripTests {
    @Test func nativeArchiveRoundTripsEveryHardCase() throws {
        let server = try TestServer.shared()
        let source = try createHardCases(server)
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        let backup = try runTenure(["backup", "--url", url(server, source), "-o", archive, "--jobs", "3", "--json"], environment: [:])
        #expect(backup.status == 0, "\(backup)")
        #expect((backup.json["tables"] as? Int ?? 0) >= 12)

        let listing = try ChildProcess(["/bin/tar", "-tvf", archive], environment: ["PATH": "/usr/bin:/bin"]).wait()
        #expect(listing.status == 0 && listing.stdout.contains("manifest.json"), "tar must list the archive: \(listing)")
        let verify = try runTenure(["verify", archive, "--json"], environment: [:])
        #expect(verify.status == 0 && verify.json["ok"] as? Bool == true, "\(verify)")

        let target = newDatabaseName("restored")
        let restore = try runTenure(["restore", archive, "--url", url(server, target), "--jobs", "3", "--json"], environment: [:])
        #expect(restore.status == 0, "\(restore)")
        #expect(try schemaDump(server, target) == schemaDump(server, source))
        let expected = try fingerprint(server, source)
        #expect(expected.count >= 15)
        #expect(try fingerprint(server, target) == expected)
        #expect(try leftovers(server).isEmpty)
        // The target now exists: a second restore into it is refused and changes nothing.
        let again = try runTenure(["restore", archive, "--url", url(server, target)], environment: [:])
        #expect(again.status == 2 && again.stderr.contains("already exists"), "\(again)")
        #expect(try fingerprint(server, target) == expected)
    }

    /// The optional FREEZE loading path restores the same database (and does freeze).
    @Test func freezeLoadingRoundTrips() throws {
        let server = try TestServer.shared()
        let source = try createHardCases(server)
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        #expect(try runTenure(["backup", "--url", url(server, source), "-o", archive], environment: [:]).status == 0)
        let target = newDatabaseName("frozen")
        let restore = try runTenure(["restore", archive, "--url", url(server, target), "--jobs", "2"], environment: ["TENURE_RESTORE_FREEZE": "1"])
        #expect(restore.status == 0, "\(restore)")
        #expect(try fingerprint(server, target) == fingerprint(server, source))
        #expect(try schemaDump(server, target) == schemaDump(server, source))
        let visible = try server.rows("SELECT relallvisible = relpages AND relpages > 0 FROM pg_class WHERE relname = 'accounts'", database: target)
        #expect(visible == [["t"]], "COPY FREEZE leaves the pages all-visible")
    }

    /// One big table and little else: the other session would wait through its key's build,
    /// so that build is given a parallel worker; the copy is the same.
    @Test func aBuildRunningAloneUsesTheIdleSession() throws {
        let server = try TestServer.shared()
        let source = newDatabaseName("alone")
        _ = try server.rows("CREATE DATABASE \(source)")
        for statement in [
            "CREATE TABLE kinds (id integer PRIMARY KEY, label text)",
            "INSERT INTO kinds SELECT g, 'kind ' || g FROM generate_series(1, 10) g",
            "CREATE TABLE big (id bigint, kind integer NOT NULL, note text)",
            "INSERT INTO big SELECT g, 1 + g % 10, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 300000) g",
            "ALTER TABLE big ADD PRIMARY KEY (id)",
            "ALTER TABLE big ADD FOREIGN KEY (kind) REFERENCES kinds (id)",
        ] { _ = try server.rows(statement, database: source) }
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        #expect(try runTenure(["backup", "--url", url(server, source), "-o", archive], environment: [:]).status == 0)
        let target = newDatabaseName("alone_copy")
        let restore = try runTenure(["restore", archive, "--url", url(server, target), "--jobs", "2"], environment: ["TENURE_TIMING": "1"])
        #expect(restore.status == 0, "\(restore)")
        #expect(restore.stderr.contains("big_pkey (dump id") && restore.stderr.contains("may use 1 parallel workers"), "\(restore.stderr)")
        #expect(try fingerprint(server, target) == fingerprint(server, source))
        #expect(try schemaDump(server, target) == schemaDump(server, source))
    }

    @Test func restoreFromStdinAndBackupToStdout() throws {
        let server = try TestServer.shared()
        let source = try createHardCases(server)
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        let shell = try ChildProcess(
            ["/bin/sh", "-c", "\"$TENURE\" backup --url \"$SRC\" -o - > \"$OUT\" && \"$TENURE\" restore - --url \"$DST\" < \"$OUT\""],
            environment: [
                "PATH": "/usr/bin:/bin", "TENURE": tenureExecutable(), "SRC": url(server, source), "OUT": archive,
                "DST": url(server, newDatabaseName("piped")),
            ]
        ).wait()
        #expect(shell.status == 0, "\(shell)")
    }

    @Test func sqlExportRestoresWithPsql() throws {
        let server = try TestServer.shared()
        let source = try createHardCases(server)
        let export = temporaryFile(".sql.zst")
        defer { try? FileManager.default.removeItem(atPath: export) }
        let backup = try runTenure(["backup", "--url", url(server, source), "-o", export, "--format", "sql"], environment: [:])
        #expect(backup.status == 0, "\(backup)")
        let target = newDatabaseName("psql")
        _ = try server.rows("CREATE DATABASE \(target)")
        let psql = try ChildProcess(
            [
                "/bin/sh", "-c",
                "zstd -dc \"$FILE\" | psql -X -q -v ON_ERROR_STOP=1 -h \"$HOST\" -p \"$PORT\" -U postgres -d \"$DB\" > /dev/null",
            ],
            environment: ["PATH": "/usr/bin:/bin", "FILE": export, "HOST": server.cluster.socketDirectory, "PORT": String(server.port), "DB": target]
        ).wait()
        #expect(psql.status == 0, "\(psql)")
        #expect(try schemaDump(server, target) == schemaDump(server, source))
        #expect(try fingerprint(server, target) == fingerprint(server, source))
    }

    /// Writers run during the backup; invariants across tables and parts hold in the copy (B7).
    @Test func snapshotConsistencyUnderConcurrentWrites() throws {
        let server = try TestServer.shared()
        let source = newDatabaseName("ledger")
        _ = try server.rows("CREATE DATABASE \(source)")
        let setup = try server.connect(database: source)
        try setup.execute(
            """
            CREATE TABLE left_accounts (id integer PRIMARY KEY, balance bigint NOT NULL, padding text);
            CREATE TABLE right_accounts (id integer PRIMARY KEY, balance bigint NOT NULL, padding text);
            CREATE TABLE ledger (seq bigint PRIMARY KEY, pair bigint NOT NULL, amount bigint NOT NULL);
            INSERT INTO left_accounts SELECT g, 1000, repeat('l', 200) FROM generate_series(1, 40000) g;
            INSERT INTO right_accounts SELECT g, 1000, repeat('r', 200) FROM generate_series(1, 40000) g;
            CREATE SEQUENCE ledger_seq;
            CREATE TABLE counter (n bigint NOT NULL);
            INSERT INTO counter VALUES (0);
            """)
        setup.close()
        let stop = Locked(false)
        let writes = Locked(0)
        let parameters = server.parameters(database: source)
        let writers = (0..<2).map { writer in
            let thread = Thread {
                guard let connection = try? PostgresConnection(parameters) else { return }
                defer { connection.close() }
                var random = SystemRandomNumberGenerator()
                while !stop.withLock({ $0 }) {
                    let from = Int.random(in: 1...40000, using: &random)
                    let to = Int.random(in: 1...40000, using: &random)
                    let amount = Int.random(in: 1...50, using: &random)
                    // Move money between the two tables and record both legs, paired, gap-free.
                    _ = try? connection.execute(
                        """
                        BEGIN;
                        UPDATE left_accounts SET balance = balance - \(amount) WHERE id = \(from);
                        UPDATE right_accounts SET balance = balance + \(amount) WHERE id = \(to);
                        WITH c AS (UPDATE counter SET n = n + 2 RETURNING n)
                        INSERT INTO ledger SELECT c.n - k, c.n / 2, \(amount) FROM c, (VALUES (0), (1)) v(k);
                        SELECT nextval('ledger_seq'); SELECT nextval('ledger_seq');
                        COMMIT;
                        """)
                    writes.withLock { $0 += 1 }
                    _ = writer
                }
            }
            thread.start()
            return thread
        }
        defer { stop.withLock { $0 = true } }
        while writes.withLock({ $0 }) < 50 { Thread.sleep(forTimeInterval: 0.05) }
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        var options = BackupOptions(
            source: parameters, jobs: 3, format: .native, pgDump: PgDump(), createdAt: Date())
        options.partBytes = 256 << 10  // many CTID parts per table
        options.frameBytes = 128 << 10
        let summary = try runBackup(options, sink: try AtomicFileSink(path: archive))
        let during = writes.withLock { $0 }
        stop.withLock { $0 = true }
        _ = writers
        #expect(summary.memberCount > 20, "the big tables must be split into many parts")
        let target = newDatabaseName("ledger_copy")
        let restore = try runTenure(["restore", archive, "--url", url(server, target)], environment: [:])
        #expect(restore.status == 0, "\(restore)")
        let checks = try server.rows(
            """
            SELECT (SELECT sum(balance) FROM left_accounts) + (SELECT sum(balance) FROM right_accounts),
                   (SELECT count(*) FROM ledger), (SELECT coalesce(max(seq), 0) FROM ledger),
                   (SELECT count(*) FROM (SELECT pair FROM ledger GROUP BY pair HAVING count(*) <> 2) unpaired),
                   (SELECT last_value FROM ledger_seq)
            """, database: target)[0]
        #expect(checks[0] == "80000000", "money was created or lost across tables: \(checks)")
        #expect(checks[1] == checks[2], "the ledger has gaps: \(checks)")
        #expect(checks[3] == "0", "a transfer's legs were split across the snapshot: \(checks)")
        #expect(Int(checks[4]!)! >= Int(checks[2]!)!, "the sequence is behind the ledger: \(checks)")
        #expect(during >= 50)
    }
}

