import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A child process with stdout and stderr captured to files (posix_spawn + waitpid).
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    private let outputPath: String
    private let errorPath: String

    public struct Outcome: Sendable, CustomStringConvertible {
        public var status: Int32
        /// The signal that ended it, if one did.
        public var signal: Int32?
        public var stdout: String
        public var stderr: String
        public var description: String { "exit \(status) signal \(signal.map(String.init) ?? "-")\nstdout: \(stdout)\nstderr: \(stderr)" }

        /// stdout parsed as a JSON object.
        public var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(stdout.utf8))) as? [String: Any] ?? [:]
        }
    }

    /// Starts `arguments`; `input`, when given, is its stdin (else /dev/null).
    public init(_ arguments: [String], environment: [String: String], input: [UInt8]? = nil) throws {
        let base = NSTemporaryDirectory() + "tenure-child-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        outputPath = base + ".out"
        errorPath = base + ".err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let input {
            FileManager.default.createFile(atPath: base + ".in", contents: Data(input), attributes: [.posixPermissions: 0o600])
            posix_spawn_file_actions_addopen(&actions, 0, base + ".in", O_RDONLY, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        defer { if input != nil { unlink(base + ".in") } }
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], &actions, nil, argv, envp)
        guard result == 0 else { throw POSIXError(POSIXErrorCode(rawValue: result) ?? .EINVAL) }
        self.pid = pid
    }

    private let lock = NSLock()
    private var outcome: Outcome?

    public func signal(_ signal: Int32) {
        lock.lock()
        defer { lock.unlock() }
        if outcome == nil { kill(pid, signal) }
    }

    /// Waits (up to `seconds`) until the process has stopped itself (SIGSTOP); false if it did not.
    public func waitUntilStopped(seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WUNTRACED | WNOHANG) == pid, (status & 0xff) == 0x7f { return true }
            usleep(50_000)
        }
        return false
    }

    /// Waits (up to `seconds`) for the process to end; nil if it still runs.
    public func waitForExit(seconds: Double) -> Outcome? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            lock.lock()
            if let outcome { lock.unlock(); return outcome }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid, (status & 0xff) != 0x7f {
                let result = collect(status)
                lock.unlock()
                return result
            }
            lock.unlock()
            usleep(50_000)
        }
        return nil
    }

    /// Waits for the process and collects its output (once; later calls return the same).
    public func wait() -> Outcome {
        lock.lock()
        defer { lock.unlock() }
        if let outcome { return outcome }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return collect(status)
    }

    private func collect(_ status: Int32) -> Outcome {
        let stdout = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        let stderr = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
        unlink(outputPath)
        unlink(errorPath)
        let signaled = (status & 0x7f) != 0
        let result = Outcome(status: signaled ? -1 : (status >> 8) & 0xff, signal: signaled ? status & 0x7f : nil, stdout: stdout, stderr: stderr)
        outcome = result
        return result
    }

    /// The stdout written so far (for long-running processes).
    public var currentOutput: String {
        ((try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "") + ((try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "")
    }
}

/// The built `tenure` executable (SwiftPM builds it for the end-to-end tests).
public func tenureExecutable() -> String {
    let candidates = [
        Bundle.main.bundleURL.appendingPathComponent("tenure").path,
        Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("tenure").path,
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug/tenure").standardized.path,
    ]
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
}

/// Runs `tenure` with a minimal environment plus `environment`, and waits for it.
public func runTenure(_ arguments: [String], environment: [String: String]) throws -> ChildProcess.Outcome {
    try startTenure(arguments, environment: environment).wait()
}

public func startTenure(_ arguments: [String], environment: [String: String]) throws -> ChildProcess {
    var base = ["PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/tmp", "USER": "test", "LANG": "C.UTF-8"]
    // No scheduled backups or drills unless a test asks for them: they would take turns
    // among the jobs other tests count and order.
    base["TENURE_BACKUP_INTERVAL"] = "off"
    base["TENURE_DRILL_INTERVAL"] = "off"
    for (key, value) in environment { base[key] = value }
    return try ChildProcess([tenureExecutable()] + arguments, environment: base)
}
