import Foundation

/// A path under /tmp for one test's files (a home, scratch space), removed with everything in
/// it when the last reference goes, so a test run leaves no data behind.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    /// `/tmp/<prefix>-<8 random characters>`; created only if `create`.
    public init(_ prefix: String, create: Bool = false) {
        path = "/tmp/\(prefix)-\(UUID().uuidString.prefix(8))"
        if create { try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}
