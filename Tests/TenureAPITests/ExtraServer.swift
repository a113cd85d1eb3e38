import Foundation
import Testing
import TenureEmbedded
import TenurePQ

#if canImport(Glibc)
import Glibc
#endif

/// A PostgreSQL server of one test's own beside the shared one (a second tenant server, a
/// catalog to restart), under /tmp; stopped and removed when the test lets go of it. Processes
/// the test stopped with SIGSTOP (`stopped`) are continued first.
final class ExtraServer {
    let cluster: EmbeddedCluster
    let root: String
    var stopped: [pid_t] = []

    init(_ name: String, maxConnections: Int = 50) throws {
        root = "/tmp/tenure-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        cluster = EmbeddedCluster(root: root, extraSettings: ["fsync = off", "max_connections = \(maxConnections)"])
        try cluster.start()
    }

    var port: Int { cluster.port! }

    /// A superuser URL over the server's socket.
    func url(database: String = "postgres") -> String {
        "postgresql://postgres@/\(database)?host=\(cluster.socketDirectory)&port=\(port)"
    }

    /// Rows of a query on its `postgres` database, as a superuser.
    func rows(_ sql: String, _ parameters: [String?] = []) throws -> [[String?]] {
        let connection = try PostgresConnection(try ConnectionParameters(parsing: url()))
        defer { connection.close() }
        return try connection.query(sql, parameters).rows
    }

    /// Registers it as tenant server `name` of `api`'s catalog.
    func add(to api: APIFixture, as name: String) throws {
        let add = try api.tenure(["server", "add", name, "--url", url(), "--public-host", "127.0.0.1", "--public-port", String(port)])
        try #require(add.status == 0, "\(add)")
    }

    var postmasterPID: pid_t? {
        guard let text = try? String(contentsOfFile: cluster.dataDirectory + "/postmaster.pid", encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first.flatMap { pid_t($0.trimmingCharacters(in: .whitespaces)) }
    }

    /// Stops the postmaster, and with `backends` every process it started, until `resume`.
    func pause(backends: Bool) throws {
        let postmaster = try #require(postmasterPID)
        stopped = [postmaster] + (backends ? Self.children(of: postmaster) : [])
        for pid in stopped { kill(pid, SIGSTOP) }
    }

    func resume() {
        for pid in stopped { kill(pid, SIGCONT) }
        stopped = []
    }

    /// The processes whose parent is `pid` (from /proc).
    static func children(of pid: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let child = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && pid_t(fields[1]) == pid ? child : nil
        }
    }

    deinit {
        resume()
        cluster.stopImmediately()
        try? FileManager.default.removeItem(atPath: root)
    }
}
