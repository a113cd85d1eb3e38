import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import TenureControl
import TenureCore

/// The HTTP API and its job runner, ready to join `tenure serve`'s ServiceGroup.
public struct APIServer: Sendable {
    let application: Application<RouterResponder<APIContext>>
    let jobs: JobService
    let schedule: ScheduleService
    let pool: ControlPool
    public let metrics: APIMetrics

    /// The API on `pool`, the control plane `tenure serve` made for it.
    public init(pool: ControlPool, onListening: @escaping @Sendable (Int) -> Void) {
        let configuration = pool.configuration
        let logger = pool.logger
        let metrics = ServerMetrics()
        let jobs = JobService(pool: pool, metrics: metrics)
        let router = Router(context: APIContext.self)
        router.add(middleware: ProblemMiddleware(metrics: metrics, logger: logger))
        router.add(middleware: AuthMiddleware(pool: pool))
        Routes(pool: pool, jobs: jobs, metrics: metrics, configuration: configuration, logger: logger).register(on: router)
        var serverLogger = logger
        serverLogger.logLevel = max(logger.logLevel, .notice)
        application = Application(
            router: router,
            server: .http1(configuration: .init(additionalChannelHandlers: [MalformedRequestResponder()])),
            configuration: .init(address: .hostname(configuration.http.host, port: configuration.http.port), serverName: "tenure"),
            onServerRunning: { channel in onListening(channel.localAddress?.port ?? 0) },
            logger: serverLogger)
        self.jobs = jobs
        schedule = ScheduleService(pool: pool, jobs: jobs, metrics: metrics)
        self.pool = pool
        self.metrics = APIMetrics(metrics: metrics)
    }

    /// The services to run: the job runner first, so it outlives the HTTP server's drain.
    public var services: [any Service] { [jobs, schedule, application] }

    public func shutdown() async { await pool.shutdown() }
}

/// What `tenure serve` reports into the API's metrics (sweep results).
public struct APIMetrics: Sendable {
    let metrics: ServerMetrics

    public func sweep(outcome: String, destroyed: Int) {
        metrics.add("tenure_sweeps_total", [("outcome", outcome)])
        metrics.add("tenure_sweep_destroyed_total", [], Double(destroyed))
    }
}

/// Outermost middleware: turns every error into problem+json (one mapping from the domain
/// error; framework errors such as an unknown route map to their codes; anything else is a
/// 500 that says nothing about internals) and counts requests by route template and status.
/// (The time a request may take is bounded where it blocks: every API catalog session
/// carries `statement_timeout` = TENURE_HTTP_REQUEST_TIMEOUT.)
struct ProblemMiddleware: RouterMiddleware {
    typealias Context = APIContext
    let metrics: ServerMetrics
    let logger: Logger

    func handle(_ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response) async throws -> Response {
        let started = ContinuousClock.now
        let response: Response
        do {
            response = try await next(request, context)
        } catch {
            response = problemResponse(error, request: request, context: context)
        }
        let route = context.endpointPath ?? "unmatched"
        let elapsed = ContinuousClock.now - started
        metrics.add("tenure_http_requests_total", [("route", route), ("method", request.method.rawValue), ("status", String(response.status.code))])
        metrics.record("tenure_http_request_duration_seconds", [("route", route)], elapsed)
        return response
    }

    func problemResponse(_ error: any Error, request: Request, context: APIContext) -> Response {
        var problem: Problem
        switch error {
        case let error as TenureError:
            problem = Problem(error)
            if error.code == .internal || error.code == .postgres {
                logger.error("request failed", metadata: ["tenure.path": "\(request.uri.path)", "tenure.error": "\(error.message)"])
            }
        case let error as ProblemError:
            problem = error.problem
        case let error as HTTPError:
            if error.status == .notFound, let allowed = DocumentedRoutes.shared.methods(for: request.uri.path), !allowed.isEmpty {
                // The path exists with other methods: 405 and what it does allow.
                problem = Problem(TenureError(.methodNotAllowed, "\(request.method.rawValue) is not allowed on this route; it allows \(allowed.joined(separator: ", "))"))
                problem.headers[.allow] = allowed.joined(separator: ", ")
            } else {
                problem = Problem(Self.domainError(error))
            }
        default:
            logger.error("request failed", metadata: ["tenure.path": "\(request.uri.path)", "tenure.error": "\(String(describing: type(of: error)))"])
            problem = Problem(TenureError(.internal, "unexpected error"))
        }
        return problem.response(instance: request.uri.path)
    }

    static func domainError(_ error: HTTPError) -> TenureError {
        switch error.status {
        case .notFound: return TenureError(.routeNotFound, "no such route; see /openapi.json for the API")
        case .methodNotAllowed: return TenureError(.methodNotAllowed, "this method is not allowed on this route")
        case .contentTooLarge: return TenureError(.bodyTooLarge, "the request body is too large")
        case .unauthorized: return TenureError(.unauthorized, "unauthorized")
        default: return TenureError(.invalidRequest, error.body ?? "the request is invalid (\(error.status.code))")
        }
    }
}

/// Requires a valid, unrevoked bearer API key on everything under `/v1`. The key is looked
/// up by its SHA-256; no detail about why a key failed is returned.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = APIContext
    let pool: ControlPool

    func handle(_ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasPrefix("/v1/") || request.uri.path == "/v1" else { return try await next(request, context) }
        guard let header = request.headers[.authorization], header.count > 7, header.prefix(7).lowercased() == "bearer " else {
            throw TenureError(.unauthorized, "no bearer token")
        }
        let key = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        let configuration = pool.configuration
        let record = try await pool.withController(actor: "api") { (controller) throws(TenureError) in
            _ = configuration
            return try controller.authenticate(apiKey: key)
        }
        guard let record else { throw TenureError(.unauthorized, "unknown or revoked key") }
        var context = context
        context.apiKey = record
        return try await next(request, context)
    }
}

/// The routes and methods `docs/openapi.json` documents (the served document is the source of
/// truth): tells a path that exists with other methods (405) from one that does not (404).
struct DocumentedRoutes: Sendable {
    let templates: [(segments: [String], methods: [String])]

    static let shared = DocumentedRoutes(document: openAPIDocument)

    init(document: String) {
        let parsed = (try? JSONSerialization.jsonObject(with: Data(document.utf8))) as? [String: Any]
        let paths = parsed?["paths"] as? [String: Any] ?? [:]
        templates = paths.map { path, operations in
            let methods = ((operations as? [String: Any])?.keys.map { $0.uppercased() } ?? []).sorted()
            return (path.split(separator: "/").map(String.init), methods)
        }
    }

    /// The documented methods of the route `path` matches, or nil when no route does.
    func methods(for path: String) -> [String]? {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        for template in templates where template.segments.count == segments.count {
            let matches = zip(template.segments, segments).allSatisfy { pattern, segment in
                pattern.hasPrefix("{") ? !segment.isEmpty : pattern == segment
            }
            if matches { return template.methods + (template.methods.contains("GET") ? ["HEAD"] : []) }
        }
        return nil
    }
}
