import Foundation
import Synchronization

// Values and protocols the data plane, the control plane and the adapters share: byte
// streams, progress counters, a lock, the backup formats and a backup's summary.

public enum BackupFormat: String, Sendable, CaseIterable {
    /// `.tenure`: the tar archive described in `ArchiveLayout`.
    case native
    /// `.sql.zst`: one zstd stream of plain SQL for `zstd -dc x.sql.zst | psql`.
    case sql
}

public struct BackupSummary: Sendable {
    public var tableCount: Int
    public var rowCount: Int64
    public var rawBytes: Int64
    public var writtenBytes: Int64
    public var memberCount: Int
    public var sequenceCount: Int
    public var largeObjectCount: Int

    public init(
        tableCount: Int, rowCount: Int64, rawBytes: Int64, writtenBytes: Int64, memberCount: Int, sequenceCount: Int, largeObjectCount: Int
    ) {
        self.tableCount = tableCount
        self.rowCount = rowCount
        self.rawBytes = rawBytes
        self.writtenBytes = writtenBytes
        self.memberCount = memberCount
        self.sequenceCount = sequenceCount
        self.largeObjectCount = largeObjectCount
    }
}

/// Where a stream of bytes goes. Thread: one writer at a time.
public protocol ByteSink: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError)
    /// The stream is complete: flush, fsync and publish.
    func finish() throws(TenureError)
    /// The stream failed: remove whatever was written.
    func abort()
}

extension ByteSink {
    public func write(_ bytes: [UInt8]) throws(TenureError) {
        try bytes.withBytes { (buffer) throws(TenureError) in try write(buffer) }
    }
}

/// A stream of bytes the engine reads (a file, stdin, an HTTP request body).
public protocol ByteSource: AnyObject {
    /// What the stream is, for messages.
    var what: String { get }
    /// Bytes read so far.
    var byteCount: Int64 { get }
    /// Reads up to `buffer.count` bytes; 0 at the end of the stream.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int
}

extension ByteSource {
    /// Reads until `buffer` is full or the stream ends; returns the count read.
    public func readFully(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        var offset = 0
        while offset < buffer.count {
            let count = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset...]))
            if count == 0 { break }
            offset += count
        }
        return offset
    }
}

/// Progress counters the data plane bumps and anyone may sample (never a queue of events).
public final class TransferProgress: Sendable {
    public let rawBytes = Atomic<Int64>(0)
    public let compressedBytes = Atomic<Int64>(0)
    public let rows = Atomic<Int64>(0)
    /// The expected raw size, when known (sum of table sizes), for an ETA.
    public let expectedBytes = Atomic<Int64>(0)
    /// Set by whoever wants the transfer stopped; the stream checks it between chunks.
    public let cancelled = Atomic<Bool>(false)
    private let stops = Locked(Stops())

    private struct Stops {
        var next = 0
        var handlers: [Int: @Sendable () -> Void] = [:]
        var reason: TenureError?
    }

    public init() {}

    /// Stops the transfer: the flag its loops check, and every registered interrupter (the
    /// sessions and child processes it may be blocked in) is run, once.
    public func cancel() { stop(because: nil) }

    /// Stops the transfer for a reason other than a cancel (its server stopped answering):
    /// the attempt then ends with `reason` rather than with what the interrupted call said.
    public func stop(because reason: TenureError?) {
        let handlers = stops.withLock { stops -> [@Sendable () -> Void] in
            if stops.reason == nil { stops.reason = reason }
            // Set under the lock: a handler registered after this runs at once.
            cancelled.store(true, ordering: .relaxed)
            let handlers = Array(stops.handlers.values)
            stops.handlers = [:]
            return handlers
        }
        for handler in handlers { handler() }
    }

    public var isCancelled: Bool { cancelled.load(ordering: .relaxed) }

    /// Why the transfer was stopped, when it was not a cancel.
    public var stopReason: TenureError? { stops.withLock { $0.reason } }

    /// Registers what wakes the transfer from a blocking call when it is stopped (closing a
    /// session's socket, killing a child). Already stopped: runs it now. Returns a token
    /// for `unregister`, needed when the handler must not outlive what it interrupts.
    @discardableResult
    public func onStop(_ handler: @escaping @Sendable () -> Void) -> Int {
        let token = stops.withLock { stops -> Int? in
            guard !isCancelled else { return nil }
            stops.next += 1
            stops.handlers[stops.next] = handler
            return stops.next
        }
        guard let token else {
            handler()
            return 0
        }
        return token
    }

    public func unregister(_ token: Int) { stops.withLock { _ = $0.handlers.removeValue(forKey: token) } }
}

/// A value shared between threads behind a lock. Decide under the lock, act outside it.
public final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    public init(_ value: Value) { self.value = value }

    public func withLock<T>(_ body: (inout Value) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}
