import Foundation
import TenureCore

#if canImport(Glibc)
import Glibc
#endif


/// Writes to a file descriptor (stdout), retrying short writes; a full disk is a clear error.
public final class DescriptorSink: ByteSink {
    let descriptor: Int32
    let what: String
    public private(set) var byteCount = 0

    public init(descriptor: Int32, what: String) {
        self.descriptor = descriptor
        self.what = what
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError) {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                let reason = errno == ENOSPC ? "the disk is full" : String(cString: strerror(errno))
                throw TenureError(.internal, "writing \(what) failed: \(reason)")
            }
            offset += written
        }
        byteCount += bytes.count
    }

    public func finish() throws(TenureError) {}
    public func abort() {}
}

/// Writes a file under a temporary name in the same directory and publishes it by rename
/// only after `finish` (fsync of file and directory): a final name only ever holds a
/// complete stream (B3). `abort` removes the temporary file.
public final class AtomicFileSink: ByteSink {
    public let path: String
    public let temporaryPath: String
    let sink: DescriptorSink
    /// When false, `finish` only makes the file durable; the caller checks `temporaryPath`
    /// (verify) and then calls `publish`.
    let publishOnFinish: Bool
    private var done = false
    private var closed = false

    public init(path: String, publishOnFinish: Bool = true) throws(TenureError) {
        self.path = path
        self.publishOnFinish = publishOnFinish
        let url = URL(fileURLWithPath: path)
        temporaryPath = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).partial-\(UInt32.random(in: 0...UInt32.max))").path
        if FileManager.default.fileExists(atPath: path) {
            throw TenureError(.invalidRequest, "\(path) already exists; Tenure never overwrites an output file")
        }
        let descriptor = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw TenureError(.invalidRequest, "cannot create \(temporaryPath): \(String(cString: strerror(errno)))")
        }
        sink = DescriptorSink(descriptor: descriptor, what: path)
    }

    deinit { if !done { abort() } }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError) { try sink.write(bytes) }

    public func finish() throws(TenureError) {
        guard fsync(sink.descriptor) == 0 else {
            let reason = String(cString: strerror(errno))
            abort()
            throw TenureError(.internal, "fsync of \(path) failed: \(reason)")
        }
        close(sink.descriptor)
        closed = true
        if publishOnFinish { try publish() }
    }

    /// Gives the complete, durable file its final name (never replacing an existing file).
    public func publish() throws(TenureError) {
        precondition(closed && !done, "publish after finish, once")
        guard link(temporaryPath, path) == 0 else {
            let reason = String(cString: strerror(errno))
            abort()
            throw TenureError(.internal, "cannot publish \(path): \(reason)")
        }
        unlink(temporaryPath)
        let directory = open(URL(fileURLWithPath: path).deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
        done = true
    }

    public func abort() {
        guard !done else { return }
        done = true
        if !closed { close(sink.descriptor) }
        unlink(temporaryPath)
    }
}


/// Reads a stream from a file descriptor (a file or stdin).
public final class DescriptorSource: ByteSource {
    let descriptor: Int32
    let ownsDescriptor: Bool
    public let what: String
    public private(set) var byteCount: Int64 = 0

    public init(descriptor: Int32, what: String, ownsDescriptor: Bool = false) {
        self.descriptor = descriptor
        self.what = what
        self.ownsDescriptor = ownsDescriptor
    }

    /// Opens a file (never following it to a device or directory).
    public convenience init(path: String) throws(TenureError) {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw TenureError(.invalidRequest, "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        fstat(descriptor, &info)
        guard (info.st_mode & S_IFMT) == S_IFREG || (info.st_mode & S_IFMT) == S_IFIFO else {
            close(descriptor)
            throw TenureError(.invalidRequest, "\(path) is not a regular file")
        }
        self.init(descriptor: descriptor, what: path, ownsDescriptor: true)
    }

    deinit { if ownsDescriptor { close(descriptor) } }

    /// Moves the read position of a regular file to `offset`.
    public func seek(to offset: Int64) throws(TenureError) {
        guard lseek(descriptor, off_t(offset), SEEK_SET) >= 0 else {
            throw TenureError(.invalidRequest, "cannot seek in \(what): \(String(cString: strerror(errno)))")
        }
    }

    /// Reads up to `count` bytes; 0 at end of stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        while true {
            let count = Glibc.read(descriptor, buffer.baseAddress!, buffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                throw TenureError(.invalidRequest, "reading \(what) failed: \(String(cString: strerror(errno)))")
            }
            byteCount += Int64(count)
            return count
        }
    }
}

/// Passes a stream through to `inner` until `progress` is cancelled; then the next write
/// fails, so the producer stops and aborts the stream (nothing that looks complete is left).
public final class CancellableSink: ByteSink {
    let inner: any ByteSink
    let progress: TransferProgress

    public init(_ inner: any ByteSink, progress: TransferProgress) {
        self.inner = inner
        self.progress = progress
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError) {
        if progress.isCancelled { throw TenureError(.cancelled, "the transfer was cancelled; nothing was kept") }
        try inner.write(bytes)
    }

    public func finish() throws(TenureError) {
        if progress.isCancelled { throw TenureError(.cancelled, "the transfer was cancelled; nothing was kept") }
        try inner.finish()
    }

    public func abort() { inner.abort() }
}
