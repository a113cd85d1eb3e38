import Testing

@testable import TenureEngine

/// The order and lock rules of the restore's index and constraint builds, without a server.
@Suite struct PostDataScheduleTests {
    /// A post-data section as pg_dump 15 writes it: a big table with a key, two indexes and a
    /// foreign key to a small table, a medium table, and a trigger (not pooled).
    static let script = """
        SET statement_timeout = 0;
        SET client_encoding = 'UTF8';

        --
        -- Name: customers customers_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
        --

        ALTER TABLE ONLY public.customers
            ADD CONSTRAINT customers_pkey PRIMARY KEY (id);

        --
        -- Name: events events_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
        --

        ALTER TABLE ONLY public.events
            ADD CONSTRAINT events_pkey PRIMARY KEY (id);

        --
        -- Name: medium medium_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
        --

        ALTER TABLE ONLY public.medium
            ADD CONSTRAINT medium_pkey PRIMARY KEY (id);

        --
        -- Name: events_customer; Type: INDEX; Schema: public; Owner: postgres
        --

        CREATE INDEX events_customer ON public.events USING btree (customer);

        --
        -- Name: events_happened; Type: INDEX; Schema: public; Owner: postgres
        --

        CREATE INDEX events_happened ON public.events USING btree (happened);

        --
        -- Name: medium_label; Type: INDEX; Schema: public; Owner: postgres
        --

        CREATE INDEX medium_label ON public.medium USING btree (label);

        --
        -- Name: events audit; Type: TRIGGER; Schema: public; Owner: postgres
        --

        CREATE TRIGGER audit AFTER INSERT ON public.events FOR EACH ROW EXECUTE FUNCTION public.audit();

        --
        -- Name: events events_customer_fkey; Type: FK CONSTRAINT; Schema: public; Owner: postgres
        --

        ALTER TABLE ONLY public.events
            ADD CONSTRAINT events_customer_fkey FOREIGN KEY (customer) REFERENCES public.customers(id);

        """

    static let sizes: [String: Int64] = ["public.events": 500 << 20, "public.medium": 40 << 20, "public.customers": 1 << 20]

    func schedule() -> PostDataSchedule {
        let (_, entries) = splitSchemaEntries(Self.script)
        return PostDataSchedule(entries, sizes: Self.sizes)
    }

    func take(_ schedule: inout PostDataSchedule) -> (Int, SchemaEntry)? {
        if case .run(let id, let entry) = schedule.next() { return (id, entry) }
        return nil
    }

    @Test func entriesAreParsedWithTheirTables() {
        let (preamble, entries) = splitSchemaEntries(Self.script)
        #expect(preamble.contains("SET client_encoding"))
        #expect(entries.map(\.name).contains("events events_customer_fkey"))
        let fk = entries.first { $0.type == "FK CONSTRAINT" }!
        #expect(fk.table == "public.events")
        #expect(fk.referencedTable == "public.customers")
        #expect(entries.first { $0.name == "medium_label" }?.table == "public.medium")
        #expect(entries.filter(PostDataSchedule.isPooled).count == 7)
    }

    @Test func referencedKeyFirstThenBiggestTable() {
        var schedule = schedule()
        let first = take(&schedule)
        #expect(first?.1.name == "customers customers_pkey")
        let second = take(&schedule)
        #expect(second?.1.name == "events events_pkey")
    }

    /// While the big table's key holds its ACCESS EXCLUSIVE lock, the other session takes
    /// another table's work instead of blocking on that lock.
    @Test func noEntryStartsAgainstARunningExclusiveLock() {
        var schedule = schedule()
        let customers = take(&schedule)!
        schedule.finish(customers.0, customers.1)
        let key = take(&schedule)!
        #expect(key.1.name == "events events_pkey")
        let other = take(&schedule)!
        #expect(other.1.name == "medium medium_pkey")
        // The medium index would wait for the medium key, the events indexes for the events key.
        guard case .wait = schedule.next() else {
            Issue.record("expected to wait for a running key")
            return
        }
        schedule.finish(other.0, other.1)
        let third = take(&schedule)!
        #expect(third.1.name == "medium_label")
        schedule.finish(third.0, third.1)
        // Only events work is left, and the key is still running: wait.
        guard case .wait = schedule.next() else {
            Issue.record("expected to wait for the events key")
            return
        }
        schedule.finish(key.0, key.1)
        // Two index builds on one table share their SHARE lock.
        let a = take(&schedule)!
        let b = take(&schedule)!
        #expect(Set([a.1.name, b.1.name]) == ["events_customer", "events_happened"])
        // The foreign key waits for both (and for the medium work to release nothing it needs).
        guard case .wait = schedule.next() else {
            Issue.record("the foreign key must wait for its table's indexes")
            return
        }
        schedule.finish(a.0, a.1)
        guard case .wait = schedule.next() else {
            Issue.record("the foreign key must wait for its table's last index")
            return
        }
        schedule.finish(b.0, b.1)
        let fk = take(&schedule)!
        #expect(fk.1.type == "FK CONSTRAINT")
    }

    /// Two sessions drain the pool: every entry exactly once, and no two running entries
    /// ever hold conflicting locks on one table.
    @Test func drainsEveryEntryOnceWithoutConflicts() {
        var schedule = schedule()
        var running: [(Int, SchemaEntry)] = []
        var done: [String] = []
        var steps = 0
        while steps < 100 {
            steps += 1
            if running.count < 2, case .run(let id, let entry) = schedule.next() {
                for other in running where other.1.table == entry.table {
                    #expect(entry.type == "INDEX" && other.1.type == "INDEX", "\(entry.name) started beside \(other.1.name)")
                }
                running.append((id, entry))
                continue
            }
            guard !running.isEmpty else { break }
            let (id, entry) = running.removeFirst()
            schedule.finish(id, entry)
            done.append(entry.name)
        }
        guard case .done = schedule.next() else {
            Issue.record("entries left over")
            return
        }
        #expect(done.sorted() == splitSchemaEntries(Self.script).entries.filter(PostDataSchedule.isPooled).map(\.name).sorted())
        #expect(done.last == "events events_customer_fkey")
    }
}
