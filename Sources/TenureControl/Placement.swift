import Foundation
import TenureCatalog
import TenureCore
import TenurePQ

/// A tenant server as `tenure server list` and `GET /v1/servers` show it.
public struct ServerSummary: Sendable {
    public var server: ServerRecord
    /// Live databases placed there.
    public var placed: Int
    /// Their total size on the server; nil when it did not answer.
    public var bytes: Int64?
}

extension Controller {
    /// Where a new database goes: the named server (it must be active and not full), or the
    /// active server with the lowest share of its capacity in use (ties: by name). A fleet with
    /// no active server below its capacity is a conflict (409, exit 4), nothing made.
    public func placement(requested: String?, excluding: String? = nil) throws(TenureError) -> ServerRecord {
        let counts = try catalog.placedCounts()
        if let requested {
            let server = try catalog.server(named: requested)
            if let refusal = Catalog.placeRefusal(
                server.name.rawValue, state: server.state.rawValue, placed: counts[server.name.rawValue, default: 0], capacity: server.capacity)
            {
                throw refusal
            }
            return server
        }
        let candidates = try catalog.servers().filter {
            $0.state == .active && $0.name.rawValue != excluding && counts[$0.name.rawValue, default: 0] < $0.capacity
        }
        let chosen = candidates.min { a, b in
            let left = Double(counts[a.name.rawValue, default: 0]) / Double(max(a.capacity, 1))
            let right = Double(counts[b.name.rawValue, default: 0]) / Double(max(b.capacity, 1))
            return left != right ? left < right : a.name.rawValue < b.name.rawValue
        }
        guard let chosen else {
            throw TenureError(
                .lifecycleConflict, "no active tenant server has room for another database; add a server or raise a capacity (`tenure server update NAME --capacity N`)")
        }
        return chosen
    }

    /// Changes a server's capacity and/or state (`draining` stops new placements there). Audited.
    public func updateServer(name: String, capacity: Int?, state: ServerState?) throws(TenureError) -> ServerRecord {
        if let capacity, !(0...1_000_000).contains(capacity) {
            throw TenureError(.invalidRequest, "capacity must be a whole number from 0 to 1000000")
        }
        let now = clock.now()
        try catalog.transaction { () throws(TenureError) in
            guard try catalog.updateServer(name, capacity: capacity, state: state) else {
                throw TenureError(.serverNotFound, "no tenant server named '\(printable(name))'; see `tenure server list`", context: ["server": name])
            }
            var detail = ["server": name]
            if let capacity { detail["capacity"] = String(capacity) }
            if let state { detail["state"] = state.rawValue }
            try catalog.audit(at: now, databaseID: nil, actor: actor, action: "server_update", from: nil, to: nil, reason: nil, detail: detail)
        }
        return try catalog.server(named: name)
    }

    /// Every server with its placed count and the bytes its live databases take (asked of the
    /// server with a short timeout; nil when it does not answer).
    public func serverSummaries() throws(TenureError) -> [ServerSummary] {
        let counts = try catalog.placedCounts()
        let live = try catalog.databases().filter { $0.state != .destroyed }
        return try catalog.servers().map { server in
            let names = live.filter { $0.serverName == server.name.rawValue }.map(\.postgresDatabase)
            var bytes: Int64? = 0
            if !names.isEmpty {
                bytes = (try? { () throws(TenureError) -> Int64? in
                    let admin = try connectAdmin(server)
                    defer { admin.close() }
                    let result = try admin.query(
                        "SELECT coalesce(sum(pg_database_size(datname)), 0)::text FROM pg_database WHERE datname = ANY($1::text[])",
                        ["{" + names.joined(separator: ",") + "}"])
                    return Int64(result.rows.first?[0] ?? "")
                }()) ?? nil
            }
            return ServerSummary(server: server, placed: counts[server.name.rawValue, default: 0], bytes: bytes)
        }
    }
}
