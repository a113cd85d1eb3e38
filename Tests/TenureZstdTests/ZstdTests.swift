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

@Suite struct FrameTests {
    @Test(arguments: [0, 1, 65_536, 1 << 18, (1 << 18) + 1, 1 << 20, (1 << 20) + 7, 3_200_000])
    func framesOfEverySizeRoundTrip(size: Int) throws {
        var generator = SystemRandomNumberGenerator()
        let input = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let compressor = FrameCompressor(level: 1)
        let frame = try input.withBytes { (buffer) throws(TenureError) in try compressor.compress(buffer) }
        var output: [UInt8] = []
        let decompressor = FrameDecompressor()
        let count = try frame.withBytes { (buffer) throws(TenureError) in
            try decompressor.decompress(buffer, maximumByteCount: 1 << 23, what: "test") { output.append(contentsOf: $0) }
        }
        #expect(count == size && output == input)
        #expect(frame.withUnsafeBytes { Zstd.frameContentSize($0) } == UInt64(size))
    }
}
