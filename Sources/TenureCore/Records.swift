import Foundation

/// A PostgreSQL server that hosts tenant databases.
public struct ServerRecord: Sendable, Equatable {
    public var name: ServerName
    /// How Tenure connects as an administrator; nil for `default` (the catalog's own server).
    /// May contain a password: never print it, use `redactedURL`.
    public var adminURL: String?
    /// Where tenants connect (the host and port in their connection URLs).
    public var publicHost: String
    public var publicPort: Int
    public var createdAt: Date
    /// How many live databases it takes (placement compares databases placed ÷ capacity).
    public var capacity: Int
    public var state: ServerState

    public init(
        name: ServerName, adminURL: String?, publicHost: String, publicPort: Int, createdAt: Date, capacity: Int = ServerRecord.defaultCapacity,
        state: ServerState = .active
    ) {
        self.name = name
        self.adminURL = adminURL
        self.publicHost = publicHost
        self.publicPort = publicPort
        self.createdAt = createdAt
        self.capacity = capacity
        self.state = state
    }

    public static let defaultCapacity = 500

    /// The admin URL with any password replaced by `***`, for display.
    public var redactedURL: String {
        guard let adminURL else { return "(catalog server)" }
        return redactPassword(in: adminURL)
    }
}

/// Whether a server takes new databases.
public enum ServerState: String, Sendable, CaseIterable {
    case active
    /// No new databases are placed here (its databases stay until moved).
    case draining
}

/// Replaces the password in a `postgresql://user:password@host` URL or `password=` pair.
public func redactPassword(in url: String) -> String {
    var text = url
    if let scheme = text.range(of: "://"), let at = text[scheme.upperBound...].firstIndex(of: "@") {
        let userInfo = text[scheme.upperBound..<at]
        if let colon = userInfo.firstIndex(of: ":") {
            text.replaceSubrange(text.index(after: colon)..<at, with: "***")
        }
    }
    if let range = text.range(of: "password=") {
        let end = text[range.upperBound...].firstIndex(where: { $0 == "&" || $0 == " " }) ?? text.endIndex
        text.replaceSubrange(range.upperBound..<end, with: "***")
    }
    return text
}

/// One hosted database as the catalog stores it.
public struct DatabaseRecord: Sendable, Equatable {
    public var id: DatabaseID
    public var name: String
    public var version: Int64
    public var serverName: String
    public var postgresDatabase: String
    public var postgresRole: String
    public var updatedAt: Date
    public var destroyedBy: String?
    public var lifecycle: DatabaseLifecycle

    public var state: DatabaseState { lifecycle.state }

    public init(
        id: DatabaseID, name: String, version: Int64, serverName: String, postgresDatabase: String, postgresRole: String,
        updatedAt: Date, destroyedBy: String?, lifecycle: DatabaseLifecycle
    ) {
        self.id = id
        self.name = name
        self.version = version
        self.serverName = serverName
        self.postgresDatabase = postgresDatabase
        self.postgresRole = postgresRole
        self.updatedAt = updatedAt
        self.destroyedBy = destroyedBy
        self.lifecycle = lifecycle
    }
}

public enum IntentKind: String, Sendable {
    case createDatabase = "create_database"
    case dropDatabase = "drop_database"
    /// Replacing a database's contents from a backup: detail holds "new" and "aside" names.
    case restoreDatabase = "restore_database"
    /// Moving a database to another server: detail holds "from" and "to".
    case moveDatabase = "move_database"
}

/// A backup in the store.
/// A managed backup's state: `running` while written, `verified` once published and checked
/// (the only state that counts, restores and downloads), `failed`, or `deleted` with its database.
public enum BackupState: String, Sendable, CaseIterable, Codable {
    case running, verified, failed, deleted
    /// Published and checked, but a restore drill of it failed: it no longer counts as verified.
    case drillFailed = "drill_failed"
}

/// How a restore drill ended.
public enum DrillOutcome: String, Sendable, CaseIterable, Codable {
    case passed, failed
}

/// How an intent ended; `pending` while its process carries it out (or until recovery does).
public enum IntentStatus: String, Sendable, CaseIterable {
    case pending, completed
    case rolledBack = "rolled_back"
}

public struct BackupRecord: Sendable, Equatable {
    public var id: BackupID
    public var databaseID: DatabaseID
    public var state: BackupState
    public var format: String
    public var path: String
    public var byteCount: Int64?
    public var rowCount: Int64?
    public var tableCount: Int?
    public var startedAt: Date
    public var finishedAt: Date?
    public var error: String?
    public var lockKey: Int64
    /// Taken by the scheduler rather than asked for.
    public var scheduled = false
    /// XXH64 (hex) of the stored bytes, checked when it was verified (nil for older backups).
    public var digest: String?
    /// The backup's last restore drill.
    public var drilledAt: Date?
    public var drillOutcome: DrillOutcome?

    public init(id: BackupID, databaseID: DatabaseID, state: BackupState, format: String, path: String, startedAt: Date, lockKey: Int64) {
        self.id = id
        self.databaseID = databaseID
        self.state = state
        self.format = format
        self.path = path
        self.startedAt = startedAt
        self.lockKey = lockKey
    }
}

public struct IntentRecord: Sendable, Equatable {
    public var id: IntentID
    public var kind: IntentKind
    public var databaseID: DatabaseID
    public var serverName: String
    public var postgresDatabase: String
    public var postgresRole: String
    public var lockKey: Int64
    public var createdAt: Date
    /// Extra names for restores ("new", "aside").
    public var detail: [String: String] = [:]

    public init(
        id: IntentID, kind: IntentKind, databaseID: DatabaseID, serverName: String, postgresDatabase: String, postgresRole: String, lockKey: Int64,
        createdAt: Date, detail: [String: String] = [:]
    ) {
        self.detail = detail
        self.id = id
        self.kind = kind
        self.databaseID = databaseID
        self.serverName = serverName
        self.postgresDatabase = postgresDatabase
        self.postgresRole = postgresRole
        self.lockKey = lockKey
        self.createdAt = createdAt
    }
}

public struct AuditEvent: Sendable, Equatable {
    public var id: Int64
    public var at: Date
    public var databaseID: String?
    public var actor: String
    public var action: String
    public var fromState: String?
    public var toState: String?
    public var reason: String?
    /// A JSON object with facts (rule, deadline, counts). Never secrets.
    public var detail: String

    public init(
        id: Int64, at: Date, databaseID: String?, actor: String, action: String, fromState: String?, toState: String?, reason: String?,
        detail: String
    ) {
        self.id = id
        self.at = at
        self.databaseID = databaseID
        self.actor = actor
        self.action = action
        self.fromState = fromState
        self.toState = toState
        self.reason = reason
        self.detail = detail
    }
}

public struct SweepRecord: Sendable, Equatable {
    public var id: Int64
    public var asOf: Date
    public var outcome: String

    public init(id: Int64, asOf: Date, outcome: String) {
        self.id = id
        self.asOf = asOf
        self.outcome = outcome
    }
}

/// The scopes an API key may carry.
public enum APIScope: String, Sendable, CaseIterable, Codable {
    case read, write, admin
}

/// An API key as stored: never the key itself, only its hash.
public struct APIKeyRecord: Sendable, Equatable {
    public var id: APIKeyID
    public var name: String
    public var scopes: [APIScope]
    public var createdAt: Date
    public var revokedAt: Date?
    public var lastUsedAt: Date?

    public init(id: APIKeyID, name: String, scopes: [APIScope], createdAt: Date, revokedAt: Date?, lastUsedAt: Date?) {
        self.id = id
        self.name = name
        self.scopes = scopes
        self.createdAt = createdAt
        self.revokedAt = revokedAt
        self.lastUsedAt = lastUsedAt
    }
}

/// One upload of the upgrade service as the catalog stores it.
public struct UploadRecord: Sendable, Equatable {
    public var id: UploadID
    public var state: UploadState
    public var version: Int64
    public var label: String
    public var format: String?
    public var serverName: String
    public var postgresRole: String
    public var postgresDatabase: String?
    public var generation: Int
    public var byteCount: Int64 = 0
    public var statementCount: Int64 = 0
    public var skippedCount: Int64 = 0
    public var createdAt: Date
    public var uploadedAt: Date?
    public var lastRunAt: Date?
    public var lastUpgradedAt: Date?
    public var upgradeCount = 0
    public var originalDeletedAt: Date?
    public var rejectReason: String?
    public var failedScript: String?
    public var failedError: String?
    public var failedSQLState: String?
    public var appliedScripts: [String] = []
    public var legalHoldReason: String?
    public var legalHoldSince: Date?
    public var destroyedAt: Date?
    public var destroyedBy: String?
    public var destroyReason: String?
    public var cleanupPending = false
    public var lockKey: Int64
    public var updatedAt: Date

    public init(id: UploadID, label: String, serverName: String, createdAt: Date, lockKey: Int64) {
        self.id = id
        self.state = .uploading
        self.version = 1
        self.label = label
        self.serverName = serverName
        self.postgresRole = id.rawValue + "_owner"
        self.generation = 0
        self.createdAt = createdAt
        self.lockKey = lockKey
        self.updatedAt = createdAt
    }

    /// The database of a generation: g0 is the uploaded original, g1... upgrade results.
    public func databaseName(generation: Int) -> String { "\(id.rawValue)_g\(generation)" }

    public var candidate: UploadCandidate {
        UploadCandidate(
            id: id, version: version, state: state, uploadedAt: uploadedAt ?? createdAt, lastUpgradedAt: lastUpgradedAt, legalHold: legalHoldReason != nil)
    }
}
