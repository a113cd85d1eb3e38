/// Typed identifiers: a visible prefix (`db_`, `bk_`, ...) and 20 characters of
/// lowercase Crockford base32 (100 random bits). The prefix is checked before anything
/// touches SQL, so an id of the wrong kind is a usage error, never a lookup.
public enum IDKind: String, Sendable, CaseIterable {
    case database = "db"
    case backup = "bk"
    case upload = "up"
    case job = "job"
    case intent = "in"
    case apiKey = "key"
    case drill = "dr"
    case dataKey = "dk"

    public var noun: String {
        switch self {
        case .apiKey: return "API key"
        case .database: return "database"
        case .backup: return "backup"
        case .upload: return "upload"
        case .job: return "job"
        case .intent: return "intent"
        case .drill: return "restore drill"
        case .dataKey: return "data key"
        }
    }
}

public protocol TypedID: Hashable, Sendable, CustomStringConvertible, Codable {
    static var kind: IDKind { get }
    var rawValue: String { get }
    init(unchecked: String)
}

public let identifierAlphabet = Array("0123456789abcdefghjkmnpqrstvwxyz")
public let identifierSuffixLength = 20

extension TypedID {
    public var description: String { rawValue }

    /// Parses `text`, refusing an id of another kind with a message that names both kinds.
    public init(parsing text: String) throws(TenureError) {
        let prefix = Self.kind.rawValue + "_"
        guard text.hasPrefix(prefix) else {
            if let underscore = text.firstIndex(of: "_"),
                let other = IDKind(rawValue: String(text[..<underscore]))
            {
                throw TenureError(
                    .invalidID,
                    "'\(printable(text))' is a \(other.noun) id (\(other.rawValue)_…); a \(Self.kind.noun) id (\(prefix)…) is needed here",
                    context: ["expected": prefix])
            }
            throw TenureError(
                .invalidID, "'\(printable(text))' is not a \(Self.kind.noun) id; expected \(prefix) followed by \(identifierSuffixLength) characters",
                context: ["expected": prefix])
        }
        let suffix = text.dropFirst(prefix.count)
        guard suffix.count == identifierSuffixLength, suffix.allSatisfy({ identifierAlphabet.contains($0) }) else {
            throw TenureError(
                .invalidID, "'\(printable(text))' is not a well-formed \(Self.kind.noun) id; expected \(prefix) followed by \(identifierSuffixLength) lowercase base32 characters",
                context: ["expected": prefix])
        }
        self.init(unchecked: text)
    }

    /// A fresh random id from the system's cryptographic generator.
    public static func random() -> Self {
        var generator = SystemRandomNumberGenerator()
        let suffix = String((0..<identifierSuffixLength).map { _ in identifierAlphabet.randomElement(using: &generator)! })
        return Self(unchecked: Self.kind.rawValue + "_" + suffix)
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { self = try Self(parsing: text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.message))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

public struct DatabaseID: TypedID {
    public static let kind = IDKind.database
    public let rawValue: String
    public init(unchecked: String) { rawValue = unchecked }

    /// The PostgreSQL database name: the id itself (lowercase, digits, underscore; 23 bytes).
    public var postgresDatabaseName: String { rawValue }
    /// The owner role's name: derived from the id, never from the customer's name.
    public var postgresRoleName: String { rawValue + "_owner" }
}

public struct IntentID: TypedID {
    public static let kind = IDKind.intent
    public let rawValue: String
    public init(unchecked: String) { rawValue = unchecked }
}

public struct BackupID: TypedID {
    public static let kind = IDKind.backup
    public let rawValue: String
    public init(unchecked: String) { rawValue = unchecked }
}

public struct UploadID: TypedID {
    public static let kind = IDKind.upload
    public let rawValue: String
    public init(unchecked: String) { rawValue = unchecked }
}

public struct APIKeyID: TypedID {
    public static let kind = IDKind.apiKey
    public let rawValue: String
    public init(unchecked: String) { rawValue = unchecked }
}

public struct DrillID: TypedID {
    public static let kind = IDKind.drill
    public let rawValue: String
    public init(unchecked: String) { rawValue = unchecked }
}

public struct DataKeyID: TypedID {
    public static let kind = IDKind.dataKey
    public let rawValue: String
    public init(unchecked: String) { rawValue = unchecked }
}

public struct JobID: TypedID {
    public static let kind = IDKind.job
    public let rawValue: String
    public init(unchecked: String) { rawValue = unchecked }
}

/// Renders untrusted text for an error message: control characters and non-ASCII escaped,
/// long input cut, so a hostile value cannot forge output lines.
public func printable(_ text: String, limit: Int = 80) -> String {
    var result = ""
    for scalar in text.unicodeScalars.prefix(limit) {
        switch scalar.value {
        case 0x20...0x7E: result.unicodeScalars.append(scalar)
        default: result += "\\u{\(String(scalar.value, radix: 16))}"
        }
    }
    if text.unicodeScalars.count > limit { result += "…" }
    return result
}
