import Foundation

/// A customer's name for a database: a DNS label (RFC 1123), as in `mydatabase.example.com`.
/// 1–63 characters of `a-z`, `0-9` and `-`, not starting or ending with `-`. Display text only;
/// PostgreSQL object names come from the typed id.
public struct DatabaseName: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public static let maximumLength = 63

    public init(validating text: String) throws(TenureError) {
        let bytes = Array(text.utf8)
        func reject(_ why: String) -> TenureError {
            TenureError(.invalidName, "invalid database name '\(printable(text))': \(why); use a DNS label: 1–63 lowercase letters, digits and '-', not starting or ending with '-'")
        }
        guard !bytes.isEmpty else { throw reject("it is empty") }
        guard bytes.count <= Self.maximumLength else { throw reject("it is \(bytes.count) bytes long, more than \(Self.maximumLength)") }
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"): continue
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): throw reject("uppercase letters are not allowed")
            case 0: throw reject("it contains a NUL byte")
            case UInt8(ascii: "\n"), UInt8(ascii: "\r"): throw reject("it contains a line break")
            case 0x80...: throw reject("it contains non-ASCII characters")
            default: throw reject("it contains the character '\(printable(String(decoding: [byte], as: UTF8.self)))'")
            }
        }
        guard bytes.first != UInt8(ascii: "-"), bytes.last != UInt8(ascii: "-") else {
            throw reject("it starts or ends with '-'")
        }
        rawValue = text
    }

    public var description: String { rawValue }
}

/// A tenant server's name: like a database name (a DNS label).
public struct ServerName: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public static let defaultServer = ServerName(unchecked: "default")

    public init(validating text: String) throws(TenureError) {
        do {
            rawValue = try DatabaseName(validating: text).rawValue
        } catch {
            throw TenureError(.invalidName, error.message.replacingOccurrences(of: "database name", with: "server name"))
        }
    }

    init(unchecked: String) { rawValue = unchecked }
    public var description: String { rawValue }
}

