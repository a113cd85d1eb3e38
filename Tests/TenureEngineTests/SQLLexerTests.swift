import Foundation
import Testing
import TenureCore
import TenureEngine

@Suite struct SQLLexerTests {
    enum Piece: Equatable {
        case statement(String)
        case copy(String)
    }

    /// Lexes `text` fed in pieces of `chunk` bytes (so every state is crossed at a boundary).
    func lex(_ text: String, chunk: Int = 1) throws -> [Piece] {
        let lexer = SQLLexer()
        var pieces: [Piece] = []
        var copy = ""
        let emit: (SQLEvent) throws(TenureError) -> Void = { (event) throws(TenureError) in
            switch event {
            case .statement(let text, _):
                let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
                pieces.append(.statement(trimmed))
                if UploadStatementPolicy.decide(text) == .copyIn { lexer.expectCopyData() }
            case .copyData(let bytes): copy += String(decoding: bytes, as: UTF8.self)
            case .copyEnd:
                pieces.append(.copy(copy))
                copy = ""
            }
        }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + chunk, bytes.count)
            try Array(bytes[offset..<end]).withBytes { (buffer) throws(TenureError) in try lexer.feed(buffer, emit: emit) }
            offset = end
        }
        try lexer.finish(emit: emit)
        return pieces
    }

    func rejection(_ text: String, chunk: Int = 7) -> String? {
        do {
            _ = try lex(text, chunk: chunk)
            return nil
        } catch let error as TenureError {
            return error.message
        } catch {
            return "\(error)"
        }
    }

    @Test func splitsStatementsLikeTheServer() throws {
        let script = """
            --
            -- PostgreSQL database dump
            --

            \\restrict AbC123
            SET standard_conforming_strings = on;
            SELECT 'a;b', E'it\\'s;', 'x''y;', "we;ird""name" FROM t; /* c1; /* nested; */ still; */
            CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;
            CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $body$ SELECT 'a;$$;' $body$;
            SELECT a$b$c FROM t;
            COPY public.t (id, v) FROM stdin;
            1\tsemi;colon
            2\tback\\\\slash and \\N
            \\.
            SELECT 2;
            \\unrestrict AbC123
            """
        for chunk in [1, 3, 64, 100_000] {
            let pieces = try lex(script, chunk: chunk)
            try #require(pieces.count == 8, "\(pieces)")
            guard case .statement(let first) = pieces[0] else { Issue.record("\(pieces[0])"); continue }
            #expect(first.hasPrefix("--\n-- PostgreSQL database dump") && first.hasSuffix("\nSET standard_conforming_strings = on;") && !first.contains("restrict"))
            #expect(pieces[1] == .statement("SELECT 'a;b', E'it\\'s;', 'x''y;', \"we;ird\"\"name\" FROM t;"))
            #expect(pieces[2] == .statement("/* c1; /* nested; */ still; */\nCREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;"))
            #expect(pieces[3] == .statement("CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $body$ SELECT 'a;$$;' $body$;"))
            #expect(pieces[4] == .statement("SELECT a$b$c FROM t;"))
            #expect(pieces[5] == .statement("COPY public.t (id, v) FROM stdin;"))
            #expect(pieces[6] == .copy("1\tsemi;colon\n2\tback\\\\slash and \\N\n"))
            #expect(pieces[7] == .statement("SELECT 2;"))
        }
        #expect(try lex("SELECT 1;\nCOPY t FROM stdin;\n\\.\nSELECT 2;\n") == [.statement("SELECT 1;"), .statement("COPY t FROM stdin;"), .copy(""), .statement("SELECT 2;")])
    }

    /// COPY data is taken a chunk's whole lines at a time: the same data, the same end, the
    /// same line numbers in rejections, wherever the chunks split it.
    @Test func copyDataTakenInWholeChunksKeepsEveryCheck() throws {
        var rows = ""
        for index in 1...300 { rows += "\(index)\tzo\u{00EB} \u{1F600} \\.not an end\t\\N\\x\(String(repeating: "a", count: index % 23))\n" }
        rows += "\\.x is data too\n"
        let script = "SELECT 1;\nCOPY t (a, b) FROM stdin;\n" + rows + "\\.\r\nSELECT 2;\nCOPY t FROM stdin;\n9\n\\.\nSELECT 3;\n"
        for chunk in [1, 2, 7, 8, 9, 64, 4_096, 100_000] {
            let pieces = try lex(script, chunk: chunk)
            #expect(
                pieces == [.statement("SELECT 1;"), .statement("COPY t (a, b) FROM stdin;"), .copy(rows), .statement("SELECT 2;"),
                    .statement("COPY t FROM stdin;"), .copy("9\n"), .statement("SELECT 3;")], "chunk \(chunk)")
        }
        // A bad byte in line 40 of the data (line 42 of the script) is reported there.
        let lines = (1...60).map { "\($0)\tvalue \($0) with some words\n" }
        do {
            var broken = lines
            broken[39] = "40\tvalue\u{0}\n"
            let text = "SELECT 1;\nCOPY t FROM stdin;\n" + broken.joined() + "\\.\n"
            for chunk in [1, 7, 100_000] {
                let message = rejection(text, chunk: chunk)
                #expect(message?.contains("line 42: a NUL byte") == true, "chunk \(chunk): \(message ?? "accepted")")
            }
        }
        for chunk in [1, 7, 100_000] {
            var bytes = Array("SELECT 1;\nCOPY t FROM stdin;\n".utf8) + lines.prefix(39).flatMap { Array($0.utf8) }
            bytes += Array("40\tcut ".utf8) + [0xC3] + Array("\n".utf8) + Array("41\tb\n\\.\n".utf8)
            let lexer = SQLLexer()
            var message = ""
            do {
                var offset = 0
                while offset < bytes.count {
                    let end = min(offset + chunk, bytes.count)
                    try Array(bytes[offset..<end]).withBytes { (buffer) throws(TenureError) in
                        try lexer.feed(buffer) { (event) throws(TenureError) in
                            if case .statement(let text, _) = event, UploadStatementPolicy.decide(text) == .copyIn { lexer.expectCopyData() }
                        }
                    }
                    offset = end
                }
            } catch { message = error.message }
            #expect(message.hasPrefix("line 42: invalid UTF-8"), "chunk \(chunk): \(message)")
        }
    }

    @Test func refusesMetaCommandsAndTricks() {
        let cases: [(String, String)] = [
            ("\\! touch /tmp/x\n", "meta-command '\\!'"),
            ("\\copy t from '/etc/passwd'\n", "meta-command '\\copy'"),
            ("\\connect postgres\n", "meta-command '\\connect'"),
            ("\\c postgres\n", "meta-command '\\c'"),
            ("SELECT 1 \\g\n", "psql meta-command"),
            ("-- Name: x\n\\! id\n", "meta-command '\\!'"),
            ("\\restrict bad key\n", "meta-command '\\restrict'"),
            ("CREATE TABLE \"a\nb\" (x int);", "line break"),
            ("CREATE TABLE t (a int", "truncated"),
            ("SELECT 'open", "inside a quoted string"),
            ("SELECT $$ open", "dollar-quoted"),
            ("/* open", "comment"),
            ("COPY t FROM stdin;\n1\n", "inside COPY data"),
            ("SELECT 1;\u{0}", "NUL byte"),
        ]
        for (text, expected) in cases {
            let message = rejection(text)
            #expect(message?.contains(expected) == true, "\(text.debugDescription): \(message ?? "accepted")")
        }
        // Invalid UTF-8.
        let lexer = SQLLexer()
        #expect(throws: TenureError.self) {
            try [0x53, 0xFF, 0x3B].withBytes { (buffer) throws(TenureError) in try lexer.feed(buffer) { (_) throws(TenureError) in } }
        }
    }

    @Test func statementPolicy() {
        let rejected = [
            "COPY t TO PROGRAM 'id';", "COPY t FROM PROGRAM 'id';", "COPY t FROM '/etc/passwd';", "COPY (SELECT 1) TO STDOUT;",
            "ALTER ROLE current_user SUPERUSER;", "ALTER USER x WITH SUPERUSER;", "CREATE ROLE evil SUPERUSER;", "CREATE USER evil;",
            "ALTER SYSTEM SET shared_buffers = '1GB';", "CREATE DATABASE x;", "DROP DATABASE postgres;",
            "CREATE TRUSTED LANGUAGE plx HANDLER h;", "CREATE OR REPLACE PROCEDURAL LANGUAGE plperlu;", "SET ROLE postgres;",
            "SET SESSION AUTHORIZATION postgres;", "LOAD '/tmp/x.so';", "CREATE SUBSCRIPTION s CONNECTION '' PUBLICATION p;",
            "CREATE SERVER s FOREIGN DATA WRAPPER w;", "CREATE TABLESPACE t LOCATION '/tmp';", "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f();",
        ]
        for statement in rejected {
            guard case .reject = UploadStatementPolicy.decide(statement) else {
                Issue.record("not rejected: \(statement)")
                continue
            }
        }
        let skipped = [
            "ALTER TABLE public.t OWNER TO postgres;", "ALTER FUNCTION public.f() OWNER TO \"Some Role\";", "ALTER LARGE OBJECT 16395 OWNER TO postgres;",
            "GRANT SELECT ON TABLE public.t TO alice;", "REVOKE ALL ON SCHEMA public FROM PUBLIC;", "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO x;",
        ]
        for statement in skipped { #expect(UploadStatementPolicy.decide(statement) == .skip, "\(statement)") }
        let run = [
            "CREATE TABLE public.t (id int);", "SELECT pg_catalog.set_config('search_path', '', false);", "SET statement_timeout = 0;",
            "CREATE EXTENSION IF NOT EXISTS pgcrypto;", "ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);",
            "-- comment\nCREATE INDEX i ON t (id);", "SELECT pg_catalog.lo_create('16395');",
        ]
        for statement in run { #expect(UploadStatementPolicy.decide(statement) == .run, "\(statement)") }
        #expect(UploadStatementPolicy.decide("COPY public.t (id, v) FROM stdin;") == .copyIn)
    }

    /// The policy judges a statement on all of its tokens, however long: a COPY naming the
    /// most columns a table can have is still `COPY ... FROM stdin`, and what hides past the
    /// first few hundred tokens is still seen.
    @Test func policyJudgesLongStatementsWhole() {
        let columns = (1...1600).map { "c\($0)" }.joined(separator: ", ")
        #expect(UploadStatementPolicy.decide("COPY public.wide (\(columns)) FROM stdin;") == .copyIn)
        #expect(UploadStatementPolicy.decide("COPY public.wide (\(columns)) TO PROGRAM 'id';") != .copyIn)
        guard case .reject = UploadStatementPolicy.decide("COPY public.wide (\(columns)) FROM PROGRAM 'id';") else {
            Issue.record("a COPY FROM PROGRAM behind 1,600 columns was not rejected")
            return
        }
        guard case .reject = UploadStatementPolicy.decide("COPY public.wide (\(columns)) FROM '/etc/passwd';") else {
            Issue.record("a COPY from a file behind 1,600 columns was not rejected")
            return
        }
        #expect(UploadStatementPolicy.decide("ALTER TABLE public.wide ALTER COLUMN c1 SET DEFAULT 0, \(columns.replacingOccurrences(of: ", ", with: " ")) OWNER TO postgres;") == .skip)
        let values = (1...20000).map { "(\($0), 'v\($0)')" }.joined(separator: ", ")
        #expect(UploadStatementPolicy.decide("INSERT INTO public.t VALUES \(values);") == .run)
    }

    @Test func formatDetection() throws {
        #expect(try UploadFormat.detect(Array("PGDMP\u{1}\u{e}".utf8)) == .pgDumpCustom)
        #expect(try UploadFormat.detect([0x28, 0xB5, 0x2F, 0xFD, 0, 0]) == .sqlZst)
        #expect(try UploadFormat.detect(Array("--\n-- dump\nCREATE TABLE t (x int);\n".utf8)) == .sql)
        var tar = [UInt8](repeating: 0, count: 512)
        tar.replaceSubrange(257..<262, with: Array("ustar".utf8))
        tar.replaceSubrange(0..<11, with: Array("header.json".utf8))
        #expect(try UploadFormat.detect(tar) == .tenure)
        tar.replaceSubrange(0..<11, with: Array("toc.dat".utf8) + [0, 0, 0, 0])
        #expect(try UploadFormat.detect(tar) == .pgDumpTar)
        #expect(try UploadFormat.detect([0x1F, 0x8B, 8, 0]) == .sqlGz)
        #expect(try UploadFormat.detect(Array("PK\u{3}\u{4}".utf8) + [20, 0]) == .zip)
        #expect(throws: TenureError.self) { try UploadFormat.detect([]) }
        var generator = SystemRandomNumberGenerator()
        let garbage = (0..<512).map { _ in UInt8.random(in: 0...255, using: &generator) | 0x80 }
        #expect(throws: TenureError.self) { try UploadFormat.detect(garbage) }
    }
}
