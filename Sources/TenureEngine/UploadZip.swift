import TenureCore
import TenureZlib

/// Reads a zip upload as it streams in, through its local headers (the central directory at
/// its end is not needed): the one member named `dump.sql` (at the top or in one folder, as
/// backup zips hold it) goes to `output` as it inflates; every other member is read past and
/// listed in `ignoredMembers`. Stored and deflated members only; encrypted members, a second
/// SQL file, names with `..` or an absolute path, and a stored member of unknown size are
/// refused. Each member's CRC-32 is checked.
final class ZipSQLReader {
    private enum Stage {
        case header
        case stored(remaining: Int64, sql: Bool)
        case deflated(Inflater, sql: Bool, zip64: Bool)
        case descriptor(zip64: Bool)
        /// The central directory began: the rest of the file is read and dropped.
        case directory
    }

    private var stage = Stage.header
    private var pending: [UInt8] = []
    private(set) var ignoredMembers: [String] = []
    private(set) var sqlMember: String?
    private var expectedCRC: UInt32?
    private var storedCRC = Crc32()
    private var producedBytes: Int64 = 0
    let what = "the upload (zip)"

    /// Bytes produced by every member, the ignored ones too (for the decompression limits).
    var decompressedByteCount: Int64 { producedBytes }

    func feed(_ input: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) throws(TenureError) -> Void) throws(TenureError) {
        pending.append(contentsOf: input)
        var offset = 0
        defer { pending.removeFirst(offset) }
        while offset < pending.count {
            switch stage {
            case .directory:
                offset = pending.count
            case .header:
                guard pending.count - offset >= 4 else { return }
                let signature = readUInt32(offset)
                if signature == 0x0201_4B50 || signature == 0x0605_4B50 || signature == 0x0606_4B50 {
                    stage = .directory
                    continue
                }
                guard signature == 0x0403_4B50 else {
                    throw TenureError(.uploadRejected, "\(what): not a zip local file header at byte \(offset) of the buffered input")
                }
                guard pending.count - offset >= 30 else { return }
                let flags = readUInt16(offset + 6)
                let method = readUInt16(offset + 8)
                let crc = readUInt32(offset + 14)
                var compressedSize = Int64(readUInt32(offset + 18))
                let nameLength = Int(readUInt16(offset + 26))
                let extraLength = Int(readUInt16(offset + 28))
                guard pending.count - offset >= 30 + nameLength + extraLength else { return }
                let name = String(decoding: pending[(offset + 30)..<(offset + 30 + nameLength)], as: UTF8.self)
                var zip64 = false
                var extra = offset + 30 + nameLength
                let extraEnd = extra + extraLength
                while extra + 4 <= extraEnd {
                    let id = readUInt16(extra)
                    let size = Int(readUInt16(extra + 2))
                    if id == 0x0001 {
                        zip64 = true
                        if size >= 16, compressedSize == 0xFFFF_FFFF { compressedSize = Int64(bitPattern: readUInt64(extra + 4 + 8)) }
                    }
                    extra += 4 + size
                }
                offset = extraEnd
                try check(name: name, flags: flags, method: method)
                let isSQL = name.lowercased().hasSuffix(".sql")
                if isSQL {
                    guard sqlMember == nil else {
                        throw TenureError(
                            .uploadRejected, "\(what): it holds more than one SQL file ('\(printable(sqlMember!))' and '\(printable(name))'); upload one dump.sql")
                    }
                    guard name == "dump.sql" || name.hasSuffix("/dump.sql") && name.split(separator: "/").count == 2 else {
                        throw TenureError(.uploadRejected, "\(what): the SQL file must be named dump.sql, not '\(printable(name))'")
                    }
                    sqlMember = name
                } else if !name.hasSuffix("/") {
                    ignoredMembers.append(name)
                }
                let hasDescriptor = flags & 0x0008 != 0
                expectedCRC = hasDescriptor ? nil : crc
                if method == 0 {
                    guard !hasDescriptor else {
                        throw TenureError(.uploadRejected, "\(what): member '\(printable(name))' is stored without its size in its header; it cannot be read as a stream")
                    }
                    storedCRC = Crc32()
                    stage = .stored(remaining: compressedSize, sql: isSQL)
                } else {
                    stage = .deflated(Inflater(.raw, what: "\(what), member '\(printable(name))'"), sql: isSQL, zip64: zip64)
                }
            case .stored(let remaining, let sql):
                let count = Int(min(remaining, Int64(pending.count - offset)))
                try pending.withBytes { (raw) throws(TenureError) in
                    let piece = UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + count)])
                    storedCRC.update(piece)
                    producedBytes += Int64(count)
                    if sql { try output(piece) }
                }
                offset += count
                if remaining - Int64(count) == 0 {
                    try checkCRC(storedCRC.value)
                    stage = .header
                } else {
                    stage = .stored(remaining: remaining - Int64(count), sql: sql)
                }
            case .deflated(let inflater, let sql, let zip64):
                let used = try pending.withBytes { (raw) throws(TenureError) in
                    try inflater.feed(UnsafeRawBufferPointer(rebasing: raw[offset...])) { (bytes) throws(TenureError) in
                        producedBytes += Int64(bytes.count)
                        if sql { try output(bytes) }
                    }
                }
                offset += used
                if inflater.isFinished {
                    if let expectedCRC {
                        guard expectedCRC == inflater.crc32Value else { throw crcMismatch() }
                        stage = .header
                    } else {
                        expectedCRC = inflater.crc32Value
                        stage = .descriptor(zip64: zip64)
                    }
                } else if used == 0 {
                    return
                }
            case .descriptor(let zip64):
                // [signature] crc32, compressed size, uncompressed size (8 bytes each in zip64).
                let sizes = zip64 ? 16 : 8
                guard pending.count - offset >= 4 + sizes + 4 else { return }
                let start = readUInt32(offset) == 0x0807_4B50 ? offset + 4 : offset
                guard readUInt32(start) == expectedCRC else { throw crcMismatch() }
                offset = start + 4 + sizes
                stage = .header
            }
        }
    }

    /// The end of the upload: every member ended and there was a dump.sql.
    func finish() throws(TenureError) {
        switch stage {
        case .directory:
            break
        case .header:
            guard pending.isEmpty else { throw TenureError(.uploadRejected, "\(what): truncated (it ends inside a member header)") }
        default:
            throw TenureError(.uploadRejected, "\(what): truncated (it ends inside a member)")
        }
        guard sqlMember != nil else {
            throw TenureError(
                .uploadRejected,
                "\(what): it holds no dump.sql (members: \(ignoredMembers.prefix(10).map { printable($0) }.joined(separator: ", "))\(ignoredMembers.count > 10 ? ", …" : ""))")
        }
    }

    private func check(name: String, flags: UInt16, method: UInt16) throws(TenureError) {
        if flags & 0x0001 != 0 { throw TenureError(.uploadRejected, "\(what): member '\(printable(name))' is encrypted") }
        guard method == 0 || method == 8 else {
            throw TenureError(.uploadRejected, "\(what): member '\(printable(name))' uses compression method \(method); only stored and deflate are read")
        }
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        if name.isEmpty || name.hasPrefix("/") || name.contains("\\") || parts.contains("..") || name.utf8.contains(0) {
            throw TenureError(.uploadRejected, "\(what): member name '\(printable(name))' is not a plain relative path")
        }
    }

    private func checkCRC(_ actual: UInt32) throws(TenureError) {
        guard expectedCRC == nil || expectedCRC == actual else { throw crcMismatch() }
    }

    private func crcMismatch() -> TenureError {
        TenureError(.uploadRejected, "\(what): a member's CRC-32 does not match its contents (corrupt or altered)")
    }

    private func readUInt16(_ at: Int) -> UInt16 { UInt16(pending[at]) | UInt16(pending[at + 1]) << 8 }
    private func readUInt32(_ at: Int) -> UInt32 { UInt32(readUInt16(at)) | UInt32(readUInt16(at + 2)) << 16 }
    private func readUInt64(_ at: Int) -> UInt64 { UInt64(readUInt32(at)) | UInt64(readUInt32(at + 4)) << 32 }
}

/// CRC-32 (IEEE, as zip and gzip use it) of a stored zip member.
struct Crc32 {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 != 0 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }
    private var state: UInt32 = 0xFFFF_FFFF

    var value: UInt32 { state ^ 0xFFFF_FFFF }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        for byte in bytes { state = Self.table[Int((state ^ UInt32(byte)) & 0xFF)] ^ (state >> 8) }
    }
}
