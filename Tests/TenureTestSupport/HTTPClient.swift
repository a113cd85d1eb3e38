import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.1 client over a TCP socket, for tests that must control the wire:
/// read part of a body and hang up, send raw headers, see chunked framing as it is.
public struct HTTPResponse: Sendable, CustomStringConvertible {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    public var text: String { String(decoding: body, as: UTF8.self) }
    public var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:] }
    public var description: String { "HTTP \(status) \(header("content-type") ?? "-"): \(text.prefix(600))" }
}

public struct HTTPClientError: Error, CustomStringConvertible {
    public var description: String
    public init(description: String) { self.description = description }
}

public final class HTTPConnection {
    let descriptor: Int32
    private var buffer: [UInt8] = []

    public init(port: Int, host: String = "127.0.0.1") throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw HTTPClientError(description: "socket failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            Glibc.close(descriptor)
            throw HTTPClientError(description: "connect to \(host):\(port) failed: errno \(errno)")
        }
        var timeout = timeval(tv_sec: 120, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    private var isClosed = false

    deinit { if !isClosed { Glibc.close(descriptor) } }

    /// Hangs up at once (RST when unread data is pending), as a client that went away.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        Glibc.close(descriptor)
    }

    public func send(method: String, path: String, headers: [String: String] = [:], body: [UInt8] = []) throws {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if !body.isEmpty || ["POST", "PUT", "PATCH"].contains(method) { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        try write(Array(head.utf8) + body)
    }

    func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw HTTPClientError(description: "send failed: errno \(errno)") }
            offset += written
        }
    }

    private func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        if count < 0 { throw HTTPClientError(description: "recv failed: errno \(errno)") }
        if count == 0 { return false }
        buffer.append(contentsOf: chunk[..<count])
        return true
    }

    private func line() throws -> String {
        while true {
            if let index = buffer.indices.dropLast().first(where: { buffer[$0] == 13 && buffer[$0 + 1] == 10 }) {
                let text = String(decoding: buffer[..<index], as: UTF8.self)
                buffer.removeSubrange(...(index + 1))
                return text
            }
            guard try fill() else { throw HTTPClientError(description: "connection closed in the middle of a line") }
        }
    }

    private func take(_ count: Int) throws -> [UInt8] {
        while buffer.count < count {
            guard try fill() else { throw HTTPClientError(description: "connection closed with \(count - buffer.count) body bytes missing") }
        }
        let bytes = Array(buffer[..<count])
        buffer.removeSubrange(..<count)
        return bytes
    }

    /// Reads the status line and headers.
    public func readHead() throws -> (status: Int, headers: [(String, String)]) {
        let statusLine = try line()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let status = Int(parts[1]) else { throw HTTPClientError(description: "bad status line '\(statusLine)'") }
        var headers: [(String, String)] = []
        while true {
            let text = try line()
            if text.isEmpty { break }
            guard let colon = text.firstIndex(of: ":") else { continue }
            headers.append((String(text[..<colon]), text[text.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        return (status, headers)
    }

    /// Reads a whole response (Content-Length or chunked).
    public func readResponse(method: String = "GET") throws -> HTTPResponse {
        let (status, headers) = try readHead()
        let response = HTTPResponse(status: status, headers: headers, body: [])
        if method == "HEAD" || status == 204 || status == 304 { return response }
        var body: [UInt8] = []
        if response.header("transfer-encoding")?.lowercased() == "chunked" {
            while true {
                let sizeLine = try line()
                guard let size = Int(sizeLine.split(separator: ";")[0], radix: 16) else { throw HTTPClientError(description: "bad chunk size '\(sizeLine)'") }
                if size == 0 {
                    while try !line().isEmpty {}
                    break
                }
                body += try take(size)
                _ = try line()
            }
        } else if let length = response.header("content-length").flatMap(Int.init) {
            body = try take(length)
        }
        return HTTPResponse(status: status, headers: headers, body: body)
    }

    /// Reads up to `count` raw bytes after the head (for a client that hangs up early).
    public func readSome(_ count: Int) throws -> Int {
        var total = buffer.count
        buffer.removeAll()
        while total < count {
            guard try fill() else { break }
            total += buffer.count
            buffer.removeAll()
        }
        return total
    }
}

/// One request on a fresh connection.
public func httpRequest(port: Int, _ method: String, _ path: String, headers: [String: String] = [:], body: [UInt8] = []) throws -> HTTPResponse {
    let connection = try HTTPConnection(port: port)
    try connection.send(method: method, path: path, headers: headers, body: body)
    return try connection.readResponse(method: method)
}
