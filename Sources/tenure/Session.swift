import Foundation
import Logging
import TenureCatalog
import TenureControl
import TenureCore
import TenureEmbedded
import TenurePQ

/// Everything a command needs: configuration, the catalog (migrated), the controller, and,
/// in the embedded default, a lease on the private cluster. Opening a session also finishes
/// or rolls back any operation a crashed process left half-done.
final class Session {
    let configuration: TenureConfiguration
    let catalog: Catalog
    let controller: Controller
    let lease: EmbeddedLease?
    let cluster: EmbeddedCluster?

    init(configuration: TenureConfiguration, actor: String, logger: Logger, ownCluster: Bool = false, recover: Bool = true) throws(TenureError) {
        self.configuration = configuration
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
        controller = Controller(catalog: catalog, configuration: configuration, clock: clock, actor: actor, logger: logger)
        if recover {
            // A drop finished here queues its store deletion: run it now too.
            if try controller.recover().contains(where: { $0.outcome == "destroy finished" }) { try runPendingPurges() }
        }
    }

    func close() {
        catalog.close()
        try? lease?.release()
    }

    /// Opens a session for one command, runs `body`, and always closes it.
    static func with<T>(_ options: GlobalOptions, _ body: (Session) throws(TenureError) -> T) throws(TenureError) -> T {
        let configuration = try options.configuration()
        let logger = makeLogger(configuration, defaultLevel: .notice)
        let session = try Session(configuration: configuration, actor: commandActor(), logger: logger)
        defer { session.close() }
        return try body(session)
    }
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
