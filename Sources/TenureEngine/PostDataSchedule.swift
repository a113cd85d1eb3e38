import TenureCore

/// The order in which the post-data's entries run on the restore's sessions: pg_dump's own
/// dependency graph, with a lock-aware parallel schedule on top. Decisions only: callers take
/// entries under their own lock and report them done.
///
/// - Dependencies (correctness): an entry starts only after every post-data entry it depends
///   on, as pg_dump recorded it (`-- Dependencies:` in the entry's header), has finished.
///   Dependencies on pre-data entries are met before the post-data starts. The graph is
///   checked when the schedule is made: a dependency on an entry the archive does not carry,
///   or a cycle, is an error naming the entries, never a guess.
/// - Locks (no session blocked in the server): as `pg_restore -j` assumes, an entry locks
///   every table it depends on; CREATE INDEX takes SHARE, which other index builds share,
///   everything else is taken as exclusive; a partitioned or inherited table's tree counts as
///   one table. An entry is not started while a running entry
///   holds a lock it would wait for; a session takes the next entry that can run now instead.
/// - Priority (speed): keys and indexes that foreign keys depend on (directly or not) first (small, and they
///   unblock the foreign keys), then by table size, biggest first (its builds are the longest
///   chain), and per table keys, then indexes, then the rest, then foreign keys.
/// - Idle sessions (speed): `spareSessions` tells a session starting a big build how many
///   sessions would otherwise wait while it runs (the work left on other tables is under a
///   quarter of this table's), so the build can use their cores as parallel workers.
struct PostDataSchedule {
    enum Next {
        case run(Int, SchemaEntry)
        /// Nothing can start now; something running will make room.
        case wait
        case done
    }

    /// A table the post-data locks: its name, data size, and lock group. Statements on a
    /// partitioned or inherited table lock its whole tree (ALTER TABLE recurses, ATTACH locks
    /// parent and child), so every table of one tree shares one lock group (the dump id of one
    /// of them) and a claim on any of them is a claim on the tree.
    struct Table: Sendable {
        var name: String
        var byteCount: Int64
        var lockGroup: Int
    }

    /// The tables and materialized views of a pre-data section by dump id, each with its data
    /// size (by "schema\0name" in `sizes`, 0 if absent) and its lock group: tables joined by a
    /// partition attachment or by inheritance (a table entry that depends on another table)
    /// form one tree.
    static func lockedTables(_ preData: [SchemaEntry], sizes: [String: Int64] = [:]) -> [Int: Table] {
        let relations = preData.filter { ($0.type == "TABLE" || $0.type == "MATERIALIZED VIEW") && $0.dumpID != nil }
        let relationIDs = Set(relations.map { $0.dumpID! })
        var parent: [Int: Int] = [:]
        func root(_ id: Int) -> Int {
            var id = id
            while let next = parent[id], next != id { id = next }
            return id
        }
        for entry in preData where entry.type == "TABLE ATTACH" || entry.type == "TABLE" {
            let members = entry.dependencies.filter(relationIDs.contains) + (entry.type == "TABLE" ? [entry.dumpID].compactMap { $0 } : [])
            guard let first = members.first else { continue }
            for other in members.dropFirst() where root(other) != root(first) { parent[root(other)] = root(first) }
        }
        var locked: [Int: Table] = [:]
        for entry in relations {
            let id = entry.dumpID!
            locked[id] = Table(name: entry.schema + "." + entry.name, byteCount: sizes[entry.schema + "\u{0}" + entry.name] ?? 0, lockGroup: root(id))
        }
        return locked
    }

    private struct Claim {
        var table: Int
        var exclusive: Bool
    }

    private let entries: [SchemaEntry]
    private let claims: [[Claim]]
    /// Post-data entries (by position) that wait for each entry.
    private let dependents: [[Int]]
    /// Unfinished post-data dependencies per entry.
    private var remaining: [Int]
    /// Entries whose dependencies are done, best first.
    private var ready: [Int] = []
    /// Each entry's place in `ready`'s order (by position): priority, then type order.
    private let rank: [(priority: Int64, order: Int)]
    private var running: [Int: [Claim]] = [:]
    private var finishedCount = 0
    /// Each entry's size (its biggest table's data bytes) and the lock group of that table.
    private let sizes: [Int64]
    private let mainGroup: [Int?]
    /// The sizes of the entries not finished yet, in all and per main lock group.
    private var unfinishedBytes: Int64 = 0
    private var unfinishedByGroup: [Int: Int64] = [:]
    /// Parallel workers `spareSessions` gave to running entries.
    private var granted: [Int: Int] = [:]

    /// - Parameters:
    ///   - entries: the post-data entries, each with its dump id.
    ///   - tables: the pre-data's tables and materialized views by dump id.
    ///   - preDataIDs: the dump ids of every pre-data entry.
    /// - Throws: `archive.corrupt`-style `invalidRequest` naming the entries when a dependency
    ///   is missing from the archive or the graph has a cycle.
    init(_ entries: [SchemaEntry], tables: [Int: Table], preDataIDs: Set<Int>) throws(TenureError) {
        self.entries = entries
        var position: [Int: Int] = [:]
        for (index, entry) in entries.enumerated() {
            guard let id = entry.dumpID else { preconditionFailure("a scheduled post-data entry has a dump id") }
            guard position[id] == nil else {
                throw TenureError(.invalidRequest, "the archive's post-data has two entries with dump id \(id) (\(entry.describe))")
            }
            position[id] = index
        }
        var dependents = [[Int]](repeating: [], count: entries.count)
        var remaining = [Int](repeating: 0, count: entries.count)
        var claims: [[Claim]] = []
        for (index, entry) in entries.enumerated() {
            for dependency in Set(entry.dependencies) {
                if let other = position[dependency] {
                    dependents[other].append(index)
                    remaining[index] += 1
                } else if !preDataIDs.contains(dependency) {
                    throw TenureError(
                        .invalidRequest,
                        "the archive's post-data entry \(entry.describe) depends on entry \(dependency), which the archive does not carry; nothing was restored")
                }
            }
            let exclusive = entry.type != "INDEX"
            let groups = Set(entry.dependencies.compactMap { tables[$0]?.lockGroup })
            claims.append(groups.sorted().map { Claim(table: $0, exclusive: exclusive) })
        }
        try Self.checkAcyclic(entries, dependents: dependents, remaining: remaining)
        self.dependents = dependents
        self.remaining = remaining
        self.claims = claims

        // Priority: what a foreign key waits for first, then the biggest table's work.
        var neededByForeignKey = Set<Int>()
        var pending = entries.indices.filter { entries[$0].type == "FK CONSTRAINT" }
        while let index = pending.popLast() {
            for dependency in entries[index].dependencies {
                if let other = position[dependency], entries[other].type != "FK CONSTRAINT", neededByForeignKey.insert(other).inserted {
                    pending.append(other)
                }
            }
        }
        func order(_ entry: SchemaEntry) -> Int {
            switch entry.type {
            case "CONSTRAINT": return 0
            case "INDEX": return 1
            case "FK CONSTRAINT": return 3
            default: return 2
            }
        }
        var rank: [(priority: Int64, order: Int)] = []
        var sizes: [Int64] = []
        var mainGroup: [Int?] = []
        for (index, entry) in entries.enumerated() {
            let biggest = entry.dependencies.compactMap { tables[$0] }.max { $0.byteCount < $1.byteCount }
            let size = biggest?.byteCount ?? 0
            rank.append((neededByForeignKey.contains(index) ? Int64.max : size, order(entry)))
            sizes.append(size)
            mainGroup.append(biggest?.lockGroup)
            unfinishedBytes += size
            if let group = biggest?.lockGroup { unfinishedByGroup[group, default: 0] += size }
        }
        self.rank = rank
        self.sizes = sizes
        self.mainGroup = mainGroup
        for index in entries.indices where remaining[index] == 0 { insertReady(index) }
    }

    /// Kahn's algorithm over a copy of the counts: whatever never becomes free is on a cycle.
    private static func checkAcyclic(_ entries: [SchemaEntry], dependents: [[Int]], remaining: [Int]) throws(TenureError) {
        var counts = remaining
        var free = counts.indices.filter { counts[$0] == 0 }
        var visited = 0
        while let index = free.popLast() {
            visited += 1
            for next in dependents[index] {
                counts[next] -= 1
                if counts[next] == 0 { free.append(next) }
            }
        }
        guard visited < entries.count else { return }
        let stuck = counts.indices.filter { counts[$0] > 0 }.prefix(5).map { entries[$0].describe }
        throw TenureError(
            .invalidRequest,
            "the archive's post-data dependencies form a cycle through \(stuck.joined(separator: ", ")); nothing was restored")
    }

    /// Whether entry `a` goes before entry `b` in `ready`: higher priority, then lower type
    /// order, then earlier in the archive.
    private func precedes(_ a: Int, _ b: Int) -> Bool {
        let (keyA, keyB) = (rank[a], rank[b])
        if keyA.priority != keyB.priority { return keyA.priority > keyB.priority }
        if keyA.order != keyB.order { return keyA.order < keyB.order }
        return a < b
    }

    /// Inserts `index` into `ready` at its place, found by binary search (schemas with
    /// thousands of tables make thousands of entries ready at once).
    private mutating func insertReady(_ index: Int) {
        var low = 0
        var high = ready.count
        while low < high {
            let middle = (low + high) / 2
            if precedes(ready[middle], index) { low = middle + 1 } else { high = middle }
        }
        ready.insert(index, at: low)
    }

    var isEmpty: Bool { finishedCount == entries.count }
    var count: Int { entries.count }

    private func conflicts(_ wanted: [Claim]) -> Bool {
        for held in running.values.joined() {
            for claim in wanted where claim.table == held.table && (claim.exclusive || held.exclusive) { return true }
        }
        return false
    }

    /// Builds smaller than this never ask for parallel workers (PostgreSQL's own threshold for
    /// a parallel scan, `min_parallel_table_scan_size`, is 8 MB).
    static let parallelBuildBytes: Int64 = 16 << 20

    /// How many of `sessions` would sit idle while entry `index` (just taken by `next`) runs,
    /// recorded as given to it: when the work left on other tables (their data bytes) is under
    /// a quarter of this entry's table, the other sessions soon run out of work, so an index
    /// build may use their cores as parallel workers. Shared with the same table's builds that
    /// run beside it (those running, with the workers they were given, and ready index builds,
    /// which take a session each and an equal share; the last to start gets the remainder).
    /// 0 for a small table, or while other tables hold enough work to keep the sessions busy
    /// (workers there only add the cost of merging their sorts).
    mutating func spareSessions(for index: Int, sessions: Int) -> Int {
        let size = sizes[index]
        guard entries[index].buildsIndex, sessions > 1, size >= Self.parallelBuildBytes, let group = mainGroup[index] else { return 0 }
        let elsewhere = unfinishedBytes - (unfinishedByGroup[group] ?? 0)
        guard elsewhere < size / 4 else { return 0 }
        func beside(_ other: Int) -> Bool { other != index && mainGroup[other] == group && sizes[other] >= size / 4 }
        var busy = 1
        for other in running.keys where beside(other) { busy += 1 + (granted[other] ?? 0) }
        let siblings = entries[index].type == "INDEX" ? ready.filter { entries[$0].type == "INDEX" && beside($0) }.count : 0
        let spare = max(0, sessions - busy - siblings) / (1 + siblings)
        granted[index] = spare
        return spare
    }

    /// The best ready entry that takes no lock a running entry holds. With nothing running,
    /// the best ready entry always can start (the graph has no cycle, so one is ready).
    mutating func next() -> Next {
        if finishedCount == entries.count { return .done }
        guard let slot = ready.firstIndex(where: { !conflicts(claims[$0]) }) else {
            precondition(!running.isEmpty, "an acyclic schedule with nothing running has a ready entry")
            return .wait
        }
        let index = ready.remove(at: slot)
        running[index] = claims[index]
        return .run(index, entries[index])
    }

    mutating func finish(_ index: Int) {
        precondition(running[index] != nil, "finishing an entry that runs")
        running[index] = nil
        granted[index] = nil
        finishedCount += 1
        unfinishedBytes -= sizes[index]
        if let group = mainGroup[index] { unfinishedByGroup[group, default: 0] -= sizes[index] }
        for next in dependents[index] {
            remaining[next] -= 1
            if remaining[next] == 0 { insertReady(next) }
        }
    }
}
