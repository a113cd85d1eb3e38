import CZlib
import TenureCore

/// zlib's inflate over a stream that arrives in pieces of any size: gzip (RFC 1952, one or
/// more members back to back, as `cat a.gz b.gz` makes) or raw deflate (RFC 1951, a zip
/// member). Thread: any, one at a time.
public final class Inflater {
    public enum Format: Sendable {
        /// A `.gz` file: members back to back; anything else after a member is an error.
        case gzip
        /// One raw deflate stream (a zip member): `feed` stops at its end and says how much
        /// of the input it used, so the caller reads on from there.
        case raw
    }

    private var stream = z_stream()
    private let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 17, alignment: 16)
    private let format: Format
    /// True when the last stream (or gzip member) ended and no other began.
    public private(set) var isFinished = false
    public private(set) var outputByteCount: Int64 = 0
    /// The CRC-32 of everything produced (the zip member's check value).
    public private(set) var crc32Value: UInt32 = 0
    public let what: String

    public init(_ format: Format, what: String) {
        self.format = format
        self.what = what
        let status = tenure_inflate_init(&stream, format == .gzip ? 15 + 16 : -15)
        precondition(status == Z_OK, "zlib: inflateInit2 failed (\(status))")
    }

    deinit {
        inflateEnd(&stream)
        chunk.deallocate()
    }

    /// Feeds compressed bytes; `output` receives what they decompress to. Returns how many
    /// input bytes were used: all of them, except for a raw stream that ended inside them.
    @discardableResult
    public func feed(_ input: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) throws(TenureError) -> Void) throws(TenureError) -> Int {
        guard input.count > 0 else { return 0 }
        var used = 0
        while used < input.count {
            if isFinished {
                // gzip: another member may follow; anything else is trailing garbage.
                guard format == .gzip else { return used }
                let rest = UnsafeRawBufferPointer(rebasing: input[used...])
                if rest.count >= 2 && (rest[0] != 0x1F || rest[1] != 0x8B) || rest.count == 1 && rest[0] != 0x1F {
                    throw TenureError(.invalidRequest, "\(what): bytes after the end of the gzip stream that are not another gzip member (trailing garbage)")
                }
                inflateReset(&stream)
                isFinished = false
            }
            stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress!.advanced(by: used).assumingMemoryBound(to: Bytef.self))
            stream.avail_in = UInt32(input.count - used)
            stream.next_out = chunk.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.avail_out = UInt32(chunk.count)
            let status = inflate(&stream, Z_NO_FLUSH)
            let consumed = (input.count - used) - Int(stream.avail_in)
            used += consumed
            let produced = chunk.count - Int(stream.avail_out)
            if produced > 0 {
                outputByteCount += Int64(produced)
                crc32Value = UInt32(crc32(uLong(crc32Value), chunk.baseAddress!.assumingMemoryBound(to: Bytef.self), UInt32(produced)))
                try output(UnsafeRawBufferPointer(start: chunk.baseAddress, count: produced))
            }
            switch status {
            case Z_STREAM_END:
                isFinished = true
            case Z_OK:
                break
            case Z_BUF_ERROR where consumed == 0 && produced == 0:
                return used
            default:
                let reason = stream.msg.map { String(cString: $0) } ?? "error \(status)"
                throw TenureError(.invalidRequest, "\(what): corrupt \(format == .gzip ? "gzip" : "deflate") data (\(reason))")
            }
        }
        return used
    }

    /// The end of the input: fails unless the stream ended, so a truncated file is never
    /// taken whole.
    public func finish() throws(TenureError) {
        guard isFinished else { throw TenureError(.invalidRequest, "\(what): truncated \(format == .gzip ? "gzip" : "deflate") stream (it has no end)") }
    }
}
