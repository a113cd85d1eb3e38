import Foundation
import TenureCore
import TenureZstd

/// Reads a native archive member by member and enforces its shape: the fixed order of the
/// schema members, known member names only, no duplicates, a member-count limit, blob parts
/// in sequence, the manifest last and the end-of-archive marker after it. Every member's
/// size and XXH64 is recorded for the manifest check.
final class ArchiveReader {
    enum Member {
        case header(ArchiveHeader)
        case preData(String)
        case tables([TableEntry])
        case sequences(String)
        case chunk(ChunkKey, name: String, bytes: [UInt8], blobOffset: Int64)
        case postData(String)
        case manifest(Manifest)
    }

    enum Stage: Int { case header, preData, tables, sequences, chunks, manifest, end }

    struct Seen {
        var name: String
        var compressedBytes: Int64
        var xxh64: String
    }

    let tar: TarReader
    let limits: EngineLimits
    private var stage = Stage.header
    private var names = Set<String>()
    private(set) var seen: [Seen] = []
    private var blobNext: [Int64: (part: Int, offset: Int64)] = [:]
    private(set) var header: ArchiveHeader?

    init(source: any ByteSource, limits: EngineLimits) {
        tar = TarReader(source: source, maximumMemberBytes: max(limits.maximumMemberBytes, limits.maximumSchemaBytes))
        self.limits = limits
    }

    /// The next member, or nil after the manifest and a valid end-of-archive marker.
    func next() throws(TenureError) -> Member? {
        let entry: TarReader.Member?
        do { entry = try tar.next() } catch { throw named(error, after: seen.last?.name) }
        guard let entry else {
            guard stage == .end else {
                let missing: String
                switch stage {
                case .header: missing = ArchiveLayout.header
                case .preData: missing = ArchiveLayout.preData
                case .tables: missing = ArchiveLayout.tables
                case .sequences: missing = ArchiveLayout.sequences
                case .chunks: missing = ArchiveLayout.postData
                case .manifest, .end: missing = ArchiveLayout.manifest
                }
                throw TenureError(.invalidRequest, "archive is incomplete: it ends without its '\(missing)' member (truncated, or not a Tenure archive)")
            }
            return nil
        }
        guard stage != .end else {
            throw TenureError(.invalidRequest, "archive has a member '\(entry.name)' after its manifest")
        }
        guard names.insert(entry.name).inserted else {
            throw TenureError(.invalidRequest, "archive member '\(entry.name)' appears twice")
        }
        guard names.count <= limits.maximumMemberCount else {
            throw TenureError(.invalidRequest, "archive has more than \(limits.maximumMemberCount) members, the configured limit")
        }
        let chunk = ArchiveLayout.parseChunk(entry.name)
        if chunk == nil && ![ArchiveLayout.header, ArchiveLayout.preData, ArchiveLayout.tables, ArchiveLayout.sequences, ArchiveLayout.postData, ArchiveLayout.manifest].contains(entry.name) {
            throw TenureError(.invalidRequest, "archive has an unexpected member '\(printable(entry.name))'")
        }
        let limit = chunk == nil ? limits.maximumSchemaBytes : limits.maximumMemberBytes
        guard entry.size <= limit else {
            throw TenureError(.invalidRequest, "archive member '\(entry.name)' is \(entry.size) bytes, more than the limit of \(limit)")
        }
        let expected: String
        switch stage {
        case .header: expected = ArchiveLayout.header
        case .preData: expected = ArchiveLayout.preData
        case .tables: expected = ArchiveLayout.tables
        case .sequences: expected = ArchiveLayout.sequences
        case .chunks: expected = chunk != nil ? entry.name : ArchiveLayout.postData
        case .manifest: expected = ArchiveLayout.manifest
        case .end: expected = "(nothing)"
        }
        guard entry.name == expected else {
            throw TenureError(.invalidRequest, "archive member '\(entry.name)' is out of order: expected '\(expected)' here (missing, reordered or foreign member)")
        }
        let bytes: [UInt8]
        do { bytes = try tar.readContent(entry) } catch { throw named(error, in: entry.name) }
        let hash = bytes.withUnsafeBytes { XXH64.hash($0) }
        if entry.name != ArchiveLayout.manifest {
            seen.append(Seen(name: entry.name, compressedBytes: Int64(bytes.count), xxh64: XXH64.hex(hash)))
        }
        func text() throws(TenureError) -> String {
            guard let value = String(validating: bytes, as: UTF8.self) else {
                throw TenureError(.invalidRequest, "archive member '\(entry.name)' is not valid UTF-8")
            }
            return value
        }
        switch stage {
        case .header:
            let header = try decodeJSON(ArchiveHeader.self, bytes, member: entry.name)
            guard header.format == ArchiveLayout.formatName else {
                throw TenureError(.invalidRequest, "not a Tenure archive (header format '\(printable(header.format))')")
            }
            guard ArchiveLayout.readableVersions.contains(header.formatVersion) else {
                throw TenureError(
                    .invalidRequest,
                    "archive format version \(header.formatVersion) is not supported (this Tenure reads versions \(ArchiveLayout.readableVersions.lowerBound) to \(ArchiveLayout.readableVersions.upperBound))")
            }
            self.header = header
            stage = .preData
            return .header(header)
        case .preData:
            stage = .tables
            return .preData(try text())
        case .tables:
            stage = .sequences
            let tables = try decodeJSON([TableEntry].self, bytes, member: entry.name)
            for (offset, table) in tables.enumerated() where table.index != offset + 1 {
                throw TenureError(.invalidRequest, "archive member tables.json is not valid: table \(offset + 1) has index \(table.index)")
            }
            return .tables(tables)
        case .sequences:
            stage = .chunks
            return .sequences(try text())
        case .chunks:
            if let chunk {
                var offset: Int64 = 0
                if chunk.kind == .blob {
                    let expected = blobNext[chunk.object] ?? (1, 0)
                    guard chunk.part == expected.part else {
                        throw TenureError(.invalidRequest, "archive member '\(entry.name)' is out of order: part \(expected.part) of large object \(chunk.object) was expected")
                    }
                    guard let size = bytes.withUnsafeBytes({ Zstd.frameContentSize($0) }) else {
                        throw TenureError(.invalidRequest, "archive member '\(entry.name)' is not a zstd frame with a declared size")
                    }
                    offset = expected.offset
                    blobNext[chunk.object] = (chunk.part + 1, expected.offset + Int64(size))
                }
                return .chunk(chunk, name: entry.name, bytes: bytes, blobOffset: offset)
            }
            stage = .manifest
            return .postData(try text())
        case .manifest:
            stage = .end
            return .manifest(try decodeJSON(Manifest.self, bytes, member: entry.name))
        case .end:
            preconditionFailure("checked above")
        }
    }

    /// A sealed file's failed segment, told by the member it was read for.
    private func named(_ error: TenureError, in member: String? = nil, after previous: String? = nil) -> TenureError {
        guard error.context["sealed_segment"] != nil else { return error }
        var named = error
        if let member {
            named.message = "archive member '\(member)' failed its integrity check: \(error.message)"
            named.context["member"] = member
        } else {
            named.message = "the archive failed its integrity check after member '\(previous ?? "(none)")': \(error.message)"
        }
        return named
    }

    /// Compares the manifest with what arrived, both ways: every member once, in order, with
    /// its size, checksum, rows and raw bytes (`counted` has those for data and blob members).
    func check(_ manifest: Manifest, counted: [String: (rows: Int64, rawBytes: Int64)]) throws(TenureError) {
        let listed = Set(manifest.members.map(\.name))
        if let missing = manifest.members.first(where: { !names.contains($0.name) }) {
            throw TenureError(.invalidRequest, "archive is missing member '\(missing.name)' listed in its manifest")
        }
        if let extra = seen.first(where: { !listed.contains($0.name) }) {
            throw TenureError(.invalidRequest, "archive member '\(extra.name)' is not listed in the manifest")
        }
        guard listed.count == manifest.members.count else {
            throw TenureError(.invalidRequest, "archive manifest lists a member twice")
        }
        for (index, entry) in manifest.members.enumerated() {
            let arrived = seen[index]
            guard arrived.name == entry.name else {
                throw TenureError(.invalidRequest, "archive member '\(arrived.name)' is out of order: the manifest has '\(entry.name)' in that place")
            }
            guard arrived.compressedBytes == entry.compressedBytes, arrived.xxh64 == entry.xxh64 else {
                throw TenureError(.invalidRequest, "archive member '\(entry.name)' does not match its manifest checksum or size (corrupt or tampered)")
            }
            if let count = counted[entry.name] {
                guard count.rows == entry.rows else {
                    throw TenureError(.invalidRequest, "archive member '\(entry.name)' has \(count.rows) rows, the manifest says \(entry.rows)")
                }
                guard count.rawBytes == entry.rawBytes else {
                    throw TenureError(.invalidRequest, "archive member '\(entry.name)' decompresses to \(count.rawBytes) bytes, the manifest says \(entry.rawBytes)")
                }
            } else if entry.kind == "data" || entry.kind == "blob" {
                throw TenureError(.invalidRequest, "archive member '\(entry.name)' was not counted")
            }
        }
    }
}

public struct VerifySummary: Sendable {
    public var memberCount: Int
    public var tableCount: Int
    public var rowCount: Int64
    public var rawBytes: Int64
    public var header: ArchiveHeader
    public var signature: SignatureStatus
}

/// Reads a whole archive and checks every frame, row counts, order, the manifest both ways
/// and the end marker, without a database. Thread: blocks.
public func runVerify(
    source: any ByteSource, limits: EngineLimits = EngineLimits(), key: ArchiveKey? = nil, progress: TransferProgress = TransferProgress()
) throws(TenureError) -> VerifySummary
{
    let reader = ArchiveReader(source: source, limits: limits)
    let decompressor = FrameDecompressor()
    var counted: [String: (rows: Int64, rawBytes: Int64)] = [:]
    var tables: [TableEntry] = []
    var manifest: Manifest?
    while let member = try reader.next() {
        switch member {
        case .tables(let list): tables = list
        case .chunk(let key, let name, let bytes, _):
            if key.kind == .data, !(1...max(1, tables.count)).contains(Int(key.object)) || tables.isEmpty {
                throw TenureError(.invalidRequest, "archive member '\(name)' belongs to table \(key.object), which tables.json does not list")
            }
            var rows: Int64 = 0
            let raw = try bytes.withBytes { (buffer) throws(TenureError) in
                try decompressor.decompress(buffer, maximumByteCount: limits.maximumRawMemberBytes, what: "archive member '\(name)'") { chunk in
                    if key.kind == .data {
                        for byte in chunk where byte == 10 { rows += 1 }
                    }
                }
            }
            counted[name] = (rows, Int64(raw))
            progress.rawBytes.add(Int64(raw), ordering: .relaxed)
            progress.rows.add(rows, ordering: .relaxed)
        case .manifest(let value): manifest = value
        case .header, .preData, .sequences, .postData: break
        }
    }
    guard let manifest, let header = reader.header else { throw TenureError(.invalidRequest, "archive has no manifest") }
    try reader.check(manifest, counted: counted)
    let signature = try checkSignature(manifest, key: key)
    return VerifySummary(
        memberCount: manifest.members.count, tableCount: tables.count, rowCount: manifest.rowCount, rawBytes: manifest.rawBytes, header: header,
        signature: signature)
}
