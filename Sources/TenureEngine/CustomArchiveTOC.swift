import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The table of contents of a pg_dump custom-format archive file, read for planning a
/// parallel upload only: which entries are table data, how many bytes each one's data takes
/// in the file (the distance to the next data block, as `pg_restore -j` measures it), and the
/// pre-data's tables and their dependencies. What runs always comes from `pg_restore`'s own
/// rendering; an archive this reader does not understand (another archive version, data
/// written without offsets by a pg_dump writing to a pipe) is simply not planned: `read`
/// answers nil and the upload runs as one stream.
///
/// Layout read (pg_backup_archiver.c `ReadHead`/`ReadToc`, pg_backup_custom.c
/// `_ReadExtraToc`; archive versions 1.11 to 1.14, pg_dump 9.0 to 15): integers are a sign
/// byte and `intSize` little-endian bytes, strings an integer length (-1 for none) and the
/// bytes, offsets a state byte and `offSize` little-endian bytes.
struct CustomArchiveTOC {
    struct Entry: Sendable {
        let dumpID: Int
        let desc: String
        let namespace: String
        let tag: String
        /// pg_dump's section: 1 none, 2 pre-data, 3 data, 4 post-data.
        let section: Int
        let dependencies: [Int]
        /// Where the entry's data block starts, when pg_dump recorded it.
        let dataOffset: Int64?
        /// Bytes of the file up to the next data block (0 without data).
        var dataBytes: Int64 = 0
    }

    static let dataSection = 3
    static let postDataSection = 4

    let entries: [Entry]
    /// Whether every entry with data has its offset (pg_dump wrote to a seekable file).
    let hasDataOffsets: Bool

    private struct Unreadable: Error {}

    /// The table of contents of the archive at `path`, or nil when it is not a custom-format
    /// archive of a version this reader knows.
    static func read(path: String) -> CustomArchiveTOC? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var status = stat()
        guard fstat(fileno(file), &status) == 0 else { return nil }
        return try? parse(Reader(file), fileSize: Int64(status.st_size))
    }

    private final class Reader {
        let file: UnsafeMutablePointer<FILE>
        var intSize = 4
        var offSize = 8

        init(_ file: UnsafeMutablePointer<FILE>) { self.file = file }

        func byte() throws(Unreadable) -> Int {
            let value = getc(file)
            guard value != EOF else { throw Unreadable() }
            return Int(value)
        }

        func int() throws(Unreadable) -> Int {
            let negative = try byte() != 0
            var value = 0
            for index in 0..<intSize { value |= try byte() << (8 * index) }
            return negative ? -value : value
        }

        /// A string of up to `limit` bytes; nil for pg_dump's "no string".
        func string(limit: Int = 1 << 20) throws(Unreadable) -> String? {
            let length = try int()
            guard length >= 0 else { return nil }
            guard length <= limit else { throw Unreadable() }
            var bytes = [UInt8](repeating: 0, count: length)
            guard length == 0 || fread(&bytes, 1, length, file) == length else { throw Unreadable() }
            return String(decoding: bytes, as: UTF8.self)
        }

        /// Passes over a string of any length (statements pg_restore renders; not needed here).
        func skipString() throws(Unreadable) {
            let length = try int()
            guard length > 0 else { return }
            guard fseeko(file, off_t(length), SEEK_CUR) == 0 else { throw Unreadable() }
        }
    }

    private static func parse(_ reader: Reader, fileSize: Int64) throws(Unreadable) -> CustomArchiveTOC {
        var magic = [UInt8](repeating: 0, count: 5)
        guard fread(&magic, 1, 5, reader.file) == 5, magic == Array("PGDMP".utf8) else { throw Unreadable() }
        let major = try reader.byte()
        let minor = try reader.byte()
        _ = try reader.byte()  // revision
        guard major == 1, (11...14).contains(minor) else { throw Unreadable() }
        reader.intSize = try reader.byte()
        reader.offSize = try reader.byte()
        guard (1...8).contains(reader.intSize), (1...8).contains(reader.offSize), try reader.byte() == 1 else { throw Unreadable() }
        _ = try reader.int()  // compression level
        for _ in 0..<7 { _ = try reader.int() }  // creation time
        _ = try reader.string()  // database name
        _ = try reader.string()  // server version
        _ = try reader.string()  // pg_dump version
        let count = try reader.int()
        guard (0...10_000_000).contains(count) else { throw Unreadable() }
        var entries: [Entry] = []
        entries.reserveCapacity(count)
        var hasDataOffsets = true
        for _ in 0..<count {
            let dumpID = try reader.int()
            guard dumpID > 0 else { throw Unreadable() }
            let hadDumper = try reader.int() != 0
            _ = try reader.string()  // table oid
            _ = try reader.string()  // oid
            let tag = try reader.string() ?? ""
            let desc = try reader.string() ?? ""
            let section = try reader.int()
            try reader.skipString()  // definition
            try reader.skipString()  // drop statement
            try reader.skipString()  // COPY statement
            let namespace = try reader.string() ?? ""
            _ = try reader.string()  // tablespace
            if minor >= 14 { _ = try reader.string() }  // table access method
            _ = try reader.string()  // owner
            _ = try reader.string()  // "false": WITH OIDS
            var dependencies: [Int] = []
            while let dependency = try reader.string(limit: 32) {
                guard let id = Int(dependency) else { throw Unreadable() }
                dependencies.append(id)
            }
            let state = try reader.byte()
            var offset: Int64 = 0
            for index in 0..<reader.offSize { offset |= Int64(try reader.byte()) << (8 * index) }
            switch state {
            case 2: break  // position set
            case 1: if hadDumper { hasDataOffsets = false }  // position not set
            case 3: break  // no data
            default: throw Unreadable()
            }
            entries.append(
                Entry(
                    dumpID: dumpID, desc: desc, namespace: namespace, tag: tag, section: section, dependencies: dependencies,
                    dataOffset: state == 2 ? offset : nil))
        }
        // Each data block runs to the next one (or to the end of the file).
        let withData = entries.indices.filter { entries[$0].dataOffset != nil }.sorted { entries[$0].dataOffset! < entries[$1].dataOffset! }
        for (position, index) in withData.enumerated() {
            let end = position + 1 < withData.count ? entries[withData[position + 1]].dataOffset! : fileSize
            entries[index].dataBytes = max(0, end - entries[index].dataOffset!)
        }
        return CustomArchiveTOC(entries: entries, hasDataOffsets: hasDataOffsets)
    }
}
