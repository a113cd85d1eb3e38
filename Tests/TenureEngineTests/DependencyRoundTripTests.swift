import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

/// Schemas whose restore order only pg_dump's dependency graph gets right, and an extension's
/// configuration data: each round-trips through the native archive and the SQL export, and
/// matches a `pg_dump -Fc | pg_restore` copy of the same database.
let dependencyCasesSQL = #"""
-- A two-level partitioned table whose key pg_dump writes as ALTER TABLE ONLY ... ADD PRIMARY
-- KEY on every level plus ALTER INDEX ... ATTACH PARTITION, referenced by a foreign key: the
-- key is valid only once every partition's index is attached.
CREATE TABLE orders (region integer NOT NULL, id integer NOT NULL, total numeric CONSTRAINT orders_total_positive CHECK (total >= 0))
    PARTITION BY LIST (region);
CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN (1, 2) PARTITION BY RANGE (id);
CREATE TABLE orders_eu_low PARTITION OF orders_eu FOR VALUES FROM (0) TO (1000);
CREATE TABLE orders_eu_high PARTITION OF orders_eu FOR VALUES FROM (1000) TO (MAXVALUE);
CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN (3);
ALTER TABLE orders ADD PRIMARY KEY (region, id);
CREATE INDEX orders_total ON orders (total);
INSERT INTO orders SELECT 1 + g % 3, g, g / 10.0 FROM generate_series(1, 3000) g;
CREATE TABLE order_lines (id serial PRIMARY KEY, region integer NOT NULL, order_id integer NOT NULL, FOREIGN KEY (region, order_id) REFERENCES orders);
INSERT INTO order_lines (region, order_id) SELECT 1 + g % 3, g FROM generate_series(1, 3000) g;
-- Check constraints and triggers on a partitioned table.
ALTER TABLE orders ADD CONSTRAINT orders_total_bounded CHECK (total < 1000000) NOT VALID;
CREATE FUNCTION orders_stamp() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN RETURN NEW; END $body$;
CREATE TRIGGER orders_stamp BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_stamp();
CREATE TRIGGER orders_eu_audit AFTER UPDATE ON orders_eu FOR EACH ROW EXECUTE FUNCTION orders_stamp();
-- Partitions detached after the foreign keys existed: each keeps its own copy of the keys.
CREATE TABLE kinds (id integer PRIMARY KEY);
INSERT INTO kinds SELECT generate_series(1, 5);
CREATE TABLE readings (id integer NOT NULL PRIMARY KEY, kind integer REFERENCES kinds) PARTITION BY RANGE (id);
CREATE TABLE readings_low PARTITION OF readings FOR VALUES FROM (0) TO (100);
CREATE TABLE readings_high PARTITION OF readings FOR VALUES FROM (100) TO (200);
INSERT INTO readings SELECT g, 1 + g % 5 FROM generate_series(0, 199) g;
CREATE TABLE reading_notes (reading integer REFERENCES readings, note text);
INSERT INTO reading_notes VALUES (5, 'low'), (50, 'low too');
ALTER TABLE readings DETACH PARTITION readings_high;
-- Constraints and an index that depend on functions.
CREATE FUNCTION is_even(integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 % 2 = 0';
CREATE FUNCTION half(integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT $1 / 2';
CREATE TABLE evens (n integer CONSTRAINT evens_even CHECK (is_even(n)));
INSERT INTO evens SELECT g * 2 FROM generate_series(1, 100) g;
ALTER TABLE evens ADD CONSTRAINT evens_positive CHECK (is_even(n) AND n > 0) NOT VALID;
CREATE UNIQUE INDEX evens_half ON evens (half(n));
ALTER TABLE evens ADD CONSTRAINT evens_n_key UNIQUE (n);
CREATE TABLE halves (n integer CONSTRAINT halves_n_fkey REFERENCES evens (n) DEFERRABLE INITIALLY DEFERRED);
INSERT INTO halves VALUES (2), (4);
-- A materialized view over a view, refreshed at the end as pg_restore does.
CREATE VIEW big_orders AS SELECT region, id, total FROM orders WHERE total > 100;
CREATE MATERIALIZED VIEW region_totals AS SELECT region, sum(total) AS total FROM big_orders GROUP BY region;
CREATE UNIQUE INDEX region_totals_region ON region_totals (region);
COMMENT ON INDEX region_totals_region IS 'one row per region';
-- An extension with configuration tables: the rows users added are data to carry.
CREATE EXTENSION tenure_config_test;
INSERT INTO tenure_settings VALUES ('mine', 'user value', false), ('theirs', E'tab\there', false);
INSERT INTO tenure_journal VALUES (1, 'user note', 'mine'), (2, 'about a shipped row', 'builtin');
SELECT setval('tenure_journal_id', 42);
"""#

func createDependencyCases(_ server: TestServer) throws -> String {
    try installTestExtension()
    let name = newDatabaseName("graph")
    _ = try server.rows("CREATE DATABASE \(name)")
    let connection = try server.connect(database: name)
    defer { connection.close() }
    try connection.execute(dependencyCasesSQL)
    return name
}

@Suite struct DependencyRoundTripTests {
    /// `pg_dump -Fc` then `pg_restore` into a new database: PostgreSQL's own copy.
    func referenceCopy(_ server: TestServer, _ source: String) throws -> String {
        let target = newDatabaseName("reference")
        _ = try server.rows("CREATE DATABASE \(target) TEMPLATE template0")
        let shell = try ChildProcess(
            [
                "/bin/sh", "-c",
                "/usr/lib/postgresql/15/bin/pg_dump -Fc -h \"$HOST\" -p \"$PORT\" -U postgres \"$SRC\" | /usr/lib/postgresql/15/bin/pg_restore --exit-on-error -h \"$HOST\" -p \"$PORT\" -U postgres -d \"$DST\"",
            ],
            environment: ["PATH": "/usr/bin:/bin", "HOST": server.cluster.socketDirectory, "PORT": String(server.port), "SRC": source, "DST": target]
        ).wait()
        #expect(shell.status == 0, "\(shell)")
        return target
    }

    @Test func nativeRestoreFollowsPgDumpsDependencies() throws {
        let server = try TestServer.shared()
        let source = try createDependencyCases(server)
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        let backup = try runTenure(["backup", "--url", url(server, source), "-o", archive, "--jobs", "3"], environment: [:])
        #expect(backup.status == 0, "\(backup)")
        // Restores with 1, 2 and 4 sessions: the graph, not the timing, orders the entries.
        for jobs in ["1", "2", "4"] {
            let target = newDatabaseName("graph_copy")
            let restore = try runTenure(["restore", archive, "--url", url(server, target), "--jobs", jobs], environment: [:])
            #expect(restore.status == 0, "\(restore)")
            #expect(try schemaDump(server, target) == schemaDump(server, source))
            #expect(try fingerprint(server, target) == fingerprint(server, source))
        }
        let reference = try referenceCopy(server, source)
        #expect(try fingerprint(server, reference) == fingerprint(server, source), "pg_restore's copy and the source agree")
        #expect(try leftovers(server).isEmpty)
    }

    /// A schema of many tables: its table and sequence entries run on several sessions (the
    /// restore says so with TENURE_TIMING=1), and the copy still matches the source, including
    /// tables whose array types are named alike when created at once.
    @Test func manyTablesRestoreOnSeveralSessions() throws {
        let server = try TestServer.shared()
        let source = newDatabaseName("many")
        _ = try server.rows("CREATE DATABASE \(source)")
        let connection = try server.connect(database: source)
        defer { connection.close() }
        try connection.execute(
            #"""
            CREATE SCHEMA app;
            CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
            CREATE TYPE app.pair AS (a integer, b text);
            CREATE SEQUENCE app.shared_ids;
            DO $$ BEGIN FOR i IN 1..40 LOOP
                EXECUTE format('CREATE TABLE app.t%s (id serial PRIMARY KEY, shared bigint DEFAULT nextval(''app.shared_ids''), '
                    'feeling app.mood, body text CONSTRAINT t%s_short CHECK (length(body) < 100))', i, i);
                EXECUTE format('ALTER TABLE app.t%s ALTER COLUMN body SET STORAGE EXTERNAL', i);
                EXECUTE format('COMMENT ON TABLE app.t%s IS %L', i, 'table ' || i);
                EXECUTE format('COMMENT ON COLUMN app.t%s.body IS %L', i, 'body of ' || i);
                EXECUTE format('INSERT INTO app.t%s (feeling, body) SELECT ''ok'', ''row '' || g FROM generate_series(1, %s) g', i, i);
            END LOOP; END $$;
            CREATE TABLE app.counted (n bigint GENERATED ALWAYS AS IDENTITY, note text);
            INSERT INTO app.counted (note) VALUES ('one'), ('two');
            CREATE TABLE app.foo (x integer);
            CREATE TABLE app._foo (y integer);
            CREATE TABLE app.tenure_restore_runs_long_table_names_side_by_side_on_two_sessia (x integer);
            CREATE TABLE app.tenure_restore_runs_long_table_names_side_by_side_on_two_sessib (y integer);
            INSERT INTO app.foo VALUES (1);
            INSERT INTO app._foo VALUES (2);
            CREATE TABLE app.parent (id integer, label text);
            CREATE TABLE app.child_a (extra integer) INHERITS (app.parent);
            CREATE TABLE app.child_b (other text) INHERITS (app.parent);
            INSERT INTO app.child_a VALUES (1, 'a', 10);
            INSERT INTO app.child_b VALUES (2, 'b', 'x');
            CREATE TABLE app.ranges (k integer NOT NULL, v text) PARTITION BY RANGE (k);
            CREATE TABLE app.ranges_1 PARTITION OF app.ranges FOR VALUES FROM (0) TO (10);
            CREATE TABLE app.ranges_2 PARTITION OF app.ranges FOR VALUES FROM (10) TO (20);
            CREATE TABLE app.ranges_3 PARTITION OF app.ranges FOR VALUES FROM (20) TO (30);
            INSERT INTO app.ranges SELECT g, 'v' || g FROM generate_series(0, 29) g;
            CREATE TABLE app.typed OF app.pair;
            INSERT INTO app.typed VALUES (1, 'one');
            CREATE UNLOGGED TABLE app.scratch (k integer);
            INSERT INTO app.scratch VALUES (7);
            SELECT setval('app.shared_ids', 5000);
            """#)
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        let backup = try runTenure(["backup", "--url", url(server, source), "-o", archive, "--jobs", "2"], environment: [:])
        #expect(backup.status == 0, "\(backup)")
        for jobs in ["1", "2", "4"] {
            let target = newDatabaseName("many_copy")
            let restore = try runTenure(["restore", archive, "--url", url(server, target), "--jobs", jobs], environment: ["TENURE_TIMING": "1"])
            #expect(restore.status == 0, "\(restore)")
            #expect(restore.stderr.contains("pre-data pool of") == (jobs != "1"), "\(restore.stderr)")
            #expect(try schemaDump(server, target) == schemaDump(server, source))
            #expect(try fingerprint(server, target) == fingerprint(server, source))
        }
        #expect(try leftovers(server).isEmpty)
    }

    @Test func extensionConfigurationRowsAreCarried() throws {
        let server = try TestServer.shared()
        let source = try createDependencyCases(server)
        let archive = temporaryFile(".tenure")
        let export = temporaryFile(".sql.zst")
        defer {
            try? FileManager.default.removeItem(atPath: archive)
            try? FileManager.default.removeItem(atPath: export)
        }
        #expect(try runTenure(["backup", "--url", url(server, source), "-o", archive], environment: [:]).status == 0)
        #expect(try runTenure(["backup", "--url", url(server, source), "-o", export, "--format", "sql"], environment: [:]).status == 0)
        let native = newDatabaseName("config_native")
        let restore = try runTenure(["restore", archive, "--url", url(server, native)], environment: [:])
        #expect(restore.status == 0, "\(restore)")
        let sql = newDatabaseName("config_sql")
        _ = try server.rows("CREATE DATABASE \(sql) TEMPLATE template0")
        let psql = try ChildProcess(
            [
                "/bin/sh", "-c",
                "zstd -dc \"$FILE\" | psql -X -q -v ON_ERROR_STOP=1 -h \"$HOST\" -p \"$PORT\" -U postgres -d \"$DB\" > /dev/null",
            ],
            environment: ["PATH": "/usr/bin:/bin", "FILE": export, "HOST": server.cluster.socketDirectory, "PORT": String(server.port), "DB": sql]
        ).wait()
        #expect(psql.status == 0, "\(psql)")
        let reference = try referenceCopy(server, source)
        let expected: [[String?]] = [["builtin", "true"], ["mine", "false"], ["theirs", "false"]]
        for database in [native, sql, reference] {
            // The extension's own row once (not doubled by the filter), the users' rows kept.
            #expect(try server.rows("SELECT key, standard::text FROM tenure_settings ORDER BY key", database: database) == expected, "\(database)")
            #expect(try server.rows("SELECT count(*) FROM tenure_journal", database: database) == [["2"]], "\(database)")
            #expect(try server.rows("SELECT last_value FROM tenure_journal_id", database: database) == [["42"]], "\(database)")
            #expect(try fingerprint(server, database) == fingerprint(server, source), "\(database)")
            #expect(try schemaDump(server, database) == schemaDump(server, source), "\(database)")
        }
    }

    /// FREEZE loading must not truncate a configuration table (that would drop the rows the
    /// extension created).
    @Test func freezeLoadingKeepsTheExtensionsOwnRows() throws {
        let server = try TestServer.shared()
        let source = try createDependencyCases(server)
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        #expect(try runTenure(["backup", "--url", url(server, source), "-o", archive], environment: [:]).status == 0)
        let target = newDatabaseName("config_frozen")
        let restore = try runTenure(["restore", archive, "--url", url(server, target), "--jobs", "2"], environment: ["TENURE_RESTORE_FREEZE": "1"])
        #expect(restore.status == 0, "\(restore)")
        #expect(try fingerprint(server, target) == fingerprint(server, source))
    }
}
