import Foundation
import Testing
@testable import TenureCore

@Suite struct InputTests {
    @Test(arguments: [
        ("21d", 1_814_400), ("36h", 129_600), ("90s", 90), ("15m", 900), ("1d12h", 129_600), ("2w", 1_209_600), (" 5s ", 5),
    ])
    func durations(text: String, seconds: Int64) throws {
        #expect(try PolicyDuration.parse(text, setting: "X") == .seconds(seconds))
    }

    @Test(arguments: ["", "21", "d", "5x", "-5s", "0s", "1.5h", "5s5", "99999999999999d"])
    func badDurations(text: String) {
        #expect(throws: TenureError.self) { try PolicyDuration.parse(text, setting: "TENURE_GRACE_PERIOD") }
    }

    @Test func durationFormatRoundTrips() throws {
        #expect(PolicyDuration.format(.seconds(1_814_400)) == "21d")
        #expect(PolicyDuration.format(.seconds(129_600)) == "1d12h")
    }

    @Test(arguments: ["shop", "a", "my-db-2", String(repeating: "a", count: 63), "0abc"])
    func validNames(name: String) throws {
        #expect(try DatabaseName(validating: name).rawValue == name)
    }

    @Test(arguments: [
        "", "Shop", String(repeating: "a", count: 64), "a'b", "a\"b", "a\0b", "a\nb", "caf\u{e9}", "-a", "a-", "a_b", "a b", "a;drop", "a\\b",
        "\u{7f}",
    ])
    func invalidNames(name: String) {
        #expect(throws: TenureError.self) { try DatabaseName(validating: name) }
        do { _ = try DatabaseName(validating: name) } catch {
            #expect(error.code == .invalidName)
            #expect(!error.message.contains("\n"), "hostile input must not forge output lines")
        }
    }

    @Test func typedIDs() throws {
        let id = DatabaseID.random()
        #expect(id.rawValue.hasPrefix("db_") && id.rawValue.count == 23)
        #expect(try DatabaseID(parsing: id.rawValue) == id)
        do {
            _ = try DatabaseID(parsing: "bk_" + id.rawValue.dropFirst(3))
            Issue.record("a backup id was accepted as a database id")
        } catch {
            #expect(error.code == .invalidID)
            #expect(error.message.contains("backup id"))
        }
        for bad in ["", "db_", "db_short", "DB_" + id.rawValue.dropFirst(3), id.rawValue + "x", "db_ilou0000000000000000", "db_../../etc/passwd00"] {
            #expect(throws: TenureError.self) { try DatabaseID(parsing: bad) }
        }
    }

    @Test func postgresNamesComeFromTheID() {
        let id = DatabaseID.random()
        #expect(id.postgresDatabaseName == id.rawValue)
        #expect(id.postgresRoleName == id.rawValue + "_owner")
        #expect(id.postgresRoleName.utf8.count <= 63)
    }

    @Test func rfc3339() throws {
        let date = try RFC3339.parse("2026-12-01T00:00:00Z")
        #expect(date.timeIntervalSince1970 == 1_796_083_200)
        #expect(RFC3339.format(date) == "2026-12-01T00:00:00Z")
        #expect(try RFC3339.parse("2026-12-01T01:00:00+01:00") == date)
        #expect(throws: TenureError.self) { try RFC3339.parse("tomorrow") }
    }

    @Test func everyErrorCodeHasACategory() {
        for code in TenureError.Code.allCases { _ = code.category }
        #expect(TenureError.Code.databaseNotFound.rawValue == "database.not_found")
    }
}
