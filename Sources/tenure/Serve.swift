import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import TenureCatalog
import TenureControl
import TenureCore
import TenurePQ

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run Tenure: the expiry sweep on its interval (and, in the embedded default, Tenure's own PostgreSQL).",
        discussion: "Stops cleanly on SIGINT or SIGTERM: the running sweep finishes, then the embedded PostgreSQL is shut down.")
    @OptionGroup var options: GlobalOptions

    func run() async throws {
        let configuration: TenureConfiguration
        do { configuration = try options.configuration() } catch { Output(json: false).fail(error) }
        let logger = makeLogger(configuration, defaultLevel: .info)

        let session: Session
        do {
            session = try Session(configuration: configuration, actor: "serve", logger: logger, ownCluster: true)
        } catch {
            Output(json: false).fail(error)
        }
        if let cluster = session.cluster {
            logger.info(
                "embedded PostgreSQL started",
                metadata: [
                    "tenure.data_directory": "\(cluster.dataDirectory)", "tenure.socket_directory": "\(cluster.socketDirectory)",
                    "tenure.port": "\(cluster.port ?? 0)", "tenure.log": "\(cluster.logFile)",
                ])
        }
        logger.info(
            "tenure serving",
            metadata: [
                "tenure.home": "\(configuration.home)", "tenure.sweep_interval": "\(PolicyDuration.format(configuration.sweepInterval))",
                "tenure.catalog": "\(session.catalog.parameters.shortDescription)",
            ])

        let sweep = SweepService(configuration: configuration, catalogParameters: session.catalog.parameters, logger: logger)
        let group = ServiceGroup(
            configuration: .init(services: [sweep], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            logger.error("service group failed", metadata: ["tenure.error": "\(error)"])
        }
        logger.info("shutting down")
        session.close()
        if session.cluster != nil { logger.info("embedded PostgreSQL stopped") }
    }
}

/// Runs the expiry sweep every `sweepInterval` until a graceful shutdown. Each sweep runs
/// on its own thread with its own catalog session: libpq blocks, the event loops must not.
struct SweepService: Service {
    let configuration: TenureConfiguration
    let catalogParameters: ConnectionParameters
    let logger: Logger

    func run() async throws {
        while !Task.isShuttingDownGracefully {
            let configuration = self.configuration
            let parameters = catalogParameters
            let logger = self.logger
            let result = await runBlocking { () throws(TenureError) -> SweepSummary in
                let catalog = try Catalog(parameters: parameters)
                defer { catalog.close() }
                let controller = Controller(catalog: catalog, configuration: configuration, clock: SystemWallClock(), actor: "sweep", logger: logger)
                let report = try controller.sweep(dryRun: false)
                return SweepSummary(report)
            }
            switch result {
            case .success(let summary):
                logger.info(
                    "expiry sweep finished",
                    metadata: [
                        "tenure.due": "\(summary.due)", "tenure.done": "\(summary.done)", "tenure.recovered": "\(summary.recovered)",
                        "tenure.refusal": "\(summary.refusal ?? "none")",
                    ])
            case .failure(let error) where error.code == .sweepRunning:
                logger.info("expiry sweep skipped: another sweep is running")
            case .failure(let error):
                logger.error("expiry sweep failed", metadata: ["tenure.error": "\(error.message)"])
            }
            try? await cancelWhenGracefulShutdown {
                try await Task.sleep(for: configuration.sweepInterval)
            }
        }
    }
}

struct SweepSummary: Sendable {
    var due: Int
    var done: Int
    var recovered: Int
    var refusal: String?

    init(_ report: SweepReport) {
        due = report.plan.items.count
        done = report.outcomes.filter { $0 == .done }.count
        recovered = report.recovered.count
        refusal = report.refusal ?? report.plan.refusal
    }
}

/// Runs blocking work (libpq) on a dedicated thread and resumes when it is done.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () throws(TenureError) -> T) async -> Result<T, TenureError> {
    await withCheckedContinuation { continuation in
        let thread = Thread {
            do throws(TenureError) {
                continuation.resume(returning: .success(try body()))
            } catch {
                continuation.resume(returning: .failure(error))
            }
        }
        thread.stackSize = 8 << 20
        thread.start()
    }
}
