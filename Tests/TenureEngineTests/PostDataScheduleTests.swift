import Foundation
import Testing
import TenureCore

@testable import TenureEngine

/// The restore's post-data schedule, without a server: pg_dump's dependencies, lock groups,
/// priorities, and the errors for a graph that is not whole.
@Suite struct PostDataScheduleTests {
    /// One entry as `pg_restore --verbose` renders it.
    static func entry(_ id: Int, _ dependencies: [Int], _ name: String, _ type: String, _ sql: String, schema: String = "public") -> String {
        """
        --
        -- TOC entry \(id) (class 2606 OID \(id + 10000))
        \(dependencies.isEmpty ? "" : "-- Dependencies: " + dependencies.map(String.init).joined(separator: " ") + "\n")\
        -- Name: \(name); Type: \(type); Schema: \(schema); Owner: postgres
        -- Data Pos: 0
        --

        \(sql)


        """
    }

    /// Pre-data tables: customers 1, events 2, medium 3, and a partitioned table p 4 with
    /// partitions p1 5 and p2 6 (attached by entries 7 and 8), orders 9 referencing p.
    static let preData =
        """
        SET statement_timeout = 0;

        """ + entry(1, [], "customers", "TABLE", "CREATE TABLE public.customers (id integer);")
        + entry(2, [], "events", "TABLE", "CREATE TABLE public.events (id bigint);")
        + entry(3, [], "medium", "TABLE", "CREATE TABLE public.medium (id integer);")
        + entry(4, [], "p", "TABLE", "CREATE TABLE public.p (a integer) PARTITION BY RANGE (a);")
        + entry(5, [], "p1", "TABLE", "CREATE TABLE public.p1 (a integer);")
        + entry(6, [], "p2", "TABLE", "CREATE TABLE public.p2 (a integer);")
        + entry(7, [4, 5], "p1", "TABLE ATTACH", "ALTER TABLE ONLY public.p ATTACH PARTITION public.p1 FOR VALUES FROM (0) TO (10);")
        + entry(8, [4, 6], "p2", "TABLE ATTACH", "ALTER TABLE ONLY public.p ATTACH PARTITION public.p2 FOR VALUES FROM (10) TO (20);")
        + entry(9, [], "orders", "TABLE", "CREATE TABLE public.orders (a integer);")

    static let postData =
        """
        SET statement_timeout = 0;
        SET client_encoding = 'UTF8';

        SET default_tablespace = '';

        """ + entry(100, [1], "customers customers_pkey", "CONSTRAINT", "ALTER TABLE ONLY public.customers ADD CONSTRAINT customers_pkey PRIMARY KEY (id);")
        + entry(101, [2], "events events_pkey", "CONSTRAINT", "ALTER TABLE ONLY public.events ADD CONSTRAINT events_pkey PRIMARY KEY (id);")
        + entry(102, [3], "medium medium_pkey", "CONSTRAINT", "ALTER TABLE ONLY public.medium ADD CONSTRAINT medium_pkey PRIMARY KEY (id);")
        + entry(103, [2], "events_customer", "INDEX", "CREATE INDEX events_customer ON public.events USING btree (customer);")
        + entry(104, [2], "events_happened", "INDEX", "CREATE INDEX events_happened ON public.events USING btree (happened);\n\nSET default_tablespace = fast;")
        + entry(105, [3], "medium_label", "INDEX", "CREATE INDEX medium_label ON public.medium USING btree (label);\n\nSET default_tablespace = '';")
        + entry(106, [2], "events audit", "TRIGGER", "CREATE TRIGGER audit AFTER INSERT ON public.events FOR EACH ROW EXECUTE FUNCTION public.audit();")
        + entry(107, [2, 100], "events events_customer_fkey", "FK CONSTRAINT", "ALTER TABLE ONLY public.events ADD CONSTRAINT events_customer_fkey FOREIGN KEY (customer) REFERENCES public.customers(id);")
        + entry(110, [4], "p p_pkey", "CONSTRAINT", "ALTER TABLE ONLY public.p ADD CONSTRAINT p_pkey PRIMARY KEY (a);")
        + entry(111, [5, 110], "p1 p1_pkey", "CONSTRAINT", "ALTER TABLE ONLY public.p1 ADD CONSTRAINT p1_pkey PRIMARY KEY (a);")
        + entry(112, [6, 110], "p2 p2_pkey", "CONSTRAINT", "ALTER TABLE ONLY public.p2 ADD CONSTRAINT p2_pkey PRIMARY KEY (a);")
        + entry(113, [4, 5, 110, 111], "p1_pkey", "INDEX ATTACH", "ALTER INDEX public.p_pkey ATTACH PARTITION public.p1_pkey;")
        + entry(114, [4, 6, 110, 112], "p2_pkey", "INDEX ATTACH", "ALTER INDEX public.p_pkey ATTACH PARTITION public.p2_pkey;")
        + entry(115, [9, 110, 113, 114], "orders orders_a_fkey", "FK CONSTRAINT", "ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_a_fkey FOREIGN KEY (a) REFERENCES public.p(a);")

    static let sizes: [Int: Int64] = [1: 1 << 20, 2: 500 << 20, 3: 40 << 20]

    static func tables(_ preData: [SchemaEntry], sizes: [Int: Int64] = sizes) -> [Int: PostDataSchedule.Table] {
        var tables: [Int: PostDataSchedule.Table] = [:]
        // p and its partitions form one lock group, as Restore.runPostData derives it.
        for entry in preData where entry.type == "TABLE" {
            let id = entry.dumpID!
            tables[id] = PostDataSchedule.Table(name: entry.name, byteCount: sizes[id] ?? 0, lockGroup: [5, 6].contains(id) ? 4 : id)
        }
        return tables
    }

    func schedule(sizes: [Int: Int64] = sizes) throws -> PostDataSchedule {
        let preData = splitSchemaEntries(Self.preData).entries
        return try PostDataSchedule(
            splitSchemaEntries(Self.postData).entries, tables: Self.tables(preData, sizes: sizes), preDataIDs: Set(preData.compactMap(\.dumpID)))
    }

    /// Runs the schedule one entry at a time until `name` is taken; returns its id.
    func runUntil(_ name: String, _ schedule: inout PostDataSchedule) -> Int? {
        while case .run(let id, let entry) = schedule.next() {
            if entry.name == name { return id }
            schedule.finish(id)
        }
        return nil
    }

    /// A big build gets the sessions that would wait beside it as parallel workers, never
    /// while other tables still hold enough work for them, and not for a small table.
    @Test func idleSessionsGoToTheBigTablesBuilds() throws {
        // events 500 MiB against 81 MiB elsewhere (medium's two builds, customers): under a
        // quarter, so the other session would soon wait.
        var schedule = try schedule()
        let key = try #require(runUntil("events events_pkey", &schedule))
        #expect(schedule.spareSessions(for: key, sessions: 2) == 1)
        #expect(schedule.spareSessions(for: key, sessions: 4) == 3)
        #expect(schedule.spareSessions(for: key, sessions: 1) == 0)
        // The two index builds of events can run side by side: they share the sessions, the
        // one that starts second taking what the first left.
        schedule.finish(key)
        var twoOfFour = schedule
        let index = try #require(runUntil("events_customer", &schedule))
        #expect(schedule.spareSessions(for: index, sessions: 2) == 0)
        #expect(schedule.spareSessions(for: index, sessions: 3) == 0)
        let sibling = try #require(take(&schedule))
        #expect(sibling.1.name == "events_happened")
        #expect(schedule.spareSessions(for: sibling.0, sessions: 3) == 1)
        let first = try #require(runUntil("events_customer", &twoOfFour))
        #expect(twoOfFour.spareSessions(for: first, sessions: 4) == 1)
        let second = try #require(take(&twoOfFour))
        #expect(twoOfFour.spareSessions(for: second.0, sessions: 4) == 1)
        // The foreign key's check is no index build: never given workers, nor counted as using them.
        twoOfFour.finish(first)
        twoOfFour.finish(second.0)
        let foreignKey = try #require(runUntil("events events_customer_fkey", &twoOfFour))
        #expect(twoOfFour.spareSessions(for: foreignKey, sessions: 4) == 0)

        // A medium table of 200 MiB keeps the other session busy: no workers.
        var busy = try self.schedule(sizes: [1: 1 << 20, 2: 500 << 20, 3: 200 << 20])
        let busyKey = try #require(runUntil("events events_pkey", &busy))
        #expect(busy.spareSessions(for: busyKey, sessions: 2) == 0)

        // A small table never asks for workers.
        var small = try self.schedule(sizes: [1: 1 << 20, 2: 8 << 20, 3: 1 << 20])
        let smallKey = try #require(runUntil("events events_pkey", &small))
        #expect(small.spareSessions(for: smallKey, sessions: 2) == 0)
    }

    func take(_ schedule: inout PostDataSchedule) -> (Int, SchemaEntry)? {
        if case .run(let id, let entry) = schedule.next() { return (id, entry) }
        return nil
    }

    @Test func entriesCarryTheirDumpIDsDependenciesAndSettings() {
        let (preamble, entries) = splitSchemaEntries(Self.postData)
        #expect(preamble.contains("SET client_encoding"))
        #expect(entries.count == 14)
        let fk = entries.first { $0.type == "FK CONSTRAINT" }!
        #expect(fk.dumpID == 107 && fk.dependencies == [2, 100] && fk.name == "events events_customer_fkey" && fk.schema == "public")
        // The tablespace switch written before medium_label's header belongs to medium_label,
        // and the switch back to the next entry; none stays in the entry that precedes it.
        let happened = entries.first { $0.name == "events_happened" }!
        #expect(!happened.sql.contains("fast"))
        let label = entries.first { $0.name == "medium_label" }!
        #expect(label.sql.hasPrefix("SET default_tablespace = fast;"))
        #expect(entries.first { $0.name == "events audit" }!.sql.hasPrefix("SET default_tablespace = '';"))
        // A script without a table of contents (an archive made before it) has no dump ids.
        let old = splitSchemaEntries("SET x = 1;\n\n--\n-- Name: a; Type: INDEX; Schema: public; Owner: o\n--\n\nCREATE INDEX a ON t (c);\n").entries
        #expect(old.count == 1 && old[0].dumpID == nil && old[0].type == "INDEX")
    }

    @Test func referencedKeysFirstThenTheBiggestTable() throws {
        var schedule = try schedule()
        let first = take(&schedule)!
        #expect(["customers customers_pkey", "p p_pkey"].contains(first.1.name))
        let second = take(&schedule)!
        #expect(["customers customers_pkey", "p p_pkey"].contains(second.1.name) && second.1.name != first.1.name)
        let third = take(&schedule)!
        #expect(third.1.name == "events events_pkey")
    }

    /// The foreign key to the partitioned table waits for every index attachment: that is
    /// what a restore that inferred its order from entry types got wrong.
    @Test func foreignKeyToAPartitionedKeyWaitsForItsAttachments() throws {
        var schedule = try schedule()
        var finished: [String] = []
        while true {
            guard case .run(let id, let entry) = schedule.next() else { break }
            if entry.name == "orders orders_a_fkey" {
                #expect(finished.contains("p1_pkey") && finished.contains("p2_pkey") && finished.contains("p p_pkey"))
            }
            if entry.type == "INDEX ATTACH" { #expect(finished.contains("p p_pkey")) }
            schedule.finish(id)
            finished.append(entry.name)
        }
        #expect(finished.count == 14)
        guard case .done = schedule.next() else {
            Issue.record("entries left over")
            return
        }
    }

    /// While a table's key holds its exclusive lock nothing else on that table (or its
    /// partition tree) starts; index builds on one table run side by side.
    @Test func noEntryStartsAgainstARunningLock() throws {
        var schedule = try schedule()
        var running: [Int: SchemaEntry] = [:]
        // Take everything that can start; check pairwise compatibility.
        while let (id, entry) = take(&schedule) { running[id] = entry }
        let groups: (SchemaEntry) -> Set<Int> = { entry in
            Set(entry.dependencies.compactMap { [1: 1, 2: 2, 3: 3, 4: 4, 5: 4, 6: 4, 9: 9][$0] })
        }
        for (a, first) in running {
            for (b, second) in running where a < b && !groups(first).isDisjoint(with: groups(second)) {
                #expect(first.type == "INDEX" && second.type == "INDEX", "\(first.name) runs beside \(second.name)")
            }
        }
        #expect(running.values.contains { $0.name == "events events_pkey" })
        #expect(!running.values.contains { $0.name == "events_customer" }, "the events indexes wait for the events key")
    }

    /// Two sessions drain the schedule: every entry exactly once, each after its dependencies.
    @Test func drainsEveryEntryOnceAfterItsDependencies() throws {
        var schedule = try schedule()
        var running: [(Int, SchemaEntry)] = []
        var done = Set<Int>()
        var steps = 0
        while steps < 200 {
            steps += 1
            if running.count < 2, case .run(let id, let entry) = schedule.next() {
                for dependency in entry.dependencies where dependency >= 100 { #expect(done.contains(dependency), "\(entry.name) before \(dependency)") }
                running.append((id, entry))
                continue
            }
            guard !running.isEmpty else { break }
            let (id, entry) = running.removeFirst()
            schedule.finish(id)
            done.insert(entry.dumpID!)
        }
        #expect(done.count == 14)
    }

    /// The pre-data: a long run of table and sequence entries goes to the sessions, in an order
    /// that keeps every dependency; everything else stays in the script's order on one session.
    @Test func preDataRunsLongRunsOfTablesInParallel() throws {
        var script = "SET statement_timeout = 0;\n\n" + Self.entry(1, [], "app", "SCHEMA", "CREATE SCHEMA app;")
        for id in 10..<30 { script += Self.entry(id, [1], "t\(id)", "TABLE", "CREATE TABLE app.t\(id) (a integer);", schema: "app") }
        script += Self.entry(30, [10], "t10_a_seq", "SEQUENCE", "CREATE SEQUENCE app.t10_a_seq;", schema: "app")
        script += Self.entry(31, [30], "t10_a_seq", "SEQUENCE OWNED BY", "ALTER SEQUENCE app.t10_a_seq OWNED BY app.t10.a;", schema: "app")
        script += Self.entry(32, [10, 30], "t10 a", "DEFAULT", "ALTER TABLE ONLY app.t10 ALTER COLUMN a SET DEFAULT nextval('app.t10_a_seq');", schema: "app")
        script += Self.entry(33, [10], "TABLE t10", "COMMENT", "COMMENT ON TABLE app.t10 IS 'x';", schema: "app")
        script += Self.entry(34, [11], "v", "VIEW", "CREATE VIEW app.v AS SELECT * FROM app.t11;", schema: "app")
        script += Self.entry(35, [1], "late", "TABLE", "CREATE TABLE app.late (a integer);", schema: "app")
        let plan = try #require(try PreDataPlan(splitSchemaEntries(script).entries))
        #expect(plan.segments.count == 3)
        guard case .serial(let first) = plan.segments[0], case .parallel(var schedule) = plan.segments[1], case .serial(let last) = plan.segments[2] else {
            Issue.record("segments: \(plan.segments)")
            return
        }
        #expect(first.map(\.dumpID) == [1])
        #expect(last.map(\.dumpID) == [34, 35], "a view ends the run; what follows a run too short runs in order")
        #expect(schedule.count == 24)
        // Two sessions drain it: each entry after its dependencies, the entries on one table
        // (owned-by, default, comment) never beside each other.
        var running: [(Int, SchemaEntry)] = []
        var done = Set<Int>()
        while done.count < 24 {
            if running.count < 2, case .run(let id, let entry) = schedule.next() {
                for dependency in entry.dependencies where dependency >= 10 { #expect(done.contains(dependency), "\(entry.name) before \(dependency)") }
                if entry.dependencies.contains(10) {
                    #expect(!running.contains { $0.1.dependencies.contains(10) }, "\(entry.name) beside another entry on t10")
                }
                running.append((id, entry))
                continue
            }
            let (id, entry) = running.removeFirst()
            schedule.finish(id)
            done.insert(entry.dumpID!)
        }
        // Too short a run, a run with an entry that depends on a later one, or a script
        // without a table of contents: nothing in parallel.
        #expect(try PreDataPlan(splitSchemaEntries(script).entries, minimumRun: 40) == nil)
        var forward = "SET statement_timeout = 0;\n\n" + Self.entry(1, [], "app", "SCHEMA", "CREATE SCHEMA app;")
        forward += Self.entry(10, [1, 99], "t10", "TABLE", "CREATE TABLE app.t10 (a app.later);", schema: "app")
        for id in 11..<30 { forward += Self.entry(id, [1], "t\(id)", "TABLE", "CREATE TABLE app.t\(id) (a integer);", schema: "app") }
        forward += Self.entry(99, [1], "later", "TYPE", "CREATE TYPE app.later AS (a integer);", schema: "app")
        #expect(try PreDataPlan(splitSchemaEntries(forward).entries) == nil)
        #expect(try PreDataPlan(splitSchemaEntries(script.replacingOccurrences(of: "-- TOC entry", with: "-- entry")).entries) == nil)
    }

    @Test func aDependencyTheArchiveDoesNotCarryIsAnErrorNamingBoth() {
        let broken = Self.postData + Self.entry(120, [999], "late_index", "INDEX", "CREATE INDEX late_index ON public.events (id);")
        let preData = splitSchemaEntries(Self.preData).entries
        #expect {
            _ = try PostDataSchedule(
                splitSchemaEntries(broken).entries, tables: Self.tables(preData), preDataIDs: Set(preData.compactMap(\.dumpID)))
        } throws: { error in
            let message = (error as? TenureError)?.message ?? ""
            return message.contains("late_index") && message.contains("999")
        }
    }

    @Test func aCycleIsAnErrorNamingItsEntries() {
        let cyclic =
            Self.entry(200, [201], "a", "INDEX", "CREATE INDEX a ON public.events (id);")
            + Self.entry(201, [200], "b", "INDEX", "CREATE INDEX b ON public.events (id);")
            + Self.entry(202, [], "c", "INDEX", "CREATE INDEX c ON public.events (id);")
        #expect {
            _ = try PostDataSchedule(splitSchemaEntries(cyclic).entries, tables: [:], preDataIDs: [])
        } throws: { error in
            let message = (error as? TenureError)?.message ?? ""
            return message.contains("cycle") && message.contains("public.a") && message.contains("public.b") && !message.contains("public.c")
        }
    }
}
