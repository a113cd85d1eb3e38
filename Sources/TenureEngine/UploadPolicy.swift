import Foundation
import TenureCore

/// What an upload may run. Uploaded SQL runs as the upload's own unprivileged role, so the
/// server's permission checks are the real fence; this policy refuses early, with a clear
/// reason, what a database dump never needs (roles, the server's configuration, files and
/// programs, other databases), and drops what cannot apply here (ownership and privileges
/// naming roles of the source server: everything belongs to the upload's role).
public enum UploadStatementPolicy {
    public enum Decision: Equatable {
        case run
        /// `COPY ... FROM stdin`: data lines follow.
        case copyIn
        /// Not applicable here (ownership, privileges); counted and reported.
        case skip
        case reject(String)
    }

    /// Words (upper-cased), quoted names and strings of a statement, comments removed.
    static func tokens(_ statement: String, limit: Int = 64) -> [String] {
        var tokens: [String] = []
        scan(statement) { token in
            tokens.append(token)
            return tokens.count < limit
        }
        return tokens
    }

    /// What the policy looks at in a statement, taken from all of its tokens in one pass with
    /// bounded memory whatever its length (a COPY naming 1,600 columns, a 100 MB INSERT): the
    /// first words, the last words, which of the words the rules ask about occur anywhere, and
    /// the word after the first FROM or TO.
    struct Summary {
        static let leading = 16
        static let trailing = 8
        static let watched: Set<String> = ["TO", "OWNER", "OFF", "'OFF'", "FALSE", "MAPPING"]
        var first: [String] = []
        var last: [String] = []
        var count = 0
        var seen = Set<String>()
        var copyDirection: (word: String, next: String)?
        var awaitingDirectionTarget = false

        init(_ statement: String) {
            scan(statement) { token in
                if awaitingDirectionTarget {
                    copyDirection?.next = token
                    awaitingDirectionTarget = false
                }
                if copyDirection == nil, token == "FROM" || token == "TO" {
                    copyDirection = (token, "")
                    awaitingDirectionTarget = true
                }
                if first.count < Self.leading { first.append(token) }
                last.append(token)
                if last.count > Self.trailing { last.removeFirst() }
                if Self.watched.contains(token) { seen.insert(token) }
                count += 1
                return true
            }
        }

        /// The word `offset` places from the end (1 = the last), if the statement has it.
        func fromEnd(_ offset: Int) -> String? {
            offset <= last.count ? last[last.count - offset] : nil
        }
    }

    /// Calls `token` with each token of `statement` in order until it returns false.
    static func scan(_ statement: String, _ token: (String) -> Bool) {
        let bytes = Array(statement.utf8)
        var index = 0
        func isWord(_ byte: UInt8) -> Bool {
            (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x30 && byte <= 0x39) || byte == 0x5F || byte >= 0x80 || byte == 0x24
        }
        while index < bytes.count {
            let byte = bytes[index]
            if byte == 0x2D, index + 1 < bytes.count, bytes[index + 1] == 0x2D {
                while index < bytes.count, bytes[index] != 0x0A { index += 1 }
            } else if byte == 0x2F, index + 1 < bytes.count, bytes[index + 1] == 0x2A {
                var depth = 0
                while index < bytes.count {
                    if bytes[index] == 0x2F, index + 1 < bytes.count, bytes[index + 1] == 0x2A {
                        depth += 1
                        index += 2
                    } else if bytes[index] == 0x2A, index + 1 < bytes.count, bytes[index + 1] == 0x2F {
                        depth -= 1
                        index += 2
                        if depth == 0 { break }
                    } else {
                        index += 1
                    }
                }
            } else if byte == 0x27 || byte == 0x22 {
                let start = index
                index += 1
                while index < bytes.count {
                    if bytes[index] == byte {
                        if index + 1 < bytes.count, bytes[index + 1] == byte {
                            index += 2
                            continue
                        }
                        break
                    }
                    index += 1
                }
                index += 1
                guard token(String(decoding: bytes[start..<min(index, bytes.count)], as: UTF8.self)) else { return }
            } else if isWord(byte) {
                let start = index
                while index < bytes.count, isWord(bytes[index]) { index += 1 }
                guard token(String(decoding: bytes[start..<index], as: UTF8.self).uppercased()) else { return }
            } else {
                index += 1
                if byte > 0x20, !token(String(UnicodeScalar(byte))) { return }
            }
        }
    }

    /// The extension a `CREATE EXTENSION [IF NOT EXISTS] name ...` statement creates, as
    /// PostgreSQL folds it; nil for any other statement.
    public static func extensionName(_ statement: String) -> String? {
        let raw = tokens(statement, limit: 6)
        guard raw.count >= 3, raw[0] == "CREATE", raw[1] == "EXTENSION" else { return nil }
        return folded(raw.count >= 6 && raw[2] == "IF" && raw[3] == "NOT" && raw[4] == "EXISTS" ? raw[5] : raw[2])
    }

    /// The extension a `COMMENT ON EXTENSION name IS ...` statement comments on (folded);
    /// nil for any other statement.
    public static func commentedExtension(_ statement: String) -> String? {
        let raw = tokens(statement, limit: 4)
        guard raw.count == 4, raw[0] == "COMMENT", raw[1] == "ON", raw[2] == "EXTENSION" else { return nil }
        return folded(raw[3])
    }

    /// A name token as PostgreSQL folds it: quoted names as written, others in lower case.
    static func folded(_ token: String) -> String {
        if token.hasPrefix("\""), token.hasSuffix("\""), token.count >= 2 { return String(token.dropFirst().dropLast()).replacingOccurrences(of: "\"\"", with: "\"") }
        return token.lowercased()
    }

    public static func decide(_ statement: String) -> Decision {
        let summary = Summary(statement)
        let words = summary.first
        guard let first = words.first else { return .run }
        let second = words.count > 1 ? words[1] : ""
        let third = words.count > 2 ? words[2] : ""
        func has(_ word: String) -> Bool {
            precondition(Summary.watched.contains(word), "the policy asks only about watched words")
            return summary.seen.contains(word)
        }
        switch first {
        case "CREATE", "ALTER", "DROP":
            var kind = second
            if first == "CREATE", ["OR", "TRUSTED", "PROCEDURAL", "UNIQUE", "TEMP", "TEMPORARY", "UNLOGGED", "DEFAULT", "CONSTRAINT", "GLOBAL", "LOCAL"].contains(kind) {
                kind = words.dropFirst(2).first { !["REPLACE", "TRUSTED", "PROCEDURAL", "TEMP", "TEMPORARY"].contains($0) } ?? third
            }
            switch kind {
            case "ROLE", "USER", "GROUP":
                if first == "ALTER", kind == "USER", third == "MAPPING" { return .reject("user mappings are not allowed in an upload") }
                return .reject("\(first) \(kind) is not allowed in an upload: roles belong to the server, and the upload's data is owned by its own role")
            case "SYSTEM":
                return .reject("ALTER SYSTEM is not allowed in an upload")
            case "DATABASE":
                return .reject("\(first) DATABASE is not allowed in an upload: it is restored into the database Tenure created for it")
            case "TABLESPACE":
                return .reject("tablespaces are not allowed in an upload")
            case "LANGUAGE":
                return .reject("CREATE LANGUAGE is not allowed in an upload (untrusted languages never run); trusted languages come with CREATE EXTENSION")
            case "SUBSCRIPTION", "SERVER":
                return .reject("\(first) \(kind) is not allowed in an upload: it would reach other servers")
            case "EVENT":
                return .reject("event triggers are not allowed in an upload")
            default:
                break
            }
            if first == "ALTER", kind == "DEFAULT", third == "PRIVILEGES" { return .skip }
            // pg_dump's ownership statements: the upload's role owns everything.
            if first == "ALTER", summary.fromEnd(3) == "OWNER" || summary.fromEnd(4) == "OWNER", has("TO") {
                return .skip
            }
            if first == "ALTER", (kind == "DATABASE" || kind == "LARGE") && has("OWNER") { return .skip }
            return .run
        case "GRANT", "REVOKE":
            return .skip
        case "SECURITY":
            return .skip
        case "COPY":
            // COPY name [(columns)] FROM STDIN only: never a file or a program.
            guard let (direction, source) = summary.copyDirection else {
                return .reject("COPY without FROM stdin is not allowed in an upload")
            }
            if source == "PROGRAM" {
                return .reject("COPY ... \(direction) PROGRAM is not allowed in an upload: nothing runs on the server's machine")
            }
            if direction == "TO" { return .reject("COPY ... TO is not allowed in an upload (an upload only loads data)") }
            guard source == "STDIN" else {
                return .reject("COPY ... FROM a file is not allowed in an upload: only COPY ... FROM stdin with the data inline")
            }
            return .copyIn
        case "LOAD":
            return .reject("LOAD is not allowed in an upload")
        case "SET", "RESET":
            let target = ["SESSION", "LOCAL"].contains(second) ? third : second
            if target == "ROLE" || target == "AUTHORIZATION" || (second == "SESSION" && third == "AUTHORIZATION") {
                return .reject("\(first) ROLE / SESSION AUTHORIZATION is not allowed in an upload: it runs as its own role only")
            }
            if target == "STANDARD_CONFORMING_STRINGS", has("OFF") || has("'OFF'") || has("FALSE") {
                return .reject("standard_conforming_strings = off is not supported in an upload")
            }
            return .run
        case "CHECKPOINT", "VACUUM", "CLUSTER", "REINDEX", "LISTEN", "NOTIFY":
            return first == "CHECKPOINT" ? .reject("CHECKPOINT is not allowed in an upload") : .run
        default:
            return .run
        }
    }

    /// Rewrites a schema script (a Tenure archive's pre- or post-data) under the policy:
    /// refused statements fail the upload, skipped ones are removed, the rest is kept with its
    /// comments (which the restore uses to split the post-data into entries).
    /// `createExtension` (see `StatementRunner.createExtension`) sees every `CREATE EXTENSION`:
    /// one it created is left out of the script, and so is the dump's comment on it.
    public static func filterScript(
        _ script: String, section: String, createExtension: ((String, String) throws(TenureError) -> Bool)? = nil
    ) throws(TenureError) -> (script: String, statements: Int, skipped: Int) {
        let lexer = SQLLexer()
        var output = ""
        var statements = 0
        var skipped = 0
        var failure: TenureError?
        var created = Set<String>()
        let handle: (SQLEvent) throws(TenureError) -> Void = { (event) throws(TenureError) in
            guard case .statement(let text, let line) = event else {
                throw TenureError(.uploadRejected, "the \(section) contains COPY data; data belongs in data members")
            }
            statements += 1
            switch decide(text) {
            case .run:
                if let createExtension, let name = extensionName(text) {
                    do throws(TenureError) {
                        if try createExtension(name, text) {
                            created.insert(name)
                            skipped += 1
                            return
                        }
                    } catch {
                        failure = TenureError(.uploadRejected, "the \(section), line \(line): \(error.message)")
                        throw failure!
                    }
                }
                if let name = commentedExtension(text), created.contains(name) {
                    skipped += 1
                    return
                }
                output += text
            case .skip: skipped += 1
            case .copyIn:
                failure = TenureError(.uploadRejected, "the \(section), line \(line): COPY belongs in data members, not in the schema")
            case .reject(let why):
                failure = TenureError(.uploadRejected, "the \(section), line \(line): \(why)")
            }
            if let failure { throw failure }
        }
        do throws(TenureError) {
            var bytes = Array(script.utf8)
            bytes.append(0x0A)
            try bytes.withBytes { (buffer) throws(TenureError) in try lexer.feed(buffer, emit: handle) }
            try lexer.finish(emit: handle)
        } catch {
            if error.code == .uploadRejected, !error.message.hasPrefix("the \(section)") {
                throw TenureError(.uploadRejected, "the \(section), \(error.message)", context: error.context)
            }
            throw error
        }
        return (output + "\n", statements, skipped)
    }
}
