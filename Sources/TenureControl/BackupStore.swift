import Foundation
import TenureCore
import TenureEngine

#if canImport(Glibc)
import Glibc
#endif

/// Where managed backups live (`TENURE_BACKUP_STORE`): a local directory, or any object store
/// rclone reaches (`rclone:REMOTE:PATH`, the remote configured the usual rclone way, e.g.
/// `RCLONE_CONFIG_<NAME>_*` variables). Paths inside the store are the catalog's
/// (`db_…/bk_….tenure`); the catalog, not the store, says which objects are backups.
public enum BackupStoreLocation: Sendable, Equatable, CustomStringConvertible {
    case directory(String)
    /// `REMOTE:PATH` as rclone names it.
    case rclone(String)

    public static func parse(_ text: String, setting: String) throws(TenureError) -> BackupStoreLocation {
        guard text.hasPrefix("rclone:") else {
            guard !text.isEmpty, !text.contains("\n") else { throw TenureError(.invalidConfiguration, "\(setting) is empty") }
            return .directory(text)
        }
        let remote = String(text.dropFirst("rclone:".count))
        guard let colon = remote.firstIndex(of: ":"), colon != remote.startIndex,
            remote[..<colon].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }),
            !remote.contains(where: { $0.isNewline || $0 == "\0" })
        else {
            throw TenureError(
                .invalidConfiguration, "\(setting)='\(printable(text))' must be a directory or rclone:REMOTE:PATH (for example rclone:s3:bucket/tenure)")
        }
        return .rclone(remote)
    }

    public var description: String {
        switch self {
        case .directory(let path): return path
        case .rclone(let remote): return "rclone:" + remote
        }
    }

    /// The store itself.
    public func open() -> any BackupStore {
        switch self {
        case .directory(let path): return DirectoryStore(root: path)
        case .rclone(let remote): return RcloneStore(remote: remote)
        }
    }
}

/// A new object being written. `finish` makes it complete (local: durable under a temporary
/// name; rclone: uploaded), `verificationSource` reads back what was stored, `publish` gives
/// it its final name where the store has names to give; `abort` removes it.
public protocol StoreWriter: ByteSink {
    func verificationSource() throws(TenureError) -> any ByteSource
    func publish() throws(TenureError)
}

/// The backup store's operations. Thread: each call blocks; values may cross threads.
public protocol BackupStore: Sendable {
    var location: BackupStoreLocation { get }
    func create(_ path: String) throws(TenureError) -> any StoreWriter
    /// Streams an object (from `offset`, `length` bytes or to its end).
    func open(_ path: String, offset: Int64, length: Int64?) throws(TenureError) -> any ByteSource
    /// The object's size, nil if there is none.
    func size(_ path: String) throws(TenureError) -> Int64?
    /// Deletes an object; one already gone is fine.
    func delete(_ path: String) throws(TenureError)
    /// Deletes a directory (a database's backups) and everything in it; gone already is fine.
    func deleteDirectory(_ path: String) throws(TenureError)
    /// Leftovers of a writer that died (local: its temporary files).
    func removeLeftovers(of path: String)
    /// Fails, naming the setting, when the store cannot be used (checked at start).
    func check() throws(TenureError)
}

// MARK: - A local directory

struct DirectoryStore: BackupStore {
    let root: String
    var location: BackupStoreLocation { .directory(root) }

    func full(_ path: String) -> String { root + "/" + path }

    func create(_ path: String) throws(TenureError) -> any StoreWriter {
        let directory = (full(path) as NSString).deletingLastPathComponent
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw TenureError(.internal, "cannot create the backup directory \(directory): \(error.localizedDescription)")
        }
        return DirectoryWriter(try AtomicFileSink(path: full(path), publishOnFinish: false))
    }

    func open(_ path: String, offset: Int64, length: Int64?) throws(TenureError) -> any ByteSource {
        let source = try DescriptorSource(path: full(path))
        if offset > 0 { try source.seek(to: offset) }
        return length.map { LimitedSource(source, limit: $0) } ?? source
    }

    func size(_ path: String) throws(TenureError) -> Int64? {
        var info = stat()
        guard stat(full(path), &info) == 0 else { return nil }
        return Int64(info.st_size)
    }

    func delete(_ path: String) throws(TenureError) {
        guard unlink(full(path)) == 0 || errno == ENOENT else {
            throw TenureError(.internal, "cannot delete \(full(path)): \(String(cString: strerror(errno)))")
        }
    }

    func deleteDirectory(_ path: String) throws(TenureError) {
        guard FileManager.default.fileExists(atPath: full(path)) else { return }
        do { try FileManager.default.removeItem(atPath: full(path)) } catch {
            throw TenureError(.internal, "cannot delete \(full(path)): \(error.localizedDescription)")
        }
    }

    func removeLeftovers(of path: String) {
        let url = URL(fileURLWithPath: full(path))
        let directory = url.deletingLastPathComponent().path
        let prefix = ".\(url.lastPathComponent).partial-"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(prefix) {
            unlink(directory + "/" + name)
        }
    }

    func check() throws(TenureError) {
        do { try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true) } catch {
            throw TenureError(.invalidConfiguration, "TENURE_BACKUP_STORE: cannot create the directory \(root): \(error.localizedDescription)")
        }
        guard access(root, W_OK) == 0 else {
            throw TenureError(.invalidConfiguration, "TENURE_BACKUP_STORE: the directory \(root) is not writable")
        }
    }
}

final class DirectoryWriter: StoreWriter {
    let sink: AtomicFileSink
    init(_ sink: AtomicFileSink) { self.sink = sink }
    func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError) { try sink.write(bytes) }
    func finish() throws(TenureError) { try sink.finish() }
    func abort() { sink.abort() }
    func verificationSource() throws(TenureError) -> any ByteSource { try DescriptorSource(path: sink.temporaryPath) }
    func publish() throws(TenureError) { try sink.publish() }
}

/// At most `limit` bytes of `inner`.
final class LimitedSource: ByteSource {
    let inner: any ByteSource
    var left: Int64
    init(_ inner: any ByteSource, limit: Int64) {
        self.inner = inner
        left = limit
    }
    var what: String { inner.what }
    var byteCount: Int64 { inner.byteCount }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        guard left > 0 else { return 0 }
        let count = try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(min(Int64(buffer.count), left))]))
        left -= Int64(count)
        return count
    }
}

// MARK: - rclone

/// An object store through rclone (Debian's `rclone`): `rcat` streams an upload from stdin
/// (nothing staged on local disk), `cat --offset --count` streams a download, `deletefile`
/// and `purge` delete. Whatever the remote holds is only a backup once the catalog says so:
/// an upload goes to its final key, is read back and verified whole, and only then recorded.
struct RcloneStore: BackupStore {
    let remote: String
    var location: BackupStoreLocation { .rclone(remote) }

    func key(_ path: String) -> String { remote.hasSuffix(":") || remote.hasSuffix("/") ? remote + path : remote + "/" + path }

    /// The remote's name (before the first colon), for its `RCLONE_CONFIG_<NAME>_*` settings.
    var remoteName: String { String(remote[..<remote.firstIndex(of: ":")!]) }

    func create(_ path: String) throws(TenureError) -> any StoreWriter {
        let process = try RcloneProcess.start(["rcat", key(path)], store: self, stdin: true)
        return RcloneWriter(store: self, path: path, process: process)
    }

    func open(_ path: String, offset: Int64, length: Int64?) throws(TenureError) -> any ByteSource {
        var arguments = ["cat", key(path)]
        if offset > 0 { arguments += ["--offset", String(offset)] }
        if let length { arguments += ["--count", String(length)] }
        return RcloneSource(process: try RcloneProcess.start(arguments, store: self, stdin: false), what: "\(location)/\(path)")
    }

    func size(_ path: String) throws(TenureError) -> Int64? {
        let output = try RcloneProcess.run(["lsjson", "--stat", key(path)], store: self, missingIsNil: true)
        guard let output, let object = try? JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any] else { return nil }
        return (object["Size"] as? NSNumber)?.int64Value
    }

    func delete(_ path: String) throws(TenureError) {
        _ = try RcloneProcess.run(["deletefile", key(path)], store: self, missingIsNil: true)
    }

    func deleteDirectory(_ path: String) throws(TenureError) {
        _ = try RcloneProcess.run(["purge", key(path)], store: self, missingIsNil: true)
    }

    func removeLeftovers(of path: String) { try? delete(path) }

    func check() throws(TenureError) {
        do {
            _ = try RcloneProcess.run(["mkdir", remote], store: self, missingIsNil: false)
            _ = try RcloneProcess.run(["lsjson", "--max-depth", "1", remote], store: self, missingIsNil: false)
        } catch {
            throw TenureError(.invalidConfiguration, "TENURE_BACKUP_STORE=\(location) cannot be used: \(error.message)")
        }
    }
}

/// A running rclone: stdin and stdout as pipes when asked for, stderr into a private file
/// (read when it ends, so it can never block the child).
final class RcloneProcess {
    let pid: pid_t
    let input: Int32
    let output: Int32
    let errorFile: String
    let command: String
    private var status: Int32?

    private init(pid: pid_t, input: Int32, output: Int32, errorFile: String, command: String) {
        self.pid = pid
        self.input = input
        self.output = output
        self.errorFile = errorFile
        self.command = command
    }

    static var executable: String { ProcessInfo.processInfo.environment["TENURE_RCLONE"] ?? "/usr/bin/rclone" }

    /// The environment rclone runs with: ours (its remotes are configured there), less a CA
    /// bundle when the remote's endpoint is plain http (rclone 1.60's S3 client refuses to
    /// start with one), plus a multipart chunk size that lets one upload reach 640 GiB.
    static func environment(_ store: RcloneStore) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        let endpoint = environment["RCLONE_CONFIG_\(store.remoteName.uppercased())_ENDPOINT"] ?? ""
        if endpoint.hasPrefix("http://") { environment["AWS_CA_BUNDLE"] = nil }
        if environment["RCLONE_S3_CHUNK_SIZE"] == nil { environment["RCLONE_S3_CHUNK_SIZE"] = "64M" }
        return environment
    }

    static func start(_ arguments: [String], store: RcloneStore, stdin: Bool) throws(TenureError) -> RcloneProcess {
        signal(SIGPIPE, SIG_IGN)
        let errorFile = NSTemporaryDirectory() + "tenure-rclone-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).err"
        var inputPipe: [Int32] = [-1, -1]
        var outputPipe: [Int32] = [-1, -1]
        if stdin { guard pipe(&inputPipe) == 0 else { throw TenureError(.internal, "cannot create a pipe for rclone") } }
        if !stdin { guard pipe(&outputPipe) == 0 else { throw TenureError(.internal, "cannot create a pipe for rclone") } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if stdin { posix_spawn_file_actions_adddup2(&actions, inputPipe[0], 0) } else { posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0) }
        if !stdin { posix_spawn_file_actions_adddup2(&actions, outputPipe[1], 1) } else { posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0) }
        posix_spawn_file_actions_addopen(&actions, 2, errorFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        for descriptor in inputPipe + outputPipe where descriptor >= 0 { posix_spawn_file_actions_addclose(&actions, descriptor) }
        let all = [executable, "-q", "--retries", "3", "--low-level-retries", "5"] + arguments
        let argv = all.map { strdup($0) } + [nil]
        let envp = environment(store).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        if stdin { close(inputPipe[0]) } else { close(outputPipe[1]) }
        guard spawned == 0 else {
            if stdin { close(inputPipe[1]) } else { close(outputPipe[0]) }
            throw TenureError(
                .invalidConfiguration, "cannot run \(executable) for TENURE_BACKUP_STORE=\(store.location): \(String(cString: strerror(spawned))) (install Debian's rclone)")
        }
        return RcloneProcess(
            pid: pid, input: stdin ? inputPipe[1] : -1, output: stdin ? -1 : outputPipe[0], errorFile: errorFile,
            command: "rclone \(arguments.first ?? "")")
    }

    /// Runs rclone to its end and returns its stdout; a missing object is nil when
    /// `missingIsNil`, any other failure an error with rclone's message.
    static func run(_ arguments: [String], store: RcloneStore, missingIsNil: Bool) throws(TenureError) -> String? {
        let process = try start(arguments, store: store, stdin: false)
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(process.output, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            output.append(contentsOf: buffer[0..<count])
        }
        close(process.output)
        let (ok, message) = process.wait()
        if !ok {
            if missingIsNil && (message.contains("not found") || message.contains("doesn't exist") || message.contains("NoSuchKey")) { return nil }
            throw TenureError(
                .serverUnreachable, "the backup store \(store.location) failed (\(process.command)): \(message)", context: ["backup_store": "\(store.location)"])
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// Waits for the child; true when it exited 0, with what it wrote on stderr.
    func wait() -> (ok: Bool, message: String) {
        if status == nil {
            var value: Int32 = 0
            while waitpid(pid, &value, 0) < 0 && errno == EINTR {}
            status = value
        }
        let text = (try? String(contentsOfFile: errorFile, encoding: .utf8)) ?? ""
        unlink(errorFile)
        let message = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.suffix(3)
            .joined(separator: "; ")
        let exited = (status! & 0x7f) == 0 && ((status! >> 8) & 0xff) == 0
        return (exited, String(message.prefix(1000)).isEmpty ? "exit status \((status! >> 8) & 0xff)" : String(message.prefix(1000)))
    }

    func kill() {
        if status == nil { Glibc.kill(pid, SIGTERM) }
    }
}

final class RcloneWriter: StoreWriter {
    let store: RcloneStore
    let path: String
    let process: RcloneProcess
    private var finished = false
    private var aborted = false

    init(store: RcloneStore, path: String, process: RcloneProcess) {
        self.store = store
        self.path = path
        self.process = process
    }

    deinit { if !finished { abort() } }

    func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError) {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(process.input, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                let (_, message) = process.wait()
                throw TenureError(
                    .serverUnreachable, "uploading to the backup store \(store.location) failed: \(message)", context: ["backup_store": "\(store.location)"])
            }
            offset += written
        }
    }

    private var inputClosed = false

    private func closeInput() {
        guard !inputClosed else { return }
        inputClosed = true
        close(process.input)
    }

    func finish() throws(TenureError) {
        closeInput()
        let (ok, message) = process.wait()
        guard ok else {
            abort()
            throw TenureError(
                .serverUnreachable, "uploading to the backup store \(store.location) failed: \(message)", context: ["backup_store": "\(store.location)"])
        }
        finished = true
    }

    func abort() {
        guard !aborted else { return }
        aborted = true
        if !finished {
            closeInput()
            process.kill()
            _ = process.wait()
        }
        finished = true
        try? store.delete(path)
    }

    func verificationSource() throws(TenureError) -> any ByteSource { try store.open(path, offset: 0, length: nil) }

    /// The object is at its final key already; the catalog publishes it.
    func publish() throws(TenureError) {}
}

final class RcloneSource: ByteSource {
    let process: RcloneProcess
    let what: String
    private(set) var byteCount: Int64 = 0
    private var ended = false

    init(process: RcloneProcess, what: String) {
        self.process = process
        self.what = what
    }

    deinit {
        if !ended {
            process.kill()
            close(process.output)
            _ = process.wait()
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        guard !ended else { return 0 }
        while true {
            let count = Glibc.read(process.output, buffer.baseAddress!, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count > 0 {
                byteCount += Int64(count)
                return count
            }
            ended = true
            close(process.output)
            let (ok, message) = process.wait()
            guard ok else {
                throw TenureError(.serverUnreachable, "reading \(what) from the backup store failed: \(message)", context: ["backup_store": what])
            }
            return 0
        }
    }
}

// MARK: - Counting what was written and what is read back

/// Passes a stream on, counting its bytes and their XXH64.
final class CountingSink: ByteSink {
    let inner: any ByteSink
    private(set) var count: Int64 = 0
    private var hasher = XXH64()
    init(_ inner: any ByteSink) { self.inner = inner }
    var digest: UInt64 { hasher.digest() }
    func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError) {
        try inner.write(bytes)
        hasher.update(bytes)
        count += Int64(bytes.count)
    }
    func finish() throws(TenureError) { try inner.finish() }
    func abort() { inner.abort() }
}

/// Reads a stream through, counting its bytes and their XXH64; `drain` reads the rest.
final class HashingSource: ByteSource {
    let inner: any ByteSource
    private(set) var count: Int64 = 0
    private var hasher = XXH64()
    init(_ inner: any ByteSource) { self.inner = inner }
    var what: String { inner.what }
    var byteCount: Int64 { count }
    var digest: UInt64 { hasher.digest() }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        let read = try inner.read(into: buffer)
        hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<read]))
        count += Int64(read)
        return read
    }
    func drain() throws(TenureError) {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while try buffer.withMutableBytes({ (raw) throws(TenureError) in try read(into: raw) }) > 0 {}
    }
}
