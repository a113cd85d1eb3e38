/// XXH64 (xxHash, 64-bit), the checksum of archive members in the manifest. Streaming; the
/// same algorithm as `xxhsum -H1`, so a customer can check a member without Tenure.
public struct XXH64 {
    static let p1: UInt64 = 11_400_714_785_074_694_791
    static let p2: UInt64 = 14_029_467_366_897_019_727
    static let p3: UInt64 = 1_609_587_929_392_839_161
    static let p4: UInt64 = 9_650_029_242_287_828_579
    static let p5: UInt64 = 2_870_177_450_012_600_261

    private var v1: UInt64, v2: UInt64, v3: UInt64, v4: UInt64
    private var totalLength: UInt64 = 0
    private var buffer: [UInt8] = []
    private let seed: UInt64

    public init(seed: UInt64 = 0) {
        self.seed = seed
        v1 = seed &+ Self.p1 &+ Self.p2
        v2 = seed &+ Self.p2
        v3 = seed
        v4 = seed &- Self.p1
        buffer.reserveCapacity(32)
    }

    @inline(__always) static func round(_ accumulator: UInt64, _ input: UInt64) -> UInt64 {
        var value = accumulator &+ input &* p2
        value = (value << 31) | (value >> 33)
        return value &* p1
    }

    @inline(__always) static func merge(_ accumulator: UInt64, _ value: UInt64) -> UInt64 {
        let mixed = accumulator ^ round(0, value)
        return mixed &* p1 &+ p4
    }

    @inline(__always) static func read64(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt64 {
        UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        totalLength &+= UInt64(bytes.count)
        var offset = 0
        if !buffer.isEmpty {
            let take = min(32 - buffer.count, bytes.count)
            buffer.append(contentsOf: bytes[0..<take])
            offset = take
            if buffer.count < 32 { return }
            buffer.withUnsafeBytes { block in
                v1 = Self.round(v1, Self.read64(block, 0))
                v2 = Self.round(v2, Self.read64(block, 8))
                v3 = Self.round(v3, Self.read64(block, 16))
                v4 = Self.round(v4, Self.read64(block, 24))
            }
            buffer.removeAll(keepingCapacity: true)
        }
        var a = v1, b = v2, c = v3, d = v4
        while bytes.count - offset >= 32 {
            a = Self.round(a, Self.read64(bytes, offset))
            b = Self.round(b, Self.read64(bytes, offset + 8))
            c = Self.round(c, Self.read64(bytes, offset + 16))
            d = Self.round(d, Self.read64(bytes, offset + 24))
            offset += 32
        }
        v1 = a; v2 = b; v3 = c; v4 = d
        if offset < bytes.count { buffer.append(contentsOf: bytes[offset...]) }
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    public func digest() -> UInt64 {
        var hash: UInt64
        if totalLength >= 32 {
            hash = ((v1 << 1) | (v1 >> 63)) &+ ((v2 << 7) | (v2 >> 57)) &+ ((v3 << 12) | (v3 >> 52)) &+ ((v4 << 18) | (v4 >> 46))
            hash = Self.merge(hash, v1)
            hash = Self.merge(hash, v2)
            hash = Self.merge(hash, v3)
            hash = Self.merge(hash, v4)
        } else {
            hash = seed &+ Self.p5
        }
        hash &+= totalLength
        buffer.withUnsafeBytes { tail in
            var offset = 0
            while tail.count - offset >= 8 {
                let k = Self.round(0, Self.read64(tail, offset))
                hash ^= k
                hash = ((hash << 27) | (hash >> 37)) &* Self.p1 &+ Self.p4
                offset += 8
            }
            if tail.count - offset >= 4 {
                let word = UInt64(UInt32(littleEndian: tail.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
                hash ^= word &* Self.p1
                hash = ((hash << 23) | (hash >> 41)) &* Self.p2 &+ Self.p3
                offset += 4
            }
            while offset < tail.count {
                hash ^= UInt64(tail[offset]) &* Self.p5
                hash = ((hash << 11) | (hash >> 53)) &* Self.p1
                offset += 1
            }
        }
        hash ^= hash >> 33
        hash &*= Self.p2
        hash ^= hash >> 29
        hash &*= Self.p3
        hash ^= hash >> 32
        return hash
    }

    /// Lowercase hex, 16 digits, as `xxhsum -H1` prints it.
    public static func hex(_ value: UInt64) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: 16 - text.count) + text
    }

    public static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hasher = XXH64()
        hasher.update(bytes)
        return hasher.digest()
    }
}
