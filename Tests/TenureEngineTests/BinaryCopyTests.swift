import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

@testable import TenureEngine

/// The restore's COPY text to COPY binary conversion: exact where it converts, refusing
/// (so the part loads as text) wherever it is not sure.
@Suite struct BinaryCopyTests {
    func encode(_ columns: [BinaryColumn], _ text: String, chunk: Int = 1 << 20) -> [UInt8]? {
        var encoder = BinaryCopyEncoder(columns: columns)
        var bytes: [UInt8] = []
        let input = Array(text.utf8)
        var start = 0
        while start < input.count {
            let end = min(start + chunk, input.count)
            let ok = input[start..<end].withUnsafeBytes { encoder.feed($0) }
            guard ok else { return nil }
            encoder.take { bytes.append(contentsOf: $0) }
            start = end
        }
        guard encoder.finish() else { return nil }
        encoder.take { bytes.append(contentsOf: $0) }
        return bytes
    }

    /// The binary value of a one-column, one-row stream (after the 19-byte header and the
    /// field count, before the trailer).
    func value(_ column: BinaryColumn, _ text: String) -> [UInt8]? {
        guard let bytes = encode([column], text + "\n") else { return nil }
        return Array(bytes[21..<(bytes.count - 2)])
    }

    @Test func numericBecomesBase10000Digits() {
        // length 14: 3 digits; weight 1, positive, dscale 3; 1, 2345, 6780.
        #expect(value(.numeric, "12345.678") == [0, 0, 0, 14, 0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1A, 0x7C])
        // 1e-8: one digit (1) at weight -2, dscale 8.
        #expect(value(.numeric, "0.00000001") == [0, 0, 0, 10, 0, 1, 0xFF, 0xFE, 0, 0, 0, 8, 0, 1])
        // Zero keeps its scale and is never negative.
        #expect(value(.numeric, "-0.00") == [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2])
        #expect(value(.numeric, "-5") == [0, 0, 0, 10, 0, 1, 0, 0, 0x40, 0, 0, 0, 0, 5])
        #expect(value(.numeric, "NaN") == [0, 0, 0, 8, 0, 0, 0, 0, 0xC0, 0, 0, 0])
        #expect(value(.numeric, "1e5") == nil)
        #expect(value(.numeric, "1.") == nil)
    }

    @Test func datesAndTimestampsCountFrom2000() {
        #expect(value(.date, "2000-01-01") == [0, 0, 0, 4, 0, 0, 0, 0])
        #expect(value(.date, "1999-12-31") == [0, 0, 0, 4, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(value(.date, "infinity") == [0, 0, 0, 4, 0x7F, 0xFF, 0xFF, 0xFF])
        // 2000-01-01 01:00:00+01 is midnight UTC; half a second later, 500000 µs.
        #expect(value(.timestamptz, "2000-01-01 01:00:00.5+01") == [0, 0, 0, 8, 0, 0, 0, 0, 0, 0x07, 0xA1, 0x20])
        #expect(value(.timestamptz, "2000-01-01 00:00:00-00:00:01") == [0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0F, 0x42, 0x40])
        #expect(value(.timestamp, "2000-01-01 00:00:01") == [0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0F, 0x42, 0x40])
        // Left to the server: BC, 24:00, leap seconds, Feb 30, seven-digit years, no zone.
        for text in ["0044-03-15 BC", "2000-02-30", "5874897-12-31"] { #expect(value(.date, text) == nil, "\(text)") }
        for text in ["2000-01-01 24:00:00+00", "2016-12-31 23:59:60+00", "2000-01-01 00:00:00", "2000-01-01 00:00:00.1234567+00", "0044-03-15 12:00:00+00 BC"] {
            #expect(value(.timestamptz, text) == nil, "\(text)")
        }
    }

    @Test func escapesAndRowsAcrossChunks() {
        let columns: [BinaryColumn] = [.int4, .text, .bytea, .jsonb]
        let text = "1\ttab\\there\\\\N\t\\\\x00ff\t{\"a\": 1}\n2\t\\N\t\\N\t\\N\n3\t\\\\N\t\\\\x\t[]\n"
        let whole = encode(columns, text)
        #expect(whole != nil)
        for size in [1, 2, 3, 7, 13] { #expect(encode(columns, text, chunk: size) == whole, "chunks of \(size)") }
        // Row 1's text: "tab<TAB>here\\N" (a backslash and N, not a NULL).
        let expected: [UInt8] = Array("tab\there\\N".utf8)
        let bytes = whole!
        #expect(bytes[19..<21] == [0, 4])
        #expect(bytes[29..<33] == [0, 0, 0, UInt8(expected.count)])
        #expect(Array(bytes[33..<(33 + expected.count)]) == expected)
    }

    /// The fields of one encoded row (nil for NULL), read back from the binary stream.
    func fields(_ bytes: [UInt8]) -> [[UInt8]?] {
        var at = 19
        let count = Int(bytes[at]) << 8 | Int(bytes[at + 1])
        at += 2
        var result: [[UInt8]?] = []
        for _ in 0..<count {
            let length = bytes[at..<(at + 4)].reduce(0) { $0 << 8 | UInt32($1) }
            at += 4
            if length == 0xFFFF_FFFF {
                result.append(nil)
                continue
            }
            result.append(Array(bytes[at..<(at + Int(length))]))
            at += Int(length)
        }
        return result
    }

    /// Tabs and escapes at every offset of the eight-byte words the field scan reads.
    @Test func fieldEndsAtEveryOffset() throws {
        for first in 0...17 {
            for second in 0...17 {
                let a = String(repeating: "a", count: first)
                let b = String(repeating: "b", count: second)
                // Three text fields, the middle one escaped at its start, middle and end.
                let line = "\(a)\t\\t\(b)\\n\(a)\\\\\t\(b)\n"
                let bytes = try #require(encode([.text, .text, .text], line), "\(first), \(second)")
                #expect(fields(bytes) == [Array(a.utf8), Array("\t\(b)\n\(a)\\".utf8), Array(b.utf8)], "\(first), \(second)")
            }
        }
    }

    @Test func refusesWhatItDoesNotKnow() {
        #expect(encode([.text], "\\101\n") == nil, "octal escape")
        #expect(encode([.text], "\\x41\n") == nil, "hex escape")
        #expect(encode([.int4, .int4], "1\n") == nil, "too few fields")
        #expect(encode([.int4], "1\t2\n") == nil, "too many fields")
        #expect(encode([.int4], "\\.\n") == nil, "end-of-data marker")
        #expect(encode([.int4], "1") == nil, "unfinished row")
        #expect(encode([.int2], "40000\n") == nil, "out of range")
        #expect(encode([.int8], "9223372036854775808\n") == nil, "out of range")
        #expect(encode([.bytea], "\\\\001\n") == nil, "escape-format bytea")
        #expect(encode([.bytea], "a\\\\x00\n") == nil, "bytea text not starting with its escape")
        #expect(encode([.bytea], "a\\x00\n") == nil, "a hex escape of COPY inside bytea text")
        #expect(encode([.bytea], "\\\\x00\\\\\n") == nil, "an escape after the hex digits")
        #expect(encode([.bool], "true\n") == nil)
        #expect(encode([.uuid], "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}\n") == nil)
        #expect(encode([.float8], "1e999\n") == nil, "overflow: the server decides")
    }

    @Test func arraysBecomeDimensionsFlagsAndElements() {
        let int4s = BinaryColumn.array(of: .int4, elementType: 23)!
        // Length 28: one dimension, has nulls, element type 23; 2 elements from 1; 7, NULL.
        #expect(
            value(int4s, "{7,NULL}") == [
                0, 0, 0, 32, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 23, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 7, 0xFF, 0xFF, 0xFF, 0xFF,
            ])
        #expect(value(int4s, "{}") == [0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23])
        // Quoted text elements lose their quotes and escapes; "NULL" quoted is a string.
        let texts = BinaryColumn.array(of: .text, elementType: 25)!
        let quoted = value(texts, #"{"a\\\\\\"b","NULL",c}"#)  // COPY doubles the array's backslashes
        #expect(quoted.map { Array($0[24...]) } == [0, 0, 0, 4] + Array(#"a\"b"#.utf8) + [0, 0, 0, 4] + Array("NULL".utf8) + [0, 0, 0, 1, 0x63])
        // Left to the server: several dimensions, other bounds, spaces, a null spelled otherwise.
        for text in ["{{1,2},{3,4}}", "[0:1]={1,2}", "{1, 2}", "{null}", "{1,}", "{,1}", "{1", "{\"1}", "{1\"}"] {
            #expect(value(int4s, text) == nil, "\(text)")
        }
    }

    @Test func catalogKindsFollowDomainsEnumsAndArrays() {
        func type(_ kind: String, base: UInt32 = 0, element: UInt32 = 0, range: UInt32 = 0, _ functions: String?) -> BinaryColumn.CatalogType {
            BinaryColumn.CatalogType(kind: kind, baseType: base, elementType: element, rangeSubtype: range, functions: functions)
        }
        let catalog: [UInt32: BinaryColumn.CatalogType] = [
            23: type("b", "int4in/int4recv"), 1007: type("b", element: 23, "array_in/array_recv"),
            9000: type("d", base: 23, "domain_in/domain_recv"), 9001: type("d", base: 9000, "domain_in/domain_recv"),
            9002: type("e", "enum_in/enum_recv"), 9003: type("b", element: 9001, "array_in/array_recv"),
            9004: type("b", "textin/textrecv"), 9005: type("b", "hstore_in/hstore_recv"), 9006: type("b", element: 1007, "array_in/array_recv"),
            9007: type("b", nil), 9008: type("d", base: 9008, "domain_in/domain_recv"), 9009: type("b", element: 9005, "array_in/array_recv"),
            9010: type("r", range: 9000, "range_in/range_recv"), 9011: type("r", range: 9005, "range_in/range_recv"),
            9012: type("r", "range_in/range_recv"),
        ]
        #expect(BinaryColumn.resolve(9001, in: catalog) == .int4)
        #expect(BinaryColumn.resolve(9002, in: catalog) == .text)
        #expect(BinaryColumn.resolve(9003, in: catalog) == .array(of: .int4, elementType: 9001))
        #expect(BinaryColumn.resolve(9004, in: catalog) == .text)
        #expect(BinaryColumn.resolve(9010, in: catalog) == .range(element: UInt8(BinaryColumn.scalars.firstIndex(of: .int4)!)))
        for unknown: UInt32 in [9005, 9006, 9007, 9008, 9009, 9011, 9012, 12345] { #expect(BinaryColumn.resolve(unknown, in: catalog) == nil, "\(unknown)") }
    }

    /// Every row the server writes for the binary-loadable types converts, and loading the
    /// conversion stores exactly what loading the text stores.
    @Test func timesIntervalsAndAddressesBecomeTheirBinaryForms() {
        #expect(value(.time, "00:00:01") == [0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0F, 0x42, 0x40])
        #expect(value(.time, "24:00:00") == [0, 0, 0, 8, 0, 0, 0, 0x14, 0x1D, 0xD7, 0x60, 0x00])
        // A time with zone: the zone in seconds west of Greenwich (+02 is -7200).
        #expect(value(.timetz, "00:00:01+02") == [0, 0, 0, 12, 0, 0, 0, 0, 0, 0x0F, 0x42, 0x40, 0xFF, 0xFF, 0xE3, 0xE0])
        // 10 months, 3 days, -1.5 s.
        #expect(
            value(.interval, "1 year -2 mons +3 days -00:00:01.5")
                == [0, 0, 0, 16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xE9, 0x1C, 0xA0, 0, 0, 0, 3, 0, 0, 0, 10])
        #expect(value(.interval, "00:00:00") == [0, 0, 0, 16] + [UInt8](repeating: 0, count: 16))
        #expect(value(.inet, "10.0.0.1/8") == [0, 0, 0, 8, 2, 8, 0, 4, 10, 0, 0, 1])
        #expect(value(.inet, "::1") == [0, 0, 0, 20, 3, 128, 0, 16] + [UInt8](repeating: 0, count: 15) + [1])
        #expect(value(.macaddr, "08:00:2b:01:02:03") == [0, 0, 0, 6, 8, 0, 0x2B, 1, 2, 3])
        #expect(value(.oid, "4294967295") == [0, 0, 0, 4, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(value(.char, "") == [0, 0, 0, 1, 0])
        #expect(value(.char, "\\\\310") == [0, 0, 0, 1, 0xC8])
        // Left to the server: past midnight, other interval styles, fields out of order or
        // twice, only unsigned fields after a leading minus (another style reads them as negative),
        // overflow, bad masks, other spellings.
        for text in ["24:00:00.000001", "25:00:00", "1:00:00", "00:00"] { #expect(value(.time, text) == nil, "\(text)") }
        #expect(value(.timetz, "00:00:00+16") == nil)
        for text in [
            "P1D", "@ 1 day", "1-2", "1 day 2 days", "1 day 1 year", "-1 years 3 days", "-1 days 00:00:01", "1 day ", "1 days ago", "2562047788:00:54.775808",
            "1 day 00:00", "",
        ] {
            #expect(value(.interval, text) == nil, "\(text)")
        }
        for text in ["10.0.0.1/33", "10.0.0/8", "1.2.3.4/", "::g", "010.0.0.1", "1.2.3.4/8/8"] { #expect(value(.inet, text) == nil, "\(text)") }
        for text in ["08-00-2b-01-02-03", "08002b010203", "08:00:2b:01:02:0g"] { #expect(value(.macaddr, text) == nil, "\(text)") }
        for text in ["4294967296", "-1", "+1"] { #expect(value(.oid, text) == nil, "\(text)") }
        for text in ["ab", "\\\\400"] { #expect(value(.char, text) == nil, "\(text)") }
    }

    @Test func rangesAndBitStringsBecomeFlagsBoundsAndBits() {
        let int4Range = BinaryColumn.range(element: UInt8(BinaryColumn.scalars.firstIndex(of: .int4)!))
        // [1,10): lower inclusive (0x02), then two int4 bounds.
        #expect(value(int4Range, "[1,10)") == [0, 0, 0, 17, 0x02, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 10])
        #expect(value(int4Range, "empty") == [0, 0, 0, 1, 0x01])
        // (,5]: lower infinite (0x08), upper inclusive (0x04).
        #expect(value(int4Range, "(,5]") == [0, 0, 0, 9, 0x0C, 0, 0, 0, 4, 0, 0, 0, 5])
        #expect(value(int4Range, "(,)") == [0, 0, 0, 1, 0x18])
        let timestampRange = BinaryColumn.range(element: UInt8(BinaryColumn.scalars.firstIndex(of: .timestamp)!))
        #expect(value(timestampRange, #"["2000-01-01 00:00:01",)"#) == [0, 0, 0, 13, 0x12, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0F, 0x42, 0x40])
        for text in ["[1,2", "1,2)", "[1,2,3)", "[1 ,2)", #"["1""",2)"#, #"[""1"",2)"#, "[a,2)", "EMPTY", #"["",2)"#] {
            #expect(value(int4Range, text) == nil, "\(text)")
        }
        #expect(value(.bit, "10100000") == [0, 0, 0, 5, 0, 0, 0, 8, 0xA0])
        #expect(value(.bit, "101") == [0, 0, 0, 5, 0, 0, 0, 3, 0xA0])
        #expect(value(.bit, "") == [0, 0, 0, 4, 0, 0, 0, 0])
        for text in ["102", "1 0", "x"] { #expect(value(.bit, text) == nil, "\(text)") }
    }

    @Test func shapesBecomeTheirFloats() {
        func float(_ value: Double) -> [UInt8] { withUnsafeBytes(of: value.bitPattern.bigEndian) { Array($0) } }
        #expect(value(.point, "(1.5,-0)") == [0, 0, 0, 16] + float(1.5) + float(-0.0))
        #expect(value(.box, "(3,4),(1,2)") == [0, 0, 0, 32] + float(3) + float(4) + float(1) + float(2))
        #expect(value(.lseg, "[(1,2),(3,4)]") == [0, 0, 0, 32] + float(1) + float(2) + float(3) + float(4))
        #expect(value(.line, "{1,2,3}") == [0, 0, 0, 24] + float(1) + float(2) + float(3))
        #expect(value(.circle, "<(1,2),3>") == [0, 0, 0, 24] + float(1) + float(2) + float(3))
        // A path: closed flag, point count, points; a polygon: count, points.
        #expect(value(.path, "[(1,2)]") == [0, 0, 0, 21, 0, 0, 0, 0, 1] + float(1) + float(2))
        #expect(value(.path, "((1,2),(3,4))") == [0, 0, 0, 37, 1, 0, 0, 0, 2] + float(1) + float(2) + float(3) + float(4))
        #expect(value(.polygon, "((1,2))") == [0, 0, 0, 20, 0, 0, 0, 1] + float(1) + float(2))
        #expect(value(.lsn, "16/B374D848") == [0, 0, 0, 8, 0, 0, 0, 0x16, 0xB3, 0x74, 0xD8, 0x48])
        // Box arrays separate their elements with semicolons: left to the server.
        #expect(BinaryColumn.array(of: .box, elementType: 603) == nil)
        #expect(BinaryColumn.array(of: .point, elementType: 600) != nil)
        for (kind, text) in [
            (BinaryColumn.point, "(1,2"), (.point, "1,2"), (.point, "(1, 2)"), (.point, "(1,2,3)"), (.box, "(1,2)"), (.lseg, "((1,2),(3,4))"),
            (.line, "{0,0,1}"), (.circle, "<(1,2),-3>"), (.path, "((1,2)]"), (.polygon, "[(1,2)]"), (.path, "()"), (.lsn, "16B374D848"),
            (.lsn, "1/123456789"), (.lsn, "/1"),
        ] {
            #expect(value(kind, text) == nil, "\(kind) \(text)")
        }
    }

    @Test func textSearchVectorsBecomeLexemesAndPositions() {
        // Two lexemes: "a" with positions 1 (weight A: 3 << 14) and 2, then "it's" with none.
        #expect(
            value(.tsvector, "'a':1A,2 'it''s'")
                == [0, 0, 0, 19, 0, 0, 0, 2, 0x61, 0, 0, 2, 0xC0, 0x01, 0x00, 0x02, 0x69, 0x74, 0x27, 0x73, 0, 0, 0])
        #expect(value(.tsvector, "") == [0, 0, 0, 4, 0, 0, 0, 0])
        // COPY doubles the doubled backslash again.
        #expect(value(.tsvector, "'b\\\\\\\\s'") == [0, 0, 0, 10, 0, 0, 0, 1, 0x62, 0x5C, 0x73, 0, 0, 0])
        for text in ["a", "'a'  'b'", "'a':0", "'a':2,1", "'a':16384", "'a':1D", "'a", "''", "'a':", "'a' "] {
            #expect(value(.tsvector, text) == nil, "\(text)")
        }
    }

    @Test(arguments: ["binary_types", "binary_more", "binary_extra", "binary_ranges", "binary_shapes", "binary_search"])
    func binaryLoadStoresWhatTextLoadStores(_ table: String) throws {
        let server = try TestServer.shared()
        let database = try createHardCases(server)
        let connection = try server.connect(database: database)
        defer { connection.close() }
        try prepareSession(connection)
        let oids = try connection.query(
            "SELECT atttypid::int8 FROM pg_attribute WHERE attrelid = 'public.\(table)'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ).rows.map { UInt32($0[0]!)! }
        let catalog = try BinaryColumn.catalog(for: Set(oids), on: connection)
        let columns = try oids.map { try #require(BinaryColumn.resolve($0, in: catalog), "type \($0)") }
        var text: [UInt8] = []
        let rows = try connection.copyOut("COPY public.\(table) TO STDOUT") { text.append(contentsOf: $0) }
        #expect(rows > 2000)
        for (index, size) in [1 << 20, 4093].enumerated() {
            let binary = try #require(encode(columns, String(decoding: text, as: UTF8.self), chunk: size))
            try connection.execute("CREATE TABLE public.binary_copy_\(index) (LIKE public.\(table))")
            try connection.beginCopyIn("COPY public.binary_copy_\(index) FROM STDIN (FORMAT binary)")
            try binary.withBytes { (bytes) throws(TenureError) in try connection.copyData(bytes) }
            #expect(try connection.endCopy() == rows)
        }
        try connection.execute("CREATE TABLE public.text_copy (LIKE public.\(table))")
        try connection.beginCopyIn("COPY public.text_copy FROM STDIN")
        try text.withBytes { (bytes) throws(TenureError) in try connection.copyData(bytes) }
        #expect(try connection.endCopy() == rows)
        func digest(_ name: String) throws -> String? {
            try connection.query("SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM public.\(name) t").rows.first?[0] ?? nil
        }
        let expected = try digest(table)
        #expect(expected != nil)
        #expect(try digest("text_copy") == expected)
        #expect(try digest("binary_copy_0") == expected)
        #expect(try digest("binary_copy_1") == expected)
        // Byte-identical storage, not only equal text.
        let same = try connection.query(
            "SELECT count(*) FROM public.binary_copy_0 b JOIN public.text_copy t USING (id) WHERE row(b.*)::text IS DISTINCT FROM row(t.*)::text OR pg_column_size(b.*) <> pg_column_size(t.*)"
        )
        #expect(same.rows == [["0"]])
        // Multi-dimensional arrays and other lower bounds go the text way.
        var fallback: [UInt8] = []
        _ = try connection.copyOut("COPY public.array_fallback TO STDOUT") { fallback.append(contentsOf: $0) }
        let kinds = [BinaryColumn.int4, .array(of: .int4, elementType: 23)!]
        for line in String(decoding: fallback, as: UTF8.self).split(separator: "\n") {
            #expect((encode(kinds, line + "\n") == nil) == !line.hasPrefix("3\t"), "\(line)")
        }
    }
}
