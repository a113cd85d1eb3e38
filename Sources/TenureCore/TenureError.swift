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
        // Not found
        case databaseNotFound = "database.not_found"
        case serverNotFound = "server.not_found"
        case backupNotFound = "backup.not_found"
        case apiKeyNotFound = "api_key.not_found"
        // Conflict
        case lifecycleConflict = "lifecycle.conflict"
        case concurrentModification = "lifecycle.concurrent_modification"
        case legalHold = "lifecycle.legal_hold"
        case nameTaken = "database.name_taken"
        case serverExists = "server.exists"
        case sweepRunning = "sweep.running"
        case sweepRefused = "sweep.refused"
        case migrationChanged = "catalog.migration_changed"
        // Failure
        case serverUnreachable = "server.unreachable"
        case catalogUnavailable = "catalog.unavailable"
        case postgres = "postgres.error"
        case embeddedServer = "embedded.failed"
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
}

extension TenureError.Code {
    /// The category of this code. One exhaustive switch: adding a code breaks the build here.
    public var category: ErrorCategory {
        switch self {
        case .invalidRequest, .invalidID, .invalidName, .invalidConfiguration, .confirmationMismatch:
            return .invalidInput
        case .databaseNotFound, .serverNotFound, .backupNotFound, .apiKeyNotFound:
            return .notFound
        case .lifecycleConflict, .concurrentModification, .legalHold, .nameTaken, .serverExists,
            .sweepRunning, .sweepRefused, .migrationChanged:
            return .conflict
        case .serverUnreachable, .catalogUnavailable, .postgres, .embeddedServer, .internal:
            return .failure
        }
    }
}
