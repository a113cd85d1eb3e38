import Foundation
import Synchronization
import TenureCore
import TenureEmbedded
import TenurePQ

#if canImport(Glibc)
import Glibc
#endif

/// The one real PostgreSQL 15 server the tests share, started on first use by the test
/// process itself (as the `postgres` user when run as root), on a private port and socket,
/// with its data under /tmp, and stopped when the process exits. There is no fallback: if
/// it cannot start, every test that needs it fails.
public final class TestServer: Sendable {
    public let cluster: EmbeddedCluster
    public let port: Int

    private static let state = Mutex<Result<TestServer, TenureError>?>(nil)

    /// The shared server, started once per test process.
    public static func shared() throws -> TestServer {
        try state.withLock { value in
            if let value { return try value.get() }
            let result: Result<TestServer, TenureError>
            do throws(TenureError) { result = .success(try TestServer()) } catch { result = .failure(error) }
            value = result
            return try result.get()
        }
    }

    private init() throws(TenureError) {
        let root = "/tmp/tenure-test-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        cluster = EmbeddedCluster(
            root: root,
            extraSettings: [
                "fsync = off", "synchronous_commit = off", "full_page_writes = off", "max_connections = 300",
                // Every statement is logged so tests can prove no secret reaches the server's log.
                "log_statement = 'all'",
            ])
        try cluster.start()
        port = cluster.port!
        TestServer.registerStop(cluster)
    }

    private static let stopRegistration = Mutex<EmbeddedCluster?>(nil)

    private static func registerStop(_ cluster: EmbeddedCluster) {
        stopRegistration.withLock { $0 = cluster }
        atexit {
            TestServer.stopRegistration.withLock { cluster in
                cluster?.stopImmediately()
                if let root = cluster?.root { try? FileManager.default.removeItem(atPath: root) }
            }
        }
    }

    /// Superuser parameters for `database`.
    public func parameters(database: String = "postgres") -> ConnectionParameters {
        try! cluster.superuserParameters(database: database)
    }

    /// A superuser connection.
    public func connect(database: String = "postgres") throws -> PostgresConnection {
        try PostgresConnection(parameters(database: database), applicationName: "tenure-test")
    }

    /// A fresh, unique catalog database name and its URL, so tests can run side by side.
    public func newCatalogURL() -> (name: String, url: String) {
        let name = "catalog_" + String(DatabaseID.random().rawValue.dropFirst(3))
        return (name, "postgresql://postgres@/\(name)?host=\(cluster.socketDirectory)&port=\(port)")
    }

    /// Rows of a query as the superuser.
    public func rows(_ sql: String, _ parameters: [String?] = [], database: String = "postgres") throws -> [[String?]] {
        let connection = try connect(database: database)
        defer { connection.close() }
        return try connection.query(sql, parameters).rows
    }

    public func databaseExists(_ name: String) throws -> Bool {
        try !rows("SELECT 1 FROM pg_database WHERE datname = $1", [name]).isEmpty
    }

    public func roleExists(_ name: String) throws -> Bool {
        try !rows("SELECT 1 FROM pg_roles WHERE rolname = $1", [name]).isEmpty
    }

    /// The server's log so far (log_statement = all).
    public func log() -> String {
        (try? String(contentsOfFile: cluster.logFile, encoding: .utf8)) ?? ""
    }
}
