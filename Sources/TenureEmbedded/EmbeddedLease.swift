import Foundation
import TenureCore

#if canImport(Glibc)
import Glibc
#endif

/// Shares one embedded cluster between `tenure serve` and CLI commands run from other shells
/// with the same `TENURE_HOME`.
///
/// Two `flock` files: whoever holds `owner.lock` exclusively started the server and stops it
/// when done; everyone else holds `users.lock` shared while they use it, and the owner takes
/// `users.lock` exclusively before stopping, so it never stops a server under someone's feet.
/// Locks die with their process, so a killed owner never blocks anyone.
public final class EmbeddedLease {
    public enum Role { case owner, user }

    public let cluster: EmbeddedCluster
    public private(set) var role: Role
    private let ownerDescriptor: Int32
    private let usersDescriptor: Int32
    private var released = false

    /// Acquires the cluster for a command (`waitForOwnership` false) or for `tenure serve`
    /// (true: it becomes the owner, waiting for running commands to finish).
    public init(home: String, cluster: EmbeddedCluster, waitForOwnership: Bool, timeout: Duration = .seconds(120)) throws(TenureError) {
        self.cluster = cluster
        ownerDescriptor = try Self.open(home + "/owner.lock")
        usersDescriptor = try Self.open(home + "/users.lock")
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            if flock(ownerDescriptor, LOCK_EX | LOCK_NB) == 0 {
                role = .owner
                Self.record(ownerDescriptor, waitForOwnership ? "serve \(getpid())\n" : "command \(getpid())\n")
                do { try cluster.start() } catch {
                    flock(ownerDescriptor, LOCK_UN)
                    Glibc.close(ownerDescriptor)
                    Glibc.close(usersDescriptor)
                    throw error
                }
                return
            }
            if !waitForOwnership, flock(usersDescriptor, LOCK_SH | LOCK_NB) == 0 {
                if cluster.isRunning {
                    role = .user
                    return
                }
                flock(usersDescriptor, LOCK_UN)
            }
            let ownedByServe = waitForOwnership && Self.contents(ownerDescriptor).hasPrefix("serve ")
            guard ContinuousClock.now < deadline, !ownedByServe else {
                Glibc.close(ownerDescriptor)
                Glibc.close(usersDescriptor)
                throw TenureError(
                    .embeddedServer,
                    waitForOwnership
                        ? "another `tenure serve` already runs the embedded PostgreSQL of TENURE_HOME=\(home); stop it first"
                        : "the embedded PostgreSQL of TENURE_HOME=\(home) did not become available within \(timeout)")
            }
            usleep(100_000)
        }
    }

    /// Stops the server if we own it (after every user is done) and releases the locks.
    public func release() throws(TenureError) {
        guard !released else { return }
        released = true
        defer {
            Glibc.close(ownerDescriptor)
            Glibc.close(usersDescriptor)
        }
        switch role {
        case .user:
            flock(usersDescriptor, LOCK_UN)
        case .owner:
            Self.record(ownerDescriptor, "")
            flock(usersDescriptor, LOCK_EX)
            defer {
                flock(usersDescriptor, LOCK_UN)
                flock(ownerDescriptor, LOCK_UN)
            }
            try cluster.stop()
        }
    }

    deinit { try? release() }

    private static func record(_ descriptor: Int32, _ text: String) {
        ftruncate(descriptor, 0)
        _ = text.withCString { pwrite(descriptor, $0, strlen($0), 0) }
    }

    private static func contents(_ descriptor: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = pread(descriptor, &buffer, 64, 0)
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : ""
    }

    private static func open(_ path: String) throws(TenureError) -> Int32 {
        let descriptor = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw TenureError(.embeddedServer, "cannot open lock file \(path): \(String(cString: strerror(errno)))")
        }
        return descriptor
    }
}
