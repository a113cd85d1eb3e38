import ArgumentParser
import Foundation
import TenureCatalog
import TenureControl
import TenureCore
import TenureEngine

#if canImport(Glibc)
import Glibc
#endif

extension UploadState: ExpressibleByArgument {}

/// `tenure upload ...`: the upgrade service.
struct UploadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upload",
        abstract: "The upgrade service: upload a database, upgrade it with the scripts, download the result.",
        discussion: """
            An upload (a Tenure archive, a pg_dump custom-format archive, or plain SQL, optionally zstd-compressed) is restored \
            while it arrives into a fresh database owned by a fresh unprivileged role, and runs only as that role. `upgrade` \
            applies the scripts of TENURE_UPGRADE_SCRIPTS (default sql/upgrade, name order, one transaction each) to a copy. \
            The result is kept for TENURE_UPGRADE_HOLD (default 4 calendar months) after the last successful upgrade, then the \
            expiry sweep destroys it; the original is deleted after the first successful upgrade.
            """,
        subcommands: [Create.self, List.self, Show.self, Upgrade.self, Download.self, Delete.self, Hold.self, Release.self, Certificate.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Upload a database dump from a file or stdin (-).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The dump: a .tenure archive, a pg_dump -Fc archive, a .sql or .sql.zst file, or - for stdin.") var path: String
        @Option(help: "A name to show for it (default: the file name).") var name: String?
        @Option(help: "The tenant server to restore it on (default: default).") var server: String?

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                // Opened here, so a missing file is refused before anything else; read on the pool.
                let source = Handoff(try openInput(path))
                let label = name ?? (path == "-" ? "stdin" : URL(fileURLWithPath: path).lastPathComponent)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let record = try await session.serverWork { (controller) throws(TenureError) in try controller.createUpload(source: source.value, label: label, serverName: server) }
                    output.emit(json: uploadDocument(record, hold: session.configuration.upgradeHold)) {
                        "uploaded \(record.id) (\(record.format ?? "?"), \(record.byteCount) bytes, \(record.statementCount) statements"
                            + (record.skippedCount > 0 ? ", \(record.skippedCount) ownership/privilege statements skipped" : "") + ")"
                    }
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List uploads.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "Only uploads in this state.") var state: UploadState?

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                try await Session.with(options) { (session) async throws(TenureError) in
                    let records = try await session.call { (controller) throws(TenureError) in try controller.uploads(state: state, after: nil, limit: 1_000_000) }
                    let hold = session.configuration.upgradeHold
                    output.emit(json: ["uploads": records.map { uploadDocument($0, hold: hold) }]) {
                        records.isEmpty
                            ? "no uploads"
                            : table(
                                ["ID", "STATE", "NAME", "FORMAT", "UPLOADED", "LAST UPGRADE", "HOLD UNTIL", "LEGAL HOLD"],
                                records.map { record in
                                    [
                                        record.id.rawValue, record.state.rawValue, printable(record.label, limit: 30), record.format ?? "-", short(record.uploadedAt),
                                        short(record.lastUpgradedAt), record.state.holdsData ? short(record.candidate.holdEnds(hold)) : "-",
                                        record.legalHoldReason == nil ? "" : "yes",
                                    ]
                                })
                    }
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one upload: state, hold, last failure.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Upload id (up_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try UploadID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let record = try await session.call { (controller) throws(TenureError) in try controller.upload(id) }
                    output.emit(json: uploadDocument(record, hold: session.configuration.upgradeHold)) { uploadText(record, hold: session.configuration.upgradeHold) }
                }
            }
        }
    }

    struct Upgrade: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Apply the upgrade scripts to a copy of the upload; on failure the previous data is kept and the error recorded.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Upload id (up_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try UploadID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    _ = try await session.runJob(try await session.call { (controller) throws(TenureError) in try controller.requestUpgrade(id) }, json: options.json)
                    let record = try await session.call { (controller) throws(TenureError) in try controller.upload(id) }
                    output.emit(json: uploadDocument(record, hold: session.configuration.upgradeHold)) {
                        "upgraded \(record.id) with \(record.appliedScripts.count) scripts; kept until \(RFC3339.format(record.candidate.holdEnds(session.configuration.upgradeHold)))"
                    }
                }
            }
        }
    }

    struct Download: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write the upgraded result to a file or stdout.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Upload id (up_…).") var id: String
        @Option(name: .shortAndLong, help: "Output file, or - for stdout.") var output: String
        @Option(help: "native (.tenure) or sql (.sql.zst).") var format: BackupFormat = .native

        func run() async {
            await runCommand(json: options.json) { (printer) async throws(TenureError) in
                let id = try UploadID(parsing: id)
                if output == "-" && isatty(1) == 1 { throw TenureError(.invalidRequest, "refusing to write a download to a terminal; redirect stdout") }
                try await Session.with(options) { (session) async throws(TenureError) in
                    let total = try await session.serverWork { (controller) throws(TenureError) -> Int64 in
                        let (path, _) = try controller.uploadResultFile(id, format: format)
                        let source = try controller.openUploadResult(path).source
                        let sink: any ByteSink = output == "-" ? DescriptorSink(descriptor: 1, what: "stdout") : try AtomicFileSink(path: output)
                        var buffer = [UInt8](repeating: 0, count: 1 << 20)
                        var total: Int64 = 0
                        do throws(TenureError) {
                            while true {
                                let count = try buffer.withMutableBytes { (raw) throws(TenureError) in try source.read(into: raw) }
                                if count == 0 { break }
                                try buffer.withBytes { (raw) throws(TenureError) in try sink.write(UnsafeRawBufferPointer(rebasing: raw[0..<count])) }
                                total += Int64(count)
                            }
                            try sink.finish()
                        } catch {
                            sink.abort()
                            throw error
                        }
                        return total
                    }
                    if output != "-" {
                        printer.emit(json: ["id": id.rawValue, "output": output, "format": format.rawValue, "bytes": total]) {
                            "wrote the result of \(id) to \(output) (\(total) bytes)"
                        }
                    }
                }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Destroy an upload now: its databases, role and files (refused under a legal hold).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Upload id (up_…).") var id: String
        @Option(help: "Repeat the id to confirm.") var confirm: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try UploadID(parsing: id)
                guard confirm == id.rawValue else {
                    throw TenureError(.confirmationMismatch, "--confirm must repeat the upload id (\(id)); nothing was destroyed")
                }
                try await Session.with(options) { (session) async throws(TenureError) in
                    let record = try await session.serverWork { (controller) throws(TenureError) in try controller.deleteUpload(id) }
                    output.emit(json: uploadDocument(record, hold: session.configuration.upgradeHold)) { "destroyed \(record.id): databases, role and files are gone" }
                }
            }
        }
    }

    struct Hold: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put an upload under a legal hold: nothing destroys it until released.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Upload id (up_…).") var id: String
        @Option(help: "Why the data must be kept.") var reason: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try UploadID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let record = try await session.call { (controller) throws(TenureError) in try controller.setUploadHold(id, reason: reason) }
                    output.emit(json: uploadDocument(record, hold: session.configuration.upgradeHold)) { "legal hold set on \(record.id)" }
                }
            }
        }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Lift an upload's legal hold.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Upload id (up_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try UploadID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let record = try await session.call { (controller) throws(TenureError) in try controller.setUploadHold(id, reason: nil) }
                    output.emit(json: uploadDocument(record, hold: session.configuration.upgradeHold)) { "legal hold lifted on \(record.id)" }
                }
            }
        }
    }
}

func uploadText(_ record: UploadRecord, hold: UploadHold) -> String {
    var lines = [
        "id:             \(record.id)",
        "state:          \(record.state.rawValue)",
        "name:           \(printable(record.label))",
        "format:         \(record.format ?? "-")",
        "uploaded:       \(short(record.uploadedAt))",
        "last upgrade:   \(short(record.lastUpgradedAt)) (\(record.upgradeCount) successful)",
    ]
    if record.state.holdsData || record.state == .upgrading { lines.append("kept until:     \(RFC3339.format(record.candidate.holdEnds(hold)))") }
    if let reason = record.rejectReason { lines.append("rejected:       \(reason)") }
    if let error = record.failedError { lines.append("last failure:   \(record.failedScript ?? "-"): \(error)") }
    if let reason = record.legalHoldReason { lines.append("legal hold:     \(reason)") }
    if record.state == .destroyed { lines.append("destroyed:      \(short(record.destroyedAt)) by \(record.destroyedBy ?? "-") (\(record.destroyReason ?? "-"))") }
    return lines.joined(separator: "\n")
}
