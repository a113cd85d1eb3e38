import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

/// The upgrade service through the CLI on the real test server.
@Suite struct UploadTests {
    static let bin = "/usr/lib/postgresql/15/bin"

    /// A URL for `database` on the test server as the superuser.
    func url(_ world: Fixture, _ database: String) -> String {
        world.catalogURL.replacingOccurrences(of: "/\(world.catalogName)?", with: "/\(database)?")
    }

    func shell(_ command: String) throws -> ChildProcess.Outcome {
        try ChildProcess(["/bin/sh", "-c", command], environment: ["PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"]).wait()
    }

    func scratch() -> String {
        let directory = "/tmp/tenure-upload-test-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    /// A source database with the usual suspects: types with NULLs and odd text, a sequence
    /// with a set value, a large object, a function, a view, an index, a foreign key, a
    /// trigger, a grant to a role that exists only there, and a comment.
    /// `large` adds what real customer databases have and the issue lists: 63-byte names, a
    /// function body of megabytes, a thousand small tables, PostGIS (not trusted: the world
    /// must list it in TENURE_EXTENSIONS) with a row of the customer's in `spatial_ref_sys`, a
    /// trusted extension (citext), and a 50 MB TOASTed value (only the all-formats round trip
    /// uses it: it takes minutes).
    func makeSource(_ world: Fixture, large: Bool = false) throws -> String {
        let name = "src_" + String(UUID().uuidString.prefix(8)).lowercased()
        let admin = try world.server.connect()
        defer { admin.close() }
        try admin.execute("CREATE DATABASE \(name)")
        try? admin.execute("CREATE ROLE upload_test_reader")
        let source = try world.server.connect(database: name)
        defer { source.close() }
        try source.execute(
            """
            CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, note text, balance numeric(12,2), born date, tags jsonb, photo bytea);
            CREATE TABLE orders (id bigint PRIMARY KEY, customer_id integer NOT NULL REFERENCES customers (id), placed timestamptz NOT NULL, total numeric);
            CREATE INDEX orders_customer ON orders (customer_id);
            INSERT INTO customers (name, note, balance, born, tags, photo)
              SELECT 'customer ' || g, CASE WHEN g % 5 = 0 THEN NULL WHEN g % 7 = 0 THEN '' ELSE E'line1\\nline2\\ttab \\\\ back ünïcödé ' || g END,
                     g * 1.5, date '2000-01-01' + g, jsonb_build_object('g', g, 'even', g % 2 = 0), decode(md5(g::text), 'hex')
              FROM generate_series(1, 300) g;
            INSERT INTO orders SELECT g, 1 + g % 300, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 hour', g * 2.25 FROM generate_series(1, 2000) g;
            CREATE SEQUENCE invoice_numbers START 100;
            SELECT setval('invoice_numbers', 4242);
            CREATE FUNCTION order_total(c integer) RETURNS numeric LANGUAGE sql STABLE AS $$ SELECT sum(total) FROM orders WHERE customer_id = c $$;
            CREATE VIEW big_customers AS SELECT c.id, c.name, order_total(c.id) AS total FROM customers c WHERE order_total(c.id) > 100;
            CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.note := coalesce(NEW.note, 'touched'); RETURN NEW; END $$;
            CREATE TRIGGER customers_touch BEFORE INSERT ON customers FOR EACH ROW EXECUTE FUNCTION touch();
            COMMENT ON TABLE customers IS 'people; with a ''quote''';
            GRANT SELECT ON customers TO upload_test_reader;
            SELECT lo_from_bytea(0, 'large object bytes');
            -- Wide tables: a COPY header naming 200 and 1,600 columns (PostgreSQL's most).
            DO $$ BEGIN
                EXECUTE 'CREATE TABLE wide (' || (SELECT string_agg(format('c%s integer', g), ', ') FROM generate_series(1, 200) g) || ')';
                EXECUTE 'CREATE TABLE widest (' || (SELECT string_agg(format('column_%s integer', g), ', ') FROM generate_series(1, 1600) g) || ')';
            END $$;
            INSERT INTO wide (c1, c100, c200) VALUES (1, 100, 200), (2, NULL, 400);
            INSERT INTO widest (column_1, column_1600) VALUES (1, 1600);
            """)
        guard large else { return name }
        try source.execute(
            """
            -- 63-byte identifiers (PostgreSQL's longest), quoted and plain.
            CREATE TABLE "Ünïcode table name that is exactly sixty-three bytes long ....." (id int);
            CREATE TABLE this_plain_identifier_is_exactly_sixty_three_bytes_long_abcdefg (
                this_column_identifier_is_exactly_sixty_three_bytes_long_abcdef int);
            INSERT INTO this_plain_identifier_is_exactly_sixty_three_bytes_long_abcdefg VALUES (63);
            -- A function body of several megabytes.
            DO $$ BEGIN
                EXECUTE 'CREATE FUNCTION big_body() RETURNS int LANGUAGE sql IMMUTABLE AS $f$ SELECT 1 '
                    || repeat('/* padding padding padding padding padding padding padding padding */ ', 60000) || ' $f$';
            END $$;
            -- A thousand small tables.
            DO $$ BEGIN
                FOR i IN 1..1000 LOOP
                    EXECUTE format('CREATE TABLE small_%s (id int PRIMARY KEY, v text)', i);
                    EXECUTE format('INSERT INTO small_%s VALUES (%s, %L)', i, i, 'row ' || i);
                END LOOP;
            END $$;
            -- An extension that is not trusted (PostGIS, created by Tenure from TENURE_EXTENSIONS)
            -- with a row of the customer's own in its configuration table, and a trusted one.
            CREATE EXTENSION postgis;
            CREATE EXTENSION citext;
            INSERT INTO spatial_ref_sys (srid, auth_name, auth_srid, srtext, proj4text)
                VALUES (910001, 'tenure', 910001, '', '+proj=longlat +datum=WGS84 +no_defs');
            CREATE TABLE places (id int PRIMARY KEY, name citext, geom geometry(Point, 4326), area geometry(Polygon, 910001));
            INSERT INTO places SELECT g, 'Place ' || g, ST_SetSRID(ST_MakePoint(g / 10.0, g / 20.0), 4326),
                ST_SetSRID(ST_Buffer(ST_MakePoint(g, g), 1, 4), 910001) FROM generate_series(1, 500) g;
            CREATE INDEX places_geom ON places USING gist (geom);
            -- A TOASTed value of 50 MB (random, so it does not compress away).
            CREATE TABLE toasted (id int PRIMARY KEY, big text);
            INSERT INTO toasted SELECT 1, string_agg(md5(random()::text), '') FROM generate_series(1, 1600000);
            """)
        return name
    }

    /// The upgrade scripts the round trips use.
    func scripts(_ directory: String, failing: Bool = false) throws -> String {
        let path = directory + (failing ? "/scripts-failing" : "/scripts")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try "ALTER TABLE customers ADD COLUMN tier text NOT NULL DEFAULT 'basic';\nUPDATE customers SET tier = 'gold' WHERE id % 10 = 0;\n"
            .write(toFile: path + "/0001_tier.sql", atomically: true, encoding: .utf8)
        try "CREATE TABLE audit_log (id serial PRIMARY KEY, message text);\nCOPY audit_log (message) FROM stdin;\nupgraded\n\\.\n"
            .write(toFile: path + "/0002_log.sql", atomically: true, encoding: .utf8)
        if failing {
            try "ALTER TABLE customers ADD COLUMN tier2 text;\nSELECT no_such_function();\n".write(toFile: path + "/0003_broken.sql", atomically: true, encoding: .utf8)
        }
        return path
    }

    /// Schema without owners and grants (the upload's role owns everything) and data
    /// fingerprints per table, sequence values and large objects.
    func fingerprint(_ world: Fixture, _ database: String) throws -> [String] {
        let schema = try shell("\(Self.bin)/pg_dump --schema-only --no-owner --no-privileges '\(url(world, database))' | grep -v -e '^--' -e '^\\\\restrict' -e '^\\\\unrestrict' -e '^$'")
        try #require(schema.status == 0, "\(schema)")
        var lines = [schema.stdout]
        let connection = try world.server.connect(database: database)
        defer { connection.close() }
        for table in ["customers", "orders", "audit_log", "places", "spatial_ref_sys"] {
            let exists = try connection.query("SELECT to_regclass($1) IS NOT NULL AS e", ["public." + table])[0, "e"] == "t"
            guard exists else { continue }
            let sql = "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS f FROM public.\(table) t"
            lines.append(table + " " + (try connection.query(sql)[0, "f"] ?? ""))
        }
        lines.append("seq " + (try connection.query("SELECT last_value::text AS v FROM public.invoice_numbers")[0, "v"] ?? ""))
        lines.append("lo " + (try connection.query("SELECT string_agg(encode(lo_get(oid), 'escape'), ',') AS v FROM pg_largeobject_metadata")[0, "v"] ?? ""))
        return lines
    }

    func leftovers(_ world: Fixture, _ id: String) throws -> [String] {
        try world.server.rows("SELECT datname FROM pg_database WHERE datname LIKE $1 UNION ALL SELECT rolname FROM pg_roles WHERE rolname LIKE $1", [id + "%"])
            .map { $0[0] ?? "" }
    }

    /// Every accepted format: upload → upgrade → download → restore equals the source after
    /// the scripts' changes; the original is deleted after the first success.
    @Test func eachFormatRoundTrips() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var world = try Fixture(["TENURE_EXTENSIONS": "postgis"])
        world.environment["TENURE_UPGRADE_SCRIPTS"] = try scripts(directory)
        let source = try makeSource(world, large: true)
        // The expected result: the scripts applied to a copy of the source.
        let expected = source + "_expected"
        let admin = try world.server.connect()
        try admin.execute("CREATE DATABASE \(expected) TEMPLATE \(source)")
        admin.close()
        for script in ["0001_tier.sql", "0002_log.sql"] {
            let applied = try shell("\(Self.bin)/psql -X -q -v ON_ERROR_STOP=1 -1 -f \(world.environment["TENURE_UPGRADE_SCRIPTS"]!)/\(script) '\(url(world, expected))'")
            try #require(applied.status == 0, "\(applied)")
        }
        let want = try fingerprint(world, expected)

        let backup = try world.tenure("backup", "--url", url(world, source), "-o", directory + "/src.tenure")
        try #require(backup.status == 0, "\(backup)")
        for command in [
            "\(Self.bin)/pg_dump -Fc '\(url(world, source))' > \(directory)/src.dump",
            "\(Self.bin)/pg_dump '\(url(world, source))' > \(directory)/src.sql",
            "zstd -q -19 \(directory)/src.sql -o \(directory)/src.sql.zst",
            "\(Self.bin)/pg_dump -Ft '\(url(world, source))' > \(directory)/src.tar",
            "gzip -c \(directory)/src.sql > \(directory)/src.sql.gz",
            // A backup zip as an ERP's database manager makes it: dump.sql beside a filestore.
            """
            python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED); z.write(sys.argv[2], "dump.sql"); \
            z.writestr("filestore/ab/abcdef", b"attachment bytes" * 1000); z.writestr("manifest.json", "{}", zipfile.ZIP_STORED); z.close()' \
            \(directory)/src.zip \(directory)/src.sql
            """,
        ] {
            let made = try shell(command)
            try #require(made.status == 0, "\(made)")
        }
        for (file, format) in [
            ("src.tenure", "tenure"), ("src.dump", "pg_dump-custom"), ("src.sql", "sql"), ("src.sql.zst", "sql.zst"), ("src.tar", "pg_dump-tar"),
            ("src.sql.gz", "sql.gz"), ("src.zip", "zip"),
        ] {
            let upload = try world.tenure("upload", "create", directory + "/" + file, "--json")
            try #require(upload.status == 0, "\(file): \(upload)")
            let id = try #require(upload.json["id"] as? String)
            #expect(id.hasPrefix("up_") && upload.json["state"] as? String == "uploaded" && upload.json["format"] as? String == format, "\(upload)")
            #expect(try world.server.databaseExists(id + "_g0"))
            // The role is unprivileged and may not log in between runs.
            let role = try world.server.rows(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = $1", [id + "_owner"])
            #expect(role == [["f", "f", "f", "f", "f", "f"]], "\(file): \(role)")
            let owners = try world.server.rows(
                // Relations only: an extension's composite types (PostGIS's geometry_dump) stay,
                // like its functions and types, with the extension's creator.
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind <> 'c'",
                database: id + "_g0")
            #expect(owners == [[id + "_owner"]], "\(file): \(owners)")

            let upgrade = try world.tenure("upload", "upgrade", id, "--json")
            try #require(upgrade.status == 0, "\(file): \(upgrade)")
            #expect(upgrade.json["state"] as? String == "upgraded" && upgrade.json["applied_scripts"] as? [String] == ["0001_tier.sql", "0002_log.sql"])
            #expect(upgrade.json["original_deleted_at"] is String)
            // The original is deleted after the first success; only the result remains.
            #expect(try leftovers(world, id).sorted() == [id + "_g1", id + "_owner"])
            // What the upgrade left equals the source after the scripts, whatever the format.
            #expect(try fingerprint(world, id + "_g1") == want, "\(file): the upgraded database differs from the source after the scripts")
            // The download paths are the same for every format: taken end to end for two of them.
            guard ["src.tenure", "src.sql.gz"].contains(file) else {
                let delete = try world.tenure("upload", "delete", id, "--confirm", id, "--json")
                #expect(delete.status == 0 && delete.json["state"] as? String == "destroyed", "\(delete)")
                #expect(try leftovers(world, id).isEmpty)
                continue
            }

            let result = directory + "/\(id).tenure"
            let download = try world.tenure("upload", "download", id, "-o", result)
            try #require(download.status == 0, "\(download)")
            let restored = "restored_" + String(id.dropFirst(3))
            let restore = try world.tenure("restore", result, "--url", url(world, restored))
            try #require(restore.status == 0, "\(file): \(restore)")
            let got = try fingerprint(world, restored)
            #expect(got == want, "\(file): restored result differs from the source after the scripts")

            // The SQL download restores with psql too.
            let sqlResult = directory + "/\(id).sql.zst"
            #expect(try world.tenure("upload", "download", id, "-o", sqlResult, "--format", "sql").status == 0)
            let viaPsql = restored + "_psql"
            let admin = try world.server.connect()
            try admin.execute("CREATE DATABASE \(viaPsql)")
            admin.close()
            let psql = try shell("zstd -dc \(sqlResult) | \(Self.bin)/psql -X -q -v ON_ERROR_STOP=1 '\(url(world, viaPsql))' 2>&1")
            #expect(psql.status == 0, "\(psql)")
            #expect(try fingerprint(world, viaPsql) == want, "\(file): SQL download differs")

            // Destroyed means gone. (The copies restored here hold objects owned by the
            // upload's role; they go first, as a customer's copies would live elsewhere.)
            let admin2 = try world.server.connect()
            try admin2.execute("DROP DATABASE \(restored) WITH (FORCE)")
            try admin2.execute("DROP DATABASE \(viaPsql) WITH (FORCE)")
            admin2.close()
            let delete = try world.tenure("upload", "delete", id, "--confirm", id, "--json")
            #expect(delete.status == 0 && delete.json["state"] as? String == "destroyed", "\(delete)")
            #expect(try leftovers(world, id).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: world.home + "/uploads/" + id))
        }
    }

    /// A failed script keeps the previous good result and records the script and the error.
    @Test func failedScriptKeepsPreviousResult() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let world = try Fixture()
        let source = try makeSource(world)
        let dump = try shell("\(Self.bin)/pg_dump '\(url(world, source))' > \(directory)/src.sql")
        try #require(dump.status == 0)
        let upload = try world.tenure("upload", "create", directory + "/src.sql", "--json")
        let id = try #require(upload.json["id"] as? String, "\(upload)")

        // Failing before any success: the original stays.
        let failing = ["TENURE_UPGRADE_SCRIPTS": try scripts(directory, failing: true)]
        let first = try world.tenure(["upload", "upgrade", id], environment: failing)
        #expect(first.status != 0 && first.stderr.contains("0003_broken.sql") && first.stderr.contains("no_such_function"), "\(first)")
        var shown = try world.tenure("upload", "show", id, "--json").json
        #expect(shown["state"] as? String == "upgrade-failed")
        let failure = shown["last_failure"] as? [String: Any]
        #expect(failure?["script"] as? String == "0003_broken.sql" && (failure?["error"] as? String)?.contains("no_such_function") == true)
        #expect(failure?["sqlstate"] as? String == "42883")
        #expect(try leftovers(world, id).sorted() == [id + "_g0", id + "_owner"])
        #expect(shown["original_deleted_at"] is NSNull)

        // A good run: the result replaces the original.
        let good = ["TENURE_UPGRADE_SCRIPTS": try scripts(directory)]
        #expect(try world.tenure(["upload", "upgrade", id], environment: good).status == 0)
        #expect(try leftovers(world, id).sorted() == [id + "_g2", id + "_owner"])
        let before = try fingerprint(world, id + "_g2")

        // Failing after a success: the previous result stays, untouched, downloadable.
        let again = try world.tenure(["upload", "upgrade", id], environment: failing)
        #expect(again.status != 0, "\(again)")
        shown = try world.tenure("upload", "show", id, "--json").json
        #expect(shown["state"] as? String == "upgrade-failed" && shown["result_available"] as? Bool == true)
        #expect(try leftovers(world, id).sorted() == [id + "_g2", id + "_owner"])
        #expect(try fingerprint(world, id + "_g2") == before)
        // The failed script's transaction was rolled back: no tier2 column.
        #expect(try world.server.rows("SELECT count(*) FROM information_schema.columns WHERE column_name = 'tier2'", database: id + "_g2") == [["0"]])
        #expect(try world.tenure("upload", "download", id, "-o", directory + "/kept.tenure").status == 0)
        #expect(try runTenure(["verify", directory + "/kept.tenure"], environment: [:]).status == 0)
    }

    /// Hostile uploads: each rejected with a reason; nothing left, nothing outside the role.
    @Test func hostileUploadsAreRejectedAndLeaveNothing() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let marker = directory + "/pwned"
        let world = try Fixture(["TENURE_UPLOAD_STATEMENT_TIMEOUT": "2s"])
        let source = try makeSource(world)
        let rolesBefore = try world.server.rows("SELECT rolname FROM pg_roles WHERE rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls ORDER BY 1")
        #expect(try world.tenure("backup", "--url", url(world, source), "-o", directory + "/good.tenure").status == 0)
        #expect(try shell("\(Self.bin)/pg_dump -Fc '\(url(world, source))' > \(directory)/good.dump").status == 0)
        #expect(try shell("\(Self.bin)/pg_dump '\(url(world, source))' | zstd -q > \(directory)/good.sql.zst").status == 0)

        var cases: [(name: String, file: String, expect: String)] = []
        func sql(_ name: String, _ text: String, _ expect: String) throws {
            let file = directory + "/\(name).sql"
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            cases.append((name, file, expect))
        }
        try sql("copy-to-program", "CREATE TABLE t (x int);\nCOPY t TO PROGRAM 'touch \(marker)';\n", "PROGRAM")
        try sql("copy-from-program", "CREATE TABLE t (x int);\nCOPY t FROM PROGRAM 'touch \(marker)';\n", "PROGRAM")
        try sql("copy-from-file", "CREATE TABLE t (x text);\nCOPY t FROM '/etc/passwd';\n", "FROM a file")
        try sql("psql-shell", "SELECT 1;\n\\! touch \(marker)\n", "meta-command '\\!'")
        try sql("psql-copy", "CREATE TABLE t (x text);\n\\copy t from '/etc/passwd'\n", "meta-command '\\copy'")
        try sql("psql-connect", "\\connect postgres\nCREATE TABLE t (x int);\n", "meta-command '\\connect'")
        try sql("cve-2025-8715", "--\n-- Name: x\n\\! touch \(marker)\n; Type: TABLE\n", "meta-command")
        try sql("alter-role-superuser", "ALTER ROLE CURRENT_USER SUPERUSER;\n", "ALTER ROLE is not allowed")
        try sql("create-role", "CREATE ROLE evil SUPERUSER LOGIN PASSWORD 'x';\n", "CREATE ROLE is not allowed")
        try sql("untrusted-language", "CREATE LANGUAGE plpython3u;\n", "untrusted languages")
        try sql("c-function", "CREATE FUNCTION evil() RETURNS int LANGUAGE c AS '/lib/x86_64-linux-gnu/libc.so.6', 'system';\n", "permission denied for language c")
        try sql("untrusted-extension", "CREATE EXTENSION plperlu;\n", "neither trusted nor in TENURE_EXTENSIONS (none is listed)")
        try sql("alter-system", "ALTER SYSTEM SET log_statement = 'none';\n", "ALTER SYSTEM is not allowed")
        try sql("lo-import", "SELECT lo_import('/etc/passwd');\n", "lo_import")
        try sql("lo-export", "SELECT lo_from_bytea(4242, 'x');\nSELECT lo_export(4242, '\(marker)');\n", "lo_export")
        try sql("pg-read-file", "SELECT pg_read_file('/etc/passwd');\n", "permission denied")
        try sql("set-role", "SET ROLE postgres;\n", "SET ROLE")
        try sql("newline-name", "CREATE TABLE \"evil\nname\" (x int);\n", "line break")
        try sql(
            "newline-name-dynamic", "DO $$ BEGIN EXECUTE format('CREATE TABLE %I (x int)', E'evil\\n\\\\! touch \(marker)'); END $$;\n", "line break")
        try sql("statement-time", "SELECT pg_sleep(60);\n", "longer than the limit")
        try sql("statement-time-reset", "SET statement_timeout = 0;\nSELECT set_config('statement_timeout', '0', false);\nSELECT pg_sleep(60);\n", "longer than the limit")
        try sql("truncated-sql", "CREATE TABLE t (x int);\nCREATE TABLE u (a int", "truncated")
        try sql("truncated-copy", "CREATE TABLE t (x int);\nCOPY t (x) FROM stdin;\n1\n2\n", "COPY data")
        // Truncated and corrupt archives.
        let good = try Data(contentsOf: URL(fileURLWithPath: directory + "/good.tenure"))
        try good.prefix(good.count / 2).write(to: URL(fileURLWithPath: directory + "/cut.tenure"))
        cases.append(("truncated-tenure", directory + "/cut.tenure", "truncated"))
        var flipped = good
        flipped[flipped.count / 2] ^= 0x55
        try flipped.write(to: URL(fileURLWithPath: directory + "/flipped.tenure"))
        cases.append(("corrupt-tenure", directory + "/flipped.tenure", "rejected"))
        let dump = try Data(contentsOf: URL(fileURLWithPath: directory + "/good.dump"))
        try dump.prefix(dump.count * 2 / 3).write(to: URL(fileURLWithPath: directory + "/cut.dump"))
        cases.append(("truncated-custom", directory + "/cut.dump", "rejected"))
        let zst = try Data(contentsOf: URL(fileURLWithPath: directory + "/good.sql.zst"))
        try zst.prefix(zst.count / 2).write(to: URL(fileURLWithPath: directory + "/cut.sql.zst"))
        cases.append(("truncated-zstd", directory + "/cut.sql.zst", "truncated"))
        // A zip bomb: 200 MB of one comment line repeated, a few KB compressed.
        #expect(try shell("yes -- '-- padding padding padding' | head -c 200000000 | zstd -q -3 > \(directory)/bomb.sql.zst").status == 0)
        cases.append(("zip-bomb", directory + "/bomb.sql.zst", "decompression bomb"))
        var generator = SystemRandomNumberGenerator()
        try Data((0..<65_536).map { _ in UInt8.random(in: 0...255, using: &generator) }).write(to: URL(fileURLWithPath: directory + "/garbage.bin"))
        cases.append(("garbage", directory + "/garbage.bin", "not a recognized format"))
        #expect(try shell("printf 'SELECT 1;' | gzip > \(directory)/x.sql.gz && printf 'garbage' >> \(directory)/x.sql.gz").status == 0)
        cases.append(("gzip-trailing-garbage", directory + "/x.sql.gz", "trailing garbage"))
        #expect(try shell("\(Self.bin)/pg_dump '\(url(world, source))' | gzip | head -c 2000 > \(directory)/cut.sql.gz").status == 0)
        cases.append(("truncated-gzip", directory + "/cut.sql.gz", "truncated"))
        func zip(_ name: String, _ members: String, _ expect: String) throws {
            let file = directory + "/\(name).zip"
            let made = try shell(
                "python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], \"w\", zipfile.ZIP_DEFLATED); [z.writestr(n, \"SELECT 1;\") for n in sys.argv[2:]]; z.close()' \(file) \(members)")
            #expect(made.status == 0, "\(made)")
            cases.append((name, file, expect))
        }
        try zip("zip-two-sql-files", "dump.sql other.sql", "more than one SQL file")
        try zip("zip-dotdot-name", "../dump.sql", "not a plain relative path")
        try zip("zip-absolute-name", "/etc/dump.sql", "not a plain relative path")
        try zip("zip-without-dump", "readme.txt", "no dump.sql")
        let bombMade = try shell(
            "python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], \"w\", zipfile.ZIP_DEFLATED); z.writestr(\"dump.sql\", \"SELECT 1;\"); z.writestr(\"filestore/big\", b\"\\0\" * 300000000); z.close()' \(directory)/bomb.zip")
        #expect(bombMade.status == 0, "\(bombMade)")
        cases.append(("zip-bomb-member", directory + "/bomb.zip", "decompression bomb"))

        var rejected = 0
        for item in cases {
            let outcome = try world.tenure("upload", "create", item.file, "--json")
            let message = outcome.stderr + outcome.stdout
            #expect(outcome.status != 0, "\(item.name) was accepted: \(outcome)")
            #expect(message.contains(item.expect), "\(item.name): \(message)")
            let id = message.range(of: "up_[0-9a-z]{20}", options: .regularExpression).map { String(message[$0]) }
            if let id {
                let left = try leftovers(world, id)
                #expect(left.isEmpty, "\(item.name) left \(left)")
                let shown = try world.tenure("upload", "show", id, "--json").json
                #expect(shown["state"] as? String == "rejected" && (shown["reject_reason"] as? String)?.isEmpty == false, "\(item.name): \(shown)")
            } else {
                Issue.record("\(item.name): no upload id in \(message)")
            }
            if outcome.status != 0 && message.contains(item.expect) { rejected += 1 }
        }
        #expect(rejected == cases.count, "\(rejected) of \(cases.count) hostile uploads rejected as expected")
        // Nothing escaped: no file, no new or changed role, no database of an upload left.
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(try world.server.rows("SELECT rolname FROM pg_roles WHERE rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls ORDER BY 1") == rolesBefore)
        #expect(try world.server.rows("SELECT rolname FROM pg_roles WHERE rolname LIKE 'up\\_%' AND (rolsuper OR rolcreaterole OR rolcreatedb)").isEmpty)
        #expect(try world.server.rows("SELECT count(*) FROM pg_roles WHERE rolname = 'evil'") == [["0"]])
        let live = try world.tenure("upload", "list", "--json").json["uploads"] as? [[String: Any]] ?? []
        #expect(live.allSatisfy { $0["state"] as? String == "rejected" })
        for upload in live { #expect(try leftovers(world, upload["id"] as! String).isEmpty) }
        #expect(try world.server.rows("SELECT setting FROM pg_settings WHERE name = 'log_statement'") != [["none"]])

        // Too big: refused at the limit, also rejected and clean.
        let big = try world.tenure(["upload", "create", directory + "/good.tenure"], environment: ["TENURE_UPLOAD_MAX_BYTES": "4096"])
        #expect(big.status != 0 && big.stderr.contains("TENURE_UPLOAD_MAX_BYTES"), "\(big)")
    }

    /// An extension the upload's role may not create (not trusted) is created by Tenure when
    /// TENURE_EXTENSIONS lists it, its tables handed to the role, its configuration rows from
    /// the dump loaded after it; unlisted, it is refused with the list.
    @Test func allowlistedExtensionsAreCreatedByTenure() throws {
        try installTestExtension()
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let world = try Fixture(["TENURE_EXTENSIONS": "tenure_config_test, pg_stat_statements"])
        let source = "ext_" + String(UUID().uuidString.prefix(8)).lowercased()
        let admin = try world.server.connect()
        try admin.execute("CREATE DATABASE \(source)")
        admin.close()
        let connection = try world.server.connect(database: source)
        try connection.execute(
            """
            CREATE EXTENSION tenure_config_test;
            CREATE EXTENSION citext;
            INSERT INTO tenure_settings VALUES ('mine', 'user value', false);
            CREATE TABLE notes (id int PRIMARY KEY, body citext, setting text DEFAULT tenure_setting('mine'));
            INSERT INTO notes (id, body) VALUES (1, 'Hello');
            """)
        connection.close()
        for (file, command) in [
            ("ext.sql", "\(Self.bin)/pg_dump '\(url(world, source))' > \(directory)/ext.sql"),
            ("ext.dump", "\(Self.bin)/pg_dump -Fc '\(url(world, source))' > \(directory)/ext.dump"),
            ("ext.tenure", "TENURE_HOME=\(world.home) \(tenureExecutable()) backup --url '\(url(world, source))' -o \(directory)/ext.tenure"),
        ] {
            let made = try shell(command)
            try #require(made.status == 0, "\(made)")
            let upload = try world.tenure("upload", "create", directory + "/" + file, "--json")
            try #require(upload.status == 0, "\(file): \(upload)")
            let id = try #require(upload.json["id"] as? String)
            let database = id + "_g0"
            #expect(try world.server.rows("SELECT key FROM tenure_settings ORDER BY key", database: database) == [["builtin"], ["mine"]], "\(file)")
            #expect(try world.server.rows("SELECT setting FROM notes", database: database) == [["user value"]], "\(file)")
            #expect(
                try world.server.rows("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'tenure_settings'", database: database) == [[id + "_owner"]],
                "\(file): the extension's tables belong to the upload's role")
            #expect(try world.server.rows("SELECT extname FROM pg_extension WHERE extname IN ('tenure_config_test', 'citext') ORDER BY 1", database: database)
                == [["citext"], ["tenure_config_test"]])
        }
        // Hosted databases: tenure db extension add.
        let hosted = try world.tenure("db", "create", "ext-cli", "--json")
        let hostedID = try #require(hosted.json["id"] as? String)
        let added = try world.tenure("db", "extension", "add", hostedID, "tenure_config_test", "--json")
        #expect(added.status == 0 && added.json["created"] as? Bool == true, "\(added)")
        #expect(try world.tenure("db", "extension", "add", hostedID, "tenure_config_test", "--json").json["created"] as? Bool == false)
        let unlisted = try world.tenure("db", "extension", "add", hostedID, "pageinspect")
        #expect(unlisted.status != 0 && unlisted.stderr.contains("TENURE_EXTENSIONS"), "\(unlisted)")
        #expect(try world.tenure("db", "extension", "add", "up_00000000000000000000", "citext").status != 0)

        // Not listed: refused with the list, nothing left.
        let strict = try Fixture(["TENURE_EXTENSIONS": "pg_stat_statements"])
        let refused = try strict.tenure("upload", "create", directory + "/ext.sql", "--json")
        let message = refused.stderr + refused.stdout
        #expect(refused.status != 0 && message.contains("tenure_config_test") && message.contains("listed: pg_stat_statements"), "\(refused)")
        if let range = message.range(of: "up_[0-9a-z]{20}", options: .regularExpression) {
            #expect(try leftovers(strict, String(message[range])).isEmpty)
        }
        #expect(try strict.tenure(["config"], environment: ["TENURE_EXTENSIONS": "Bad Name"]).status != 0)
    }

    /// Hold, release, deletion request and the sweep.
    @Test func holdDeleteAndSweep() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let world = try Fixture(["TENURE_UPGRADE_HOLD": "3s"])
        try "CREATE TABLE kept (x int);\nINSERT INTO kept VALUES (1);\n".write(toFile: directory + "/a.sql", atomically: true, encoding: .utf8)
        let first = try #require(try world.tenure("upload", "create", directory + "/a.sql", "--json").json["id"] as? String)
        let second = try #require(try world.tenure("upload", "create", directory + "/a.sql", "--json").json["id"] as? String)

        // Not due yet.
        let early = try world.tenure("expire", "--dry-run", "--json").json["uploads"] as? [String: Any]
        #expect((early?["items"] as? [Any])?.isEmpty == true)
        #expect(try world.tenure("upload", "hold", first, "--reason", "litigation 42").status == 0)
        #expect(try world.tenure("upload", "hold", first, "--reason", "again").status == 4)
        // A deletion request under a legal hold is refused.
        let refused = try world.tenure("upload", "delete", first, "--confirm", first)
        #expect(refused.status == 4 && refused.stderr.contains("legal hold"), "\(refused)")
        #expect(try world.tenure("upload", "delete", first, "--confirm", second).status == 2)
        #expect(try world.tenure("upload", "delete", "db_0000000000000000000a", "--confirm", "x").status == 2)
        #expect(try world.tenure("upload", "show", UploadID.random().rawValue).status == 3)

        sleep(4)
        let forecast = try world.tenure("expire", "--dry-run", "--json")
        let items = (forecast.json["uploads"] as? [String: Any])?["items"] as? [[String: Any]] ?? []
        #expect(Set(items.map { "\($0["id"]!) \($0["action"]!)" }) == ["\(first) blocked_by_legal_hold", "\(second) destroy"], "\(forecast)")
        let sweep = try world.tenure("expire", "--json")
        #expect(sweep.status == 0, "\(sweep)")
        #expect(try world.tenure("upload", "show", second, "--json").json["state"] as? String == "destroyed")
        #expect(try leftovers(world, second).isEmpty)
        #expect(try world.tenure("upload", "show", first, "--json").json["state"] as? String == "uploaded")
        #expect(try world.server.databaseExists(first + "_g0"))

        // Released: the next sweep destroys it; the audit trail stays.
        #expect(try world.tenure("upload", "release", first).status == 0)
        #expect(try world.tenure("expire").status == 0)
        #expect(try world.tenure("upload", "show", first, "--json").json["state"] as? String == "destroyed")
        #expect(try leftovers(world, first).isEmpty)
        let actions = try world.catalogRows("SELECT action FROM audit_events WHERE database_id = $1 ORDER BY id", [first]).map { $0[0] ?? "" }
        #expect(
            actions == ["upload", "uploaded", "hold", "release", "upload_destroyed", "upload_cleanup_completed", "deletion_certificate_issued"], "\(actions)")
        // The hold's end destroyed the key with the tombstone, and the certificate says so.
        #expect(try world.catalogRows("SELECT count(*) FROM data_keys WHERE owner = $1", [first]) == [["0"]])
        #expect(try world.tenure("upload", "certificate", first).status == 0)
    }
}
