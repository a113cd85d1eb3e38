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

    @Test func hexDigitsOfEitherCaseAndNothingElse() {
        #expect(hexBytes("00ff0A7f") == [0x00, 0xFF, 0x0A, 0x7F])
        #expect(hexBytes("") == [])
        for bad in ["0", "0g", "\\x00", " 00", "0 0", "ff\n"] { #expect(hexBytes(bad) == nil, "\(bad)") }
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

@Suite struct HashTests {
    @Test func sha256KnownAnswers() {
        #expect(SHA256.hex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(
            SHA256.hex(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        // RFC 4231 test case 2
        #expect(
            SHA256.hex(SHA256.hmac(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)))
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    @Test func xxh64KnownAnswers() {
        #expect(XXH64.hex([UInt8]().withUnsafeBytes { XXH64.hash($0) }) == "ef46db3751d8e999")
        #expect(XXH64.hex(Array("abc".utf8).withUnsafeBytes { XXH64.hash($0) }) == "44bc2cf5ad770999")
        // Streaming in odd pieces equals one shot.
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        var streaming = XXH64()
        for chunk in stride(from: 0, to: data.count, by: 37) { streaming.update(Array(data[chunk..<min(chunk + 37, data.count)])) }
        #expect(streaming.digest() == data.withUnsafeBytes { XXH64.hash($0) })
    }
}
