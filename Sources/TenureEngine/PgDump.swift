import Foundation
import TenureCore
import TenurePQ

#if canImport(Glibc)
import Glibc
#endif

/// PostgreSQL's own `pg_dump`, the authority on DDL. Tenure runs it for the schema sections
/// only, inside the backup's exported snapshot.
public struct PgDump: Sendable {
    public let path: String

    public init(path: String = "/usr/lib/postgresql/15/bin/pg_dump") { self.path = path }

    /// `pg_dump --version` → (major, full version text).
    public func version() throws(TenureError) -> (major: Int, text: String) {
        let output = try run(path, ["--version"], password: nil, maximumBytes: 4096)
        // "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let words = output.split(separator: " ")
        guard words.count >= 3, let major = Int(words[2].split(separator: ".")[0]) else {
            throw TenureError(.internal, "cannot read pg_dump's version from '\(printable(output))'")
        }
        return (major, String(words[2]))
    }

    /// Whether this pg_dump writes `\restrict` lines (15.14+) and takes `--restrict-key`.
    public func supportsRestrictKey() -> Bool {
        ((try? run(path, ["--help"], password: nil, maximumBytes: 65_536)) ?? "").contains("--restrict-key")
    }

    /// The schema of the database in `parameters`, as of `snapshot`: pre-data and post-data
    /// scripts with pg_dump's table of contents in their entry headers (`-- TOC entry N`,
    /// `-- Dependencies: ...`), so a restore can schedule from the dependencies pg_dump records.
    ///
    /// One `pg_dump --format=custom` run reads the catalog once (both sections, not the data
    /// section, which Tenure copies itself); `pg_restore --verbose` renders each section from it.
    /// The custom archive lives in a private 0700 directory only while this runs. Every
    /// dependency pg_dump records on an object it did not dump (the data of an unpopulated
    /// materialized view, say) is dropped from the rendered headers, as `pg_restore` ignores it,
    /// so every dependency left names an entry the scripts carry. Thread: blocks.
    public func dumpSchema(
        parameters: ConnectionParameters, snapshot: String, restrictKey: String?, maximumBytes: Int, progress: TransferProgress? = nil
    ) throws(TenureError) -> (preData: String, postData: String)
    {
        let directory = NSTemporaryDirectory() + "tenure-schema-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        guard mkdir(directory, 0o700) == 0 else {
            throw TenureError(.internal, "cannot create a private directory for pg_dump's schema archive: \(String(cString: strerror(errno)))")
        }
        let archive = directory + "/schema.dump"
        defer {
            unlink(archive)
            rmdir(directory)
        }
        var arguments = [
            "--format=custom", "--compress=0", "--section=pre-data", "--section=post-data", "--snapshot=\(snapshot)", "--no-password",
            "--encoding=UTF8", "--file=\(archive)",
        ]
        // The password never goes on the command line or into the environment.
        let keywords = parameters.values.filter { $0.0 != "password" }.map { "\($0.0)=\(Self.quoteConnectionValue($0.1))" }
        arguments += ["--dbname=" + keywords.joined(separator: " ")]
        _ = try run(path, arguments, password: parameters["password"], maximumBytes: 65_536, stoppedBy: progress)
        var status = stat()
        guard stat(archive, &status) == 0 else { throw TenureError(.internal, "pg_dump wrote no schema archive") }
        guard Int(status.st_size) <= maximumBytes else {
            throw TenureError(.internal, "the schema is \(status.st_size) bytes, over the limit of \(maximumBytes) bytes")
        }
        let listing = try run(restorePath, ["--list", archive], password: nil, maximumBytes: maximumBytes)
        let entries = Set(listing.split(separator: "\n").compactMap { line in line.firstIndex(of: ";").flatMap { Int(line[..<$0]) } })
        func render(_ section: String) throws(TenureError) -> String {
            var arguments = ["--verbose", "--section=\(section)", "--file=-"]
            if let restrictKey { arguments.append("--restrict-key=\(restrictKey)") }
            let script = try run(restorePath, arguments + [archive], password: nil, maximumBytes: maximumBytes)
            return keepDependencies(script, on: entries)
        }
        return (try render("pre-data"), try render("post-data"))
    }

    /// The pg_restore beside this pg_dump.
    public var restorePath: String {
        guard let slash = path.lastIndex(of: "/") else { return "pg_restore" }
        return String(path[...slash]) + "pg_restore"
    }

    static func quoteConnectionValue(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }

    /// Runs pg_dump or pg_restore (`executable`), collecting stdout (bounded) and stderr
    /// through pipes with poll(). Stopping `progress` stops the child (SIGTERM).
    func run(
        _ executable: String, _ arguments: [String], password: String?, maximumBytes: Int, stoppedBy progress: TransferProgress? = nil
    ) throws(TenureError) -> String {
        let name = executable.split(separator: "/").last.map(String.init) ?? executable
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PG") && !$0.key.hasPrefix("TENURE_") }
        var passDirectory: String?
        if let password {
            // A private pgpass file in a 0700 directory, removed as soon as pg_dump exits.
            let directory = NSTemporaryDirectory() + "tenure-pgpass-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            mkdir(directory, 0o700)
            let file = directory + "/pgpass"
            let escaped = password.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: ":", with: "\\:")
            let descriptor = open(file, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            if descriptor >= 0 {
                let line = "*:*:*:*:\(escaped)\n"
                _ = line.withCString { Glibc.write(descriptor, $0, strlen($0)) }
                close(descriptor)
            }
            environment["PGPASSFILE"] = file
            passDirectory = directory
        }
        defer {
            if let passDirectory {
                unlink(passDirectory + "/pgpass")
                rmdir(passDirectory)
            }
        }
        var stdoutPipe: [Int32] = [0, 0]
        var stderrPipe: [Int32] = [0, 0]
        guard pipe(&stdoutPipe) == 0, pipe(&stderrPipe) == 0 else { throw TenureError(.internal, "cannot create pipes for \(name)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, stderrPipe[1], 2)
        for descriptor in stdoutPipe + stderrPipe { posix_spawn_file_actions_addclose(&actions, descriptor) }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        close(stdoutPipe[1])
        close(stderrPipe[1])
        defer {
            close(stdoutPipe[0])
            close(stderrPipe[0])
        }
        guard spawned == 0 else {
            throw TenureError(.internal, "cannot run \(executable): \(String(cString: strerror(spawned)))")
        }
        var output: [UInt8] = []
        let (status, errors, failure) = drainChild(
            pid, stdout: stdoutPipe[0], stderr: stderrPipe[0], errorLimit: 65_536, stop: progress.map { progress in { progress.isCancelled } }
        ) { (chunk) throws(TenureError) in
            guard output.count + chunk.count <= maximumBytes else {
                throw TenureError(.internal, "\(name)'s output is larger than the limit of \(maximumBytes) bytes")
            }
            output.append(contentsOf: chunk)
        }
        if let failure { throw failure }
        if let progress, progress.isCancelled {
            throw progress.stopReason ?? TenureError(.cancelled, "\(name) was stopped: the operation was cancelled")
        }
        let exited = (status & 0x7f) == 0 && ((status >> 8) & 0xff) == 0
        guard exited else {
            let message = String(decoding: errors, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw TenureError(.postgres, "\(name) failed: \(message.isEmpty ? "exit status \((status >> 8) & 0xff)" : message)")
        }
        return String(decoding: output, as: UTF8.self)
    }
}

/// The `\restrict KEY` / `\unrestrict KEY` lines pg_dump 15.14+ writes for psql. Statements
/// sent through libpq must not contain them; exactly those lines (with this key) are removed.
public func stripRestrictLines(_ script: String, key: String?) -> String {
    guard let key else { return script }
    let restrict = "\\restrict \(key)"
    let unrestrict = "\\unrestrict \(key)"
    return script.split(separator: "\n", omittingEmptySubsequences: false).filter { $0 != restrict && $0 != unrestrict }.joined(separator: "\n")
}

/// Reads a child's stdout and stderr until both close, so neither can block the other:
/// stdout chunks go to `output` (its first error stops the child with SIGTERM, the rest of
/// stdout is discarded, and the error is returned), stderr is kept up to `errorLimit` bytes.
/// Then reaps the child and returns its wait status. The caller closes the descriptors.
func drainChild(
    _ pid: pid_t, stdout: Int32, stderr: Int32, errorLimit: Int, stop: (() -> Bool)? = nil,
    output: (UnsafeRawBufferPointer) throws(TenureError) -> Void
) -> (status: Int32, errors: [UInt8], failure: TenureError?) {
    var errors: [UInt8] = []
    var failure: TenureError?
    var buffer = [UInt8](repeating: 0, count: 256 << 10)
    var open = [stdout, stderr]
    var stopped = false
    while !open.isEmpty {
        var descriptors = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        // With a stop condition, looked at every half second (the child is not reaped
        // before this loop ends, so its pid cannot have been reused when it is killed).
        let ready = poll(&descriptors, nfds_t(descriptors.count), stop == nil ? -1 : 500)
        if !stopped, let stop, stop() {
            stopped = true
            kill(pid, SIGTERM)
        }
        if ready < 0 {
            if errno == EINTR { continue }
            break
        }
        for entry in descriptors where entry.revents != 0 {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(entry.fd, $0.baseAddress, $0.count) }
            if count <= 0 {
                open.removeAll { $0 == entry.fd }
            } else if entry.fd == stdout {
                guard failure == nil else { continue }
                do throws(TenureError) {
                    try buffer.withBytes { (raw) throws(TenureError) in try output(UnsafeRawBufferPointer(rebasing: raw[0..<count])) }
                } catch {
                    failure = error
                    kill(pid, SIGTERM)
                }
            } else if errors.count < errorLimit {
                errors.append(contentsOf: buffer[0..<count])
            }
        }
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status, errors, failure)
}

/// Removes from a rendered script's entry headers every dependency on an entry that is not in
/// `entries` (pg_dump's table of contents); a header left with none loses that line.
func keepDependencies(_ script: String, on entries: Set<Int>) -> String {
    var kept: [Substring] = []
    for line in script.split(separator: "\n", omittingEmptySubsequences: false) {
        guard line.hasPrefix("-- Dependencies: "), kept.last?.hasPrefix("-- TOC entry ") == true else {
            kept.append(line)
            continue
        }
        let dependencies = line.dropFirst("-- Dependencies: ".count).split(separator: " ").filter { Int($0).map(entries.contains) ?? false }
        if !dependencies.isEmpty { kept.append("-- Dependencies: " + dependencies.joined(separator: " ")) }
    }
    return kept.joined(separator: "\n")
}
