import Foundation
import TenureCore

#if canImport(Glibc)
import Glibc
#endif

/// The native archive (`.tenure`): a POSIX tar stream whose members come in this order:
///
/// 1. `header.json`: format name and version, server and pg_dump versions, created-at, encoding
/// 2. `schema/pre-data.sql`: `pg_dump --section=pre-data` (tables, types, functions, ...)
/// 3. `tables.json`: every table with data: index, schema, name, columns in COPY order
/// 4. `sequences.sql`: one `setval` per sequence, read in the backup's snapshot
/// 5. `data/TTTTTT.PPPPPP.copy.zst` (table index, part) and `blobs/OID.PPPPPP.zst`, in any
///    order: each one zstd frame with its content checksum; data members hold whole rows of
///    COPY text, so each restores independently; blob members hold large-object bytes
/// 6. `schema/post-data.sql`: indexes, constraints, triggers, policies, ...
/// 7. `manifest.json`: every member above in order with its sizes, rows and XXH64
///
/// then the tar end-of-archive marker. Readable without Tenure:
/// `tar -xf x.tenure && zstd -dc data/000001.000001.copy.zst`.
public enum ArchiveLayout {
    public static let formatName = "tenure-archive"
    /// Version 2: the schema scripts carry pg_dump's table of contents in their entry headers
    /// (`-- TOC entry N`, `-- Dependencies: ...`) and `tables.json` may list extensions'
    /// configuration tables with their `filter`. A version-1 reader would not see those
    /// headers and would skip the post-data; the bump makes it refuse instead.
    public static let formatVersion = 2
    /// The versions this Tenure reads.
    public static let readableVersions = 1...2
    public static let header = "header.json"
    public static let preData = "schema/pre-data.sql"
    public static let tables = "tables.json"
    public static let sequences = "sequences.sql"
    public static let postData = "schema/post-data.sql"
    public static let manifest = "manifest.json"

    public static func dataMember(table: Int, part: Int) -> String {
        "data/" + pad(table, 6) + "." + pad(part, 6) + ".copy.zst"
    }

    public static func blobMember(oid: UInt32, part: Int) -> String {
        "blobs/" + String(oid) + "." + pad(part, 6) + ".zst"
    }

    /// Parses a data or blob member name; nil for anything else.
    public static func parseChunk(_ name: String) -> ChunkKey? {
        let parts = name.split(separator: "/")
        guard parts.count == 2 else { return nil }
        let fields = parts[1].split(separator: ".")
        if parts[0] == "data", fields.count == 4, fields[2] == "copy", fields[3] == "zst", fields[0].count == 6, fields[1].count == 6,
            let table = Int(fields[0]), let part = Int(fields[1])
        {
            return ChunkKey(kind: .data, object: Int64(table), part: part)
        }
        if parts[0] == "blobs", fields.count == 3, fields[2] == "zst", fields[1].count == 6, let oid = UInt32(fields[0]), let part = Int(fields[1]) {
            return ChunkKey(kind: .blob, object: Int64(oid), part: part)
        }
        return nil
    }

    static func pad(_ value: Int, _ width: Int) -> String {
        let text = String(value)
        return String(repeating: "0", count: max(0, width - text.count)) + text
    }
}

public struct ChunkKey: Hashable, Sendable {
    public enum Kind: String, Sendable, Codable { case data, blob }
    public var kind: Kind
    /// Table index for data, large-object OID for blobs.
    public var object: Int64
    public var part: Int
}

public struct ArchiveHeader: Codable, Sendable {
    public var format: String
    public var formatVersion: Int
    public var createdAt: String
    public var serverVersion: String
    public var pgDumpVersion: String
    public var database: String
    public var encoding: String
    /// The key pg_dump was given for its `\restrict` lines; restore strips exactly those.
    public var restrictKey: String?

    enum CodingKeys: String, CodingKey {
        case format, formatVersion = "format_version", createdAt = "created_at", serverVersion = "server_version",
            pgDumpVersion = "pg_dump_version", database, encoding, restrictKey = "restrict_key"
    }
}

public struct TableEntry: Codable, Sendable {
    public var index: Int
    public var schema: String
    public var name: String
    /// Columns in COPY order: not dropped, not generated.
    public var columns: [String]
    public var byteCount: Int64
    /// For an extension's configuration table (`pg_extension_config_dump`): the condition
    /// (`WHERE ...`, or empty for every row) that selects the rows the extension did not
    /// create itself, as pg_dump applies it. Nil for an ordinary table.
    public var filter: String? = nil

    enum CodingKeys: String, CodingKey { case index, schema, name, columns, byteCount = "bytes", filter }

    public var qualifiedName: String { "\(quoteName(schema)).\(quoteName(name))" }

    /// `"schema"."table" ("a", "b")`, or no list for a table without columns.
    public var copyTarget: String {
        columns.isEmpty ? qualifiedName : "\(qualifiedName) (\(columns.map(quoteName).joined(separator: ", ")))"
    }
}

/// One manifest line: a member, its position, sizes, rows and checksum.
public struct ManifestEntry: Codable, Sendable, Equatable {
    public var name: String
    public var kind: String
    /// Table index (data) or large-object OID (blobs); nil for schema members.
    public var object: Int64?
    public var part: Int?
    public var rows: Int64
    public var compressedBytes: Int64
    public var rawBytes: Int64
    public var xxh64: String

    enum CodingKeys: String, CodingKey {
        case name, kind, object, part, rows, compressedBytes = "compressed_bytes", rawBytes = "raw_bytes", xxh64
    }
}

public struct Manifest: Codable, Sendable {
    public var formatVersion: Int
    public var members: [ManifestEntry]
    public var tableCount: Int
    public var rowCount: Int64
    public var rawBytes: Int64
    /// HMAC-SHA-256 over this manifest without its signature, with the key of the Tenure
    /// installation that made it: tampering is detected, not only accidents (B5).
    public var signature: ManifestSignature?

    enum CodingKeys: String, CodingKey {
        case formatVersion = "format_version", members, tableCount = "table_count", rowCount = "row_count", rawBytes = "raw_bytes", signature
    }

    /// The bytes the signature covers: the manifest's canonical JSON without its signature.
    func signedBytes() -> [UInt8] {
        var unsigned = self
        unsigned.signature = nil
        return encodeJSON(unsigned)
    }
}

public struct ManifestSignature: Codable, Sendable {
    public var algorithm: String
    public var keyID: String
    public var value: String

    enum CodingKeys: String, CodingKey { case algorithm, keyID = "key_id", value }
}

/// The key that signs manifests: 32 random bytes in `TENURE_HOME/archive.key` (mode 0600).
public struct ArchiveKey: Sendable {
    public let bytes: [UInt8]
    public var keyID: String { String(SHA256.hex(SHA256.hash(bytes)).prefix(16)) }

    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// Loads the key, creating it the first time (`create`); nil if absent and not created.
    public static func load(home: String, create: Bool) throws(TenureError) -> ArchiveKey? {
        let path = home + "/archive.key"
        let setting = "the archive key"
        if let bytes = try KeyFile.read(path, setting: setting) { return ArchiveKey(bytes: bytes) }
        guard create else { return nil }
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        if try KeyFile.create(path, key: bytes, setting: setting) { return ArchiveKey(bytes: bytes) }
        // Created meanwhile by another process: use theirs.
        guard let theirs = try KeyFile.read(path, setting: setting) else { throw TenureError(.invalidConfiguration, "cannot create \(path)") }
        return ArchiveKey(bytes: theirs)
    }

    func sign(_ manifest: Manifest) -> ManifestSignature {
        ManifestSignature(algorithm: "hmac-sha256", keyID: keyID, value: SHA256.hex(SHA256.hmac(key: bytes, message: manifest.signedBytes())))
    }
}

/// What a reader could say about a manifest's signature.
public enum SignatureStatus: String, Sendable {
    case valid
    case unsigned
    /// Signed with a key this installation does not have.
    case unknownKey = "unknown_key"
}

/// Checks a manifest's signature with `key`; a mismatch is an error naming tampering.
func checkSignature(_ manifest: Manifest, key: ArchiveKey?) throws(TenureError) -> SignatureStatus {
    guard let signature = manifest.signature else { return .unsigned }
    guard let key, key.keyID == signature.keyID, signature.algorithm == "hmac-sha256" else { return .unknownKey }
    guard key.sign(manifest).value == signature.value else {
        throw TenureError(.invalidRequest, "archive manifest signature does not match: the archive was altered after it was made")
    }
    return .valid
}

/// Identifier quoting for names read from the server or an archive (quotes doubled).
public func quoteName(_ name: String) -> String {
    "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

/// Limits for reading archives (S7) and for writing them.
public struct EngineLimits: Sendable {
    /// Largest compressed member accepted (a data frame is about 8 MiB raw, far less compressed).
    public var maximumMemberBytes = 256 << 20
    /// Largest decompressed member (a single row may be big: a TOASTed value up to 1 GB).
    public var maximumRawMemberBytes = 1_100 << 20
    /// Most members in one archive.
    public var maximumMemberCount = 500_000
    /// Largest schema section (pre-data, post-data) and JSON member.
    public var maximumSchemaBytes = 512 << 20
    public init() {}

    /// The defaults, overridden by TENURE_MAX_MEMBER_BYTES, TENURE_MAX_FRAME_BYTES (decompressed
    /// size of one member), TENURE_MAX_MEMBERS and TENURE_MAX_SCHEMA_BYTES.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(TenureError) -> EngineLimits {
        var limits = EngineLimits()
        func value(_ key: String) throws(TenureError) -> Int? {
            guard let text = environment[key] else { return nil }
            guard let number = Int(text), number > 0 else {
                throw TenureError(.invalidConfiguration, "\(key)='\(printable(text))' must be a positive number of bytes (or members)")
            }
            return number
        }
        if let number = try value("TENURE_MAX_MEMBER_BYTES") { limits.maximumMemberBytes = number }
        if let number = try value("TENURE_MAX_FRAME_BYTES") { limits.maximumRawMemberBytes = number }
        if let number = try value("TENURE_MAX_MEMBERS") { limits.maximumMemberCount = number }
        if let number = try value("TENURE_MAX_SCHEMA_BYTES") { limits.maximumSchemaBytes = number }
        return limits
    }
}

let jsonEncoder: JSONEncoder = {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return encoder
}()

func encodeJSON<T: Encodable>(_ value: T) -> [UInt8] {
    Array((try? jsonEncoder.encode(value)) ?? Data("{}".utf8))
}

func decodeJSON<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], member: String) throws(TenureError) -> T {
    do { return try JSONDecoder().decode(type, from: Data(bytes)) } catch {
        throw TenureError(.invalidRequest, "archive member \(member) is not valid: \(error)")
    }
}
