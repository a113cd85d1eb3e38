import Foundation
import TenureCore
import TenurePQ

#if canImport(Glibc)
import Glibc
#endif

/// A private PostgreSQL 15 cluster that Tenure initialises, starts and stops itself.
///
/// Layout (all under `root`): `data/` (PGDATA), `sock/` (the Unix socket, mode 0700),
/// `postgres.log`. When Tenure runs as root, every server program runs as the `postgres` OS
/// user and `root` is a directory that user owns; if `postgres` cannot reach `TENURE_HOME`
/// (a checkout under `/root`, say), the cluster lives under `/var/lib/tenure/clusters/` and
/// `TENURE_HOME/cluster-location` says where.
///
/// Thread: every method blocks (it runs `initdb`/`pg_ctl`); call from a thread that may block.
public final class EmbeddedCluster: Sendable {
    public let root: String
    public let binDirectory: String
    /// Extra `postgresql.conf` lines written at initialisation (the tests turn fsync off).
    public let extraSettings: [String]

    public var dataDirectory: String { root + "/data" }
    public var socketDirectory: String { root + "/sock" }
    public var logFile: String { root + "/postgres.log" }

    public static let defaultBinDirectory = "/usr/lib/postgresql/15/bin"
    public static let superuser = "postgres"

    public init(root: String, binDirectory: String = EmbeddedCluster.defaultBinDirectory, extraSettings: [String] = []) {
        self.root = root
        self.binDirectory = binDirectory
        self.extraSettings = extraSettings
    }

    /// The cluster that belongs to `home` (TENURE_HOME), choosing and recording its location
    /// the first time.
    public static func forHome(_ home: String, binDirectory: String = defaultBinDirectory) throws(TenureError) -> EmbeddedCluster {
        let home = absolutePath(home)
        try makeDirectory(home)
        let marker = home + "/cluster-location"
        if let recorded = try? String(contentsOfFile: marker, encoding: .utf8) {
            let path = recorded.trimmingCharacters(in: .whitespacesAndNewlines)
            if !path.isEmpty { return EmbeddedCluster(root: path, binDirectory: binDirectory) }
        }
        var root = home + "/postgres"
        if isRoot, !postgresCanTraverse(home) {
            root = "/var/lib/tenure/clusters/" + stableHash(home)
        }
        do {
            try (root + "\n").write(toFile: marker, atomically: true, encoding: .utf8)
        } catch {
            throw TenureError(.embeddedServer, "cannot write \(marker): \(error.localizedDescription)")
        }
        return EmbeddedCluster(root: root, binDirectory: binDirectory)
    }

    public var isInitialized: Bool { FileManager.default.fileExists(atPath: dataDirectory + "/PG_VERSION") }

    /// The port recorded in the cluster's configuration.
    public var port: Int? {
        guard let text = try? String(contentsOfFile: dataDirectory + "/postgresql.conf", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n").reversed() where line.hasPrefix("port = ") {
            return Int(line.dropFirst("port = ".count).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    /// Superuser connection over the private socket.
    public func superuserParameters(database: String = "postgres") throws(TenureError) -> ConnectionParameters {
        guard let port else { throw TenureError(.embeddedServer, "the embedded cluster at \(root) is not initialised") }
        return ConnectionParameters([
            ("host", socketDirectory), ("port", String(port)), ("user", Self.superuser), ("dbname", database),
        ])
    }

    /// Creates the cluster if it does not exist: `initdb`, a private port, a socket directory
    /// only the owner can enter, and a pg_hba that trusts only the superuser on that socket
    /// and asks everyone else for a SCRAM password.
    public func initializeIfNeeded() throws(TenureError) {
        if isInitialized { return }
        try Self.makeDirectory(root)
        try Self.makeDirectory(socketDirectory)
        if FileManager.default.fileExists(atPath: dataDirectory) {
            // A half-finished initdb: nothing but initdb's own output can be in there.
            try? FileManager.default.removeItem(atPath: dataDirectory)
        }
        try Self.makeDirectory(dataDirectory)
        if Self.isRoot {
            try run(["/bin/chown", "-R", "\(Self.superuser):\(Self.superuser)", root], asPostgres: false)
        }
        try run(["/bin/chmod", "0700", root, socketDirectory, dataDirectory], asPostgres: Self.isRoot)
        try run([
            binDirectory + "/initdb", "-D", dataDirectory, "-U", Self.superuser, "-E", "UTF8", "--locale=C.UTF-8",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        ])
        let port = try Self.freePort()
        var settings = [
            "# Tenure's embedded cluster",
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = '\(socketDirectory)'",
            "unix_socket_permissions = 0700",
            "password_encryption = 'scram-sha-256'",
            "max_connections = 200",
            "logging_collector = off",
        ]
        settings += extraSettings
        settings.append("port = \(port)")
        let hba = """
            # Tenure: the superuser only over the private socket; everyone else with a SCRAM password.
            local   all   \(Self.superuser)   trust
            local   all   all        scram-sha-256
            host    all   all        127.0.0.1/32   scram-sha-256
            host    all   all        ::1/128        scram-sha-256

            """
        try appendAsOwner(dataDirectory + "/postgresql.conf", settings.joined(separator: "\n") + "\n")
        try writeAsOwner(dataDirectory + "/pg_hba.conf", hba)
    }

    public var isRunning: Bool {
        (try? run([binDirectory + "/pg_ctl", "-D", dataDirectory, "status"])) != nil
    }

    /// Starts the server and waits until it accepts connections. The server runs in its own
    /// session, so a Ctrl-C meant for `tenure` does not reach it; `tenure` stops it cleanly.
    public func start() throws(TenureError) {
        try initializeIfNeeded()
        if isRunning { return }
        // A stale postmaster.pid from a killed server is handled by pg_ctl itself.
        try run([binDirectory + "/pg_ctl", "-D", dataDirectory, "-l", logFile, "-w", "-t", "120", "start"], newSession: true)
    }

    /// Stops the server (fast shutdown: sessions are ended, data is flushed).
    public func stop() throws(TenureError) {
        guard isInitialized, isRunning else { return }
        try run([binDirectory + "/pg_ctl", "-D", dataDirectory, "-m", "fast", "-w", "-t", "120", "stop"])
    }

    /// Stops immediately, for test teardown.
    public func stopImmediately() {
        _ = try? run([binDirectory + "/pg_ctl", "-D", dataDirectory, "-m", "immediate", "-w", "stop"])
    }

    // MARK: - Processes and files

    static var isRoot: Bool { geteuid() == 0 }

    static func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return URL(fileURLWithPath: path).standardizedFileURL.path }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(path).standardizedFileURL.path
    }

    static func makeDirectory(_ path: String) throws(TenureError) {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw TenureError(.embeddedServer, "cannot create directory \(path): \(error.localizedDescription)")
        }
    }

    static func postgresCanTraverse(_ directory: String) -> Bool {
        (try? runProcess(["/usr/sbin/runuser", "-u", superuser, "--", "/usr/bin/test", "-x", directory])) != nil
    }

    /// FNV-1a of the path: a stable, short directory name per TENURE_HOME.
    static func stableHash(_ text: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01B3
        }
        return String(hash, radix: 16)
    }

    /// A TCP port on 127.0.0.1 that nothing listens on now, from the kernel.
    static func freePort() throws(TenureError) -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw TenureError(.embeddedServer, "cannot open a socket to find a free port") }
        defer { Glibc.close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0 }
        }
        guard bound else { throw TenureError(.embeddedServer, "cannot find a free TCP port on 127.0.0.1") }
        let port = Int(UInt16(bigEndian: address.sin_port))
        // Stay clear of the default port and of ports other local servers commonly use.
        return port == 5432 ? try freePort() : port
    }

    private func writeAsOwner(_ path: String, _ text: String) throws(TenureError) {
        do { try text.write(toFile: path, atomically: false, encoding: .utf8) } catch {
            throw TenureError(.embeddedServer, "cannot write \(path): \(error.localizedDescription)")
        }
        if Self.isRoot { try run(["/bin/chown", "\(Self.superuser):\(Self.superuser)", path], asPostgres: false) }
    }

    private func appendAsOwner(_ path: String, _ text: String) throws(TenureError) {
        let existing = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        try writeAsOwner(path, existing + "\n" + text)
    }

    /// Runs a server program, as the `postgres` user when we are root.
    @discardableResult
    private func run(_ arguments: [String], asPostgres: Bool = EmbeddedCluster.isRoot, newSession: Bool = false) throws(TenureError) -> String {
        var command = arguments
        if asPostgres {
            command = ["/usr/sbin/runuser", "-u", Self.superuser, "--"] + arguments
        }
        do {
            return try Self.runProcess(command, newSession: newSession)
        } catch {
            var detail = error.message
            if arguments.contains(where: { $0.hasSuffix("pg_ctl") }), let log = try? String(contentsOfFile: logFile, encoding: .utf8) {
                detail += "; last server log lines:\n" + log.split(separator: "\n").suffix(8).joined(separator: "\n")
            }
            throw TenureError(.embeddedServer, detail)
        }
    }

    /// Runs a program and waits for it, with its output captured through a temporary file
    /// (never a pipe: a postmaster started by pg_ctl would hold a pipe open for its whole
    /// life). `newSession` puts the child in its own session, so a terminal's Ctrl-C meant for
    /// `tenure` does not reach the server it starts.
    @discardableResult
    static func runProcess(_ command: [String], newSession: Bool = false) throws(TenureError) -> String {
        let outputPath = NSTemporaryDirectory() + "tenure-process-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).out"
        defer { unlink(outputPath) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        // POSIX_SPAWN_SETSID (glibc 2.26+), not exported by the Glibc module.
        if newSession { flags |= 0x80 }
        posix_spawnattr_setflags(&attributes, Int16(flags))
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGPIPE, SIGHUP, SIGQUIT] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        // Nothing of ours (catalog URLs, keys) is passed to server programs.
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("TENURE_") && !$0.key.hasPrefix("PG") }
        environment["LC_ALL"] = "C.UTF-8"
        // `env -C /`: run from /, which the postgres user can always enter.
        let command = ["/usr/bin/env", "-C", "/"] + command
        let argv = command.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, command[0], &actions, &attributes, argv, envp)
        guard spawned == 0 else {
            throw TenureError(.embeddedServer, "cannot run \(command[0]): \(String(cString: strerror(spawned)))")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw TenureError(.embeddedServer, "waiting for \(command[0]) failed: \(String(cString: strerror(errno)))") }
        }
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        let exited = (status & 0x7f) == 0
        let exitCode = (status >> 8) & 0xff
        guard exited, exitCode == 0 else {
            let shown = command.first { $0.hasPrefix("/usr/lib") || $0.hasSuffix("pg_ctl") || $0.hasSuffix("initdb") } ?? command[0]
            let how = exited ? "exit status \(exitCode)" : "signal \(status & 0x7f)"
            throw TenureError(
                .embeddedServer,
                "\((shown as NSString).lastPathComponent) failed with \(how): \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return text
    }
}
