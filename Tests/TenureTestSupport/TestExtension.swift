import Foundation
import TenureCore

/// Installs the tests' own extension (`Tests/Fixtures/extension`: configuration tables and a
/// sequence, not trusted) into the server's extension directory when it is not there; that
/// takes root, as `make test` runs.
public func installTestExtension() throws {
    let directory = "/usr/share/postgresql/15/extension"
    let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/extension")
    for name in ["tenure_config_test.control", "tenure_config_test--1.0.sql"] {
        let target = directory + "/" + name
        let source = fixtures.appendingPathComponent(name).path
        if FileManager.default.contentsEqual(atPath: source, andPath: target) { continue }
        try? FileManager.default.removeItem(atPath: target)
        do { try FileManager.default.copyItem(atPath: source, toPath: target) } catch {
            throw TenureError(.internal, "cannot install the test extension into \(directory) (run the tests as root, as make test does): \(error)")
        }
    }
}
