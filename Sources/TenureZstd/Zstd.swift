import CZstd
import TenureCore

/// Thin synchronous wrappers over libzstd. The engine (issue 4) builds its streaming
/// compressor on these; for now they give one-shot frames with a content checksum.
/// Thread: any; a context is used on one thread only.
public enum Zstd {
    /// The linked libzstd's version, e.g. "1.5.4".
    public static var libraryVersion: String { String(cString: ZSTD_versionString()) }

    /// Compresses `input` into one frame carrying its content size and checksum.
    public static func compressFrame(_ input: [UInt8], level: Int32 = 3) throws(TenureError) -> [UInt8] {
        guard let context = ZSTD_createCCtx() else { throw TenureError(.internal, "zstd: out of memory") }
        defer { ZSTD_freeCCtx(context) }
        ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1)
        var output = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let written = input.withUnsafeBytes { source in
            output.withUnsafeMutableBytes { destination in
                ZSTD_compress2(context, destination.baseAddress, destination.count, source.baseAddress, source.count)
            }
        }
        if ZSTD_isError(written) != 0 {
            throw TenureError(.internal, "zstd compression failed: \(String(cString: ZSTD_getErrorName(written)))")
        }
        output.removeSubrange(written...)
        return output
    }

    /// Decompresses one whole frame, refusing output larger than `maximumByteCount`.
    public static func decompressFrame(_ frame: [UInt8], maximumByteCount: Int) throws(TenureError) -> [UInt8] {
        guard let context = ZSTD_createDCtx() else { throw TenureError(.internal, "zstd: out of memory") }
        defer { ZSTD_freeDCtx(context) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 17)
        var finished = false
        var failure: TenureError?
        frame.withUnsafeBytes { (source: UnsafeRawBufferPointer) in
            var input = ZSTD_inBuffer(src: source.baseAddress, size: source.count, pos: 0)
            while true {
                let (remaining, produced): (Int, Int) = chunk.withUnsafeMutableBytes { destination in
                    var out = ZSTD_outBuffer(dst: destination.baseAddress, size: destination.count, pos: 0)
                    let result = ZSTD_decompressStream(context, &out, &input)
                    return (result, out.pos)
                }
                if ZSTD_isError(remaining) != 0 {
                    failure = TenureError(.invalidRequest, "zstd frame is corrupt: \(String(cString: ZSTD_getErrorName(remaining)))")
                    return
                }
                output.append(contentsOf: chunk[0..<produced])
                guard output.count <= maximumByteCount else {
                    failure = TenureError(.invalidRequest, "zstd frame decompresses past the limit of \(maximumByteCount) bytes")
                    return
                }
                if remaining == 0 {
                    finished = true
                    return
                }
                if input.pos == input.size && produced == 0 { return }
            }
        }
        if let failure { throw failure }
        guard finished else { throw TenureError(.invalidRequest, "zstd frame is truncated (no frame end)") }
        return output
    }
}
