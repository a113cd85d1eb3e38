import Foundation
import TenureCore
import TenurePQ

/// The column types whose COPY text the restore converts to COPY's binary format itself.
/// Parsing text in the server (line and field splitting, `numeric_in`, the date-time parser)
/// is most of a restore's CPU; the binary input functions skip it. Every other type keeps
/// its table on the text path.
enum BinaryColumn: Equatable, Sendable {
    case bool, int2, int4, int8, float4, float8, numeric, text, bytea, date, timestamp, timestamptz, json, jsonb, uuid
    case time, timetz, interval, inet, macaddr, macaddr8, oid, char, bit, lsn, tsvector
    case point, box, lseg, line, circle, path, polygon
    /// A one-dimensional array (lower bound 1, or empty) of a scalar kind, `element` being
    /// its index in `scalars` (a plain value: the encoder's list of columns then needs no
    /// reference counting in its row loop); `elementType` is the array type's element type
    /// OID, which `array_recv` checks. Made by `array(of:elementType:)`.
    case array(element: UInt8, elementType: UInt32)
    /// A range of a scalar kind (`element` as for arrays); the server knows the range's type.
    case range(element: UInt8)

    static let scalars: [BinaryColumn] = [
        .bool, .int2, .int4, .int8, .float4, .float8, .numeric, .text, .bytea, .date, .timestamp, .timestamptz, .json, .jsonb, .uuid,
        .time, .timetz, .interval, .inet, .macaddr, .macaddr8, .oid, .char, .bit, .lsn, .tsvector,
        .point, .box, .lseg, .line, .circle, .path, .polygon,
    ]

    /// An array of `element`, nil unless it is one of the scalar kinds. Not of boxes: their
    /// arrays separate elements with `;` (the type's `typdelim`), not the commas `encodeArray` reads.
    static func array(of element: BinaryColumn, elementType: UInt32) -> BinaryColumn? {
        guard element != .box else { return nil }
        return scalars.firstIndex(of: element).map { .array(element: UInt8($0), elementType: elementType) }
    }

    /// The scalar kinds by their type's input and receive functions (both built into the
    /// server): the receive function, given what the encoder writes, stores exactly what the
    /// input function stores from the COPY text. Matching functions rather than type OIDs
    /// also covers types that reuse them: `varchar` and `bpchar` (the typmod is applied by
    /// either function alike), enums (both look the label up), and extension types such as
    /// citext, whose I/O functions are text's.
    static let byFunctions: [String: BinaryColumn] = [
        "boolin/boolrecv": .bool, "int2in/int2recv": .int2, "int4in/int4recv": .int4, "int8in/int8recv": .int8,
        "float4in/float4recv": .float4, "float8in/float8recv": .float8, "numeric_in/numeric_recv": .numeric,
        "textin/textrecv": .text, "varcharin/varcharrecv": .text, "bpcharin/bpcharrecv": .text, "enum_in/enum_recv": .text,
        "byteain/bytearecv": .bytea, "date_in/date_recv": .date, "timestamp_in/timestamp_recv": .timestamp,
        "timestamptz_in/timestamptz_recv": .timestamptz, "json_in/json_recv": .json, "jsonb_in/jsonb_recv": .jsonb,
        "uuid_in/uuid_recv": .uuid, "time_in/time_recv": .time, "timetz_in/timetz_recv": .timetz,
        "interval_in/interval_recv": .interval, "inet_in/inet_recv": .inet, "cidr_in/cidr_recv": .inet,
        "macaddr_in/macaddr_recv": .macaddr, "macaddr8_in/macaddr8_recv": .macaddr8, "oidin/oidrecv": .oid, "charin/charrecv": .char,
        "namein/namerecv": .text, "bit_in/bit_recv": .bit, "varbit_in/varbit_recv": .bit, "pg_lsn_in/pg_lsn_recv": .lsn, "tsvectorin/tsvectorrecv": .tsvector,
        "point_in/point_recv": .point, "box_in/box_recv": .box, "lseg_in/lseg_recv": .lseg, "line_in/line_recv": .line,
        "circle_in/circle_recv": .circle, "path_in/path_recv": .path, "poly_in/poly_recv": .polygon,
    ]

    /// What the catalog says of one type, as `resolve` reads it.
    struct CatalogType: Sendable {
        /// `pg_type.typtype`: b(ase), d(omain), e(num), ...
        var kind: String
        var baseType: UInt32
        var elementType: UInt32
        /// A range type's subtype (`pg_range.rngsubtype`), else 0.
        var rangeSubtype: UInt32 = 0
        /// "input/receive" (`prosrc` of both) when both are built-in (`LANGUAGE internal`).
        var functions: String?
    }

    /// The binary kind of type `oid`: a domain loads as its base type (`domain_recv` and
    /// `domain_in` both check the domain's constraints), an array of a scalar kind as
    /// `.array`, a range of one as `.range`; nil for anything else.
    static func resolve(_ oid: UInt32, in catalog: [UInt32: CatalogType], depth: Int = 0) -> BinaryColumn? {
        guard depth < 16, let type = catalog[oid] else { return nil }
        if type.kind == "d" { return resolve(type.baseType, in: catalog, depth: depth + 1) }
        guard let functions = type.functions else { return nil }
        if functions == "array_in/array_recv" {
            guard type.elementType != 0, let element = resolve(type.elementType, in: catalog, depth: depth + 1) else { return nil }
            return array(of: element, elementType: type.elementType)
        }
        if functions == "range_in/range_recv" {
            guard type.rangeSubtype != 0, let element = resolve(type.rangeSubtype, in: catalog, depth: depth + 1),
                let index = scalars.firstIndex(of: element)
            else { return nil }
            return .range(element: UInt8(index))
        }
        return byFunctions[functions]
    }

    /// The catalog rows `resolve` needs for `oids` (and the base, element and range subtypes
    /// they lead to), read from the database being loaded.
    static func catalog(for oids: Set<UInt32>, on connection: PostgresConnection) throws(TenureError) -> [UInt32: CatalogType] {
        guard !oids.isEmpty else { return [:] }
        let result = try connection.query(
            """
            WITH RECURSIVE needed(oid) AS (
                SELECT pg_catalog.unnest($1::pg_catalog.oid[])
                UNION
                SELECT v.next FROM needed n JOIN pg_catalog.pg_type t ON t.oid = n.oid,
                    LATERAL (VALUES (t.typbasetype), (t.typelem),
                        (coalesce((SELECT g.rngsubtype FROM pg_catalog.pg_range g WHERE g.rngtypid = t.oid), 0))) v(next)
                WHERE v.next <> 0
            )
            SELECT t.oid::pg_catalog.int8, t.typtype::pg_catalog.text, t.typbasetype::pg_catalog.int8, t.typelem::pg_catalog.int8,
                CASE WHEN i.prolang = 12 AND r.prolang = 12 THEN i.prosrc || '/' || r.prosrc END, g.rngsubtype::pg_catalog.int8
            FROM needed n
            JOIN pg_catalog.pg_type t ON t.oid = n.oid
            JOIN pg_catalog.pg_proc i ON i.oid = t.typinput
            LEFT JOIN pg_catalog.pg_proc r ON r.oid = t.typreceive
            LEFT JOIN pg_catalog.pg_range g ON g.rngtypid = t.oid
            """, ["{" + oids.sorted().map(String.init).joined(separator: ",") + "}"])
        var catalog: [UInt32: CatalogType] = [:]
        for row in result.rows {
            guard let oid = row[0].flatMap({ UInt32($0) }), let kind = row[1] else { continue }
            catalog[oid] = CatalogType(
                kind: kind, baseType: row[2].flatMap { UInt32($0) } ?? 0, elementType: row[3].flatMap { UInt32($0) } ?? 0,
                rangeSubtype: row[5].flatMap { UInt32($0) } ?? 0, functions: row[4])
        }
        return catalog
    }

    /// The binary kinds of `columns` (by name, in COPY order) from the table's column type
    /// OIDs by name; nil unless every column has one.
    static func plan(_ columns: [String], types: [String: UInt32], catalog: [UInt32: CatalogType]) -> [BinaryColumn]? {
        let binary = columns.compactMap { types[$0].flatMap { resolve($0, in: catalog) } }
        return binary.count == columns.count ? binary : nil
    }

    /// Whether a field of this kind may hold COPY's backslash escapes (undone before the
    /// value is converted).
    var takesEscapedText: Bool {
        switch self {
        case .text, .json, .jsonb, .array, .char, .tsvector: true
        default: false
        }
    }
}

/// Converts a table's COPY text rows into COPY binary rows, byte for byte the values the
/// server's text input would have stored. It accepts only the canonical text each type's
/// output function writes (ISO dates, `\x` bytea, COPY's own escapes); on anything else
/// `feed` returns false and the caller loads the part as text instead, so an unusual value
/// is never guessed at: the server's own parser decides it (and reports it, if it is bad).
struct BinaryCopyEncoder: ~Copyable {
    /// The columns' types, where the row loop reads them without reference counting.
    private let kinds: UnsafeMutableBufferPointer<BinaryColumn>
    /// Finished binary rows, handed out by `take`.
    private(set) var output: ByteBuffer
    /// The start of a row whose end is in the next chunk.
    private var carry: ByteBuffer
    /// One field with COPY's escapes undone.
    private var field: ByteBuffer
    /// One quoted array element with the array's escapes undone.
    private var element: ByteBuffer
    private(set) var rows = 0

    init(columns: [BinaryColumn]) {
        kinds = .allocate(capacity: columns.count)
        _ = kinds.initialize(from: columns)
        output = ByteBuffer(capacity: 1 << 20)
        carry = ByteBuffer(capacity: 1 << 16)
        field = ByteBuffer(capacity: 1 << 12)
        element = ByteBuffer(capacity: 1 << 10)
        // Signature, flags, header-extension length.
        output.append(contentsOf: [0x50, 0x47, 0x43, 0x4F, 0x50, 0x59, 0x0A, 0xFF, 0x0D, 0x0A, 0x00])
        output.appendBigEndian(UInt32(0))
        output.appendBigEndian(UInt32(0))
    }

    deinit { kinds.deallocate() }

    /// Converts the complete rows in `chunk` (keeping a partial last row for the next call).
    /// False: a value this encoder does not convert; the part must go the text way.
    mutating func feed(_ chunk: UnsafeRawBufferPointer) -> Bool {
        guard let base = chunk.baseAddress?.assumingMemoryBound(to: UInt8.self), chunk.count > 0 else { return true }
        var start = 0
        let end = chunk.count
        if carry.count > 0 {
            guard let newline = memchr(base, 0x0A, end).map({ UnsafePointer($0.assumingMemoryBound(to: UInt8.self)) - base }) else {
                carry.append(base, count: end)
                return true
            }
            carry.append(base, count: newline)
            let ok = encodeRow(carry.start, carry.count)
            carry.removeAll()
            guard ok else { return false }
            start = newline + 1
        }
        while start < end {
            guard let found = memchr(base + start, 0x0A, end - start) else {
                carry.append(base + start, count: end - start)
                return true
            }
            let newline = UnsafePointer(found.assumingMemoryBound(to: UInt8.self)) - base
            guard encodeRow(base + start, newline - start) else { return false }
            start = newline + 1
        }
        return true
    }

    /// Ends the stream: the trailer after the last row. False if a row was left unfinished.
    mutating func finish() -> Bool {
        guard carry.count == 0 else { return false }
        output.appendBigEndian(UInt16(0xFFFF))
        return true
    }

    /// Hands the converted bytes to `body` and empties the output.
    mutating func take<E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> Void) throws(E) {
        guard output.count > 0 else { return }
        try output.withRawBytes(body)
        output.removeAll()
    }

    private mutating func encodeRow(_ line: UnsafePointer<UInt8>, _ length: Int) -> Bool {
        // "\." alone ends COPY text data; leave such an oddity to the server.
        if length == 2 && line[0] == 0x5C && line[1] == 0x2E { return false }
        let count = kinds.count
        guard count > 0 else { return false }
        // Room for the whole row, so no value grows the buffer: a field's binary form is at
        // most its text plus 16 bytes (length word included; see `encodeValue`), save a short
        // IPv6 address (`::1`, 24 bytes) and geometric values (`(0,0),(0,0)`, 36 bytes), for
        // which the appends' own checks make room.
        output.reserve(2 + count * 20 + length)
        output.appendBigEndian(UInt16(count))
        var position = 0
        for index in 0..<count {
            let column = kinds[index]
            // The field's end (a tab, or the line's end) and whether it holds an escape.
            var cursor = position
            var escaped = false
            while true {
                if cursor + 8 <= length {
                    // Eight bytes at a time; the lowest flagged byte is the first tab or backslash.
                    let word = UInt64(littleEndian: UnsafeRawPointer(line + cursor).loadUnaligned(as: UInt64.self))
                    let found = zeroBytes(word ^ 0x0909_0909_0909_0909) | zeroBytes(word ^ 0x5C5C_5C5C_5C5C_5C5C)
                    if found == 0 {
                        cursor += 8
                        continue
                    }
                    cursor += found.trailingZeroBitCount >> 3
                } else {
                    while cursor < length && line[cursor] != 0x09 && line[cursor] != 0x5C { cursor += 1 }
                    if cursor >= length { break }
                }
                if line[cursor] == 0x09 { break }
                escaped = true
                cursor += 2  // the backslash and the byte it escapes
            }
            if cursor > length { return false }  // a backslash ending the line
            let isLast = index == count - 1
            if isLast ? cursor != length : cursor >= length { return false }  // field count differs
            let start = line + position
            let size = cursor - position
            position = cursor + 1
            if size == 2 && start[0] == 0x5C && start[1] == 0x4E {  // \N
                output.appendBigEndian(UInt32(0xFFFF_FFFF))
                continue
            }
            if !escaped {
                guard encodeValue(column, start, size) else { return false }
            } else if case .bytea = column {
                // `\\x` then hex digits: the value `\x...` once its one escape is undone (any
                // other escape decodes to a byte that is not a hex digit, refused either way).
                guard size >= 2, start[0] == 0x5C, start[1] == 0x5C, encodeValue(.bytea, start + 1, size - 1) else { return false }
            } else {
                guard column.takesEscapedText, unescape(start, size),
                    encodeValue(column, field.start, field.count)
                else { return false }
            }
        }
        rows += 1
        return true
    }

    /// COPY TO's escapes (`\\ \b \f \n \r \t \v`) into `field`; any other escape: false.
    private mutating func unescape(_ start: UnsafePointer<UInt8>, _ count: Int) -> Bool {
        field.removeAll()
        field.reserve(count)
        var index = 0
        while index < count {
            let byte = start[index]
            if byte != 0x5C {
                field.appendUnchecked(byte)
                index += 1
                continue
            }
            guard index + 1 < count else { return false }
            let decoded: UInt8
            switch start[index + 1] {
            case 0x5C: decoded = 0x5C
            case UInt8(ascii: "b"): decoded = 0x08
            case UInt8(ascii: "f"): decoded = 0x0C
            case UInt8(ascii: "n"): decoded = 0x0A
            case UInt8(ascii: "r"): decoded = 0x0D
            case UInt8(ascii: "t"): decoded = 0x09
            case UInt8(ascii: "v"): decoded = 0x0B
            default: return false
            }
            field.appendUnchecked(decoded)
            index += 2
        }
        return true
    }

    /// One non-NULL value: its length word and binary form.
    private mutating func encodeValue(_ column: BinaryColumn, _ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        switch column {
        case .text, .json:
            output.appendBigEndian(UInt32(n))
            output.append(p, count: n)
        case .jsonb:
            output.appendBigEndian(UInt32(n + 1))
            output.appendBigEndian(UInt8(1))
            output.append(p, count: n)
        case .bool:
            guard n == 1, p[0] == UInt8(ascii: "t") || p[0] == UInt8(ascii: "f") else { return false }
            output.appendBigEndian(UInt32(1))
            output.appendBigEndian(UInt8(p[0] == UInt8(ascii: "t") ? 1 : 0))
        case .int2:
            guard let value = TextValues.integer(p, n), let narrow = Int16(exactly: value) else { return false }
            output.appendBigEndian(UInt32(2))
            output.appendBigEndian(UInt16(bitPattern: narrow))
        case .int4:
            guard let value = TextValues.integer(p, n), let narrow = Int32(exactly: value) else { return false }
            output.appendBigEndian(UInt32(4))
            output.appendBigEndian(UInt32(bitPattern: narrow))
        case .int8:
            guard let value = TextValues.integer(p, n) else { return false }
            output.appendBigEndian(UInt32(8))
            output.appendBigEndian(UInt64(bitPattern: value))
        case .float4:
            guard let value = TextValues.double(p, n, single: true) else { return false }
            output.appendBigEndian(UInt32(4))
            output.appendBigEndian(Float(value).bitPattern)
        case .float8:
            guard let value = TextValues.double(p, n, single: false) else { return false }
            output.appendBigEndian(UInt32(8))
            output.appendBigEndian(value.bitPattern)
        case .numeric:
            return TextValues.numeric(p, n, into: &output)
        case .bytea:
            guard n >= 2, n % 2 == 0, p[0] == 0x5C, p[1] == UInt8(ascii: "x") else { return false }
            let count = (n - 2) / 2
            output.appendBigEndian(UInt32(count))
            let values = hexValues
            let decoded = output.append(count) { target in
                var bad: UInt8 = 0
                for index in 0..<count {
                    let high = values[Int(p[2 + 2 * index])]
                    let low = values[Int(p[3 + 2 * index])]
                    bad |= high | low
                    target[index] = high << 4 | low
                }
                return bad & 0xF0 == 0
            }
            guard decoded else { return false }
        case .uuid:
            guard n == 36 else { return false }
            output.appendBigEndian(UInt32(16))
            output.reserve(16)
            let values = hexValues
            var index = 0
            while index < 36 {
                if index == 8 || index == 13 || index == 18 || index == 23 {
                    guard p[index] == UInt8(ascii: "-") else { return false }
                    index += 1
                    continue
                }
                let high = values[Int(p[index])]
                let low = values[Int(p[index + 1])]
                guard (high | low) & 0xF0 == 0 else { return false }
                output.appendUnchecked(high << 4 | low)
                index += 2
            }
        case .date:
            let days: Int32
            if TextValues.matches(p, n, "infinity") {
                days = Int32.max
            } else if TextValues.matches(p, n, "-infinity") {
                days = Int32.min
            } else {
                guard let (value, used) = TextValues.date(p, n), used == n else { return false }
                days = Int32(value)
            }
            output.appendBigEndian(UInt32(4))
            output.appendBigEndian(UInt32(bitPattern: days))
        case .timestamp:
            guard let micros = TextValues.timestamp(p, n, zoned: false) else { return false }
            output.appendBigEndian(UInt32(8))
            output.appendBigEndian(UInt64(bitPattern: micros))
        case .timestamptz:
            guard let micros = TextValues.timestamp(p, n, zoned: true) else { return false }
            output.appendBigEndian(UInt32(8))
            output.appendBigEndian(UInt64(bitPattern: micros))
        case .time:
            guard let clock = TextValues.clock(p, n, from: 0), clock.end == n else { return false }
            let micros = Int64(clock.hours * 3600 + clock.seconds) * 1_000_000 + Int64(clock.micros)
            guard micros <= 86_400_000_000 else { return false }  // 24:00:00 is the largest time
            output.appendBigEndian(UInt32(8))
            output.appendBigEndian(UInt64(bitPattern: micros))
        case .timetz:
            guard let clock = TextValues.clock(p, n, from: 0), clock.hours < 24 || (clock.hours == 24 && clock.seconds == 0 && clock.micros == 0),
                let offset = TextValues.zone(p, n, from: clock.end), abs(offset) < 16 * 3600
            else { return false }
            output.appendBigEndian(UInt32(12))
            output.appendBigEndian(UInt64(Int64(clock.hours * 3600 + clock.seconds) * 1_000_000 + Int64(clock.micros)))
            // The zone is stored in seconds west of Greenwich: `+02` is -7200.
            output.appendBigEndian(UInt32(bitPattern: Int32(-offset)))
        case .interval:
            guard let value = TextValues.interval(p, n) else { return false }
            output.appendBigEndian(UInt32(16))
            output.appendBigEndian(UInt64(bitPattern: value.micros))
            output.appendBigEndian(UInt32(bitPattern: value.days))
            output.appendBigEndian(UInt32(bitPattern: value.months))
        case .inet:
            return TextValues.inet(p, n, into: &output)
        case .macaddr:
            return TextValues.macaddr(p, n, bytes: 6, into: &output)
        case .macaddr8:
            return TextValues.macaddr(p, n, bytes: 8, into: &output)
        case .oid:
            guard n > 0, p[0] != UInt8(ascii: "-"), let value = TextValues.integer(p, n), value <= Int64(UInt32.max) else { return false }
            output.appendBigEndian(UInt32(4))
            output.appendBigEndian(UInt32(value))
        case .char:
            // `charout` writes a byte with the high bit set as `\ooo`, no byte as nothing.
            let byte: UInt8
            if n == 0 {
                byte = 0
            } else if n == 1, p[0] < 0x80 {
                byte = p[0]
            } else if n == 4, p[0] == 0x5C, p[1] &- 0x30 < 4, p[2] &- 0x30 < 8, p[3] &- 0x30 < 8 {
                byte = (p[1] - 0x30) << 6 | (p[2] - 0x30) << 3 | (p[3] - 0x30)
            } else {
                return false
            }
            output.appendBigEndian(UInt32(1))
            output.appendBigEndian(byte)
        case .bit:
            // `0101…`: the length in bits, then the bits from the high end of each byte.
            guard n <= 1 << 24 else { return false }
            output.appendBigEndian(UInt32(4 + (n + 7) / 8))
            output.appendBigEndian(UInt32(n))
            return output.append((n + 7) / 8) { target in
                var bad: UInt8 = 0
                for byteIndex in 0..<(n + 7) / 8 {
                    var byte: UInt8 = 0
                    for bit in 0..<8 {
                        let at = byteIndex * 8 + bit
                        guard at < n else { break }
                        let digit = p[at] &- 0x30
                        bad |= digit
                        byte |= (digit & 1) << (7 - bit)
                    }
                    target[byteIndex] = byte
                }
                return bad <= 1
            }
        case .lsn:
            // `XXXXXXXX/XXXXXXXX`: the high and low halves in hex.
            guard let slash = (0..<n).first(where: { p[$0] == UInt8(ascii: "/") }), (1...8).contains(slash), (1...8).contains(n - slash - 1),
                let high = TextValues.hex(p, slash), let low = TextValues.hex(p + slash + 1, n - slash - 1)
            else { return false }
            output.appendBigEndian(UInt32(8))
            output.appendBigEndian(high << 32 | low)
        case .point, .box, .lseg, .line, .circle, .path, .polygon:
            return TextValues.geometry(column, p, n, into: &output)
        case .tsvector:
            return TextValues.tsvector(p, n, into: &output)
        case .array(let element, let elementType):
            return encodeArray(BinaryColumn.scalars[Int(element)], elementType: elementType, p, n)
        case .range(let element):
            return encodeRange(BinaryColumn.scalars[Int(element)], p, n)
        }
        return true
    }

    /// A range's text as `range_out` writes it (`empty`, `[1,10)`, `(,"2026-01-01 00:00:00+00"]`)
    /// as `range_recv` reads it: flags, then each finite bound in its element's binary form.
    /// A quoted bound holding a quote or backslash (never so for the built-in ranges'
    /// numbers, dates and timestamps): false.
    private mutating func encodeRange(_ kind: BinaryColumn, _ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        if TextValues.matches(p, n, "empty") {
            output.appendBigEndian(UInt32(1))
            output.appendBigEndian(UInt8(0x01))
            return true
        }
        guard n >= 3, p[0] == UInt8(ascii: "[") || p[0] == UInt8(ascii: "("), p[n - 1] == UInt8(ascii: "]") || p[n - 1] == UInt8(ascii: ")")
        else { return false }
        let close = n - 1
        /// The bound at `start`: quoted (holding no quote or backslash) or bare (holding none
        /// of the characters `range_out` would quote), empty for an infinite bound; its text
        /// and the index after it, where the comma or the closing bracket must follow.
        func bound(at start: Int, lower: Bool) -> (text: Range<Int>?, end: Int)? {
            if start < close && p[start] == UInt8(ascii: "\"") {
                var index = start + 1
                while index < close && p[index] != UInt8(ascii: "\"") {
                    if p[index] == 0x5C { return nil }
                    index += 1
                }
                guard index < close else { return nil }
                return (start + 1..<index, index + 1)
            }
            var index = start
            while index < close && !(lower && p[index] == UInt8(ascii: ",")) {
                switch p[index] {
                case UInt8(ascii: "\""), 0x5C, UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: ","), 0x20, 0x09,
                    0x0A, 0x0B, 0x0C, 0x0D:
                    return nil
                default: index += 1
                }
            }
            return (index > start ? start..<index : nil, index)
        }
        guard let lower = bound(at: 1, lower: true), lower.end < close, p[lower.end] == UInt8(ascii: ","),
            let upper = bound(at: lower.end + 1, lower: false), upper.end == close
        else { return false }
        var flags: UInt8 = 0
        if p[0] == UInt8(ascii: "[") { flags |= 0x02 }
        if p[close] == UInt8(ascii: "]") { flags |= 0x04 }
        if lower.text == nil { flags |= 0x08 }
        if upper.text == nil { flags |= 0x10 }
        let lengthAt = output.count
        output.appendBigEndian(UInt32(0))  // the value's length, set at the end
        output.appendBigEndian(flags)
        if let text = lower.text, !encodeValue(kind, p + text.lowerBound, text.count) { return false }
        if let text = upper.text, !encodeValue(kind, p + text.lowerBound, text.count) { return false }
        output.storeBigEndian(UInt32(output.count - lengthAt - 4), at: lengthAt)
        return true
    }

    /// An array's text as `array_out` writes it for one dimension with lower bound 1 (`{}`,
    /// or `{a,"b c",NULL}`: elements quoted when they need it, `"` and `\` escaped inside
    /// quotes) as `array_recv` reads it: dimensions, a has-nulls flag, the element type, then
    /// each element in its own binary form. Anything else (several dimensions, bounds other
    /// than 1, white space, an unquoted escape, a NULL spelled otherwise): false.
    private mutating func encodeArray(_ kind: BinaryColumn, elementType: UInt32, _ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        guard n >= 2, p[0] == UInt8(ascii: "{"), p[n - 1] == UInt8(ascii: "}") else { return false }
        let lengthAt = output.count
        output.appendBigEndian(UInt32(0))  // the value's length, set at the end
        if n == 2 {
            // `{}`: no dimensions.
            output.appendBigEndian(UInt32(0))
            output.appendBigEndian(UInt32(0))
            output.appendBigEndian(elementType)
            output.storeBigEndian(UInt32(12), at: lengthAt)
            return true
        }
        output.appendBigEndian(UInt32(1))
        let flagsAt = output.count
        output.appendBigEndian(UInt32(0))
        output.appendBigEndian(elementType)
        let countAt = output.count
        output.appendBigEndian(UInt32(0))
        output.appendBigEndian(UInt32(1))  // lower bound
        let end = n - 1  // the closing brace
        var index = 1
        var count: UInt32 = 0
        var hasNull = false
        while true {
            guard index < end else { return false }  // an empty element
            if p[index] == UInt8(ascii: "\"") {
                element.removeAll()
                index += 1
                while true {
                    guard index < end else { return false }
                    let byte = p[index]
                    if byte == UInt8(ascii: "\"") { break }
                    if byte == 0x5C {
                        guard index + 1 < end else { return false }
                        element.append(p + index + 1, count: 1)
                        index += 2
                    } else {
                        element.append(p + index, count: 1)
                        index += 1
                    }
                }
                index += 1
                guard encodeValue(kind, element.start, element.count) else { return false }
            } else {
                let start = index
                while index < end && p[index] != UInt8(ascii: ",") {
                    switch p[index] {
                    case UInt8(ascii: "\""), 0x5C, UInt8(ascii: "{"), UInt8(ascii: "}"), 0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D: return false
                    default: index += 1
                    }
                }
                let size = index - start
                guard size > 0 else { return false }
                if size == 4 && (p[start] | 0x20) == UInt8(ascii: "n") && (p[start + 1] | 0x20) == UInt8(ascii: "u")
                    && (p[start + 2] | 0x20) == UInt8(ascii: "l") && (p[start + 3] | 0x20) == UInt8(ascii: "l")
                {
                    // array_in reads an unquoted NULL in any case as a null element; array_out
                    // writes it in capitals only.
                    guard TextValues.matches(p + start, 4, "NULL") else { return false }
                    output.appendBigEndian(UInt32(0xFFFF_FFFF))
                    hasNull = true
                } else {
                    guard encodeValue(kind, p + start, size) else { return false }
                }
            }
            count += 1
            if index == end { break }
            guard p[index] == UInt8(ascii: ",") else { return false }
            index += 1
        }
        output.storeBigEndian(UInt32(hasNull ? 1 : 0), at: flagsAt)
        output.storeBigEndian(count, at: countAt)
        output.storeBigEndian(UInt32(output.count - lengthAt - 4), at: lengthAt)
        return true
    }
}

/// The high bit of each zero byte of `x` set (bits above the lowest zero byte may be set
/// falsely, so only the lowest flag is exact): with `x = word ^ pattern`, the first byte of
/// a little-endian word equal to the pattern's byte is `trailingZeroBitCount / 8`.
@inline(__always) func zeroBytes(_ x: UInt64) -> UInt64 {
    (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080
}

/// Each byte's hex digit value, 0xFF for a byte that is not a hex digit.
/// Written once at first use, read-only after.
nonisolated(unsafe) let hexValues: UnsafePointer<UInt8> = {
    let table = UnsafeMutablePointer<UInt8>.allocate(capacity: 256)
    for byte in 0..<256 { table[byte] = TextValues.hexDigit(UInt8(byte)) ?? 0xFF }
    return UnsafePointer(table)
}()

/// Parsers for the text the server's output functions write, strict: nil for anything else.
enum TextValues {
    static func hexDigit(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: byte - 0x30
        case 0x61...0x66: byte - 0x61 + 10
        case 0x41...0x46: byte - 0x41 + 10
        default: nil
        }
    }

    static func matches(_ p: UnsafePointer<UInt8>, _ n: Int, _ word: StaticString) -> Bool {
        guard n == word.utf8CodeUnitCount else { return false }
        return memcmp(p, word.utf8Start, n) == 0
    }

    /// `-?[0-9]+` within Int64.
    static func integer(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int64? {
        var index = 0
        let negative = n > 0 && p[0] == UInt8(ascii: "-")
        if negative { index = 1 }
        guard index < n, n - index <= 19 else { return nil }
        var value: Int64 = 0
        if n - index <= 18 {
            // At most 18 digits: no overflow possible.
            while index < n {
                let digit = p[index] &- 0x30
                guard digit < 10 else { return nil }
                value = value &* 10 &+ Int64(digit)
                index += 1
            }
            return negative ? -value : value
        }
        while index < n {
            let digit = p[index] &- 0x30
            guard digit < 10 else { return nil }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (next, overflow2) = negative ? times.subtractingReportingOverflow(Int64(digit)) : times.addingReportingOverflow(Int64(digit))
            guard !overflow1, !overflow2 else { return nil }
            value = next
            index += 1
        }
        return value
    }

    /// A float as `float4out`/`float8out` write it, read by the C library's `strtod`/`strtof`
    /// as `float8in`/`float4in` read it; out of range: nil (the server decides).
    static func double(_ p: UnsafePointer<UInt8>, _ n: Int, single: Bool) -> Double? {
        if matches(p, n, "NaN") { return .nan }
        if matches(p, n, "Infinity") { return .infinity }
        if matches(p, n, "-Infinity") { return -.infinity }
        guard n > 0, n < 64 else { return nil }
        for index in 0..<n {
            switch p[index] {
            case 0x30...0x39, UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): continue
            default: return nil
            }
        }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { buffer -> Double? in
            let text = buffer.baseAddress!
            UnsafeMutableRawPointer(text).copyMemory(from: p, byteCount: n)
            text[n] = 0
            var end: UnsafeMutablePointer<CChar>?
            errno = 0
            let value = single ? Double(strtof(text, &end)) : strtod(text, &end)
            guard errno == 0, end == text + n, value.isFinite else { return nil }
            return value
        }
    }

    /// `numeric_out`'s text as the binary form `numeric_recv` reads: base-10000 digits.
    static func numeric(_ p: UnsafePointer<UInt8>, _ n: Int, into output: inout ByteBuffer) -> Bool {
        var sign: UInt16 = 0x0000
        if matches(p, n, "NaN") { sign = 0xC000 } else if matches(p, n, "Infinity") { sign = 0xD000 } else if matches(p, n, "-Infinity") { sign = 0xF000 }
        if sign != 0 {
            output.appendBigEndian(UInt32(8))
            output.appendBigEndian(UInt16(0))
            output.appendBigEndian(UInt16(0))
            output.appendBigEndian(sign)
            output.appendBigEndian(UInt16(0))
            return true
        }
        var index = 0
        if n > 0 && p[0] == UInt8(ascii: "-") {
            sign = 0x4000
            index = 1
        }
        let integerStart = index
        while index < n, p[index] &- 0x30 < 10 { index += 1 }
        let integerEnd = index
        var fractionStart = index
        var fractionEnd = index
        if index < n {
            guard p[index] == UInt8(ascii: "."), index + 1 < n else { return false }
            fractionStart = index + 1
            index += 1
            while index < n, p[index] &- 0x30 < 10 { index += 1 }
            fractionEnd = index
        }
        let integerDigits = integerEnd - integerStart
        let scale = fractionEnd - fractionStart
        guard index == n, integerDigits > 0, integerDigits <= 131_072, scale <= 0x3FFF else { return false }
        // Decimal digits grouped by 4 from the decimal point: the integer part left-padded,
        // the fraction right-padded; zero groups at either end are not stored.
        let integerGroups = (integerDigits + 3) / 4
        let total = integerGroups + (scale + 3) / 4
        return withUnsafeTemporaryAllocation(of: UInt16.self, capacity: total) { groups -> Bool in
            var g = 0
            var at = integerStart
            var width = integerDigits - (integerGroups - 1) * 4  // the first group's digits
            while at < integerEnd {
                var value = 0
                for k in 0..<width { value = value &* 10 &+ Int(p[at + k] &- 0x30) }
                groups[g] = UInt16(truncatingIfNeeded: value)
                g += 1
                at += width
                width = 4
            }
            at = fractionStart
            while at < fractionEnd {
                var value = 0
                for k in 0..<4 { value = value &* 10 &+ (at + k < fractionEnd ? Int(p[at + k] &- 0x30) : 0) }
                groups[g] = UInt16(truncatingIfNeeded: value)
                g += 1
                at += 4
            }
            var first = 0
            var last = total - 1
            while first <= last, groups[first] == 0 { first += 1 }
            while last >= first, groups[last] == 0 { last -= 1 }
            let count = first <= last ? last - first + 1 : 0
            let weight = count == 0 ? 0 : integerGroups - 1 - first
            output.appendBigEndian(UInt32(8 + 2 * count))
            output.appendBigEndian(UInt16(count))
            output.appendBigEndian(UInt16(bitPattern: Int16(weight)))
            output.appendBigEndian(count == 0 ? 0 : sign)
            output.appendBigEndian(UInt16(scale))
            if count > 0 { for i in first...last { output.appendBigEndian(groups[i]) } }
            return true
        }
    }

    /// `julianDay(year: 2000, month: 1, day: 1)`, PostgreSQL's epoch.
    static let postgresEpochDay = 2_451_545

    /// PostgreSQL's `date2j`.
    static func julianDay(year: Int, month: Int, day: Int) -> Int {
        var y = year
        var m = month
        if m > 2 {
            m += 1
            y += 4800
        } else {
            m += 13
            y += 4799
        }
        let century = y / 100
        var julian = y * 365 - 32167
        julian += y / 4 - century + century / 4
        julian += 7834 * m / 256 + day
        return julian
    }

    @inline(__always) static func digits(_ p: UnsafePointer<UInt8>, _ from: Int, _ count: Int) -> Int? {
        if count == 2 {
            let high = p[from] &- 0x30
            let low = p[from + 1] &- 0x30
            return high < 10 && low < 10 ? Int(high) * 10 + Int(low) : nil
        }
        var value = 0
        for index in from..<(from + count) {
            let digit = p[index] &- 0x30
            guard digit < 10 else { return nil }
            value = value * 10 + Int(digit)
        }
        return value
    }

    static func daysInMonth(year: Int, month: Int) -> Int {
        switch month {
        case 2: year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    /// `YYYY-MM-DD` (AD, four to six year digits): days since 2000-01-01 and the bytes used.
    static func date(_ p: UnsafePointer<UInt8>, _ n: Int) -> (Int, Int)? {
        var yearDigits = 0
        while yearDigits < n, p[yearDigits] &- 0x30 < 10 { yearDigits += 1 }
        guard (4...6).contains(yearDigits), n >= yearDigits + 6, p[yearDigits] == UInt8(ascii: "-"), p[yearDigits + 3] == UInt8(ascii: "-"),
            let year = digits(p, 0, yearDigits), let month = digits(p, yearDigits + 1, 2), let day = digits(p, yearDigits + 4, 2),
            year >= 1, (1...12).contains(month), day >= 1
        else { return nil }
        guard day <= 28 || day <= daysInMonth(year: year, month: month) else { return nil }
        return (julianDay(year: year, month: month, day: day) - postgresEpochDay, yearDigits + 6)
    }

    /// `YYYY-MM-DD HH:MM:SS[.ffffff]` and, zoned, `±HH[:MM[:SS]]`: microseconds since
    /// 2000-01-01 00:00 (UTC when zoned). `infinity`/`-infinity` as the server stores them.
    static func timestamp(_ p: UnsafePointer<UInt8>, _ n: Int, zoned: Bool) -> Int64? {
        if matches(p, n, "infinity") { return Int64.max }
        if matches(p, n, "-infinity") { return Int64.min }
        guard let (days, used) = date(p, n), used < n, p[used] == 0x20, let clock = clock(p, n, from: used + 1), clock.hours < 24 else { return nil }
        var offsetSeconds = 0
        if zoned {
            guard let offset = zone(p, n, from: clock.end) else { return nil }
            offsetSeconds = offset
        } else {
            guard clock.end == n else { return nil }
        }
        // Years up to 294276 fit the server's range; beyond it the server decides.
        let seconds = (days * 24 + clock.hours) * 3600 + clock.seconds - offsetSeconds
        guard days < 106_000_000 else { return nil }
        return Int64(seconds) * 1_000_000 + Int64(clock.micros)
    }

    /// `HH:MM:SS[.ffffff]` from `start` (`hourDigits` digits of hours, any value; minutes and
    /// seconds below 60): the hours, the minutes and seconds in seconds, the microseconds, and
    /// the index after it.
    @inline(__always) static func clock(_ p: UnsafePointer<UInt8>, _ n: Int, from start: Int, hourDigits: Int = 2)
        -> (hours: Int, seconds: Int, micros: Int, end: Int)?
    {
        let colon = start + hourDigits
        guard n >= colon + 6, p[colon] == UInt8(ascii: ":"), p[colon + 3] == UInt8(ascii: ":"), let hours = digits(p, start, hourDigits),
            let minute = digits(p, colon + 1, 2), let second = digits(p, colon + 4, 2), minute < 60, second < 60
        else { return nil }
        var index = colon + 6
        var micros = 0
        if index < n && p[index] == UInt8(ascii: ".") {
            index += 1
            var places = 0
            while index < n, p[index] &- 0x30 < 10 {
                guard places < 6 else { return nil }
                micros = micros * 10 + Int(p[index] - 0x30)
                places += 1
                index += 1
            }
            guard places > 0 else { return nil }
            for _ in places..<6 { micros *= 10 }
        }
        return (hours, minute * 60 + second, micros, index)
    }

    /// A zone `±HH[:MM[:SS]]` from `start` to the end: its offset east of Greenwich in seconds.
    @inline(__always) static func zone(_ p: UnsafePointer<UInt8>, _ n: Int, from start: Int) -> Int? {
        var index = start
        guard index + 3 <= n, p[index] == UInt8(ascii: "+") || p[index] == UInt8(ascii: "-"), let hours = digits(p, index + 1, 2) else { return nil }
        let negative = p[index] == UInt8(ascii: "-")
        var offset = hours * 3600
        index += 3
        if index < n {
            guard index + 3 <= n, p[index] == UInt8(ascii: ":"), let minutes = digits(p, index + 1, 2), minutes < 60 else { return nil }
            offset += minutes * 60
            index += 3
        }
        if index < n {
            guard index + 3 <= n, p[index] == UInt8(ascii: ":"), let seconds = digits(p, index + 1, 2), seconds < 60 else { return nil }
            offset += seconds
            index += 3
        }
        guard index == n else { return nil }
        return negative ? -offset : offset
    }

    /// `interval_out`'s text in the `postgres` IntervalStyle (`1 year -2 mons +3 days
    /// -04:05:06.5`, `00:00:00`, hours past 24) as `interval_recv` reads it: microseconds,
    /// days, months. Fields in that order, each at most once, one space apart. A negative
    /// first field followed only by unsigned ones is refused: in the `sql_standard` style the
    /// server would read them all as negative, so only text that means the same in every
    /// style converts (`interval_out` signs the field after a negative one).
    static func interval(_ p: UnsafePointer<UInt8>, _ n: Int) -> (micros: Int64, days: Int32, months: Int32)? {
        var index = 0
        var months: Int64 = 0
        var days: Int64 = 0
        var micros: Int64 = 0
        var stage = 0  // 1 after years, 2 after months, 3 after days, 4 after the clock
        var leadingMinus = false
        var laterSign = false
        var fields = 0
        while index < n {
            if index > 0 {
                guard p[index] == 0x20 else { return nil }
                index += 1
            }
            guard index < n, stage < 4 else { return nil }
            let signed = p[index] == UInt8(ascii: "-") || p[index] == UInt8(ascii: "+")
            let negative = p[index] == UInt8(ascii: "-")
            if index == 0 { leadingMinus = negative } else if signed { laterSign = true }
            if signed { index += 1 }
            fields += 1
            let start = index
            while index < n, p[index] &- 0x30 < 10 { index += 1 }
            let count = index - start
            guard count > 0, count <= 10 else { return nil }
            if index < n && p[index] == UInt8(ascii: ":") {
                guard count >= 2, let clock = clock(p, n, from: start, hourDigits: count), clock.end == n else { return nil }
                let (seconds, overflow) = Int64(clock.hours * 3600 + clock.seconds).multipliedReportingOverflow(by: 1_000_000)
                guard !overflow, seconds <= Int64.max - Int64(clock.micros) else { return nil }
                micros = negative ? -(seconds + Int64(clock.micros)) : seconds + Int64(clock.micros)
                stage = 4
                index = n
                continue
            }
            guard var value = digits(p, start, count).map(Int64.init), index < n, p[index] == 0x20 else { return nil }
            if negative { value = -value }
            index += 1
            let unit = index
            while index < n, p[index] != 0x20 { index += 1 }
            let word = p + unit
            let size = index - unit
            if stage < 1 && (matches(word, size, "year") || matches(word, size, "years")) {
                months += value * 12
                stage = 1
            } else if stage < 2 && (matches(word, size, "mon") || matches(word, size, "mons")) {
                months += value
                stage = 2
            } else if stage < 3 && (matches(word, size, "day") || matches(word, size, "days")) {
                days = value
                stage = 3
            } else {
                return nil
            }
        }
        guard stage > 0, !leadingMinus || fields == 1 || laterSign, let m = Int32(exactly: months), let d = Int32(exactly: days) else { return nil }
        return (micros, d, m)
    }

    /// `inet_out`'s and `cidr_out`'s text (`192.168.0.1`, `10.0.0.0/8`, `2001:db8::1/64`; the
    /// address read by the C library's `inet_pton`) as `inet_recv` and `cidr_recv` read it:
    /// family, mask bits, a cidr flag (ignored: the column's type decides), size, address.
    static func inet(_ p: UnsafePointer<UInt8>, _ n: Int, into output: inout ByteBuffer) -> Bool {
        guard n > 0, n < 64 else { return false }
        let slash = (0..<n).first { p[$0] == UInt8(ascii: "/") } ?? n
        let v6 = memchr(p, Int32(UInt8(ascii: ":")), slash) != nil
        var bits = v6 ? 128 : 32
        if slash < n {
            guard (1...3).contains(n - slash - 1), let value = digits(p, slash + 1, n - slash - 1), value <= bits else { return false }
            bits = value
        }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64 + 16) { buffer -> Bool in
            let text = buffer.baseAddress!
            text.update(from: p, count: slash)
            text[slash] = 0
            let address = text + 64
            let size = v6 ? 16 : 4
            guard inet_pton(v6 ? AF_INET6 : AF_INET, UnsafeRawPointer(text).assumingMemoryBound(to: CChar.self), address) == 1 else { return false }
            output.appendBigEndian(UInt32(4 + size))
            output.appendBigEndian(UInt8(v6 ? 3 : 2))  // PGSQL_AF_INET6, PGSQL_AF_INET
            output.appendBigEndian(UInt8(bits))
            output.appendBigEndian(UInt8(0))
            output.appendBigEndian(UInt8(size))
            output.append(address, count: size)
            return true
        }
    }

    /// One to sixteen hex digits.
    static func hex(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64? {
        guard (1...16).contains(n) else { return nil }
        var value: UInt64 = 0
        for index in 0..<n {
            let digit = hexValues[Int(p[index])]
            guard digit < 16 else { return nil }
            value = value << 4 | UInt64(digit)
        }
        return value
    }

    /// A geometric value as its output function writes it, the numbers as `float8out` does
    /// (`(x,y)` for a point; `(x,y),(x,y)` a box; `[(x,y),(x,y)]` a segment; `{a,b,c}` a line;
    /// `<(x,y),r>` a circle; `((x,y),…)` a closed path or a polygon, `[(x,y),…]` an open path),
    /// as the receive function reads it: the numbers as float8 in the same order, a path with
    /// its closed flag and point count first, a polygon with its point count. A line with
    /// a = b = 0 or a circle with a negative radius (which the server refuses): false.
    static func geometry(_ kind: BinaryColumn, _ p: UnsafePointer<UInt8>, _ n: Int, into output: inout ByteBuffer) -> Bool {
        var index = 0
        func expect(_ byte: UInt8) -> Bool {
            guard index < n, p[index] == byte else { return false }
            index += 1
            return true
        }
        func number() -> Double? {
            let start = index
            while index < n {
                switch p[index] {
                case UInt8(ascii: ","), UInt8(ascii: ")"), UInt8(ascii: "]"), UInt8(ascii: "}"), UInt8(ascii: ">"): break
                default:
                    index += 1
                    continue
                }
                break
            }
            return double(p + start, index - start, single: false)
        }
        func point(into output: inout ByteBuffer) -> Bool {
            guard expect(UInt8(ascii: "(")), let x = number(), expect(UInt8(ascii: ",")), let y = number(), expect(UInt8(ascii: ")")) else { return false }
            output.appendBigEndian(x.bitPattern)
            output.appendBigEndian(y.bitPattern)
            return true
        }
        /// Points separated by commas up to `close`: how many.
        func points(until close: UInt8, into output: inout ByteBuffer) -> UInt32? {
            var count: UInt32 = 0
            repeat {
                guard point(into: &output) else { return nil }
                count += 1
            } while expect(UInt8(ascii: ","))
            return expect(close) ? count : nil
        }
        let lengthAt = output.count
        output.appendBigEndian(UInt32(0))  // the value's length, set at the end
        switch kind {
        case .point:
            guard point(into: &output) else { return false }
        case .box:
            guard point(into: &output), expect(UInt8(ascii: ",")), point(into: &output) else { return false }
        case .lseg:
            guard expect(UInt8(ascii: "[")), point(into: &output), expect(UInt8(ascii: ",")), point(into: &output), expect(UInt8(ascii: "]")) else { return false }
        case .line:
            guard expect(UInt8(ascii: "{")), let a = number(), expect(UInt8(ascii: ",")), let b = number(), expect(UInt8(ascii: ",")), let c = number(),
                expect(UInt8(ascii: "}")), a != 0 || b != 0
            else { return false }
            for value in [a, b, c] { output.appendBigEndian(value.bitPattern) }
        case .circle:
            guard expect(UInt8(ascii: "<")), point(into: &output), expect(UInt8(ascii: ",")), let radius = number(), expect(UInt8(ascii: ">")),
                !(radius < 0)
            else { return false }
            output.appendBigEndian(radius.bitPattern)
        case .path, .polygon:
            let closed = n > 0 && p[0] == UInt8(ascii: "(")
            guard closed || (kind == .path && n > 0 && p[0] == UInt8(ascii: "[")) else { return false }
            index = 1
            if kind == .path { output.appendBigEndian(UInt8(closed ? 1 : 0)) }
            let countAt = output.count
            output.appendBigEndian(UInt32(0))
            guard let count = points(until: UInt8(ascii: closed ? ")" : "]"), into: &output) else { return false }
            output.storeBigEndian(count, at: countAt)
        default:
            return false
        }
        guard index == n else { return false }
        output.storeBigEndian(UInt32(output.count - lengthAt - 4), at: lengthAt)
        return true
    }

    /// `tsvectorout`'s text (`'a':1A,2 'it''s' 'back\\slash':3C`; nothing for an empty vector:
    /// quoted lexemes one space apart, `'` and `\` doubled inside, then positions 1 to 16383
    /// with an optional weight A, B or C) as `tsvectorrecv` reads it: the count, then each
    /// lexeme NUL-terminated, its position count and positions (weight in the top two bits).
    static func tsvector(_ p: UnsafePointer<UInt8>, _ n: Int, into output: inout ByteBuffer) -> Bool {
        let lengthAt = output.count
        output.appendBigEndian(UInt32(0))  // the value's length, set at the end
        output.appendBigEndian(UInt32(0))  // the lexeme count, set at the end
        var count: UInt32 = 0
        var index = 0
        while index < n {
            if count > 0 {
                guard p[index] == 0x20 else { return false }
                index += 1
            }
            guard index < n, p[index] == UInt8(ascii: "'") else { return false }
            index += 1
            let lexemeStart = output.count
            while true {
                guard index < n else { return false }
                let byte = p[index]
                if byte == UInt8(ascii: "'") || byte == 0x5C {
                    // A doubled quote or backslash is one; a lone quote ends the lexeme.
                    if index + 1 < n && p[index + 1] == byte {
                        output.appendBigEndian(byte)
                        index += 2
                        continue
                    }
                    guard byte == UInt8(ascii: "'") else { return false }
                    index += 1
                    break
                }
                output.appendBigEndian(byte)
                index += 1
            }
            guard output.count > lexemeStart else { return false }
            output.appendBigEndian(UInt8(0))
            let positionsAt = output.count
            output.appendBigEndian(UInt16(0))
            var positions: UInt16 = 0
            var previous = 0
            if index < n && p[index] == UInt8(ascii: ":") {
                repeat {
                    index += 1
                    let start = index
                    while index < n, p[index] &- 0x30 < 10 { index += 1 }
                    guard index > start, index - start <= 5, let position = digits(p, start, index - start), position > previous, position <= 16383
                    else { return false }
                    previous = position
                    var weight = 0
                    if index < n, p[index] >= UInt8(ascii: "A"), p[index] <= UInt8(ascii: "C") {
                        weight = 3 - Int(p[index] - UInt8(ascii: "A"))
                        index += 1
                    }
                    output.appendBigEndian(UInt16(weight << 14 | position))
                    positions += 1
                } while index < n && p[index] == UInt8(ascii: ",")
            }
            output.storeBigEndian(positions, at: positionsAt)
            count += 1
        }
        output.storeBigEndian(count, at: lengthAt + 4)
        output.storeBigEndian(UInt32(output.count - lengthAt - 4), at: lengthAt)
        return true
    }

    /// `macaddr_out`'s (`08:00:2b:01:02:03`) or `macaddr8_out`'s text: the address's bytes.
    static func macaddr(_ p: UnsafePointer<UInt8>, _ n: Int, bytes count: Int, into output: inout ByteBuffer) -> Bool {
        guard n == count * 3 - 1, (1..<count).allSatisfy({ p[$0 * 3 - 1] == UInt8(ascii: ":") }) else { return false }
        output.appendBigEndian(UInt32(count))
        let values = hexValues
        return output.append(count) { target in
            var bad: UInt8 = 0
            for index in 0..<count {
                let high = values[Int(p[3 * index])]
                let low = values[Int(p[3 * index + 1])]
                bad |= high | low
                target[index] = high << 4 | low
            }
            return bad & 0xF0 == 0
        }
    }
}

/// A growable byte buffer with unchecked appends after `reserve`, for the encoder's hot loop.
struct ByteBuffer: ~Copyable {
    private var base: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private(set) var count = 0

    init(capacity: Int) {
        self.capacity = max(capacity, 16)
        base = .allocate(capacity: self.capacity)
    }

    deinit { base.deallocate() }

    @inline(__always) mutating func reserve(_ extra: Int) {
        if count + extra > capacity { grow(extra) }
    }

    @inline(never) private mutating func grow(_ extra: Int) {
        var grown = capacity * 2
        while grown < count + extra { grown *= 2 }
        let fresh = UnsafeMutablePointer<UInt8>.allocate(capacity: grown)
        fresh.update(from: base, count: count)
        base.deallocate()
        base = fresh
        capacity = grown
    }

    /// Lets `fill` write `extra` bytes at the end; they count only if it returns true.
    @inline(__always) mutating func append(_ extra: Int, _ fill: (UnsafeMutablePointer<UInt8>) -> Bool) -> Bool {
        reserve(extra)
        guard fill(base + count) else { return false }
        count += extra
        return true
    }

    @inline(__always) mutating func appendUnchecked(_ byte: UInt8) {
        base[count] = byte
        count += 1
    }

    @inline(__always) mutating func append(_ bytes: UnsafePointer<UInt8>, count extra: Int) {
        reserve(extra)
        (base + count).update(from: bytes, count: extra)
        count += extra
    }

    mutating func append(contentsOf bytes: [UInt8]) {
        reserve(bytes.count)
        for byte in bytes { appendUnchecked(byte) }
    }

    @inline(__always) mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        reserve(MemoryLayout<T>.size)
        UnsafeMutableRawPointer(base + count).storeBytes(of: value.bigEndian, as: T.self)
        count += MemoryLayout<T>.size
    }

    /// Overwrites bytes already appended at `offset`.
    mutating func storeBigEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count, "storing inside the buffer")
        UnsafeMutableRawPointer(base + offset).storeBytes(of: value.bigEndian, as: T.self)
    }

    mutating func removeAll() { count = 0 }

    /// The bytes, valid until the next change to this buffer.
    var start: UnsafePointer<UInt8> { UnsafePointer(base) }

    func withRawBytes<E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> Void) throws(E) {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }
}
