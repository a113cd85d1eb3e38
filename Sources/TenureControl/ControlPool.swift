import Foundation
import Logging
import NIOPosix
import TenureCatalog
import TenureCore
import TenureEngine
import TenurePQ

/// The one way an adapter (the HTTP API, `serve`'s services) reaches the use cases: runs them
/// (blocking libpq work) on a fixed pool of dedicated threads, each borrowing one of at most
/// `catalogConnections` catalog sessions, with one clock, so the event loops never block and a
/// handler awaits the result; long work (exports, uploads, sweeps) gets a thread and a catalog
/// session of its own through `detached`.
public final class ControlPool: Sendable {
    let parameters: ConnectionParameters
    /// Without the API's statement timeout: for long work on threads of its own.
    let longParameters: ConnectionParameters
    public let configuration: TenureConfiguration
    public let logger: Logger
    private let threads: NIOThreadPool
    private let idle = Locked<[CatalogBox]>([])
    private let serverWork = Locked(0)

    public init(parameters: ConnectionParameters, configuration: TenureConfiguration, logger: Logger) {
        longParameters = parameters
        var parameters = parameters
        // A stuck catalog query must not hold an API thread forever.
        let timeout = Int(configuration.http.requestTimeout.components.seconds) * 1000
        parameters["options"] = [parameters["options"], "-c statement_timeout=\(timeout)"].compactMap { $0 }.joined(separator: " ")
        self.parameters = parameters
        self.configuration = configuration
        self.logger = logger
        threads = NIOThreadPool(numberOfThreads: configuration.http.catalogConnections)
        threads.start()
    }

    /// Runs `body` with a controller acting as `actor` on a pool thread.
    public func withController<T: Sendable>(actor: String, _ body: @escaping @Sendable (Controller) throws(TenureError) -> T) async throws(TenureError) -> T {
        let configuration = self.configuration
        let logger = self.logger
        return try await withCatalog { (catalog) throws(TenureError) in
            try body(Controller(catalog: catalog, configuration: configuration, clock: SystemWallClock(), actor: actor, logger: logger))
        }
    }

    func withCatalog<T: Sendable>(_ body: @escaping @Sendable (Catalog) throws(TenureError) -> T) async throws(TenureError) -> T {
        let result: Result<T, TenureError>
        do {
            result = try await threads.runIfActive { () -> Result<T, TenureError> in
                let catalog: Catalog
                do throws(TenureError) {
                    if let parked = self.idle.withLock({ $0.popLast() }) {
                        catalog = parked.catalog
                    } else {
                        catalog = try Catalog(parameters: self.parameters)
                    }
                } catch {
                    return .failure(error)
                }
                do throws(TenureError) {
                    let value = try body(catalog)
                    self.idle.withLock { $0.append(CatalogBox(catalog: catalog)) }
                    return .success(value)
                } catch {
                    // A session that failed may be mid-transaction or broken: do not reuse it.
                    if catalog.connection.isHealthy {
                        self.idle.withLock { $0.append(CatalogBox(catalog: catalog)) }
                    } else {
                        catalog.close()
                    }
                    return .failure(error)
                }
            }
        } catch {
            throw TenureError(.catalogUnavailable, "the server is shutting down")
        }
        return try result.get()
    }

    /// Runs blocking work without a catalog session (file reads) on the pool's threads.
    public func withBlocking<T: Sendable>(_ body: @escaping @Sendable () throws(TenureError) -> T) async throws(TenureError) -> T {
        let result: Result<T, TenureError>
        do {
            result = try await threads.runIfActive { () -> Result<T, TenureError> in
                do throws(TenureError) { return .success(try body()) } catch { return .failure(error) }
            }
        } catch {
            throw TenureError(.catalogUnavailable, "the server is shutting down")
        }
        return try result.get()
    }

    /// Use cases that wait on a tenant server (create, transitions, deletions, extensions,
    /// making an upload's result file) run here: on a thread and catalog session of their own,
    /// so a server that stops answering holds no thread of the pool, and requests about other
    /// databases go on. At most twice `TENURE_HTTP_CATALOG_CONNECTIONS` at once (429 above).
    public func withServerWork<T: Sendable>(actor: String, _ body: @escaping @Sendable (Controller) throws(TenureError) -> T) async throws(TenureError) -> T {
        let limit = configuration.http.catalogConnections * 2
        let admitted = serverWork.withLock { running -> Bool in
            guard running < limit else { return false }
            running += 1
            return true
        }
        guard admitted else {
            throw TenureError(
                .limitExceeded, "\(limit) operations on tenant servers are running, the most this server allows at once; retry shortly",
                context: ["retry_after": "2", "limit": String(limit)])
        }
        let serverWork = self.serverWork
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, TenureError>, Never>) in
            detached(actor: actor, name: "tenure-server-work") { controller in
                let outcome: Result<T, TenureError>
                do throws(TenureError) { outcome = .success(try body(try controller.get())) } catch { outcome = .failure(error) }
                serverWork.withLock { $0 -= 1 }
                continuation.resume(returning: outcome)
            }
        }
        return try result.get()
    }

    /// Long work on a thread of its own with a catalog session of its own (a stream, a sweep),
    /// so it never holds one of the pool's threads; `body` gets the controller, or the error
    /// that kept it from opening the catalog.
    public func detached(actor: String, name: String, _ body: @escaping @Sendable (Result<Controller, TenureError>) -> Void) {
        let parameters = longParameters
        let configuration = self.configuration
        let logger = self.logger
        let thread = Thread {
            do throws(TenureError) {
                let catalog = try Catalog(parameters: parameters)
                defer { catalog.close() }
                body(.success(Controller(catalog: catalog, configuration: configuration, clock: SystemWallClock(), actor: actor, logger: logger)))
            } catch {
                body(.failure(error))
            }
        }
        thread.name = name
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// The job worker of this process, on the same catalog.
    public func makeJobWorker(onAttemptEnd: @escaping @Sendable (JobAttemptReport) -> Void) -> JobWorker {
        JobWorker(
            catalogParameters: longParameters, configuration: configuration, logger: logger,
            slots: TransferSlots(limit: configuration.http.maximumTransfers), onAttemptEnd: onAttemptEnd)
    }

    public func shutdown() async {
        try? await threads.shutdownGracefully()
        for box in idle.withLock({ items in defer { items.removeAll() }; return items }) { box.catalog.close() }
    }
}

/// A catalog session parked between requests; only one thread uses it at a time.
private struct CatalogBox: @unchecked Sendable {
    let catalog: Catalog
}
