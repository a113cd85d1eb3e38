import Foundation
import Testing
@testable import TenureCatalog

/// The binary embeds sql/catalog (via ops/embed-sql.py); the two must never drift apart.
@Suite struct MigrationFilesTests {
    @Test func embeddedMigrationsMatchTheFiles() throws {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../sql/catalog").standardized
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".sql") }.sorted()
        #expect(files == embeddedMigrations.map(\.name), "run python3 ops/embed-sql.py")
        for migration in embeddedMigrations {
            let text = try String(contentsOf: directory.appendingPathComponent(migration.name), encoding: .utf8)
            #expect(text == migration.sql + "\n", "\(migration.name) differs from the embedded copy; run python3 ops/embed-sql.py")
        }
        #expect(embeddedMigrations.map(\.version) == Array(1...embeddedMigrations.count))
    }
}
