import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import TenureControl
import TenureCore

/// The upgrade service over HTTP: the same controller use cases the `tenure upload` commands call.
extension Routes {
    func registerUploads(on v1: RouterGroup<APIContext>) {
        v1.post("uploads") { request, context in try await createUpload(request, context) }
        v1.get("uploads") { request, context in try await listUploads(request, context) }
        v1.get("uploads/:id") { request, context in try await showUpload(request, context) }
        v1.delete("uploads/:id") { request, context in try await deleteUpload(request, context) }
        v1.post("uploads/:id/upgrade") { request, context in try await startUpgrade(request, context) }
        v1.get("uploads/:id/download") { request, context in try await downloadUpload(request, context) }
        v1.get("uploads/:id/deletion-certificate") { request, context in try await uploadCertificate(request, context) }
        v1.put("uploads/:id/legal-hold") { request, context in try await holdUpload(request, context, set: true) }
        v1.delete("uploads/:id/legal-hold") { request, context in try await holdUpload(request, context, set: false) }
    }

    var hold: UploadHold { configuration.upgradeHold }

    /// The request body is the dump itself, streamed into the restore as it arrives (a
    /// bounded buffer between the event loop and the restore's thread). 201 with the upload
    /// once it is restored; a rejection is a problem (422, 413) naming the upload and why.
    func createUpload(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        let query = try Query(request, allowed: ["name"])
        let label = query["name"] ?? "upload"
        let limit = configuration.uploadLimits.maximumBytes
        if let length = request.headers[.contentLength].flatMap({ Int64($0) }), length > limit {
            throw TenureError(.bodyTooLarge, "the upload is larger than the limit of \(limit) bytes (TENURE_UPLOAD_MAX_BYTES)", context: ["limit": String(limit)])
        }
        try await jobs.acquireTransfer()
        let source = BodySource(what: "the request body")
        let outcome = Locked<Result<UploadRecord, TenureError>?>(nil)
        let finished = AsyncSignal()
        let jobs = self.jobs
        pool.detached(actor: context.actor, name: "tenure-upload") { controller in
            let result: Result<UploadRecord, TenureError>
            do throws(TenureError) {
                result = .success(try controller.get().createUpload(source: source, label: label))
            } catch {
                result = .failure(error)
            }
            source.closeReader()
            jobs.releaseTransfer()
            outcome.withLock { $0 = result }
            finished.signal()
        }
        do {
            for try await buffer in request.body {
                guard try await source.push(buffer) else { break }
            }
            source.finish()
        } catch {
            source.fail(TenureError(.cancelled, "the client stopped sending the upload"))
        }
        await finished.wait()
        switch outcome.withLock({ $0 })! {
        case .success(let record):
            metrics.add("tenure_uploads_total", [("outcome", "uploaded")])
            return jsonResponse(uploadDocument(record, hold: hold), status: .created, headers: [.location: "/v1/uploads/\(record.id)"])
        case .failure(let error):
            metrics.add("tenure_uploads_total", [("outcome", "rejected")])
            throw error
        }
    }

    func listUploads(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        let query = try Query(request, allowed: ["state", "limit", "cursor"])
        let state = try query["state"].map { (text) throws(TenureError) -> UploadState in
            guard let state = UploadState(rawValue: text) else {
                throw TenureError(.invalidRequest, "state '\(printable(text))' is not one of \(UploadState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return state
        }
        let limit = try query["limit"].map { (text) throws(TenureError) -> Int in
            guard let value = Int(text), (1...1000).contains(value) else { throw TenureError(.invalidRequest, "limit must be a whole number from 1 to 1000") }
            return value
        } ?? 100
        let cursor = try query["cursor"].map { (text) throws(TenureError) in try UploadID(parsing: text) }
        let records = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            try controller.uploads(state: state, after: cursor, limit: limit + 1)
        }
        let page = Array(records.prefix(limit))
        let next: Any = records.count > limit ? page.last!.id.rawValue : NSNull()
        let hold = self.hold
        return jsonResponse(["uploads": page.map { uploadDocument($0, hold: hold) }, "next_cursor": next])
    }

    func showUpload(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: UploadID.self)
        let record = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.upload(id) }
        return jsonResponse(uploadDocument(record, hold: hold), headers: [.eTag: "\"\(record.version)\""])
    }

    /// A deletion request: destroyed at once (databases, role, files) unless under a legal hold.
    func deleteUpload(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        let query = try Query(request, allowed: ["confirm"])
        let id = try context.id("id", as: UploadID.self)
        guard query["confirm"] == id.rawValue else {
            throw TenureError(.confirmationMismatch, "give the upload's id as ?confirm=\(id) to request its deletion; nothing was destroyed")
        }
        let record = try await pool.withServerWork(actor: context.actor) { (controller) throws(TenureError) in try controller.deleteUpload(id) }
        metrics.add("tenure_uploads_total", [("outcome", "destroyed")])
        return jsonResponse(uploadDocument(record, hold: hold))
    }

    func startUpgrade(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: UploadID.self)
        _ = try await JSONBody.read(request, context: context, allowed: [], maximumByteCount: maximumBody)
        let job = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.requestUpgrade(id) }
        return accepted(job)
    }

    /// The upgraded result (made into a verified file on first request), with Range.
    func downloadUpload(_ request: Request, _ context: APIContext) async throws -> Response {
        try context.require(.write)
        let query = try Query(request, allowed: ["format"])
        let id = try context.id("id", as: UploadID.self)
        let formatText = query["format"] ?? "native"
        guard let format = BackupFormat(rawValue: formatText) else {
            throw TenureError(.invalidRequest, "format must be native or sql, not '\(printable(formatText))'")
        }
        let (path, _) = try await pool.withServerWork(actor: context.actor) { (controller) throws(TenureError) in
            try controller.uploadResultFile(id, format: format)
        }
        let generation = (path as NSString).lastPathComponent.split(separator: ".").first.map(String.init) ?? "result"
        // The file is sealed with the upload's data key: its plain size first (for the range),
        // then only the segments the range needs, opened as the client reads.
        let size = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            do throws(TenureError) { return try controller.openUploadResult(path, count: 0).size } catch {
                guard error.code == .invalidRequest else { throw error }
                throw TenureError(.lifecycleConflict, "the result of upload \(id) changed while it was being prepared; ask again")
            }
        }
        let (range, headers) = try ranged(
            request, size: size, etag: "\"\(id.rawValue)-\(generation)-\(format.rawValue)\"",
            contentType: format == .native ? "application/x-tar" : "application/zstd", filename: "\(id)" + (format == .native ? ".tenure" : ".sql.zst"))
        let first = range?.first ?? 0
        let count = range?.count ?? size
        let source = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            SourceBox(try controller.openUploadResult(path, first: first, count: count).source)
        }
        let pool = self.pool
        let body = ResponseBody(contentLength: Int(count)) { writer in
            var remaining = count
            while remaining > 0 {
                let want = Int(min(remaining, 256 << 10))
                let bytes = try await pool.withBlocking { () throws(TenureError) -> [UInt8] in
                    var bytes = [UInt8](repeating: 0, count: want)
                    let read = try bytes.withMutableBytes { (raw) throws(TenureError) in try source.source.readFully(into: raw) }
                    guard read > 0 else { throw TenureError(.internal, "the result of upload \(id) ended early") }
                    bytes.removeSubrange(read...)
                    return bytes
                }
                try await writer.write(ByteBuffer(bytes: bytes))
                remaining -= Int64(bytes.count)
            }
            try await writer.finish(nil)
        }
        return Response(status: range == nil ? .ok : .partialContent, headers: headers, body: body)
    }

    func uploadCertificate(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: UploadID.self)
        let record = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.uploadCertificate(id) }
        return jsonResponse(certificateDocument(record))
    }

    func holdUpload(_ request: Request, _ context: APIContext, set: Bool) async throws(TenureError) -> Response {
        try context.require(.admin)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: UploadID.self)
        let body = try await JSONBody.read(request, context: context, allowed: set ? ["reason"] : [], maximumByteCount: maximumBody)
        let reason = try body.string("reason")
        if set, reason == nil { throw TenureError(.invalidRequest, "field 'reason' is required: say why the data must be kept") }
        let record = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            try controller.setUploadHold(id, reason: set ? reason : nil)
        }
        return jsonResponse(uploadDocument(record, hold: hold))
    }
}

/// An HTTP request body as a `ByteSource` for the engine's thread: the event loop pushes
/// buffers (waiting while 4 MiB are buffered), the restore reads them (blocking). When the
/// reader stops (a rejected upload), pushes return false and the rest is not read.
final class BodySource: ByteSource, @unchecked Sendable {
    private let condition = NSCondition()
    private var chunks: [ByteBuffer] = []
    private var buffered = 0
    private var finished = false
    private var failure: TenureError?
    private var readerClosed = false
    let what: String
    private(set) var byteCount: Int64 = 0
    static let maximumBuffered = 4 << 20
    static let maximumStallSeconds: TimeInterval = 120

    init(what: String) { self.what = what }

    func push(_ buffer: ByteBuffer) async throws -> Bool {
        while true {
            switch tryPush(buffer) {
            case .some(let accepted): return accepted
            case .none: try await Task.sleep(for: .milliseconds(2))
            }
        }
    }

    /// True: buffered; false: the reader stopped; nil: full, try again shortly.
    private func tryPush(_ buffer: ByteBuffer) -> Bool? {
        condition.lock()
        defer { condition.unlock() }
        if readerClosed { return false }
        guard buffered < Self.maximumBuffered else { return nil }
        chunks.append(buffer)
        buffered += buffer.readableBytes
        condition.broadcast()
        return true
    }

    func finish() {
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    func fail(_ error: TenureError) {
        condition.lock()
        failure = error
        condition.broadcast()
        condition.unlock()
    }

    func closeReader() {
        condition.lock()
        readerClosed = true
        chunks.removeAll()
        condition.unlock()
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(Self.maximumStallSeconds)
        while chunks.isEmpty && !finished && failure == nil {
            if !condition.wait(until: deadline) {
                throw TenureError(.timeout, "the client sent nothing for \(Int(Self.maximumStallSeconds)) s")
            }
        }
        if let failure { throw failure }
        guard var first = chunks.first else { return 0 }
        let count = min(buffer.count, first.readableBytes)
        first.withUnsafeReadableBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]).copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        first.moveReaderIndex(forwardBy: count)
        buffered -= count
        if first.readableBytes == 0 { chunks.removeFirst() } else { chunks[0] = first }
        byteCount += Int64(count)
        return count
    }
}

/// A one-shot signal from a thread to an async waiter.
final class AsyncSignal: @unchecked Sendable {
    private let lock = NSLock()
    private var signalled = false
    private var waiter: CheckedContinuation<Void, Never>?

    func signal() {
        lock.lock()
        signalled = true
        let waiter = self.waiter
        self.waiter = nil
        lock.unlock()
        waiter?.resume()
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            lock.lock()
            if signalled {
                lock.unlock()
                continuation.resume()
            } else {
                waiter = continuation
                lock.unlock()
            }
        }
    }
}
