import Foundation
import Testing
import TenureCore
import TenureEngine

/// A sink that keeps what is written, in memory.
final class MemorySink: ByteSink {
    var bytes: [UInt8] = []
    var finished = false
    func write(_ buffer: UnsafeRawBufferPointer) throws(TenureError) { bytes.append(contentsOf: buffer) }
    func finish() throws(TenureError) { finished = true }
    func abort() {}
}

/// A source over bytes in memory, handing out at most `step` bytes per read.
final class MemorySource: ByteSource {
    let bytes: [UInt8]
    let step: Int
    var offset = 0
    init(_ bytes: [UInt8], step: Int = 7919) {
        self.bytes = bytes
        self.step = step
    }
    var what: String { "memory" }
    var byteCount: Int64 { Int64(offset) }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TenureError) -> Int {
        let count = min(buffer.count, bytes.count - offset, step)
        guard count > 0 else { return 0 }
        bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: count) }
        offset += count
        return count
    }
}

func drain(_ source: any ByteSource) throws(TenureError) -> [UInt8] {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 5003)
    while true {
        let count = try buffer.withMutableBytes { (raw) throws(TenureError) in try source.read(into: raw) }
        if count == 0 { return out }
        out += buffer[0..<count]
    }
}

/// Sealed files (the backup store's and the upgrade results' at-rest format): round trips,
/// ranges, and every way a sealed file can be damaged.
@Suite struct SealedFileTests {
    let key = Ciphers.randomKey()
    let segment = 4096

    func seal(_ plain: [UInt8], key: [UInt8]? = nil) throws -> [UInt8] {
        let sink = MemorySink()
        let sealing = SealingSink(sink, dataKey: key ?? self.key, keyID: "dk_test", owner: "db_test", segmentBytes: segment)
        var offset = 0
        while offset < plain.count {
            let step = min(1000 + offset % 3000, plain.count - offset)
            try sealing.write(Array(plain[offset..<(offset + step)]))
            offset += step
        }
        try sealing.finish()
        #expect(sink.finished)
        return sink.bytes
    }

    func open(_ sealed: [UInt8]) throws(TenureError) -> [UInt8] {
        let lookup: SealedFile.KeyLookup = { (id, owner) throws(TenureError) in
            #expect(id == "dk_test" && owner == "db_test")
            return self.key
        }
        return try drain(try SealedFile.open(MemorySource(sealed), keys: lookup))
    }

    func random(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255) } }

    @Test(arguments: [0, 1, 4095, 4096, 4097, 8192, 20_000])
    func roundTripsAnyLength(count: Int) throws {
        let plain = random(count)
        let sealed = try seal(plain)
        #expect(Int64(sealed.count) == SealedFile.sealedSize(plain: Int64(count), segmentBytes: segment))
        #expect(try open(sealed) == plain)
        #expect(try SealedFile.plainSize(of: MemorySource(sealed), storedBytes: Int64(sealed.count)) == Int64(count))
        // Nothing of the plain bytes shows through.
        if count >= 64 {
            let window = Array(plain[20..<52])
            #expect(!sealed.indices.dropLast(31).contains { Array(sealed[$0..<($0 + 32)]) == window })
        }
    }

    @Test func rangesOpenOnlyTheirSegments() throws {
        let plain = random(20_000)
        let sealed = try seal(plain)
        for (first, count) in [(0, 1), (0, 20_000), (4095, 2), (4096, 4096), (5000, 9000), (19_999, 1), (12_288, 7712)] {
            var fetched: [(Int64, Int64?)] = []
            let source = try SealedFile.openRange(
                plainSize: 20_000, first: Int64(first), count: Int64(count), keys: { (_, _) throws(TenureError) in self.key }
            ) { (offset, length) throws(TenureError) in
                fetched.append((offset, length))
                let end = length.map { Int(offset + $0) } ?? sealed.count
                return MemorySource(Array(sealed[Int(offset)..<min(end, sealed.count)]))
            }
            #expect(try drain(source) == Array(plain[first..<(first + count)]), "range \(first)+\(count)")
            // The header, then whole segments from the first one the range touches.
            let start = fetched.last!.0
            #expect((start - 96) % Int64(segment + 16) == 0 && (start - 96) / Int64(segment + 16) == Int64(first / segment))
        }
    }

    @Test func damageIsAnErrorNamingTheSegment() throws {
        let plain = random(10_000)
        let sealed = try seal(plain)
        // One bit flipped in the second segment.
        var flipped = sealed
        flipped[96 + segment + 16 + 10] ^= 0x01
        #expect(throws: TenureError.self) { try open(flipped) }
        do {
            _ = try open(flipped)
        } catch {
            #expect(error.message.contains("segment 1") && error.message.contains("does not authenticate"), "\(error.message)")
        }
        // Cut at a segment boundary (the short last segment dropped): truncated.
        let cut = Array(sealed[0..<(96 + 2 * (segment + 16))])
        do {
            _ = try open(cut)
            Issue.record("a truncated file opened")
        } catch {
            #expect(error.message.contains("truncated") || error.message.contains("does not authenticate"), "\(error.message)")
        }
        // Bytes appended, segments swapped, another key: all refused.
        #expect(throws: TenureError.self) { try open(sealed + [0]) }
        var swapped = sealed
        let a = 96, b = 96 + segment + 16
        swapped.replaceSubrange(a..<b, with: sealed[b..<(b + segment + 16)])
        swapped.replaceSubrange(b..<(b + segment + 16), with: sealed[a..<b])
        #expect(throws: TenureError.self) { try open(swapped) }
        let other = try seal(plain, key: Ciphers.randomKey())
        #expect(throws: TenureError.self) { try open(other) }
        // A changed header (another owner named) no longer authenticates either.
        var renamed = sealed
        renamed[64] = UInt8(ascii: "x")
        #expect(throws: TenureError.self) {
            try drain(try SealedFile.open(MemorySource(renamed), keys: { (_, _) throws(TenureError) in self.key }))
        }
    }

    @Test func aPlainFileIsReadAsItIs() throws {
        let plain = Array("header.json and more: a file stored before sealing".utf8)
        #expect(try open(plain) == plain)
    }

    @Test func keyWrappingAndSignatures() throws {
        let master = Ciphers.randomKey()
        let wrapped = Ciphers.wrap(key, key: master, context: Array("dk_a\ndb_a".utf8))
        #expect(Ciphers.unwrap(wrapped, key: master, context: Array("dk_a\ndb_a".utf8)) == key)
        #expect(Ciphers.unwrap(wrapped, key: master, context: Array("dk_a\ndb_b".utf8)) == nil)
        #expect(Ciphers.unwrap(wrapped, key: Ciphers.randomKey(), context: Array("dk_a\ndb_a".utf8)) == nil)
        let signer = try SigningKey(seed: Ciphers.randomKey())
        let message = Array("{\"subject\":\"db_x\"}".utf8)
        let signature = signer.sign(message)
        #expect(SigningKey.verify(signature, of: message, publicKey: signer.publicKey))
        var changed = message
        changed[3] ^= 1
        #expect(!SigningKey.verify(signature, of: changed, publicKey: signer.publicKey))
        #expect(SigningKey.publicKey(pem: signer.publicKeyPEM) == signer.publicKey)
        // RFC 8032 test 1: the seed's public key and the empty message's signature.
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
        let rfc = try SigningKey(seed: seed)
        #expect(rfc.publicKey == hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"))
        #expect(
            rfc.sign([]) == hex(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"))
    }

    func hex(_ text: String) -> [UInt8] {
        stride(from: 0, to: text.count, by: 2).map { UInt8(text.dropFirst($0).prefix(2), radix: 16)! }
    }
}
