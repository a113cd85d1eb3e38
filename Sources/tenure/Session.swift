import Foundation
import Logging
import TenureCatalog
import TenureControl
import TenureCore
import TenureEmbedded
import TenurePQ

/// Everything a command needs: configuration, the catalog (migrated), and, in the embedded
/// default, a lease on the private cluster. Opening a session also finishes or rolls back any
/// operation a crashed process left half-done.
///
/// Commands reach the use cases only through `pool`, the same `ControlPool` the HTTP API
/// calls: `call` for work on the catalog alone, `serverWork` for work that waits on a tenant
/// server or streams. The session's own catalog connection is for start-up only (migrations,
/// recovery, the embedded cluster's lease).
final class Session {
    let configuration: TenureConfiguration
    let catalog: Catalog
    let pool: ControlPool
    let actor: String
    let lease: EmbeddedLease?
    let cluster: EmbeddedCluster?
    /// Recovery finished a drop whose store deletion is still to run.
    private(set) var recoveredDrops = false

    init(configuration: TenureConfiguration, actor: String, logger: Logger, ownCluster: Bool = false, recover: Bool = true) throws(TenureError) {
        self.configuration = configuration
        self.actor = actor
        var parameters: ConnectionParameters
        var publicPort = 5432
        if let url = configuration.catalogURL {
            parameters = try ConnectionParameters(parsing: url, setting: "TENURE_CATALOG_URL")
            publicPort = Int(parameters["port"] ?? "5432") ?? 5432
            cluster = nil
            lease = nil
        } else {
            let cluster = try EmbeddedCluster.forHome(configuration.home, binDirectory: configuration.postgresBinDirectory)
            lease = try EmbeddedLease(home: EmbeddedCluster.absolutePathForHome(configuration.home), cluster: cluster, waitForOwnership: ownCluster)
            parameters = try cluster.superuserParameters(database: EmbeddedDefaults.catalogDatabase)
            publicPort = cluster.port ?? 5432
            self.cluster = cluster
        }
        let host = parameters["host"].flatMap { $0.hasPrefix("/") || $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
        do {
            catalog = try Catalog(parameters: parameters)
        } catch {
            try? lease?.release()
            throw error
        }
        try catalog.migrate()
        let clock = SystemWallClock()
        try catalog.ensureDefaultServer(publicHost: host, publicPort: publicPort, now: clock.now())
        pool = ControlPool(parameters: catalog.parameters, configuration: configuration, logger: logger)
        let controller = Controller(catalog: catalog, configuration: configuration, clock: clock, actor: actor, logger: logger)
        // The master key must open the catalog's data keys (made at first start, never over them).
        try controller.checkKeys()
        if recover {
            recoveredDrops = try controller.recover().contains(where: { $0.outcome == "destroy finished" })
        }
    }

    /// One use case on the catalog, run as the HTTP API runs it: on the pool, awaited.
    func call<T: Sendable>(_ body: @escaping @Sendable (Controller) throws(TenureError) -> T) async throws(TenureError) -> T {
        try await pool.withController(actor: actor, body)
    }

    /// One use case that waits on a tenant server, streams or runs a job: on a thread and
    /// catalog session of its own, as the HTTP API runs such work.
    func serverWork<T: Sendable>(_ body: @escaping @Sendable (Controller) throws(TenureError) -> T) async throws(TenureError) -> T {
        try await pool.withServerWork(actor: actor, body)
    }

    func close() async {
        await pool.shutdown()
        catalog.close()
        try? lease?.release()
    }

    /// Opens a session for one command, runs `body`, and always closes it. A drop that
    /// recovery finished has its store deletion run first.
    static func with<T>(_ options: GlobalOptions, _ body: (Session) async throws(TenureError) -> T) async throws(TenureError) -> T {
        let configuration = try options.configuration()
        let logger = makeLogger(configuration, defaultLevel: .notice)
        let session = try Session(configuration: configuration, actor: commandActor(), logger: logger)
        do {
            if session.recoveredDrops { try await session.runPendingPurges() }
            let value = try await body(session)
            await session.close()
            return value
        } catch {
            await session.close()
            throw error
        }
    }
}

/// A value opened by the command's task and handed to the pool thread that uses it; the
/// task does not touch it afterwards.
struct Handoff<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

extension EmbeddedCluster {
    static func absolutePathForHome(_ home: String) -> String {
        home.hasPrefix("/") ? home : FileManager.default.currentDirectoryPath + "/" + home
    }
}

/// `cli:<user>` for audit events.
func commandActor() -> String {
    let user = ProcessInfo.processInfo.environment["SUDO_USER"] ?? ProcessInfo.processInfo.environment["USER"] ?? String(getuid())
    return "cli:\(user)"
}

func makeLogger(_ configuration: TenureConfiguration, defaultLevel: Logger.Level) -> Logger {
    var logger = Logger(label: "tenure")
    let explicit = ProcessInfo.processInfo.environment["TENURE_LOG_LEVEL"] != nil
    logger.logLevel = explicit ? (Logger.Level(rawValue: configuration.logLevel) ?? .info) : defaultLevel
    return logger
}
