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
        let compressor = FrameCompressor(level: level)
        return try input.withBytes { (buffer) throws(TenureError) in try compressor.compress(buffer) }
    }

    /// Decompresses whole frames, refusing output larger than `maximumByteCount`.
    public static func decompressFrame(_ frame: [UInt8], maximumByteCount: Int) throws(TenureError) -> [UInt8] {
        var output: [UInt8] = []
        let decompressor = FrameDecompressor()
        _ = try frame.withBytes { (buffer) throws(TenureError) in
            try decompressor.decompress(buffer, maximumByteCount: maximumByteCount, what: "zstd frame") { output.append(contentsOf: $0) }
        }
        return output
    }
}

/// Compresses chunks into independent frames (content size and XXH64 content checksum
/// included), reusing one context. Thread: one thread at a time.
public final class FrameCompressor {
    private let context: OpaquePointer
    private var output: [UInt8] = []

    public init(level: Int32) {
        guard let context = ZSTD_createCCtx() else { fatalError("zstd: out of memory") }
        self.context = context
        ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1)
        ZSTD_CCtx_setParameter(context, ZSTD_c_contentSizeFlag, 1)
    }

    deinit { ZSTD_freeCCtx(context) }

    /// One frame holding `input`.
    public func compress(_ input: UnsafeRawBufferPointer) throws(TenureError) -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        if output.count < bound { output = [UInt8](repeating: 0, count: bound) }
        let written = output.withUnsafeMutableBytes { destination in
            ZSTD_compress2(context, destination.baseAddress, bound, input.baseAddress, input.count)
        }
        if ZSTD_isError(written) != 0 {
            throw TenureError(.internal, "zstd compression failed: \(String(cString: ZSTD_getErrorName(written)))")
        }
        return Array(output[0..<written])
    }
}

/// Decompresses a sequence of whole frames, checking each frame's end and checksum, and
/// refusing to produce more than a limit (a zip bomb stops at the limit, not at the disk).
public final class FrameDecompressor {
    private let context: OpaquePointer
    private let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 18, alignment: 16)

    public init() {
        guard let context = ZSTD_createDCtx() else { fatalError("zstd: out of memory") }
        self.context = context
    }

    deinit {
        ZSTD_freeDCtx(context)
        chunk.deallocate()
    }

    /// Feeds the decompressed bytes of `input` to `output` and returns their count.
    /// Throws `.invalidRequest` with `what` in the message for corrupt, truncated or oversized data.
    @discardableResult
    public func decompress(
        _ input: UnsafeRawBufferPointer, maximumByteCount: Int, what: String,
        output: (UnsafeRawBufferPointer) throws(TenureError) -> Void
    ) throws(TenureError) -> Int {
        ZSTD_DCtx_reset(context, ZSTD_reset_session_only)
        guard input.count > 0 else { throw TenureError(.invalidRequest, "\(what): empty, expected zstd frames") }
        // A frame that declares more than the limit is refused before any work.
        if let declared = Zstd.frameContentSize(input), declared > UInt64(maximumByteCount) {
            throw TenureError(.invalidRequest, "\(what): declares \(declared) bytes of content, past the limit of \(maximumByteCount) bytes")
        }
        var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var total = 0
        var frameEnded = false
        while true {
            let consumedBefore = source.pos
            var out = ZSTD_outBuffer(dst: chunk.baseAddress, size: chunk.count, pos: 0)
            let remaining = ZSTD_decompressStream(context, &out, &source)
            let produced = out.pos
            if ZSTD_isError(remaining) != 0 {
                throw TenureError(.invalidRequest, "\(what): corrupt zstd data (\(String(cString: ZSTD_getErrorName(remaining))))")
            }
            total += produced
            if total > maximumByteCount {
                throw TenureError(.invalidRequest, "\(what): decompresses past the limit of \(maximumByteCount) bytes")
            }
            if produced > 0 {
                try output(UnsafeRawBufferPointer(start: chunk.baseAddress, count: produced))
            }
            // 0 means a frame ended and was fully flushed; more input means another frame.
            if remaining == 0 && source.pos == source.size {
                frameEnded = true
                break
            }
            // No progress with all input given: the frame is cut short.
            if produced == 0 && source.pos == consumedBefore { break }
        }
        guard frameEnded else { throw TenureError(.invalidRequest, "\(what): truncated zstd frame (no frame end)") }
        return total
    }
}

extension Zstd {
    /// The content size a frame declares in its header, if it declares one.
    public static func frameContentSize(_ frame: UnsafeRawBufferPointer) -> UInt64? {
        let size = ZSTD_getFrameContentSize(frame.baseAddress, frame.count)
        // ZSTD_CONTENTSIZE_UNKNOWN (-1) and ZSTD_CONTENTSIZE_ERROR (-2)
        return size >= UInt64.max - 1 ? nil : size
    }
}


/// Decompresses a zstd stream (one or more frames) as it arrives, in pieces of any size.
/// `finish` fails unless the last frame ended, so a truncated stream is never taken whole.
public final class StreamDecompressor {
    private let context: OpaquePointer
    private let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 17, alignment: 16)
    /// True between frames (nothing fed yet, or the last frame ended).
    private var atFrameBoundary = true
    public private(set) var outputByteCount: Int64 = 0
    public let what: String

    public init(what: String) {
        guard let context = ZSTD_createDCtx() else { fatalError("zstd: out of memory") }
        self.context = context
        self.what = what
    }

    deinit {
        ZSTD_freeDCtx(context)
        chunk.deallocate()
    }

    /// Feeds compressed bytes; `output` receives the decompressed bytes they complete.
    public func feed(_ input: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) throws(TenureError) -> Void) throws(TenureError) {
        guard input.count > 0 else { return }
        var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        while true {
            var out = ZSTD_outBuffer(dst: chunk.baseAddress, size: chunk.count, pos: 0)
            let remaining = ZSTD_decompressStream(context, &out, &source)
            if ZSTD_isError(remaining) != 0 {
                throw TenureError(.invalidRequest, "\(what): corrupt zstd data (\(String(cString: ZSTD_getErrorName(remaining))))")
            }
            atFrameBoundary = remaining == 0
            if out.pos > 0 {
                outputByteCount += Int64(out.pos)
                try output(UnsafeRawBufferPointer(start: chunk.baseAddress, count: out.pos))
            }
            // All input consumed and the output buffer not full: nothing more to flush now.
            if source.pos == source.size && out.pos < out.size { break }
        }
    }

    /// The end of the compressed stream.
    public func finish() throws(TenureError) {
        guard atFrameBoundary else { throw TenureError(.invalidRequest, "\(what): truncated zstd stream (the last frame has no end)") }
    }
}
