import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import TenureCatalog
import TenureControl
import TenureCore
import TenurePQ
import TenureServer

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run Tenure: the HTTP API, the job runner and the expiry sweep (and, in the embedded default, Tenure's own PostgreSQL).",
        discussion: """
            Listens on TENURE_HTTP_ADDRESS (default 127.0.0.1:8080; port 0 picks a free port) and prints the base URL. \
            On the first start (no API key exists yet) it creates an admin API key and prints it once. \
            Stops cleanly on SIGINT or SIGTERM: the HTTP server stops taking requests, running jobs are cancelled and clean up, \
            the running sweep finishes, then the embedded PostgreSQL is shut down.
            """)
    @OptionGroup var options: GlobalOptions

    func run() async throws {
        let configuration: TenureConfiguration
        do { configuration = try options.configuration() } catch { Output(json: false).fail(error) }
        let logger = makeLogger(configuration, defaultLevel: .info)
        // A backup store that cannot be used is refused now, not at the first backup.
        do { try configuration.backupStore.open().check() } catch { Output(json: false).fail(error) }

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

        // First start: an admin key, shown once on stdout (never logged).
        do {
            let created = try await session.call { (controller) throws(TenureError) -> CreatedAPIKey? in
                try controller.apiKeys().isEmpty ? try controller.createAPIKey(name: "admin", scopes: ["read", "write", "admin"]) : nil
            }
            if let created {
                FileHandle.standardOutput.write(
                    Data("First start: created admin API key \(created.record.id) (shown once, keep it safe):\n  \(created.key)\n".utf8))
            }
        } catch {
            Output(json: false).fail(error)
        }
        let host = configuration.http.host
        // The control plane every service of this process reaches the use cases through.
        let pool = session.pool
        let api = APIServer(pool: pool) { port in
            let shown = host.contains(":") ? "[\(host)]" : host
            FileHandle.standardOutput.write(Data("Tenure API listening on http://\(shown):\(port)\n".utf8))
        }
        let sweep = SweepService(pool: pool, metrics: api.metrics)
        let group = ServiceGroup(
            configuration: {
                var group = ServiceGroupConfiguration(services: api.services + [sweep], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
                // A client that never reads must not hold shutdown forever: after 30 s what
                // still runs is cancelled (open connections closed, transfers aborted).
                group.maximumGracefulShutdownDuration = .seconds(30)
                group.maximumCancellationDuration = .seconds(30)
                return group
            }())
        do {
            try await group.run()
        } catch {
            logger.error("service group failed", metadata: ["tenure.error": "\(error)"])
        }
        await api.shutdown()
        logger.info("shutting down")
        await session.close()
        if session.cluster != nil { logger.info("embedded PostgreSQL stopped") }
    }
}

/// Runs the expiry sweep every `sweepInterval` until a graceful shutdown. Each sweep runs
/// on its own thread with its own catalog session: libpq blocks, the event loops must not.
struct SweepService: Service {
    let pool: ControlPool
    let metrics: APIMetrics
    var logger: Logger { pool.logger }

    func run() async throws {
        while !Task.isShuttingDownGracefully {
            let configuration = pool.configuration
            let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<SweepSummary, TenureError>, Never>) in
                pool.detached(actor: "sweep", name: "tenure-sweep") { controller in
                    do throws(TenureError) {
                        continuation.resume(returning: .success(SweepSummary(try controller.get().sweep(dryRun: false))))
                    } catch {
                        continuation.resume(returning: .failure(error))
                    }
                }
            }
            switch result {
            case .success(let summary):
                metrics.sweep(outcome: summary.refusal == nil ? "ok" : "refused", destroyed: summary.done)
                logger.info(
                    "expiry sweep finished",
                    metadata: [
                        "tenure.due": "\(summary.due)", "tenure.done": "\(summary.done)", "tenure.recovered": "\(summary.recovered)",
                        "tenure.refusal": "\(summary.refusal ?? "none")",
                    ])
            case .failure(let error) where error.code == .sweepRunning:
                metrics.sweep(outcome: "skipped", destroyed: 0)
                logger.info("expiry sweep skipped: another sweep is running")
            case .failure(let error):
                metrics.sweep(outcome: "failed", destroyed: 0)
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

