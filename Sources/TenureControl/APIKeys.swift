import Foundation
import TenureCatalog
import TenureCore

/// A key just created: shown once to its owner, stored only as a hash.
public struct CreatedAPIKey: Sendable {
    public var record: APIKeyRecord
    public var key: String
}

extension Controller {
    /// Creates an API key for the HTTP API (issue 5) with the given scopes. The key is
    /// `tenure_` and 32 random characters (190 bits); only its SHA-256 is stored.
    public func createAPIKey(name: String, scopes: [String]) throws(TenureError) -> CreatedAPIKey {
        let name = try DatabaseName(validating: name).rawValue
        guard !scopes.isEmpty else { throw TenureError(.invalidRequest, "give at least one --scope: read, write or admin") }
        var parsed: [APIScope] = []
        for scope in scopes {
            guard let value = APIScope(rawValue: scope) else {
                throw TenureError(.invalidRequest, "unknown scope '\(printable(scope))'; scopes are read, write and admin")
            }
            if !parsed.contains(value) { parsed.append(value) }
        }
        let key = "tenure_" + Self.randomPassword()
        let record = APIKeyRecord(id: .random(), name: name, scopes: parsed, createdAt: clock.now(), revokedAt: nil, lastUsedAt: nil)
        try catalog.transaction { () throws(TenureError) in
            try catalog.insertAPIKey(record, keyHash: Self.hashAPIKey(key))
            try catalog.audit(
                at: record.createdAt, databaseID: nil, actor: actor, action: "api_key_create", from: nil, to: nil, reason: nil,
                detail: ["api_key_id": record.id.rawValue, "name": name, "scopes": parsed.map(\.rawValue).joined(separator: ",")])
        }
        return CreatedAPIKey(record: record, key: key)
    }

    public func revokeAPIKey(_ id: APIKeyID) throws(TenureError) -> APIKeyRecord {
        let now = clock.now()
        try catalog.transaction { () throws(TenureError) in
            guard try catalog.revokeAPIKey(id, now: now) else {
                throw TenureError(.lifecycleConflict, "API key \(id) is already revoked", context: ["api_key_id": id.rawValue])
            }
            try catalog.audit(at: now, databaseID: nil, actor: actor, action: "api_key_revoke", from: nil, to: nil, reason: nil, detail: ["api_key_id": id.rawValue])
        }
        guard let record = try catalog.apiKeys().first(where: { $0.id == id }) else {
            throw TenureError(.apiKeyNotFound, "no API key with id \(id)")
        }
        return record
    }

    /// The live key a presented secret belongs to, or nil (unknown or revoked).
    public func authenticate(apiKey: String) throws(TenureError) -> APIKeyRecord? {
        guard apiKey.hasPrefix("tenure_"), apiKey.utf8.count == 39 else { return nil }
        return try catalog.apiKey(hash: Self.hashAPIKey(apiKey))
    }

    static func hashAPIKey(_ key: String) -> String {
        SHA256.hex(SHA256.hash(Array(key.utf8)))
    }
}
