import TenureCore

/// How a restore runs the pre-data: in the script's order on the main session, except long
/// runs of entries that only create or annotate tables and sequences, which the restore's
/// sessions share under the post-data's dependency- and lock-aware schedule. Creating a table
/// is mostly the kernel creating its files, one table after another on one session; a schema
/// of 2,000 tables took 5.6–5.8 s that way and 4.0–4.6 s on two sessions (see README).
///
/// A run is parallel only when every dependency pg_dump recorded for its entries is an entry
/// before the run or in it; anything else (and any script without pg_dump's table of
/// contents) runs in order, as `pg_restore` runs all of its pre-data.
struct PreDataPlan {
    enum Segment {
        /// Entries run one after another on the main session, as one script.
        case serial([SchemaEntry])
        /// Entries shared by the sessions, each after the entries it depends on.
        case parallel(PostDataSchedule)
    }

    let segments: [Segment]

    /// The entry types a parallel run holds. Each creates or annotates one table or sequence,
    /// and pg_dump records what it needs: schema, types, functions, the parent table, the
    /// sequence a default or an owned-by refers to.
    static let parallelTypes: Set<String> = ["TABLE", "SEQUENCE", "SEQUENCE OWNED BY", "DEFAULT", "COMMENT"]

    /// nil when no run of `minimumRun` entries or more can run in parallel (or the entries
    /// carry no dump ids): the caller runs the script as it is.
    init?(_ entries: [SchemaEntry], minimumRun: Int = 16) throws(TenureError) {
        guard entries.count >= minimumRun, entries.allSatisfy({ $0.dumpID != nil }) else { return nil }
        let tables = PostDataSchedule.lockedTables(entries)
        var segments: [Segment] = []
        var serial: [SchemaEntry] = []
        var earlier = Set<Int>()
        var start = 0
        while start < entries.count {
            var end = start
            while end < entries.count, Self.parallelTypes.contains(entries[end].type) { end += 1 }
            let run = entries[start..<end]
            let runIDs = Set(run.map { $0.dumpID! })
            if run.count >= minimumRun, run.allSatisfy({ $0.dependencies.allSatisfy { earlier.contains($0) || runIDs.contains($0) } }) {
                if !serial.isEmpty { segments.append(.serial(serial)) }
                serial = []
                segments.append(.parallel(try PostDataSchedule(Array(run), tables: tables, preDataIDs: earlier)))
            } else {
                serial += run
            }
            earlier.formUnion(runIDs)
            // The entry that ended the run (if any) runs in order.
            if end < entries.count {
                serial.append(entries[end])
                earlier.insert(entries[end].dumpID!)
                end += 1
            }
            start = end
        }
        if !serial.isEmpty { segments.append(.serial(serial)) }
        guard segments.contains(where: { if case .parallel = $0 { true } else { false } }) else { return nil }
        self.segments = segments
    }
}
