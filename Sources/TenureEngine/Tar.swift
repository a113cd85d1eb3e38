import Foundation
import TenureCore

/// Writes POSIX ustar members. Sizes must be known before a member's bytes, so members are
/// bounded chunks held in memory by the caller.
public struct TarWriter {
    public static let blockSize = 512
    let sink: any ByteSink
    let modificationTime: Int

    public init(sink: any ByteSink, modificationTime: Int) {
        self.sink = sink
        self.modificationTime = modificationTime
    }

    public func writeMember(name: String, bytes: UnsafeRawBufferPointer) throws(TenureError) {
        precondition(name.utf8.count < 100 && !name.hasPrefix("/") && !name.contains(".."), "archive member name")
        var header = [UInt8](repeating: 0, count: Self.blockSize)
        func put(_ text: String, at offset: Int, width: Int) {
            for (index, byte) in text.utf8.prefix(width).enumerated() { header[offset + index] = byte }
        }
        func octal(_ value: Int, width: Int) -> String {
            let digits = String(value, radix: 8)
            return String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits
        }
        put(name, at: 0, width: 100)
        put(octal(0o644, width: 8), at: 100, width: 7)
        put(octal(0, width: 8), at: 108, width: 7)
        put(octal(0, width: 8), at: 116, width: 7)
        put(octal(bytes.count, width: 12), at: 124, width: 11)
        put(octal(modificationTime, width: 12), at: 136, width: 11)
        put("        ", at: 148, width: 8)
        header[156] = UInt8(ascii: "0")
        put("ustar", at: 257, width: 6)
        put("00", at: 263, width: 2)
        put("tenure", at: 265, width: 32)
        put("tenure", at: 297, width: 32)
        let checksum = header.reduce(0) { $0 + Int($1) }
        put(octal(checksum, width: 7), at: 148, width: 6)
        header[154] = 0
        header[155] = UInt8(ascii: " ")
        try sink.write(header)
        try sink.write(bytes)
        let padding = (Self.blockSize - bytes.count % Self.blockSize) % Self.blockSize
        if padding > 0 { try sink.write([UInt8](repeating: 0, count: padding)) }
    }

    public func writeMember(name: String, bytes: [UInt8]) throws(TenureError) {
        try bytes.withBytes { (buffer) throws(TenureError) in try writeMember(name: name, bytes: buffer) }
    }

    /// The end-of-archive marker: two zero blocks.
    public func writeEnd() throws(TenureError) {
        try sink.write([UInt8](repeating: 0, count: 2 * Self.blockSize))
    }
}

/// Reads ustar members strictly: header checksums, only regular files, only plain relative
/// names (no `..`, no absolute path, no link or device), sizes within a limit, and the
/// end-of-archive marker followed by nothing but zero padding. Member names are never used
/// as file paths.
public final class TarReader {
    public struct Member {
        public var name: String
        public var size: Int
        /// Offset of the member's header in the stream, for messages.
        public var offset: Int64
    }

    let source: any ByteSource
    let maximumMemberBytes: Int
    private var block = [UInt8](repeating: 0, count: TarWriter.blockSize)
    public private(set) var reachedEnd = false
    /// The last member read, to say where a truncation happened.
    private var lastName: String?

    private var position: String {
        lastName.map { "after member '\($0)'" } ?? "before its first member"
    }

    public init(source: any ByteSource, maximumMemberBytes: Int) {
        self.source = source
        self.maximumMemberBytes = maximumMemberBytes
    }

    /// The next member's header, or nil after a valid end-of-archive marker.
    public func next() throws(TenureError) -> Member? {
        let offset = source.byteCount
        guard try readBlock() else {
            throw TenureError(.invalidRequest, "archive is truncated \(position) (byte \(offset)): no further member and no end-of-archive marker")
        }
        if block.allSatisfy({ $0 == 0 }) {
            guard try readBlock(), block.allSatisfy({ $0 == 0 }) else {
                throw TenureError(.invalidRequest, "archive is truncated \(position) (byte \(offset)): incomplete end-of-archive marker")
            }
            // Anything after the marker must be zero padding (tar pads to 10 KiB records).
            var trailing = [UInt8](repeating: 0, count: 65_536)
            while true {
                let count = try trailing.withMutableBytes { (buffer) throws(TenureError) in try source.read(into: buffer) }
                if count == 0 { break }
                guard trailing[0..<count].allSatisfy({ $0 == 0 }) else {
                    throw TenureError(.invalidRequest, "archive has data after its end-of-archive marker (byte \(offset))")
                }
            }
            reachedEnd = true
            return nil
        }
        let stored = Self.parseOctal(block[148..<156])
        var sum = 0
        for (index, byte) in block.enumerated() { sum += (148..<156).contains(index) ? 32 : Int(byte) }
        guard let stored, stored == sum else {
            throw TenureError(.invalidRequest, "archive is corrupt at byte \(offset): bad tar header checksum")
        }
        guard block[257..<262].elementsEqual("ustar".utf8) else {
            throw TenureError(.invalidRequest, "archive is corrupt at byte \(offset): not a POSIX ustar header")
        }
        let nameBytes = block[0..<100].prefix { $0 != 0 }
        let prefixBytes = block[345..<500].prefix { $0 != 0 }
        let name = String(decoding: nameBytes, as: UTF8.self)
        let shown = printable(String(decoding: prefixBytes, as: UTF8.self) + name)
        let type = block[156]
        guard type == UInt8(ascii: "0") || type == 0 else {
            let kind: String
            switch type {
            case UInt8(ascii: "1"): kind = "a hard link"
            case UInt8(ascii: "2"): kind = "a symbolic link"
            case UInt8(ascii: "3"), UInt8(ascii: "4"): kind = "a device"
            case UInt8(ascii: "5"): kind = "a directory"
            case UInt8(ascii: "6"): kind = "a FIFO"
            default: kind = "of type '\(printable(String(decoding: [type], as: UTF8.self)))'"
            }
            throw TenureError(.invalidRequest, "archive member '\(shown)' is \(kind); only regular files are allowed")
        }
        guard prefixBytes.isEmpty, Self.isSafeName(name) else {
            throw TenureError(.invalidRequest, "archive member name '\(shown)' is not allowed (absolute, '..', or unexpected characters)")
        }
        guard let size = Self.parseOctal(block[124..<136]) else {
            throw TenureError(.invalidRequest, "archive member '\(shown)' has an unreadable size")
        }
        guard size <= maximumMemberBytes else {
            throw TenureError(.invalidRequest, "archive member '\(shown)' is \(size) bytes, more than the limit of \(maximumMemberBytes)")
        }
        lastName = name
        return Member(name: name, size: size, offset: offset)
    }

    /// Reads a member's content (and its padding).
    public func readContent(_ member: Member) throws(TenureError) -> [UInt8] {
        var content = [UInt8](repeating: 0, count: member.size)
        let count = try content.withMutableBytes { (buffer) throws(TenureError) in try source.readFully(into: buffer) }
        guard count == member.size else {
            throw TenureError(.invalidRequest, "archive is truncated inside member '\(member.name)' (\(count) of \(member.size) bytes)")
        }
        let padding = (TarWriter.blockSize - member.size % TarWriter.blockSize) % TarWriter.blockSize
        if padding > 0 {
            var pad = [UInt8](repeating: 0, count: padding)
            let read = try pad.withMutableBytes { (buffer) throws(TenureError) in try source.readFully(into: buffer) }
            guard read == padding else {
                throw TenureError(.invalidRequest, "archive is truncated after member '\(member.name)'")
            }
        }
        return content
    }

    private func readBlock() throws(TenureError) -> Bool {
        let count = try block.withMutableBytes { (buffer) throws(TenureError) in try source.readFully(into: buffer) }
        if count == 0 { return false }
        guard count == TarWriter.blockSize else {
            throw TenureError(.invalidRequest, "archive is truncated \(position) (byte \(source.byteCount)): a partial tar block")
        }
        return true
    }

    static func isSafeName(_ name: String) -> Bool {
        guard !name.isEmpty, !name.hasPrefix("/"), name.utf8.count < 100 else { return false }
        guard name.utf8.allSatisfy({ byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-")
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "/")
        }) else { return false }
        return !name.split(separator: "/", omittingEmptySubsequences: false).contains { $0 == ".." || $0 == "." || $0.isEmpty }
    }

    static func parseOctal(_ field: ArraySlice<UInt8>) -> Int? {
        var value = 0
        var sawDigit = false
        for byte in field {
            if byte == 0 || byte == UInt8(ascii: " ") {
                if sawDigit { break } else { continue }
            }
            guard (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(byte) else { return nil }
            value = value * 8 + Int(byte - UInt8(ascii: "0"))
            sawDigit = true
            if value > 1 << 40 { return nil }
        }
        return sawDigit ? value : nil
    }
}
