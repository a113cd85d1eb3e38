/// The order in which the post-data's index and constraint builds run on the restore's
/// sessions. Decisions only: callers take entries under their own lock and report them done.
///
/// Three rules, cheapest to reason about first:
/// - Priority: keys that foreign keys reference first (small, and they unblock the foreign
///   keys), then by table size, biggest first (its builds are the longest chain), and per
///   table keys, then indexes, then foreign keys.
/// - Dependencies: a foreign key waits until the keys it references and the indexes and keys
///   of its own table are built (its validation would otherwise block those builds).
/// - Locks: an entry is not started while a running entry holds a lock it would wait for
///   (CREATE INDEX takes SHARE, which other index builds share; ADD PRIMARY KEY/UNIQUE takes
///   ACCESS EXCLUSIVE; ADD FOREIGN KEY takes SHARE ROW EXCLUSIVE on both tables); a session
///   takes the next entry that can run now instead, so no session sits blocked in the server
///   while there is work it could do.
struct PostDataSchedule {
    enum Next {
        case run(Int, SchemaEntry)
        /// Nothing can start now; something running will make room.
        case wait
        case done
    }

    private struct Claim {
        var table: String
        var exclusive: Bool
    }

    private var waiting: [(id: Int, entry: SchemaEntry)]
    private var running: [Int: [Claim]] = [:]
    /// "key T" / "index T" → entries not yet built.
    private var outstanding: [String: Int] = [:]

    static func isPooled(_ entry: SchemaEntry) -> Bool { ["INDEX", "CONSTRAINT", "FK CONSTRAINT"].contains(entry.type) }

    /// `sizes`: table (as pg_dump spells it, `public.events`) → its data bytes.
    init(_ entries: [SchemaEntry], sizes: [String: Int64]) {
        let referenced = Set(entries.filter { $0.type == "FK CONSTRAINT" }.compactMap(\.referencedTable))
        func rank(_ entry: SchemaEntry) -> Int { entry.type == "CONSTRAINT" ? 0 : entry.type == "INDEX" ? 1 : 2 }
        func priority(_ entry: SchemaEntry) -> Int64 {
            entry.type == "CONSTRAINT" && referenced.contains(entry.table ?? "") ? Int64.max : entry.table.flatMap { sizes[$0] } ?? 0
        }
        let pooled = entries.filter(Self.isPooled).enumerated().map { (id: $0.offset, entry: $0.element) }
        waiting = pooled.sorted {
            let (a, b) = ($0.entry, $1.entry)
            if priority(a) != priority(b) { return priority(a) > priority(b) }
            if rank(a) != rank(b) { return rank(a) < rank(b) }
            return $0.id < $1.id
        }
        for (_, entry) in waiting where entry.type != "FK CONSTRAINT" {
            outstanding[Self.dependencyKey(entry), default: 0] += 1
        }
    }

    var isEmpty: Bool { waiting.isEmpty && running.isEmpty }

    private static func dependencyKey(_ entry: SchemaEntry) -> String {
        "\(entry.type == "CONSTRAINT" ? "key" : "index") \(entry.table ?? "")"
    }

    private static func claims(_ entry: SchemaEntry) -> [Claim] {
        let table = entry.table ?? ""
        switch entry.type {
        case "INDEX": return [Claim(table: table, exclusive: false)]
        case "FK CONSTRAINT":
            return [Claim(table: table, exclusive: true)] + (entry.referencedTable.map { [Claim(table: $0, exclusive: true)] } ?? [])
        default: return [Claim(table: table, exclusive: true)]
        }
    }

    private func isReady(_ entry: SchemaEntry) -> Bool {
        guard entry.type == "FK CONSTRAINT" else { return true }
        let table = entry.table ?? ""
        let own = (outstanding["index \(table)"] ?? 0) + (outstanding["key \(table)"] ?? 0)
        let referenced = entry.referencedTable.map { outstanding["key \($0)"] ?? 0 } ?? 0
        return own == 0 && referenced == 0
    }

    private func conflicts(_ claims: [Claim]) -> Bool {
        for held in running.values.joined() {
            for wanted in claims where wanted.table == held.table && (wanted.exclusive || held.exclusive) { return true }
        }
        return false
    }

    /// The first entry, in priority order, that is ready and takes no lock a running entry holds.
    mutating func next() -> Next {
        if waiting.isEmpty { return running.isEmpty ? .done : .wait }
        let position = waiting.firstIndex { isReady($0.entry) && !conflicts(Self.claims($0.entry)) }
        // With nothing running, nothing can become ready by waiting: a safety net that takes
        // the first entry anyway, so no entry is ever dropped.
        guard let position = position ?? (running.isEmpty ? 0 : nil) else { return .wait }
        let (id, entry) = waiting.remove(at: position)
        running[id] = Self.claims(entry)
        return .run(id, entry)
    }

    mutating func finish(_ id: Int, _ entry: SchemaEntry) {
        running[id] = nil
        if entry.type != "FK CONSTRAINT" { outstanding[Self.dependencyKey(entry), default: 1] -= 1 }
    }
}
