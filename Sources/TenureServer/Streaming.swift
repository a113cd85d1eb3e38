import Foundation
import NIOCore
import TenureCore

/// Carries an archive from the engine's writer thread (blocking) to an HTTP response
/// (async) through a bounded buffer: a slow client fills it, the writer then waits, so the
/// backup slows down instead of memory growing. Closing it from the reading side (a client
/// that went away) makes the writer's next write fail, which aborts the backup.
final class ChunkChannel: ByteSink, @unchecked Sendable {
    private let condition = NSCondition()
    private var chunks: [ByteBuffer] = []
    private var bufferedByteCount = 0
    private var finished = false
    private var failure: TenureError?
    private var readerClosed = false
    private var waitingReader: CheckedContinuation<ByteBuffer?, any Error>?
    let maximumBufferedByteCount: Int
    /// Chunks smaller than this are gathered before they are handed to the reader.
    private var pending: [UInt8] = []
    static let chunkByteCount = 256 << 10
    static let maximumStallSeconds: TimeInterval = 120

    init(maximumBufferedByteCount: Int = 4 << 20) {
        self.maximumBufferedByteCount = maximumBufferedByteCount
    }

    // MARK: Writer side (engine thread)

    func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError) {
        pending.append(contentsOf: bytes)
        if pending.count >= Self.chunkByteCount { try push() }
    }

    private func push() throws(TenureError) {
        guard !pending.isEmpty else { return }
        let buffer = ByteBuffer(bytes: pending)
        pending.removeAll(keepingCapacity: true)
        condition.lock()
        // A client that stops reading but keeps the connection open must not hold the
        // source's snapshot and a transfer slot forever.
        let deadline = Date().addingTimeInterval(Self.maximumStallSeconds)
        while !readerClosed, bufferedByteCount >= maximumBufferedByteCount {
            if !condition.wait(until: deadline) {
                readerClosed = true
                condition.unlock()
                throw TenureError(.timeout, "the client read nothing for \(Int(Self.maximumStallSeconds)) s; the export was stopped and nothing was kept")
            }
        }
        if readerClosed {
            condition.unlock()
            throw TenureError(.cancelled, "the client went away; the export was stopped and nothing was kept")
        }
        if let reader = waitingReader {
            waitingReader = nil
            condition.unlock()
            reader.resume(returning: buffer)
            return
        }
        chunks.append(buffer)
        bufferedByteCount += buffer.readableBytes
        condition.unlock()
    }

    func finish() throws(TenureError) {
        try push()
        condition.lock()
        finished = true
        let reader = waitingReader
        waitingReader = nil
        condition.unlock()
        reader?.resume(returning: nil)
    }

    func abort() {
        fail(TenureError(.internal, "the export failed"))
    }

    /// Ends the stream with an error: the reader sees it and breaks the response off, so
    /// the client never gets a body that looks complete.
    func fail(_ error: TenureError) {
        condition.lock()
        if failure == nil, !finished { failure = error }
        let reader = waitingReader
        waitingReader = nil
        condition.unlock()
        reader?.resume(throwing: error)
    }

    // MARK: Reader side (async)

    func next() async throws -> ByteBuffer? {
        try await withCheckedThrowingContinuation { continuation in
            condition.lock()
            if !chunks.isEmpty {
                let buffer = chunks.removeFirst()
                bufferedByteCount -= buffer.readableBytes
                condition.signal()
                condition.unlock()
                continuation.resume(returning: buffer)
            } else if let failure {
                condition.unlock()
                continuation.resume(throwing: failure)
            } else if finished {
                condition.unlock()
                continuation.resume(returning: nil)
            } else {
                waitingReader = continuation
                condition.unlock()
            }
        }
    }

    /// The reader is gone (client disconnected): wake and fail the writer.
    func closeReader() {
        condition.lock()
        readerClosed = true
        chunks.removeAll()
        bufferedByteCount = 0
        condition.broadcast()
        condition.unlock()
    }
}

/// A parsed `Range: bytes=…` header, resolved against a file's size (RFC 9110 §14).
struct ByteRange: Equatable {
    var first: Int64
    var last: Int64

    var count: Int64 { last - first + 1 }

    /// nil when there is no Range header; a 416 problem when it is malformed, asks for more
    /// than one range, or cannot be satisfied.
    static func parse(_ header: String?, size: Int64) throws(TenureError) -> ByteRange? {
        guard let header else { return nil }
        let unsatisfiable = { (why: String) -> TenureError in
            TenureError(.rangeNotSatisfiable, "Range '\(printable(header))' \(why); the file has \(size) bytes", context: ["size": String(size)])
        }
        let text = header.trimmingCharacters(in: .whitespaces)
        guard text.lowercased().hasPrefix("bytes=") else { throw unsatisfiable("is not a bytes range (expected bytes=FIRST-LAST)") }
        let spec = text.dropFirst(6).trimmingCharacters(in: .whitespaces)
        guard !spec.contains(",") else { throw unsatisfiable("asks for several ranges; ask for one") }
        let parts = spec.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2, parts[0].allSatisfy(\.isASCIIDigitCharacter), parts[1].allSatisfy(\.isASCIIDigitCharacter),
            parts[0].count <= 18, parts[1].count <= 18
        else { throw unsatisfiable("is malformed (expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX)") }
        if parts[0].isEmpty {
            guard let suffix = Int64(parts[1]), suffix > 0 else { throw unsatisfiable("is malformed (an empty suffix)") }
            guard size > 0 else { throw unsatisfiable("cannot be satisfied") }
            return ByteRange(first: max(0, size - suffix), last: size - 1)
        }
        guard let first = Int64(parts[0]) else { throw unsatisfiable("is malformed") }
        let last = parts[1].isEmpty ? size - 1 : Int64(parts[1])!
        guard first < size else { throw unsatisfiable("starts at or after the end of the file") }
        guard last >= first else { throw unsatisfiable("ends before it starts") }
        return ByteRange(first: first, last: min(last, size - 1))
    }
}

extension Character {
    fileprivate var isASCIIDigitCharacter: Bool { isASCII && isNumber }
}
