import Testing
import TenureCore
@testable import TenureZstd

@Suite struct ZstdTests {
    @Test func roundTripWithChecksum() throws {
        let input = Array((0..<200_000).map { UInt8(truncatingIfNeeded: $0 % 251) })
        let frame = try Zstd.compressFrame(input, level: 3)
        #expect(frame.count < input.count / 10)
        #expect(try Zstd.decompressFrame(frame, maximumByteCount: 1 << 20) == input)
    }

    @Test func corruptTruncatedAndBombFramesAreRefused() throws {
        let input = [UInt8](repeating: 7, count: 1 << 20)
        let frame = try Zstd.compressFrame(input)
        #expect(throws: TenureError.self) { try Zstd.decompressFrame(Array(frame.dropLast(3)), maximumByteCount: 1 << 21) }
        var flipped = frame
        flipped[flipped.count - 2] ^= 0xFF
        #expect(throws: TenureError.self) { try Zstd.decompressFrame(flipped, maximumByteCount: 1 << 21) }
        #expect(throws: TenureError.self) { try Zstd.decompressFrame(frame, maximumByteCount: 1 << 16) }
    }
}
