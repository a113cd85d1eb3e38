import Foundation
import Testing
import TenureCore
import TenureEngine
import TenurePQ
import TenureTestSupport
import TenureZstd

/// A raw view of a tar archive for building damaged variants.
struct RawMember {
    var name: String
    var offset: Int
    var content: [UInt8]
    var type: UInt8 = UInt8(ascii: "0")
}

func rawMembers(_ bytes: [UInt8]) -> [RawMember] {
    var members: [RawMember] = []
    var offset = 0
    while offset + 512 <= bytes.count {
        let header = Array(bytes[offset..<offset + 512])
        if header.allSatisfy({ $0 == 0 }) { break }
        let name = String(decoding: header[0..<100].prefix { $0 != 0 }, as: UTF8.self)
        let sizeText = String(decoding: header[124..<135].prefix { $0 != 0 && $0 != 32 }, as: UTF8.self)
        let size = Int(sizeText, radix: 8)!
        members.append(RawMember(name: name, offset: offset, content: Array(bytes[offset + 512..<offset + 512 + size])))
        offset += 512 + (size + 511) / 512 * 512
    }
    return members
}

/// Builds a tar stream from members (any name, any type flag) with valid header checksums.
func buildTar(_ members: [RawMember], end: Bool = true) -> [UInt8] {
    var output: [UInt8] = []
    for member in members {
        var header = [UInt8](repeating: 0, count: 512)
        for (index, byte) in member.name.utf8.prefix(100).enumerated() { header[index] = byte }
        func put(_ text: String, _ at: Int) { for (index, byte) in text.utf8.enumerated() { header[at + index] = byte } }
        put("0000644", 100); put("0000000", 108); put("0000000", 116)
        let size = String(member.content.count, radix: 8)
        put(String(repeating: "0", count: 11 - size.count) + size, 124)
        put("00000000000", 136)
        put("tenure", 265); put("tenure", 297)
        put("        ", 148)
        header[156] = member.type
        if member.type == UInt8(ascii: "2") { put("/etc/passwd", 157) }
        put("ustar", 257); put("00", 263)
        let sum = String(header.reduce(0) { $0 + Int($1) }, radix: 8)
        put(String(repeating: "0", count: 6 - sum.count) + sum, 148)
        header[154] = 0
        output += header + member.content + [UInt8](repeating: 0, count: (512 - member.content.count % 512) % 512)
    }
    if end { output += [UInt8](repeating: 0, count: 1024) }
    return output
}

@Suite(.serialized) struct ArchiveFaultTests {
    /// A small but complete archive of the hard cases, made once.
    static let archive: (bytes: [UInt8], server: TestServer) = {
        let server = try! TestServer.shared()
        let source = try! createHardCases(server)
        let path = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = BackupOptions(source: server.parameters(database: source), jobs: 2, format: .native, pgDump: PgDump(), createdAt: Date())
        options.frameBytes = 64 << 10
        _ = try! runBackup(options, sink: try! AtomicFileSink(path: path))
        return (Array(FileManager.default.contents(atPath: path)!), server)
    }()

    /// Runs verify (in process) and restore (the binary) on `bytes`; both must fail with a
    /// message containing `expected`, and the restore must leave no database behind.
    func expectRejected(_ bytes: [UInt8], _ expected: String, limits: EngineLimits = EngineLimits(), restore: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let path = temporaryFile(".tenure")
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try runVerify(source: try DescriptorSource(path: path), limits: limits)
            Issue.record("verify accepted a bad archive (\(expected))", sourceLocation: sourceLocation)
        } catch {
            #expect(error.message.contains(expected), "verify said: \(error.message)", sourceLocation: sourceLocation)
        }
        guard restore else { return }
        let server = Self.archive.server
        let target = newDatabaseName("never")
        let outcome = try runTenure(["restore", path, "--url", url(server, target), "--jobs", "2"], environment: [:])
        #expect(outcome.status != 0, "restore accepted a bad archive (\(expected))", sourceLocation: sourceLocation)
        #expect(outcome.stderr.contains(expected), "restore said: \(outcome.stderr)", sourceLocation: sourceLocation)
        #expect(try !server.databaseExists(target), sourceLocation: sourceLocation)
        #expect(try leftovers(server).isEmpty, "a temporary database was left behind", sourceLocation: sourceLocation)
    }

    @Test func theUndamagedArchiveVerifiesAndRebuildsIdentically() throws {
        let bytes = Self.archive.bytes
        // Both the archive and its rebuild by this test's tar builder verify, so every
        // rejection below is caused by the damage, not by the builder.
        for candidate in [bytes, buildTar(rawMembers(bytes))] {
            let path = temporaryFile(".tenure")
            _ = FileManager.default.createFile(atPath: path, contents: Data(candidate))
            defer { try? FileManager.default.removeItem(atPath: path) }
            let summary = try runVerify(source: try DescriptorSource(path: path))
            #expect(summary.memberCount > 20)
        }
    }

    @Test func truncatedAtEveryMemberBoundaryAndInsideFrames() throws {
        let bytes = Self.archive.bytes
        let members = rawMembers(bytes)
        var cuts: [Int] = members.map(\.offset)  // at every member boundary
        for member in members where member.content.count > 64 { cuts.append(member.offset + 512 + member.content.count / 2) }  // inside
        cuts.append(bytes.count - 1024)  // without the end marker
        cuts.append(bytes.count - 700)  // inside the end marker
        var rejected = 0
        for cut in cuts {
            let path = temporaryFile(".tenure")
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes[0..<cut]))
            defer { try? FileManager.default.removeItem(atPath: path) }
            if (try? runVerify(source: try DescriptorSource(path: path))) == nil { rejected += 1 }
        }
        #expect(rejected == cuts.count, "\(cuts.count) cuts, \(rejected) rejected")
        // Restore of a sample of cuts leaves nothing behind.
        for cut in [members[2].offset, members[members.count / 2].offset + 700, bytes.count - 1024] {
            try expectRejected(Array(bytes[0..<cut]), "truncated")
        }
    }

    @Test func flippedBytesAreDetected() throws {
        let bytes = Self.archive.bytes
        let members = rawMembers(bytes)
        var detected = 0
        var positions: [Int] = []
        for member in members where member.content.count > 8 {
            positions.append(member.offset + 512 + member.content.count / 3)
            positions.append(member.offset + 100)  // the header
        }
        for position in positions {
            var copy = bytes
            copy[position] ^= 0x5A
            let path = temporaryFile(".tenure")
            _ = FileManager.default.createFile(atPath: path, contents: Data(copy))
            defer { try? FileManager.default.removeItem(atPath: path) }
            if (try? runVerify(source: try DescriptorSource(path: path))) == nil { detected += 1 }
        }
        #expect(detected == positions.count, "\(positions.count) flips, \(detected) detected")
        let data = try #require(members.firstIndex { $0.name.hasPrefix("data/") })
        var copy = bytes
        copy[members[data].offset + 512 + members[data].content.count / 2] ^= 0x01
        try expectRejected(copy, members[data].name)
    }

    @Test func missingReorderedDuplicatedAndExtraParts() throws {
        let members = rawMembers(Self.archive.bytes)
        let dataIndexes = members.indices.filter { members[$0].name.hasPrefix("data/") }
        #expect(dataIndexes.count >= 4)

        var missing = members
        let removed = missing.remove(at: dataIndexes[1])
        try expectRejected(buildTar(missing), removed.name)

        var reordered = members
        reordered.swapAt(dataIndexes[0], dataIndexes[2])
        try expectRejected(buildTar(reordered), "out of order")

        var duplicated = members
        duplicated.insert(members[dataIndexes[0]], at: dataIndexes[1])
        try expectRejected(buildTar(duplicated), "appears twice")

        var extra = members
        var foreign = members[dataIndexes[0]]
        foreign.name = "data/000001.000999.copy.zst"
        extra.insert(foreign, at: dataIndexes[1])
        // Verify says "not listed in the manifest"; restore may fail earlier, loading the foreign
        // part; either way the message names the part.
        try expectRejected(buildTar(extra), foreign.name)

        var noManifest = members
        noManifest.removeLast()
        try expectRejected(buildTar(noManifest), "manifest")

        var afterManifest = members
        afterManifest.append(members[dataIndexes[0]])
        try expectRejected(buildTar(afterManifest), "after its manifest")

        var schemaMoved = members
        schemaMoved.swapAt(1, 2)
        try expectRejected(buildTar(schemaMoved), "out of order")

        try expectRejected(buildTar([]), "incomplete")
        try expectRejected(Array("this is not an archive at all, just garbage bytes".utf8), "truncated")
    }

    /// Tampering that fixes the checksums too (B5): a changed data member with its size and
    /// XXH64 rewritten in the manifest passes every checksum but not the keyed signature.
    @Test func tamperingIsCaughtByTheSignature() throws {
        let server = try TestServer.shared()
        let source = try createHardCases(server)
        let home = temporaryFile("-home")
        defer { try? FileManager.default.removeItem(atPath: home) }
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        let backup = try runTenure(["backup", "--url", url(server, source), "-o", archive], environment: ["TENURE_HOME": home])
        #expect(backup.status == 0, "\(backup)")
        let signed = try runTenure(["verify", archive, "--json"], environment: ["TENURE_HOME": home])
        #expect(signed.json["signature"] as? String == "valid", "\(signed)")

        var members = rawMembers(Array(FileManager.default.contents(atPath: archive)!))
        let index = try #require(members.firstIndex { $0.name.hasPrefix("data/") })
        let forged = try Zstd.compressFrame(Array("forged\n".utf8))
        members[index].content = forged
        let manifestIndex = members.count - 1
        var manifest = try JSONSerialization.jsonObject(with: Data(members[manifestIndex].content)) as! [String: Any]
        var entries = manifest["members"] as! [[String: Any]]
        let entry = try #require(entries.firstIndex { $0["name"] as? String == members[index].name })
        entries[entry]["compressed_bytes"] = forged.count
        entries[entry]["raw_bytes"] = 7
        entries[entry]["rows"] = 1
        entries[entry]["xxh64"] = XXH64.hex(forged.withUnsafeBytes { XXH64.hash($0) })
        manifest["members"] = entries
        members[manifestIndex].content = Array(try JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys]))
        let tampered = temporaryFile(".tenure")
        _ = FileManager.default.createFile(atPath: tampered, contents: Data(buildTar(members)))
        defer { try? FileManager.default.removeItem(atPath: tampered) }
        let caught = try runTenure(["verify", tampered], environment: ["TENURE_HOME": home])
        #expect(caught.status == 2 && caught.stderr.contains("signature does not match"), "\(caught)")
        let target = newDatabaseName("tampered")
        let restore = try runTenure(["restore", tampered, "--url", url(server, target)], environment: ["TENURE_HOME": home])
        // Refused (by COPY rejecting the forged row, or by the signature), leaving nothing.
        #expect(restore.status != 0, "\(restore)")
        #expect(try !server.databaseExists(target) && leftovers(server).isEmpty)
        // Without the key only checksums can be checked, and the verifier says so.
        let elsewhere = try runTenure(["verify", archive, "--json"], environment: ["TENURE_HOME": home + "-other"])
        #expect(elsewhere.status == 0 && elsewhere.json["signature"] as? String == "unknown_key", "\(elsewhere)")
    }

    /// A sealed archive (`--data-key-file`, as the backup store's files are sealed): it verifies
    /// and restores with its key, not with another, and a flipped bit is an authentication
    /// failure naming the member being read; nothing is left behind.
    @Test func aSealedArchiveOpensOnlyWithItsKeyAndNamesTheDamagedMember() throws {
        let server = try TestServer.shared()
        let source = try createHardCases(server)
        let home = temporaryFile("-home")
        defer { try? FileManager.default.removeItem(atPath: home) }
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        let key = home + "/data.key"
        let other = home + "/other.key"
        try (String(repeating: "5a", count: 32) + "\n").write(toFile: key, atomically: true, encoding: .utf8)
        try (String(repeating: "a5", count: 32) + "\n").write(toFile: other, atomically: true, encoding: .utf8)
        let archive = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: archive) }
        let backup = try runTenure(["backup", "--url", url(server, source), "-o", archive, "--data-key-file", key], environment: ["TENURE_HOME": home])
        #expect(backup.status == 0, "\(backup)")
        var bytes = Array(FileManager.default.contents(atPath: archive)!)
        #expect(Array(bytes.prefix(8)) == Array("TNRCRYPT".utf8))
        #expect(try runTenure(["verify", archive, "--data-key-file", key], environment: ["TENURE_HOME": home]).status == 0)
        let wrongKey = try runTenure(["verify", archive, "--data-key-file", other], environment: ["TENURE_HOME": home])
        #expect(wrongKey.status == 2 && wrongKey.stderr.contains("not with the key"), "\(wrongKey)")
        let target = newDatabaseName("sealed")
        let restore = try runTenure(["restore", archive, "--url", url(server, target), "--data-key-file", key], environment: ["TENURE_HOME": home])
        #expect(restore.status == 0, "\(restore)")
        #expect(try server.databaseExists(target))
        bytes[bytes.count / 2] ^= 0x04
        let damaged = temporaryFile(".tenure")
        defer { try? FileManager.default.removeItem(atPath: damaged) }
        _ = FileManager.default.createFile(atPath: damaged, contents: Data(bytes))
        let caught = try runTenure(["verify", damaged, "--data-key-file", key], environment: ["TENURE_HOME": home])
        #expect(caught.status == 2 && caught.stderr.contains("does not authenticate") && caught.stderr.contains("archive"), "\(caught)")
        let refused = newDatabaseName("sealed_damaged")
        let failed = try runTenure(["restore", damaged, "--url", url(server, refused), "--data-key-file", key], environment: ["TENURE_HOME": home])
        #expect(failed.status != 0 && failed.stderr.contains("does not authenticate"), "\(failed)")
        #expect(try !server.databaseExists(refused) && leftovers(server).isEmpty)
    }

    @Test func hostileMemberNamesAndTypes() throws {
        let members = rawMembers(Self.archive.bytes)
        for name in ["../etc/passwd", "/etc/passwd", "data/../../x.copy.zst", "data//x"] {
            var hostile = members
            hostile[4].name = name
            try expectRejected(buildTar(hostile), "not allowed")
        }
        for (type, word) in [("2", "symbolic link"), ("1", "hard link"), ("3", "device"), ("4", "device"), ("5", "directory")] {
            var hostile = members
            hostile[4].type = type.utf8.first!
            try expectRejected(buildTar(hostile), word)
        }
        var unknown = members
        unknown[4].name = "evil.sh"
        try expectRejected(buildTar(unknown), "unexpected member")
    }

    @Test func decompressionBombsStopAtTheLimit() throws {
        // A data member of 64 MiB of one byte is a few KiB compressed; with a 1 MiB limit it
        // must be refused before it is decompressed.
        let bomb = [UInt8](repeating: 0x41, count: 64 << 20)
        let frame = try Zstd.compressFrame(bomb)
        #expect(frame.count < 64 << 10)
        var members = rawMembers(Self.archive.bytes)
        let index = try #require(members.firstIndex { $0.name.hasPrefix("data/") })
        members[index].content = frame
        var limits = EngineLimits()
        limits.maximumRawMemberBytes = 1 << 20
        try expectRejected(buildTar(members), "limit", limits: limits, restore: false)
        // A member declaring a size past the member limit is refused from its header.
        limits = EngineLimits()
        limits.maximumMemberBytes = 16
        try expectRejected(Self.archive.bytes, "limit", limits: limits, restore: false)
        limits = EngineLimits()
        limits.maximumMemberCount = 5
        try expectRejected(Self.archive.bytes, "members", limits: limits, restore: false)
    }

    @Test func lostConnectionMidBackupLeavesNoFile() throws {
        let server = try TestServer.shared()
        let source = newDatabaseName("lost")
        _ = try server.rows("CREATE DATABASE \(source)")
        _ = try server.rows("CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 8) AS t FROM generate_series(1, 1500000) g", database: source)
        let output = temporaryFile(".tenure")
        let backup = try startTenure(["backup", "--url", url(server, source), "-o", output, "--jobs", "2"], environment: [:])
        var killed = 0
        for _ in 0..<400 {
            killed += Int(try server.rows("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'tenure-backup-worker'")[0][0]!)!
            if killed > 0 { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        let outcome = backup.wait()
        #expect(killed > 0, "the test never caught a worker")
        #expect(outcome.status == 1, "\(outcome)")
        #expect(!FileManager.default.fileExists(atPath: output), "a failed backup left a file under the final name")
        let directory = (output as NSString).deletingLastPathComponent
        let partials = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.contains(".partial-") && $0.contains((output as NSString).lastPathComponent) }
        #expect(partials.isEmpty, "temporary files left: \(partials)")
    }

    @Test func fullDiskFailsCleanly() throws {
        let server = try TestServer.shared()
        let source = try createHardCases(server)
        let outcome = try ChildProcess(
            ["/bin/sh", "-c", "\"$TENURE\" backup --url \"$SRC\" -o - > /dev/full"],
            environment: ["PATH": "/usr/bin:/bin", "TENURE": tenureExecutable(), "SRC": url(server, source)]
        ).wait()
        #expect(outcome.status == 1 && outcome.stderr.contains("disk is full"), "\(outcome)")
    }

    @Test func olderPgDumpIsRefused() throws {
        let server = try TestServer.shared()
        let fake = temporaryFile("-pg_dump")
        try "#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.9'\n".write(toFile: fake, atomically: true, encoding: .utf8)
        chmod(fake, 0o755)
        defer { try? FileManager.default.removeItem(atPath: fake) }
        let output = temporaryFile(".tenure")
        let outcome = try runTenure(["backup", "--url", url(server, "postgres"), "-o", output], environment: ["TENURE_PG_DUMP": fake])
        #expect(outcome.status == 2 && outcome.stderr.contains("older than the server"), "\(outcome)")
        #expect(!FileManager.default.fileExists(atPath: output))
    }

    @Test func existingOutputIsNeverOverwritten() throws {
        let server = try TestServer.shared()
        let output = temporaryFile(".tenure")
        try "precious".write(toFile: output, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: output) }
        let outcome = try runTenure(["backup", "--url", url(server, "postgres"), "-o", output], environment: [:])
        #expect(outcome.status == 2 && outcome.stderr.contains("already exists"))
        #expect(try String(contentsOfFile: output, encoding: .utf8) == "precious")
    }
}

/// A session blocked in the server is woken from another thread by its interrupter (what a
/// cancel or a stalled server does to a data session), and the server ends the statement.
@Suite struct SessionInterruptTests {
    @Test func anInterruptWakesABlockedSessionAndTheServerGivesUp() throws {
        let server = try TestServer.shared()
        let progress = TransferProgress()
        let blocked = try PostgresConnection(server.parameters(), applicationName: "tenure-interrupt-test")
        try blocked.execute("SET client_connection_check_interval = 1000")
        let interrupter = blocked.interrupter
        progress.onStop { interrupter.interrupt() }
        let pid = try blocked.query("SELECT pg_backend_pid()::text AS p")[0, "p"]!
        DispatchQueue.global().asyncAfter(deadline: .now() + 1) { progress.cancel() }
        let started = Date()
        var failure: TenureError?
        do throws(TenureError) { try blocked.execute("SELECT pg_sleep(60)") } catch { failure = error }
        #expect(failure != nil && Date().timeIntervalSince(started) < 5, "\(String(describing: failure))")
        blocked.close()
        interrupter.interrupt()  // after close: does nothing
        // Registered after the stop: run at once.
        let late = Locked(false)
        progress.onStop { late.withLock { $0 = true } }
        #expect(late.withLock { $0 })
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, try !server.rows("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [pid]).isEmpty { usleep(100_000) }
        #expect(try server.rows("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [pid]).isEmpty)
    }
}
