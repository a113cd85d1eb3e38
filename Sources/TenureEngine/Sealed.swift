import Foundation
import TenureCore

/// A stored file sealed with its owner's data key (`docs/archive-format.md`, "Sealed files"):
///
///     header (96 bytes, authenticated with every segment):
///       0  "TNRCRYPT"   8  version 1   9  algorithm 1 (AES-256-GCM)   10  two zero bytes
///       12 segment size (u32, big-endian)   16 salt (16 random bytes)
///       32 data key id (ASCII, zero-padded to 32)   64 owner id (ASCII, zero-padded to 32)
///     segments: ciphertext ‖ 16-byte tag of each `segment size` bytes of the plain file; the
///       last segment is shorter (possibly empty) and is sealed as the last one
///
/// The file's key is HKDF-SHA-256(data key, salt, "tenure sealed file v1"); segment `n` uses
/// the nonce `0⁴ ‖ n` and authenticates header ‖ n ‖ last-flag. Whatever the plain file is
/// (a native archive, an SQL export) it streams through unchanged, and a range of the plain
/// file maps to whole segments, so ranged downloads read only what they need.
public enum SealedFile {
    public static let magic = Array("TNRCRYPT".utf8)
    public static let headerBytes = 96
    public static let defaultSegmentBytes = 1 << 20
    static let info = Array("tenure sealed file v1".utf8)

    public struct Header: Sendable {
        public var segmentBytes: Int
        public var salt: [UInt8]
        public var keyID: String
        public var owner: String

        public var bytes: [UInt8] {
            var out = SealedFile.magic + [1, 1, 0, 0]
            for shift in [24, 16, 8, 0] { out.append(UInt8(truncatingIfNeeded: segmentBytes >> shift)) }
            out += salt
            out += field(keyID)
            out += field(owner)
            return out
        }

        func field(_ text: String) -> [UInt8] {
            let bytes = Array(text.utf8.prefix(32))
            return bytes + [UInt8](repeating: 0, count: 32 - bytes.count)
        }

        static func parse(_ bytes: [UInt8], what: String) throws(TenureError) -> Header {
            guard bytes.count == SealedFile.headerBytes, Array(bytes.prefix(8)) == SealedFile.magic else {
                throw TenureError(.invalidRequest, "\(what) is not a sealed Tenure file (its header is incomplete)")
            }
            guard bytes[8] == 1, bytes[9] == 1 else {
                throw TenureError(.invalidRequest, "\(what) is sealed with version \(bytes[8]) / algorithm \(bytes[9]), which this Tenure does not read")
            }
            let size = bytes[12..<16].reduce(0) { $0 << 8 | Int($1) }
            guard (4096...(64 << 20)).contains(size) else {
                throw TenureError(.invalidRequest, "\(what) declares a segment size of \(size) bytes, which is out of range")
            }
            func text(_ range: Range<Int>) -> String {
                String(decoding: bytes[range].prefix { $0 != 0 }, as: UTF8.self)
            }
            return Header(segmentBytes: size, salt: Array(bytes[16..<32]), keyID: text(32..<64), owner: text(64..<96))
        }

        func cipher(dataKey: [UInt8]) -> SegmentCipher {
            SegmentCipher(fileKey: Ciphers.deriveKey(dataKey, salt: salt, info: SealedFile.info), header: bytes)
        }
    }

    /// The sealed size of a plain file of `plain` bytes.
    public static func sealedSize(plain: Int64, segmentBytes: Int = defaultSegmentBytes) -> Int64 {
        Int64(headerBytes) + plain + (plain / Int64(segmentBytes) + 1) * Int64(SegmentCipher.tagBytes)
    }

    /// Where segment `index` starts in the sealed file.
    static func segmentOffset(_ index: Int64, segmentBytes: Int) -> Int64 {
        Int64(headerBytes) + index * Int64(segmentBytes + SegmentCipher.tagBytes)
    }

    /// The plain size of a stored file of `storedBytes` bytes: itself unless it is sealed.
    public static func plainSize(of source: any ByteSource, storedBytes: Int64) throws(TenureError) -> Int64 {
        var first = [UInt8](repeating: 0, count: headerBytes)
        let count = try first.withMutableBytes { (buffer) throws(TenureError) in try source.readFully(into: buffer) }
        guard count == headerBytes, Array(first.prefix(8)) == magic else { return storedBytes }
        let header = try Header.parse(first, what: source.what)
        let segments = (storedBytes - Int64(headerBytes) + Int64(header.segmentBytes + SegmentCipher.tagBytes) - 1)
            / Int64(header.segmentBytes + SegmentCipher.tagBytes)
        return storedBytes - Int64(headerBytes) - segments * Int64(SegmentCipher.tagBytes)
    }

    /// The data key a sealed file needs: its id and owner (`db_…`, `up_…`) in, the 32 bytes
    /// out, or an error saying why not (destroyed, unknown).
    public typealias KeyLookup = (_ keyID: String, _ owner: String) throws(TenureError) -> [UInt8]

    /// The header of a sealed file (nil for any other file) and the source to go on with.
    public static func readHeader(_ source: any ByteSource) throws(TenureError) -> (header: Header?, rest: any ByteSource) {
        var first = [UInt8](repeating: 0, count: headerBytes)
        let count = try first.withMutableBytes { (buffer) throws(TenureError) in try source.readFully(into: buffer) }
        first.removeSubrange(count...)
        guard count >= 8, Array(first.prefix(8)) == magic else { return (nil, PrefixedSource(prefix: first, rest: source)) }
        return (try Header.parse(first, what: source.what), source)
    }

    /// The plain bytes of a sealed file whose header `readHeader` took.
    public static func opening(_ rest: any ByteSource, header: Header, dataKey: [UInt8]) -> any ByteSource {
        OpeningSource(rest, header: header, dataKey: dataKey)
    }

    /// The key id a raw data key from a file is named by in the files it seals.
    public static func fileKeyID(_ key: [UInt8]) -> String { "file-" + SHA256.hex(SHA256.hash(key)).prefix(16) }

    /// Reads the header of a stored file: a sealed file opens with its key; anything else (a
    /// file stored before sealing existed) is returned as it is.
    public static func open(_ source: any ByteSource, keys: KeyLookup) throws(TenureError) -> any ByteSource {
        let (header, rest) = try readHeader(source)
        guard let header else { return rest }
        return OpeningSource(rest, header: header, dataKey: try keys(header.keyID, header.owner))
    }

    /// Bytes `first ..< first + count` of the plain file inside a sealed file of `plainSize`
    /// plain bytes, opening only the segments that hold them. `fetch` opens the stored file
    /// at a sealed offset and length.
    public static func openRange(
        plainSize: Int64, first: Int64, count: Int64, keys: KeyLookup,
        fetch: (_ offset: Int64, _ length: Int64?) throws(TenureError) -> any ByteSource
    ) throws(TenureError) -> any ByteSource {
        let headerSource = try fetch(0, Int64(headerBytes))
        var bytes = [UInt8](repeating: 0, count: headerBytes)
        let read = try bytes.withMutableBytes { (buffer) throws(TenureError) in try headerSource.readFully(into: buffer) }
        guard read == headerBytes, Array(bytes.prefix(8)) == magic else {
            // Stored before sealing: the plain bytes are where they are.
            return SliceSource(try fetch(first, count), skip: 0, count: count)
        }
        let header = try Header.parse(bytes, what: headerSource.what)
        let size = Int64(header.segmentBytes)
        let firstSegment = first / size
        let lastSegment = max(firstSegment, (first + count - 1) / size)
        let end = min(sealedSize(plain: plainSize, segmentBytes: header.segmentBytes), segmentOffset(lastSegment + 1, segmentBytes: header.segmentBytes))
        let start = segmentOffset(firstSegment, segmentBytes: header.segmentBytes)
        let opened = OpeningSource(
            try fetch(start, end - start), header: header, dataKey: try keys(header.keyID, header.owner), firstSegment: firstSegment,
            lastSegment: plainSize / size)
        return SliceSource(opened, skip: first - firstSegment * size, count: count)
    }
}

/// Seals what is written to it into `inner` (see `SealedFile`). Thread: one writer.
public final class SealingSink: ByteSink {
    let inner: any ByteSink
    let header: SealedFile.Header
    let cipher: SegmentCipher
    private var buffer: [UInt8] = []
    private var sealed: [UInt8] = []
    private var index: UInt64 = 0
    private var started = false

    public init(_ inner: any ByteSink, dataKey: [UInt8], keyID: String, owner: String, segmentBytes: Int = SealedFile.defaultSegmentBytes) {
        self.inner = inner
        var salt = [UInt8](repeating: 0, count: 16)
        var generator = SystemRandomNumberGenerator()
        for position in salt.indices { salt[position] = UInt8.random(in: 0...255, using: &generator) }
        header = SealedFile.Header(segmentBytes: segmentBytes, salt: salt, keyID: keyID, owner: owner)
        cipher = header.cipher(dataKey: dataKey)
        buffer.reserveCapacity(segmentBytes)
        sealed.reserveCapacity(segmentBytes + SegmentCipher.tagBytes)
    }

    private func start() throws(TenureError) {
        guard !started else { return }
        started = true
        try inner.write(header.bytes)
    }

    private func emit(final: Bool) throws(TenureError) {
        sealed.removeAll(keepingCapacity: true)
        buffer.withUnsafeBytes { cipher.seal($0, index: index, final: final, into: &sealed) }
        index += 1
        buffer.removeAll(keepingCapacity: true)
        try inner.write(sealed)
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(TenureError) {
        try start()
        var offset = 0
        while offset < bytes.count {
            // A full segment is sealed only once more bytes follow: the last one is always short.
            if buffer.count == header.segmentBytes { try emit(final: false) }
            let take = min(header.segmentBytes - buffer.count, bytes.count - offset)
            buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]))
            offset += take
        }
    }

    public func finish() throws(TenureError) {
        try start()
        if buffer.count == header.segmentBytes { try emit(final: false) }
        try emit(final: true)
        try inner.finish()
    }

    public func abort() { inner.abort() }
}

/// The plain bytes of a sealed file, segment by segment, each authenticated before any of its
/// bytes is returned. A changed byte, a dropped or reordered segment, a truncation or trailing
/// bytes are errors naming the segment.
final class OpeningSource: ByteSource {
    let inner: any ByteSource
    let header: SealedFile.Header
    let cipher: SegmentCipher
    private var segment: UInt64
    /// The plain file's last segment when known (ranged reads); else told by its short length.
    private let lastSegment: Int64?
    private var plain: [UInt8] = []
    private var position = 0
    private var finished = false
    private var sealed: [UInt8]
    private var produced: Int64 = 0

    init(_ inner: any ByteSource, header: SealedFile.Header, dataKey: [UInt8], firstSegment: Int64 = 0, lastSegment: Int64? = nil) {
        self.inner = inner
        self.header = header
        cipher = header.cipher(dataKey: dataKey)
        segment = UInt64(firstSegment)
        self.lastSegment = lastSegment
        sealed = [UInt8](repeating: 0, count: header.segmentBytes + SegmentCipher.tagBytes)
    }

    var what: String { inner.what }
    var byteCount: Int64 { produced }

    private func failure(_ reason: String) -> TenureError {
        let start = SealedFile.segmentOffset(Int64(segment), segmentBytes: header.segmentBytes)
        return TenureError(
            .invalidRequest, "\(what): sealed segment \(segment) (stored bytes from \(start)) \(reason)",
            context: ["sealed_segment": String(segment)])
    }

    private func refill() throws(TenureError) {
        let count = try sealed.withMutableBytes { (buffer) throws(TenureError) in try inner.readFully(into: buffer) }
        if count == 0 {
            throw failure("is missing: the file is truncated")
        }
        let final: Bool
        if let lastSegment {
            final = Int64(segment) == lastSegment
            if !final && count < sealed.count { throw failure("is short: the file is truncated") }
        } else {
            final = count < sealed.count
        }
        guard let opened = sealed.withUnsafeBytes({ cipher.open(UnsafeRawBufferPointer(rebasing: $0[..<count]), index: segment, final: final) }) else {
            throw failure("does not authenticate: a byte was changed, the file was cut or spliced, or it belongs to another key")
        }
        if final {
            finished = true
            var extra = [UInt8](repeating: 0, count: 1)
            if lastSegment == nil, try extra.withMutableBytes({ (buffer) throws(TenureError) in try inner.read(into: buffer) }) != 0 {
                throw failure("is followed by bytes that belong to no segment")
            }
        }
        segment += 1
        plain = opened
        position = 0
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        while position == plain.count {
            if finished { return 0 }
            try refill()
        }
        let count = min(buffer.count, plain.count - position)
        plain.withUnsafeBytes { source in
            buffer.baseAddress!.copyMemory(from: source.baseAddress! + position, byteCount: count)
        }
        position += count
        produced += Int64(count)
        return count
    }
}

/// Bytes already read, then the rest of a source.
final class PrefixedSource: ByteSource {
    private var prefix: [UInt8]
    private var offset = 0
    let rest: any ByteSource
    private var count: Int64 = 0

    init(prefix: [UInt8], rest: any ByteSource) {
        self.prefix = prefix
        self.rest = rest
    }

    var what: String { rest.what }
    var byteCount: Int64 { count }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        guard buffer.count > 0 else { return 0 }
        if offset < prefix.count {
            let take = min(buffer.count, prefix.count - offset)
            prefix.withUnsafeBytes { source in buffer.baseAddress!.copyMemory(from: source.baseAddress! + offset, byteCount: take) }
            offset += take
            count += Int64(take)
            return take
        }
        let read = try rest.read(into: buffer)
        count += Int64(read)
        return read
    }
}

/// `count` bytes of a source after skipping `skip`.
final class SliceSource: ByteSource {
    let inner: any ByteSource
    private var skip: Int64
    private var remaining: Int64
    private var count: Int64 = 0

    init(_ inner: any ByteSource, skip: Int64, count: Int64) {
        self.inner = inner
        self.skip = skip
        remaining = count
    }

    var what: String { inner.what }
    var byteCount: Int64 { count }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        var scratch = [UInt8](repeating: 0, count: 0)
        while skip > 0 {
            if scratch.isEmpty { scratch = [UInt8](repeating: 0, count: 64 << 10) }
            let want = Int(min(skip, Int64(scratch.count)))
            let read = try scratch.withMutableBytes { (raw) throws(TenureError) in
                try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[..<want]))
            }
            if read == 0 { return 0 }
            skip -= Int64(read)
        }
        guard remaining > 0, buffer.count > 0 else { return 0 }
        let want = Int(min(Int64(buffer.count), remaining))
        let read = try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<want]))
        remaining -= Int64(read)
        count += Int64(read)
        return read
    }
}
