import Foundation
import Testing

/// The module lines of ARCHITECTURE.md, enforced: every `import` of every source file is one
/// its target may make. The HTTP API reaches the use cases only through the control plane
/// (TenureControl) and plain values (TenureCore), never the catalog, the engine or libpq.
@Suite struct TidyTests {
    static let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Sources").standardized

    static let system: Set<String> = ["Foundation", "Glibc", "Synchronization", "Dispatch"]
    static let allowed: [String: Set<String>] = [
        "TenureCore": ["Crypto"],
        "TenurePQ": ["CLibPQ", "TenureCore"],
        "TenureZstd": ["CZstd", "TenureCore"],
        "TenureZlib": ["CZlib", "TenureCore"],
        "TenureEngine": ["TenureCore", "TenurePQ", "TenureZstd", "TenureZlib"],
        "TenureEmbedded": ["TenureCore", "TenurePQ"],
        "TenureCatalog": ["TenureCore", "TenurePQ"],
        "TenureControl": ["TenureCore", "TenurePQ", "TenureZstd", "TenureZlib", "TenureEngine", "TenureEmbedded", "TenureCatalog", "Logging", "NIOPosix"],
        "TenureServer": ["TenureCore", "TenureControl", "Hummingbird", "HTTPTypes", "NIOCore", "NIOHTTP1", "NIOHTTPTypes", "Logging", "ServiceLifecycle", "Metrics", "Prometheus"],
    ]

    @Test func everyImportCrossesOnlyAllowedLines() throws {
        var violations: [String] = []
        var checked = 0
        for (target, permitted) in Self.allowed {
            let directory = Self.sources.appendingPathComponent(target)
            let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".swift") }
            #expect(!files.isEmpty, "\(target) has no sources")
            for file in files {
                let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
                for line in text.split(separator: "\n") {
                    let words = line.split(separator: " ").map(String.init)
                    guard let index = words.firstIndex(of: "import"), words[..<index].allSatisfy({ $0.hasPrefix("@") || ["public", "package", "internal"].contains($0) }),
                        index + 1 < words.count
                    else { continue }
                    let module = words[index + 1].split(separator: ".").first.map(String.init) ?? ""
                    checked += 1
                    if !Self.system.contains(module) && !permitted.contains(module) {
                        violations.append("\(target)/\(file) imports \(module)")
                    }
                }
            }
        }
        #expect(checked > 50)
        #expect(violations.isEmpty, "imports across the module lines (see ARCHITECTURE.md): \(violations.sorted())")
    }

    /// Package.swift says the same: the server target depends on the control plane and values only.
    @Test func theServerTargetDependsOnTheControlPlaneOnly() throws {
        let manifest = try String(contentsOf: Self.sources.appendingPathComponent("../Package.swift").standardized, encoding: .utf8)
        let server = try #require(manifest.range(of: "name: \"TenureServer\""))
        let rest = manifest[server.upperBound...]
        let block = rest[..<(rest.range(of: "swiftSettings")?.lowerBound ?? rest.endIndex)]
        for forbidden in ["\"TenureCatalog\"", "\"TenureEngine\"", "\"TenurePQ\"", "\"TenureEmbedded\""] {
            #expect(!block.contains(forbidden), "TenureServer depends on \(forbidden)")
        }
    }

    /// The CLI reaches the use cases the way the HTTP API does: through the `ControlPool`
    /// (`session.call`, `session.serverWork`), never a `Controller` of its own; only the
    /// session's start-up (recovery) makes one.
    @Test func theCommandsCallTheUseCasesThroughThePool() throws {
        let directory = Self.sources.appendingPathComponent("tenure")
        var violations: [String] = []
        var calls = 0
        for file in try FileManager.default.contentsOfDirectory(atPath: directory.path) where file.hasSuffix(".swift") {
            let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
            calls += text.components(separatedBy: "session.call {").count + text.components(separatedBy: "session.serverWork {").count - 2
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let madeHere = line.range(of: #"(^|[^A-Za-z_])Controller\("#, options: .regularExpression) != nil
                    && !(file == "Session.swift" && line.contains("let controller = Controller("))
                if madeHere || line.contains("session.controller") || line.contains("session.catalog.") && !line.contains("parameters") {
                    violations.append("\(file):\(number + 1): \(line.trimmingCharacters(in: .whitespaces))")
                }
            }
        }
        #expect(calls > 30, "\(calls) calls through the pool")
        #expect(violations.isEmpty, "the CLI reaches past the control pool: \(violations)")
    }
}
