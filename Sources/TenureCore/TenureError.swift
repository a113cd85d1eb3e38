/// The one error type that crosses module boundaries.
///
/// `code` is a closed set whose raw values are part of the CLI's `--json` output and,
/// later, the HTTP API's problem `type`. `message` says what failed and what to do about it
/// and never contains a secret. Adapters (CLI exit codes, HTTP status) map `code` with one
/// exhaustive switch each.
public struct TenureError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable, CaseIterable {
        // Input
        case invalidRequest = "request.invalid"
        case invalidID = "request.invalid_id"
        case invalidName = "request.invalid_name"
        case invalidConfiguration = "config.invalid"
        case confirmationMismatch = "request.confirmation_mismatch"
        case bodyTooLarge = "request.too_large"
        case idempotencyMismatch = "request.idempotency_mismatch"
        case preconditionFailed = "request.precondition_failed"
        case rangeNotSatisfiable = "request.range_not_satisfiable"
        case routeNotFound = "request.not_found"
        case methodNotAllowed = "request.method_not_allowed"
        /// An upload that was refused (bad format, forbidden statement, limit, failed restore).
        case uploadRejected = "upload.rejected"
        // Auth and limits
        case unauthorized = "auth.unauthorized"
        case forbidden = "auth.forbidden"
        case limitExceeded = "limit.exceeded"
        // Not found
        case databaseNotFound = "database.not_found"
        case serverNotFound = "server.not_found"
        case backupNotFound = "backup.not_found"
        case apiKeyNotFound = "api_key.not_found"
        case jobNotFound = "job.not_found"
        case uploadNotFound = "upload.not_found"
        case certificateNotFound = "certificate.not_found"
        // Conflict
        case lifecycleConflict = "lifecycle.conflict"
        case concurrentModification = "lifecycle.concurrent_modification"
        case legalHold = "lifecycle.legal_hold"
        case nameTaken = "database.name_taken"
        case serverExists = "server.exists"
        case sweepRunning = "sweep.running"
        case sweepRefused = "sweep.refused"
        case migrationChanged = "catalog.migration_changed"
        case jobFinished = "job.finished"
        case idempotencyInProgress = "request.idempotency_in_progress"
        /// The data key a stored file needs was destroyed with its database or upload.
        case keyDestroyed = "key.destroyed"
        // Failure
        case serverUnreachable = "server.unreachable"
        case catalogUnavailable = "catalog.unavailable"
        case postgres = "postgres.error"
        case embeddedServer = "embedded.failed"
        case cancelled = "job.cancelled"
        case timeout = "request.timeout"
        case `internal` = "internal"
    }

    public var code: Code
    public var message: String
    /// Facts that help an operator (ids, states, deadlines). Never secrets.
    public var context: [String: String]
    /// The SQLSTATE when PostgreSQL produced the error.
    public var sqlState: String?
    public var file: String
    public var line: Int

    public init(
        _ code: Code, _ message: String, context: [String: String] = [:], sqlState: String? = nil,
        file: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.context = context
        self.sqlState = sqlState
        self.file = file
        self.line = line
    }

    public var description: String { message }
}

/// What kind of outcome an error is, for exit codes and HTTP statuses.
public enum ErrorCategory: Sendable {
    case invalidInput, notFound, conflict, failure
    /// No or a wrong credential; a credential without the needed scope; a limit was hit.
    case unauthorized, forbidden, limited
}

extension TenureError.Code {
    /// The category of this code. One exhaustive switch: adding a code breaks the build here.
    public var category: ErrorCategory {
        switch self {
        case .invalidRequest, .invalidID, .invalidName, .invalidConfiguration, .confirmationMismatch, .bodyTooLarge, .idempotencyMismatch,
            .preconditionFailed, .rangeNotSatisfiable, .methodNotAllowed, .uploadRejected:
            return .invalidInput
        case .databaseNotFound, .serverNotFound, .backupNotFound, .apiKeyNotFound, .jobNotFound, .uploadNotFound, .routeNotFound, .certificateNotFound:
            return .notFound
        case .lifecycleConflict, .concurrentModification, .legalHold, .nameTaken, .serverExists,
            .sweepRunning, .sweepRefused, .migrationChanged, .jobFinished, .idempotencyInProgress, .keyDestroyed:
            return .conflict
        case .serverUnreachable, .catalogUnavailable, .postgres, .embeddedServer, .cancelled, .timeout, .internal:
            return .failure
        case .unauthorized: return .unauthorized
        case .forbidden: return .forbidden
        case .limitExceeded: return .limited
        }
    }
}
