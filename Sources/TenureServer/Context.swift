import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import TenureControl
import TenureCore

/// The per-request context: Hummingbird's core storage plus the authenticated API key.
struct APIContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    var apiKey: APIKeyRecord?

    init(source: Source) {
        coreContext = .init(source: source)
    }

    /// Who acts, recorded in the audit trail: the API key's id and name (never the key).
    var actor: String {
        guard let apiKey else { return "api" }
        return "api:\(apiKey.id)(\(apiKey.name))"
    }

    /// Fails with 403 unless the key carries `scope` (admin implies write, write implies read).
    func require(_ scope: APIScope) throws(TenureError) {
        guard let apiKey else { throw TenureError(.unauthorized, "no API key") }
        let rank: (APIScope) -> Int = { scope in
            switch scope {
            case .read: return 0
            case .write: return 1
            case .admin: return 2
            }
        }
        let best = apiKey.scopes.map(rank).max() ?? -1
        guard best >= rank(scope) else {
            throw TenureError(.forbidden, "API key \(apiKey.id) lacks the \(scope.rawValue) scope")
        }
    }

    /// A path parameter parsed as a typed id: the wrong kind or a malformed id is a 400 that
    /// never reaches SQL.
    func id<ID: TypedID>(_ name: String, as type: ID.Type) throws(TenureError) -> ID {
        guard let text = parameters.get(name) else { throw TenureError(.invalidRequest, "missing path parameter \(name)") }
        return try ID(parsing: text)
    }
}

/// Query parameters, refused when unknown (a typo must not be silently ignored).
struct Query {
    let values: [String: String]

    init(_ request: Request, allowed: Set<String>) throws(TenureError) {
        var values: [String: String] = [:]
        for (key, value) in request.uri.queryParameters {
            let key = String(key)
            guard allowed.contains(key) else {
                throw TenureError(
                    .invalidRequest,
                    "unknown query parameter '\(printable(key))'" + (allowed.isEmpty ? "" : "; this call accepts \(allowed.sorted().joined(separator: ", "))"))
            }
            guard values[key] == nil else { throw TenureError(.invalidRequest, "query parameter '\(key)' is given twice") }
            values[key] = String(value)
        }
        self.values = values
    }

    subscript(_ key: String) -> String? { values[key] }
}

/// A JSON request body: an object whose fields are checked against the allowed set, so
/// unknown fields, wrong types and malformed JSON are each a clear 400.
struct JSONBody {
    let object: [String: Any]
    /// The canonical bytes of the body (sorted keys), for idempotency hashing.
    let canonical: Data

    static func read(_ request: Request, context: APIContext, allowed: Set<String>, maximumByteCount: Int) async throws(TenureError) -> JSONBody {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: maximumByteCount)
        } catch {
            throw TenureError(.bodyTooLarge, "the request body is larger than \(maximumByteCount) bytes", context: ["limit": String(maximumByteCount)])
        }
        if let type = request.headers[.contentType], buffer.readableBytes > 0,
            !type.lowercased().hasPrefix("application/json")
        {
            throw TenureError(.invalidRequest, "send the body as application/json, not \(printable(type))")
        }
        let data = Data(buffer.readableBytesView)
        if data.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) {
            return JSONBody(object: [:], canonical: Data("{}".utf8))
        }
        let parsed: Any
        do { parsed = try JSONSerialization.jsonObject(with: data, options: []) } catch {
            throw TenureError(.invalidRequest, "the request body is not valid JSON")
        }
        guard let object = parsed as? [String: Any] else { throw TenureError(.invalidRequest, "the request body must be a JSON object") }
        for key in object.keys where !allowed.contains(key) {
            throw TenureError(
                .invalidRequest,
                "unknown field '\(printable(key))'" + (allowed.isEmpty ? "; this call takes no fields" : "; this call accepts \(allowed.sorted().joined(separator: ", "))"))
        }
        let canonical = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? data
        return JSONBody(object: object, canonical: canonical)
    }

    func string(_ key: String, required: Bool = false) throws(TenureError) -> String? {
        guard let value = object[key], !(value is NSNull) else {
            if required { throw TenureError(.invalidRequest, "field '\(key)' is required") }
            return nil
        }
        guard let text = value as? String else { throw TenureError(.invalidRequest, "field '\(key)' must be a string") }
        return text
    }

    func bool(_ key: String) throws(TenureError) -> Bool? {
        guard let value = object[key], !(value is NSNull) else { return nil }
        // JSONSerialization gives NSNumber for both booleans and numbers; only true/false pass.
        guard let number = value as? NSNumber, String(cString: number.objCType) == "c" else {
            throw TenureError(.invalidRequest, "field '\(key)' must be true or false")
        }
        return number.boolValue
    }
}
