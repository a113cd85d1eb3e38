import Foundation
import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOHTTPTypes

/// Answers a request the HTTP parser refuses (a control character in a header value, a
/// malformed request line) with a problem+json 400, as every other error is answered, and
/// closes the connection. Hummingbird's own answer is a 400 without a body or a content type.
///
/// It sits after the HTTP codec. Only an error that arrives while no request is open is
/// answered here: once a request's head has passed, the application owns the response, and
/// the error goes on to Hummingbird, which closes the connection.
final class MalformedRequestResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// A request head has passed and its response has not ended.
    private var requestOpen = false
    private var answered = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) { requestOpen = true }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { requestOpen = false }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError, !requestOpen else {
            context.fireErrorCaught(error)
            return
        }
        guard !answered else { return }
        answered = true
        let body = Self.document(parserError)
        var head = HTTPResponse(status: .badRequest)
        head.headerFields[.contentType] = "application/problem+json"
        head.headerFields[.contentLength] = String(body.count)
        head.headerFields[.connection] = "close"
        head.headerFields[.server] = "tenure"
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(context.channel.allocator.buffer(bytes: body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }

    static func document(_ error: HTTPParserError) -> Data {
        let document: [String: Any] = [
            "type": "urn:tenure:problem:request.invalid", "title": "Bad Request", "status": 400, "code": "request.invalid",
            "detail": "the request is not valid HTTP/1.1 (\(error)); nothing was done",
        ]
        return (try? JSONSerialization.data(withJSONObject: document, options: [.sortedKeys])) ?? Data()
    }
}
