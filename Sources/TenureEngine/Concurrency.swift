import Foundation
import Synchronization
import TenureCore
import TenurePQ

/// A bounded blocking queue between data-plane threads: producers wait when it is full, so a
/// slow consumer slows the producers and memory stays bounded. `fail` wakes everyone.
final class BoundedQueue<Element>: @unchecked Sendable {
    private let condition = NSCondition()
    private var items: [Element] = []
    private let capacity: Int
    private var closed = false
    private var failed = false

    init(capacity: Int) {
        precondition(capacity > 0, "queue capacity")
        self.capacity = capacity
    }

    /// Waits for room; false if the queue failed (the item is dropped).
    @discardableResult
    func push(_ item: Element) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while items.count >= capacity && !failed { condition.wait() }
        guard !failed else { return false }
        items.append(item)
        condition.broadcast()
        return true
    }

    /// The next item; nil when closed and empty, or failed.
    func pop() -> Element? {
        condition.lock()
        defer { condition.unlock() }
        while items.isEmpty && !closed && !failed { condition.wait() }
        guard !failed, !items.isEmpty else { return nil }
        let item = items.removeFirst()
        condition.broadcast()
        return item
    }

    /// No more items will be pushed.
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    func fail() {
        condition.lock()
        failed = true
        items.removeAll()
        condition.broadcast()
        condition.unlock()
    }
}

/// The first error of a group of threads; later ones are dropped.
final class FirstFailure: Sendable {
    private let state = Mutex<TenureError?>(nil)

    func record(_ error: TenureError) {
        state.withLock { if $0 == nil { $0 = error } }
    }

    var error: TenureError? { state.withLock { $0 } }
}


/// Runs `body` on `count` dedicated threads and waits for all of them.
func runThreads(count: Int, name: String, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        let thread = Thread {
            body(index)
            group.leave()
        }
        thread.name = "\(name)-\(index)"
        thread.stackSize = 4 << 20
        thread.start()
    }
    group.wait()
}


extension TransferProgress {
    /// Opens a data session that stopping this transfer wakes (a cancel, a lost lease, a
    /// server found not answering): the blocked call fails at once instead of waiting on the
    /// server. See `SessionInterrupter`.
    func session(_ parameters: ConnectionParameters, applicationName: String) throws(TenureError) -> PostgresConnection {
        let connection = try PostgresConnection(parameters, applicationName: applicationName)
        // The server gives up a statement whose client went away (a session stopped this way)
        // within 10 s rather than when the statement ends (PostgreSQL 14 and later).
        if connection.serverMajorVersion >= 14 { try connection.execute("SET client_connection_check_interval = 10000") }
        let interrupter = connection.interrupter
        onStop { interrupter.interrupt() }
        return connection
    }
}

/// A bounded pipe from a writer thread (the `ByteSink` side: a backup) to a reader thread (the
/// `ByteSource` side: a restore), so one streams into the other with nothing staged on disk and
/// at most `capacity` chunks in memory. A failed side wakes and fails the other.
public final class BytePipe: ByteSink, ByteSource, @unchecked Sendable {
    private let queue: BoundedQueue<[UInt8]>
    private let failure = FirstFailure()
    private var current: [UInt8] = []
    private var offset = 0
    private var count: Int64 = 0
    public let what: String

    public init(what: String, capacity: Int = 16) {
        queue = BoundedQueue(capacity: capacity)
        self.what = what
    }

    public var byteCount: Int64 { count }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError) {
        guard bytes.count > 0 else { return }
        guard queue.push(Array(bytes)) else {
            throw failure.error ?? TenureError(.cancelled, "\(what): the reading side stopped")
        }
    }

    public func finish() throws(TenureError) { queue.close() }

    public func abort() { fail(TenureError(.internal, "\(what): the writing side failed")) }

    /// Either side gave up: the other's next call fails with `error`.
    public func fail(_ error: TenureError) {
        failure.record(error)
        queue.fail()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        while offset == current.count {
            guard let next = queue.pop() else {
                if let error = failure.error { throw error }
                return 0
            }
            current = next
            offset = 0
        }
        let take = min(buffer.count, current.count - offset)
        current.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: take) }
        offset += take
        count += Int64(take)
        return take
    }
}
