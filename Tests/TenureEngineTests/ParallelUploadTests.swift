import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

@testable import TenureEngine

/// A pg_dump custom-format upload loaded on several sessions: its table of contents read as
/// pg_restore reads it, and the dependency cases (attached partition keys referenced by
/// foreign keys, detached partitions, an extension's configuration rows) loaded alike with
/// 1, 2 and 4 sessions, and from a dump written through a pipe (no data offsets).
@Suite(.serialized) struct ParallelUploadTests {
    func shell(_ command: String, _ environment: [String: String] = [:]) throws -> ChildProcess.Outcome {
        try ChildProcess(["/bin/sh", "-c", command], environment: ["PATH": "/usr/lib/postgresql/15/bin:/usr/bin:/bin"].merging(environment) { $1 }).wait()
    }

    /// `pg_dump -Fc` of `source` to a file (with data offsets) and through a pipe (without).
    func dumps(_ server: TestServer, _ source: String) throws -> (archive: String, piped: String) {
        let archive = temporaryFile(".dump")
        let piped = temporaryFile(".dump")
        #expect(try shell("pg_dump -Fc '\(url(server, source))' > \(archive) && pg_dump -Fc '\(url(server, source))' | cat > \(piped)").status == 0)
        return (archive, piped)
    }

    @Test func tableOfContentsMatchesPgRestore() throws {
        let server = try TestServer.shared()
        let source = try createDependencyCases(server)
        _ = try server.rows("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS t FROM generate_series(1, 200000) g", database: source)
        let (archive, piped) = try dumps(server, source)
        defer {
            try? FileManager.default.removeItem(atPath: archive)
            try? FileManager.default.removeItem(atPath: piped)
        }
        let toc = try #require(CustomArchiveTOC.read(path: archive))
        #expect(toc.hasDataOffsets)
        let listing = try shell("pg_restore --list \(archive) | grep -v '^;'")
        var listed: [Int: String] = [:]
        for line in listing.stdout.split(separator: "\n") {
            let fields = line.split(separator: " ")
            listed[Int(fields[0].dropLast())!] = fields[3...].joined(separator: " ")
        }
        // pg_restore lists every entry but the archive's settings (ENCODING and the like).
        #expect(Set(listed.keys).isSubset(of: Set(toc.entries.map(\.dumpID))))
        for entry in toc.entries where !["ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE"].contains(entry.desc) {
            #expect(listed[entry.dumpID]?.hasPrefix(entry.desc + " ") == true, "\(entry.dumpID) \(entry.desc)")
        }
        let upload = ParallelCustomUpload(
            importer: UploadImporter(target: server.parameters(), jobs: 2, limits: UploadLimits(), pgRestorePath: "/usr/lib/postgresql/15/bin/pg_restore"),
            progress: TransferProgress())
        #expect(try upload.listsSameEntries(toc, archive: archive))
        let data = toc.entries.filter { $0.desc == "TABLE DATA" }
        #expect(data.count > 10 && data.allSatisfy { $0.dataBytes > 0 })
        // The big table's data is the biggest block, and the blocks add up to less than the file.
        #expect(data.max { $0.dataBytes < $1.dataBytes }?.tag == "big")
        let fileSize = try FileManager.default.attributesOfItem(atPath: archive)[.size] as! Int
        #expect(data.reduce(0) { $0 + $1.dataBytes } < fileSize)
        let attach = try #require(toc.entries.first { $0.desc == "TABLE ATTACH" })
        #expect(!attach.dependencies.isEmpty)

        let pipedTOC = try #require(CustomArchiveTOC.read(path: piped))
        #expect(!pipedTOC.hasDataOffsets)
        #expect(CustomArchiveTOC.read(path: "/etc/passwd") == nil)
    }

    @Test func dependencyCasesLoadOnAnyNumberOfSessions() throws {
        let server = try TestServer.shared()
        let source = try createDependencyCases(server)
        let (archive, piped) = try dumps(server, source)
        defer {
            try? FileManager.default.removeItem(atPath: archive)
            try? FileManager.default.removeItem(atPath: piped)
        }
        let want = try fingerprint(server, source)
        let wantSchema = try schemaDump(server, source)
        for (file, jobs) in [(archive, 1), (archive, 2), (archive, 4), (piped, 2)] {
            let target = newDatabaseName("upload_jobs")
            _ = try server.rows("CREATE DATABASE \(target) TEMPLATE template0")
            let importer = UploadImporter(target: server.parameters(database: target), jobs: jobs, limits: UploadLimits(), pgRestorePath: "/usr/lib/postgresql/15/bin/pg_restore")
            let summary: UploadImportSummary
            do { summary = try importer.run(source: try DescriptorSource(path: file)) } catch {
                Issue.record("jobs \(jobs), \(file == piped ? "piped" : "seekable"): \(error)")
                continue
            }
            #expect(summary.format == .pgDumpCustom && summary.statementCount > 50, "\(summary)")
            #expect(try fingerprint(server, target) == want, "jobs \(jobs)")
            #expect(try schemaDump(server, target) == wantSchema, "jobs \(jobs)")
            #expect(try server.rows("SELECT key FROM tenure_settings ORDER BY key", database: target) == [["builtin"], ["mine"], ["theirs"]])
        }
        // Nothing staged is left behind.
        let staged = try FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory()).filter { $0.hasPrefix("tenure-upload-\(getpid())-") }
        #expect(staged.isEmpty, "\(staged)")
    }

    @Test func copyStatementsParsedForBinaryLoading() {
        #expect(StatementRunner.parseCopyFromStdin("COPY public.a (id, t) FROM stdin;")! == ("public", "a", ["id", "t"]))
        #expect(
            StatementRunner.parseCopyFromStdin(StatementRunner.withoutLeadingComments("\n--\n-- Data for Name: a\n--\n\nCOPY public.a (id) FROM stdin;\n"))!
                == ("public", "a", ["id"]))
        #expect(
            StatementRunner.parseCopyFromStdin(#"COPY "My ""Schema"".x"."Ünï" ("a b", c$1, "select") FROM stdin;"#)!
                == (#"My "Schema".x"#, "Ünï", ["a b", "c$1", "select"]))
        for text in [
            "COPY public.a  FROM stdin;", "COPY a (id) FROM stdin;", "COPY public.a (id) FROM stdin WITH (FORMAT csv);", "COPY public.a (Id) FROM stdin;",
            "COPY public.a (id) FROM '/etc/passwd';", "COPY public.a (id) FROM stdin; SELECT 1;", #"COPY public."a (id) FROM stdin;"#,
            "COPY public.a (id,t) FROM stdin;", "COPY public.a (id) TO stdout;",
        ] {
            #expect(StatementRunner.parseCopyFromStdin(Substring(text)) == nil, "\(text)")
        }
    }

    /// Big tables load in binary (with addresses, intervals, ranges, points, text search
    /// vectors and times among their columns); a value the encoder does not take (a BC date) sends
    /// its table back to text, whole, and a type it does not know (xml) stays text.
    @Test func bigTablesLoadInBinaryAndFallBackToText() throws {
        let server = try TestServer.shared()
        let source = newDatabaseName("upload_binary")
        _ = try server.rows("CREATE DATABASE \(source) TEMPLATE template0")
        let connection = try server.connect(database: source)
        try connection.execute(
            """
            CREATE TABLE typed (id bigint PRIMARY KEY, flag boolean, small smallint, n numeric, f4 real, f8 double precision, t text, v varchar(40),
                b bytea, d date, ts timestamp, tz timestamptz, j json, jb jsonb, u uuid, ip inet, iv interval, r tstzrange, pt point, tv tsvector,
                tm time);
            INSERT INTO typed SELECT g, g % 2 = 0, (g % 30000)::smallint, g * 1.25 - 7, g / 3.0, CASE WHEN g % 97 = 0 THEN 'NaN'::float8 ELSE g / 7.0 END,
                E'tab\there\nnewline \\ back ' || md5(g::text), 'v' || g, decode(md5(g::text), 'hex'), date '2000-01-01' + g % 20000,
                timestamp '1999-12-31 23:59:59.5' + g * interval '1 second', timestamptz '2026-01-01 00:00:00+00' - g * interval '1 minute',
                json_build_object('g', g), jsonb_build_object('g', g, 'u', 'ünï'), md5(g::text)::uuid, ('10.' || g % 256 || '.' || g / 256 % 256 || '.1/24')::inet,
                make_interval(days => g % 40 - 20, secs => g / 8.0), tstzrange(timestamptz '2026-01-01 00:00+00' + g * interval '1 minute', NULL),
                point(g / 3.0, -g), to_tsvector('simple', 'row ' || g || ' it''s'), time '00:00' + g * interval '1.5 seconds'
              FROM generate_series(1, 60000) g;
            UPDATE typed SET n = NULL, t = NULL, jb = NULL WHERE id % 11 = 0;
            CREATE TABLE fallback (id int PRIMARY KEY, d date, pad text);
            INSERT INTO fallback SELECT g, date '2020-01-01' + g % 1000, repeat('x', 200) FROM generate_series(1, 50000) g;
            INSERT INTO fallback VALUES (0, 'infinity', 'infinite: converted'), (-1, '0044-03-15 BC', 'BC: not converted, the table goes text');
            CREATE TABLE other (id int, x xml, pad text);
            INSERT INTO other SELECT g, ('<r n="' || g || '"/>')::xml, repeat('y', 200) FROM generate_series(1, 50000) g;
            """)
        connection.close()
        let archive = temporaryFile(".dump")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        #expect(try shell("pg_dump -Fc -Z0 '\(url(server, source))' > \(archive)").status == 0)
        let toc = try #require(CustomArchiveTOC.read(path: archive))
        #expect(toc.entries.filter { $0.desc == "TABLE DATA" }.allSatisfy { $0.dataBytes >= ParallelCustomUpload.batchBytes }, "every table loads alone")
        let target = newDatabaseName("upload_binary_copy")
        _ = try server.rows("CREATE DATABASE \(target) TEMPLATE template0")
        let importer = UploadImporter(target: server.parameters(database: target), jobs: 2, limits: UploadLimits(), pgRestorePath: "/usr/lib/postgresql/15/bin/pg_restore")
        let summary = try importer.run(source: try DescriptorSource(path: archive))
        #expect(summary.binaryTableCount == 1, "typed in binary; fallback and other as text")
        #expect(try fingerprint(server, target) == fingerprint(server, source))
        #expect(try server.rows("SELECT count(*) FROM fallback", database: target) == [["50002"]])
    }
}
