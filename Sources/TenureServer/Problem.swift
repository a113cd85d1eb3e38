import Foundation
import HTTPTypes
import Hummingbird
import TenureCore

/// RFC 9457 problem details, mapped from the one domain error type.
///
/// `type` is a stable URI built from the error code (`urn:tenure:problem:database.not_found`)
/// and `code` repeats the code itself, so clients switch on either. `detail` is the error's
/// message, which never carries a secret; for 401/403 and 500 it is a fixed text, so nothing
/// about keys or internals leaks.
struct Problem {
    var status: HTTPResponse.Status
    var code: TenureError.Code
    var detail: String
    var context: [String: String]
    var headers: HTTPFields = [:]

    init(_ error: TenureError) {
        code = error.code
        status = Self.status(for: error.code)
        context = error.context
        switch error.code {
        case .unauthorized:
            detail = "a valid API key is required: send Authorization: Bearer <key>"
            context = [:]
            headers[.wwwAuthenticate] = #"Bearer realm="tenure""#
        case .forbidden:
            detail = "this API key does not have the scope this call needs"
            context = [:]
        case .internal:
            detail = "internal error; the server log has the details"
            context = [:]
        default:
            detail = error.message
        }
        if case .limitExceeded = error.code { headers[.retryAfter] = error.context["retry_after"] ?? "5" }
    }

    /// The HTTP status of every error code: one exhaustive switch, no default.
    static func status(for code: TenureError.Code) -> HTTPResponse.Status {
        switch code {
        case .invalidRequest, .invalidID, .invalidName, .invalidConfiguration, .confirmationMismatch: return .badRequest
        case .bodyTooLarge: return .contentTooLarge
        case .idempotencyMismatch, .uploadRejected: return .unprocessableContent
        case .preconditionFailed: return .preconditionFailed
        case .rangeNotSatisfiable: return .rangeNotSatisfiable
        case .routeNotFound, .databaseNotFound, .serverNotFound, .backupNotFound, .apiKeyNotFound, .jobNotFound, .uploadNotFound, .certificateNotFound: return .notFound
        case .methodNotAllowed: return .methodNotAllowed
        case .unauthorized: return .unauthorized
        case .forbidden: return .forbidden
        case .limitExceeded: return .tooManyRequests
        case .lifecycleConflict, .concurrentModification, .legalHold, .nameTaken, .serverExists, .sweepRunning, .sweepRefused,
            .migrationChanged, .jobFinished, .idempotencyInProgress:
            return .conflict
        case .serverUnreachable, .catalogUnavailable, .embeddedServer: return .serviceUnavailable
        case .timeout: return .serviceUnavailable
        case .cancelled: return .conflict
        case .keyDestroyed: return .conflict
        case .postgres, .internal: return .internalServerError
        }
    }

    func response(instance: String?) -> Response {
        var document: [String: Any] = [
            "type": "urn:tenure:problem:\(code.rawValue)", "title": Self.title(status), "status": status.code, "code": code.rawValue,
            "detail": detail,
        ]
        if let instance { document["instance"] = instance }
        if !context.isEmpty { document["context"] = context }
        var response = jsonResponse(document, status: status, contentType: "application/problem+json")
        for field in headers { response.headers.append(field) }
        return response
    }

    static func title(_ status: HTTPResponse.Status) -> String {
        status.reasonPhrase.isEmpty ? "Error \(status.code)" : status.reasonPhrase
    }
}

/// A JSON response from a document of plain values (the same documents `--json` prints).
func jsonResponse(_ document: Any, status: HTTPResponse.Status = .ok, contentType: String = "application/json", headers: HTTPFields = [:]) -> Response {
    var data = (try? JSONSerialization.data(withJSONObject: document, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    data.append(0x0A)
    var fields = headers
    fields[.contentType] = contentType
    return Response(status: status, headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
}
