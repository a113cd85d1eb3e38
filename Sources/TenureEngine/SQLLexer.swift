import Foundation
import TenureCore

/// What the lexer hands on: whole statements (with the comments and blank lines before
/// them), and for `COPY ... FROM stdin` the data lines that follow up to `\.`.
public enum SQLEvent {
    case statement(String, line: Int)
    /// Complete data lines (each with its newline) of the COPY just started.
    case copyData([UInt8])
    case copyEnd
}

/// Splits a stream of plain SQL into statements the way the server's lexer sees them:
/// single-quoted strings (with `E''` backslash escapes), quoted identifiers, dollar quotes,
/// `--` and nested `/* */` comments; after a `COPY ... FROM stdin` statement, data lines up
/// to the `\.` line. Streaming: bytes go in as they arrive, events come out as soon as they
/// are complete; memory is bounded by the longest statement.
///
/// psql meta-commands never run: any backslash outside a literal, a comment or COPY data is
/// refused, except pg_dump's own `\restrict KEY` and `\unrestrict KEY` lines, which are
/// dropped. A quoted name containing a newline is refused (CVE-2025-8715). NUL bytes and
/// invalid UTF-8 are refused. Thread: one lexer per stream.
public final class SQLLexer {
    enum Mode: Equatable {
        case normal
        case singleQuote(escapes: Bool)
        case doubleQuote
        case dollarQuote
        case lineComment
        case blockComment(depth: Int)
        case backslashLine
        case copyData
    }

    public let maximumStatementBytes: Int
    private var mode = Mode.normal
    private var statement: [UInt8] = []
    /// True once the statement has something other than whitespace and comments.
    private var significant = false
    private var statementLine = 1
    private var dollarTag: [UInt8] = []
    private var backslash: [UInt8] = []
    private var copyBuffer: [UInt8] = []
    private var copyLine: [UInt8] = []
    private var pendingCopy = false
    /// After a COPY statement's `;`, the rest of that line (whitespace only) is skipped.
    private var skippingToLineEnd = false
    private var previous: UInt8 = 0x0A
    /// Set by a step that reset `previous` (so "*/*" or "\\'" are not read twice).
    private var keepPrevious = false
    /// A '-' or '/' that may open a comment; significant if it does not.
    private var maybeSignificant = false
    private var dollarStart = 0
    private var lastStringEscapes = false
    private var line = 1
    private var utf8Pending = 0
    public private(set) var byteCount: Int64 = 0

    public init(maximumStatementBytes: Int = 256 << 20) {
        self.maximumStatementBytes = maximumStatementBytes
    }

    func reject(_ why: String) -> TenureError {
        TenureError(.uploadRejected, "line \(line): \(why)", context: ["line": String(line)])
    }

    /// Feeds bytes; `emit` receives every event completed by them.
    public func feed(_ bytes: UnsafeRawBufferPointer, emit: (SQLEvent) throws(TenureError) -> Void) throws(TenureError) {
        var index = 0
        while index < bytes.count {
            // COPY data (most of a dump's bytes) skips the byte-by-byte state machine, with the
            // same checks (UTF-8, no NUL, the \. line): every whole line of the chunk at once,
            // and a line not ended within the chunk kept in one piece for the next.
            if mode == .copyData, !skippingToLineEnd {
                if copyLine.isEmpty, let used = try copyLines(bytes, from: index, emit: emit) {
                    index += used
                } else {
                    index += try continueCopyLine(bytes, from: index, emit: emit)
                }
                continue
            }
            let byte = bytes[index]
            index += 1
            byteCount += 1
            try checkEncoding(byte)
            keepPrevious = false
            try step(byte, emit: emit)
            if byte == 0x0A { line += 1 }
            if !keepPrevious { previous = byte }
        }
        if mode == .copyData, copyBuffer.count >= 1 << 20 {
            try emit(.copyData(copyBuffer))
            copyBuffer.removeAll(keepingCapacity: true)
        }
    }

    /// The end of the stream: anything unfinished means the upload was cut short.
    public func finish(emit: (SQLEvent) throws(TenureError) -> Void) throws(TenureError) {
        guard utf8Pending == 0 else { throw reject("the input ends inside a UTF-8 character (truncated)") }
        switch mode {
        case .normal:
            if significant { throw reject("the input ends inside a statement with no closing ';' (truncated)") }
        case .lineComment:
            if significant { throw reject("the input ends inside a statement with no closing ';' (truncated)") }
        case .singleQuote: throw reject("the input ends inside a quoted string (truncated)")
        case .doubleQuote: throw reject("the input ends inside a quoted name (truncated)")
        case .dollarQuote: throw reject("the input ends inside a dollar-quoted string (truncated)")
        case .blockComment: throw reject("the input ends inside a /* comment */ (truncated)")
        case .backslashLine: try endBackslashLine()
        case .copyData: throw reject("the input ends inside COPY data, before its \\. line (truncated)")
        }
    }

    /// A whole COPY data line (its newline included): the `\.` line ends the data, any other
    /// line joins the buffer handed on in pieces of about 1 MiB.
    private func endCopyLine(_ text: UnsafeRawBufferPointer, emit: (SQLEvent) throws(TenureError) -> Void) throws(TenureError) {
        let count = text.count
        if (count == 3 || count == 4 && text[2] == 0x0D) && text[0] == 0x5C && text[1] == 0x2E {
            if !copyBuffer.isEmpty { try emit(.copyData(copyBuffer)) }
            copyBuffer.removeAll(keepingCapacity: true)
            try emit(.copyEnd)
            mode = .normal
            statementLine = line + 1
            return
        }
        copyBuffer.append(contentsOf: text)
        if copyBuffer.count >= 1 << 20 {
            try emit(.copyData(copyBuffer))
            copyBuffer.removeAll(keepingCapacity: true)
        }
    }

    /// Takes the whole COPY data lines from `start` to the chunk's last newline, or to the
    /// `\.` line ending the data (which it also takes): checks them (no NUL, valid UTF-8;
    /// ASCII eight bytes at a time, counting newlines for the line numbers) and adds them to
    /// the buffer in one piece. Returns the bytes taken; nil when no line ends within `bytes`
    /// (the byte-by-byte path takes the rest).
    private func copyLines(_ bytes: UnsafeRawBufferPointer, from start: Int, emit: (SQLEvent) throws(TenureError) -> Void) throws(TenureError)
        -> Int?
    {
        let base = bytes.baseAddress!
        var end = bytes.count
        while end > start && bytes[end - 1] != 0x0A { end -= 1 }
        guard end > start else { return nil }
        // The \. line, if the data ends within these lines: "\." at a line start, then the
        // line's end ("\n" or "\r\n"). `end - 1` is a newline, so the bytes read exist.
        var dataEnd = end
        var markerEnd: Int?
        var search = start
        while search < end, let found = memchr(base + search, 0x5C, end - search) {
            let at = UnsafeRawPointer(found) - base
            if bytes[at + 1] == 0x2E && (at == start || bytes[at - 1] == 0x0A) {
                if bytes[at + 2] == 0x0A {
                    (dataEnd, markerEnd) = (at, at + 3)
                    break
                }
                if bytes[at + 2] == 0x0D && bytes[at + 3] == 0x0A {
                    (dataEnd, markerEnd) = (at, at + 4)
                    break
                }
            }
            search = at + 1
        }
        line += try checkedNewlines(bytes, from: start, to: dataEnd)
        if dataEnd > start {
            copyBuffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<dataEnd]))
            if copyBuffer.count >= 1 << 20 {
                try emit(.copyData(copyBuffer))
                copyBuffer.removeAll(keepingCapacity: true)
            }
        }
        previous = 0x0A
        guard let markerEnd else {
            byteCount += Int64(end - start)
            return end - start
        }
        byteCount += Int64(markerEnd - start)
        try endCopyLine(UnsafeRawBufferPointer(rebasing: bytes[dataEnd..<markerEnd]), emit: emit)
        line += 1
        return markerEnd - start
    }

    /// A COPY data line not ended within one chunk (a long value), or its rest: up to its
    /// newline, when the line is ended, or all of `bytes`, kept for the next chunk. Checked as
    /// `copyLines` checks. Returns the bytes taken.
    private func continueCopyLine(_ bytes: UnsafeRawBufferPointer, from start: Int, emit: (SQLEvent) throws(TenureError) -> Void) throws(TenureError)
        -> Int
    {
        let base = bytes.baseAddress!
        let newline = memchr(base + start, 0x0A, bytes.count - start).map { UnsafeRawPointer($0) - base }
        let end = newline ?? bytes.count
        _ = try checkedNewlines(bytes, from: start, to: end)
        copyLine.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
        guard let newline else {
            byteCount += Int64(end - start)
            if end > start { previous = bytes[end - 1] }
            return end - start
        }
        guard utf8Pending == 0 else { throw reject("invalid UTF-8; this is not a UTF-8 SQL text file") }
        byteCount += Int64(newline + 1 - start)
        copyLine.append(0x0A)
        try copyLine.withBytes { (text) throws(TenureError) in try endCopyLine(text, emit: emit) }
        copyLine.removeAll(keepingCapacity: true)
        line += 1
        previous = 0x0A
        return newline + 1 - start
    }

    /// Checks `bytes[start..<end]` as text (no NUL, valid UTF-8; ASCII eight bytes at a time)
    /// and returns how many newlines it holds; a bad byte is reported with its own line number.
    private func checkedNewlines(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) throws(TenureError) -> Int {
        let base = bytes.baseAddress!
        var newlines = 0
        var position = start
        while position < end {
            if utf8Pending == 0 {
                while position + 8 <= end {
                    let word = (base + position).loadUnaligned(as: UInt64.self)
                    // Stop at a non-ASCII or a zero byte; count the newlines.
                    if word & 0x8080_8080_8080_8080 != 0 || nonzeroBytes(word) != 0x8080_8080_8080_8080 { break }
                    newlines += 8 &- nonzeroBytes(word ^ 0x0A0A_0A0A_0A0A_0A0A).nonzeroBitCount
                    position += 8
                }
                guard position < end else { break }
            }
            let byte = bytes[position]
            if let why = encodingProblem(byte) {
                line += newlines
                throw reject(why)
            }
            if byte == 0x0A { newlines += 1 }
            position += 1
        }
        return newlines
    }

    /// The high bit of each byte of `word` that is not zero, exactly (no borrow between bytes).
    @inline(__always) private func nonzeroBytes(_ word: UInt64) -> UInt64 {
        ((word & 0x7F7F_7F7F_7F7F_7F7F) &+ 0x7F7F_7F7F_7F7F_7F7F | word) & 0x8080_8080_8080_8080
    }

    private func checkEncoding(_ byte: UInt8) throws(TenureError) {
        if let why = encodingProblem(byte) { throw reject(why) }
    }

    /// What is wrong with `byte` as the next byte of UTF-8 text without NUL, if anything
    /// (keeping count of a character's continuation bytes).
    private func encodingProblem(_ byte: UInt8) -> String? {
        if byte == 0 { return "a NUL byte; this is not a SQL text file" }
        if utf8Pending > 0 {
            guard byte & 0xC0 == 0x80 else { return "invalid UTF-8; this is not a UTF-8 SQL text file" }
            utf8Pending -= 1
            return nil
        }
        switch byte {
        case 0x00...0x7F: break
        case 0xC2...0xDF: utf8Pending = 1
        case 0xE0...0xEF: utf8Pending = 2
        case 0xF0...0xF4: utf8Pending = 3
        default: return "invalid UTF-8; this is not a UTF-8 SQL text file"
        }
        return nil
    }

    private func append(_ byte: UInt8) throws(TenureError) {
        statement.append(byte)
        if statement.count > maximumStatementBytes {
            throw reject("a statement longer than \(maximumStatementBytes) bytes (the limit TENURE_UPLOAD_MAX_STATEMENT_BYTES sets)")
        }
    }

    private static func isIdentifier(_ byte: UInt8) -> Bool {
        (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x30 && byte <= 0x39) || byte == 0x5F || byte >= 0x80
            || byte == 0x24
    }

    private func step(_ byte: UInt8, emit: (SQLEvent) throws(TenureError) -> Void) throws(TenureError) {
        switch mode {
        case .copyData:
            // Only the rest of the COPY statement's line comes here; `feed` takes the data.
            if byte == 0x0A {
                skippingToLineEnd = false
            } else if byte != 0x20 && byte != 0x09 && byte != 0x0D {
                throw reject("COPY data must start on the line after the COPY statement")
            }
        case .backslashLine:
            if byte == 0x0A {
                try endBackslashLine()
            } else {
                backslash.append(byte)
                if backslash.count > 200 { throw reject("a backslash command; psql meta-commands are not allowed in an upload") }
            }
        case .lineComment:
            try append(byte)
            if byte == 0x0A { mode = .normal }
        case .blockComment(let depth):
            try append(byte)
            if byte == 0x2F && previous == 0x2A {  // */
                mode = depth == 1 ? .normal : .blockComment(depth: depth - 1)
                previous = 0  // so that "*/*" does not open a new comment
                keepPrevious = true
            } else if byte == 0x2A && previous == 0x2F {
                mode = .blockComment(depth: depth + 1)
                previous = 0
                keepPrevious = true
            }
        case .singleQuote(let escapes):
            try append(byte)
            if escapes && byte == 0x5C && previous == 0x5C {
                previous = 0  // an escaped backslash escapes nothing after it
                keepPrevious = true
                return
            }
            if byte == 0x27 && !(escapes && previous == 0x5C) {
                // '' inside a string is an escaped quote: stay in the string; the lexer sees
                // the second quote as opening a new string, which is the same thing.
                mode = .normal
            }
        case .doubleQuote:
            if byte == 0x0A || byte == 0x0D {
                throw reject("a quoted name contains a line break; object names with newlines are refused (CVE-2025-8715)")
            }
            try append(byte)
            if byte == 0x22 { mode = .normal }
        case .dollarQuote:
            try append(byte)
            if byte == 0x24, statement.count - dollarStart >= dollarTag.count, statement.suffix(dollarTag.count).elementsEqual(dollarTag) {
                mode = .normal
                previous = 0
                keepPrevious = true
            }
        case .normal:
            try normal(byte, emit: emit)
        }
    }

    private func normal(_ byte: UInt8, emit: (SQLEvent) throws(TenureError) -> Void) throws(TenureError) {
        let opensComment = (byte == 0x2D && previous == 0x2D && statement.last == 0x2D) || (byte == 0x2A && previous == 0x2F && statement.last == 0x2F)
        if opensComment {
            try append(byte)
            mode = byte == 0x2D ? .lineComment : .blockComment(depth: 1)
            maybeSignificant = false
            return
        }
        if maybeSignificant {
            significant = true
            maybeSignificant = false
        }
        switch byte {
        case 0x5C:  // backslash outside any literal: a psql meta-command
            guard !significant else {
                throw reject("a backslash outside a string (a psql meta-command); psql meta-commands are not allowed in an upload")
            }
            mode = .backslashLine
            backslash = [byte]
        case 0x27:
            try append(byte)
            let count = statement.count
            let prefix = count >= 2 ? statement[count - 2] : 0
            let before = count >= 3 ? statement[count - 3] : 0
            // 'a''b' continues the same string, with the same escape rules.
            let escapes = prefix == 0x27 ? lastStringEscapes : (prefix == 0x45 || prefix == 0x65) && !Self.isIdentifier(before)
            lastStringEscapes = escapes
            mode = .singleQuote(escapes: escapes)
            significant = true
        case 0x22:
            try append(byte)
            mode = .doubleQuote
            significant = true
        case 0x24:
            try append(byte)
            significant = true
            // $tag$ opens a dollar quote unless the $ ends an identifier (a$b$) or a
            // parameter ($1); the tag is identifier characters not starting with a digit.
            if let open = statement.dropLast().lastIndex(of: 0x24) {
                let tag = statement[(open + 1)..<(statement.count - 1)]
                let before = open > statement.startIndex ? statement[open - 1] : 0
                let tagValid = tag.allSatisfy { Self.isIdentifier($0) && $0 != 0x24 } && !(tag.first.map { $0 >= 0x30 && $0 <= 0x39 } ?? false)
                if tagValid && !Self.isIdentifier(before) {
                    dollarTag = Array(statement[open...])
                    dollarStart = statement.count
                    mode = .dollarQuote
                }
            }
        case 0x3B:  // ;
            try append(byte)
            let text = String(decoding: statement, as: UTF8.self)
            statement.removeAll(keepingCapacity: true)
            significant = false
            let start = statementLine
            statementLine = line
            try emit(.statement(text, line: start))
            if pendingCopy {
                pendingCopy = false
                mode = .copyData
                skippingToLineEnd = true
            }
        case 0x20, 0x09, 0x0A, 0x0D:
            if !significant && byte == 0x0A { statementLine = line + 1 }
            try append(byte)
        case 0x2D, 0x2F:
            try append(byte)
            maybeSignificant = true
        default:
            try append(byte)
            significant = true
        }
    }

    /// The lexer marks the COPY it just emitted as reading data lines next.
    public func expectCopyData() { pendingCopy = true }

    private func endBackslashLine() throws(TenureError) {
        mode = .normal
        var text = String(decoding: backslash, as: UTF8.self)
        if text.hasSuffix("\r") { text.removeLast() }
        let parts = text.split(separator: " ", omittingEmptySubsequences: true)
        if parts.count == 2, parts[0] == "\\restrict" || parts[0] == "\\unrestrict",
            parts[1].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) })
        {
            backslash.removeAll()
            return
        }
        let command = String(parts.first ?? "\\")
        throw reject("the psql meta-command '\(printable(command, limit: 20))'; psql meta-commands are not allowed in an upload (only pg_dump's \\restrict lines)")
    }
}
