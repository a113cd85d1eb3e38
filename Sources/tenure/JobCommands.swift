import ArgumentParser
import Foundation
import Logging
import TenureCatalog
import TenureControl
import TenureCore

extension Session {
    /// Runs a job just queued by this command in this process (or follows the `tenure serve`
    /// replica that took it first) and returns its result document; a failed or cancelled
    /// job is the command's error.
    func runJob(_ job: JobRecord, json: Bool) async throws(TenureError) -> [String: Any] {
        let configuration = self.configuration
        // On a terminal: the job's state and counters (as its worker last stored them) once a second.
        let pool = self.pool
        let actor = self.actor
        let ticker: Task<Void, Never>? = isatty(2) == 1 ? Task {
            let start = Date()
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled { break }
                guard let current = try? await pool.withController(actor: actor, { (controller) throws(TenureError) in try controller.job(job.id) }) else { continue }
                let line = "\r\(job.kind.rawValue) \(job.id): \(current.state.rawValue), \(formatBytes(current.progress["bytes"] ?? 0)), "
                    + "\(current.progress["rows"] ?? 0) rows, \(Int(Date().timeIntervalSince(start))) s    "
                FileHandle.standardError.write(Data(line.utf8))
            }
        } : nil
        defer {
            if let ticker {
                ticker.cancel()
                FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
            }
        }
        let finished = try await serverWork { (controller) throws(TenureError) in
            try JobWorker.runToCompletion(
                job.id, catalog: controller.catalog, configuration: configuration, logger: makeLogger(configuration, defaultLevel: .notice)
            ) { waiting in
                if let ahead = waiting.waitingFor {
                    FileHandle.standardError.write(Data("tenure: job \(waiting.id) waits for job \(ahead) on \(waiting.subject)\n".utf8))
                }
            }
        }
        switch finished.state {
        case .succeeded:
            guard let text = finished.result, let document = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return [:] }
            return document
        case .failed, .cancelled, .queued, .running:
            let code = finished.errorCode.flatMap { TenureError.Code(rawValue: $0) } ?? .internal
            throw TenureError(code, finished.errorMessage ?? "job \(finished.id) \(finished.state.rawValue)", context: ["job_id": finished.id.rawValue])
        }
    }

    /// Runs the store deletions (purge jobs) of destroyed databases that are still queued, in
    /// this process (a `tenure serve` replica may take one first; it is followed then), so a
    /// command that destroyed something returns with its backups gone. One that fails is an
    /// error naming its job; it stays queued for a retry.
    func runPendingPurges() async throws(TenureError) {
        let configuration = self.configuration
        try await serverWork { (controller) throws(TenureError) in
            for job in try controller.pendingPurges() {
                let logger = makeLogger(configuration, defaultLevel: .notice)
                let finished = try JobWorker.runToCompletion(job.id, catalog: controller.catalog, configuration: configuration, logger: logger)
                guard finished.state == .succeeded else {
                    throw TenureError(
                        .internal, "deleting the backups of \(job.subject) failed (job \(job.id): \(finished.errorMessage ?? finished.state.rawValue))",
                        context: ["job_id": job.id.rawValue])
                }
            }
        }
    }
}

struct JobCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job",
        abstract: "Durable jobs: backups, restores and upgrade runs, as recorded in the catalog by every replica and command.",
        subcommands: [List.self, Show.self, Cancel.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List jobs, newest first.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "Only jobs of this database (db_…).") var database: String?
        @Option(help: "Only jobs of this upload (up_…).") var upload: String?
        @Option(help: "Only jobs in this state: queued, running, succeeded, failed or cancelled.") var state: String?
        @Option(help: "At most this many (1 to 1000).") var limit: Int = 100
        @Option(help: "The next_cursor of the previous page.") var cursor: String?

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let databaseID = try database.map { (text) throws(TenureError) in try DatabaseID(parsing: text) }
                let uploadID = try upload.map { (text) throws(TenureError) in try UploadID(parsing: text) }
                let jobState = try state.map { (text) throws(TenureError) -> JobState in
                    guard let value = JobState(rawValue: text) else {
                        throw TenureError(.invalidRequest, "state '\(printable(text))' is not one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    return value
                }
                try await Session.with(options) { (session) async throws(TenureError) in
                    let page = try await session.call { (controller) throws(TenureError) in try controller.listJobs(databaseID: databaseID, uploadID: uploadID, state: jobState, limit: limit, cursor: cursor) }
                    let now = Date()
                    output.emit(json: ["jobs": page.jobs.map { jobDocument($0, now: now) }, "next_cursor": page.nextCursor.map { $0 as Any } ?? NSNull()]) {
                        table(
                            ["ID", "KIND", "SUBJECT", "STATE", "ATTEMPT", "CREATED", "FINISHED"],
                            page.jobs.map {
                                [$0.id.rawValue, $0.kind.rawValue, $0.subject, $0.state.rawValue, "\($0.attempt)/\($0.maxAttempts)", short($0.createdAt), short($0.finishedAt)]
                            }) + (page.nextCursor.map { "\n(more: --cursor \($0))" } ?? "")
                    }
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one job: state, attempts, progress, result or error.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Job id (job_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try JobID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let job = try await session.call { (controller) throws(TenureError) in try controller.job(id) }
                    output.emit(json: jobDocument(job, now: Date())) { jobDetail(job) }
                }
            }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel a job: a queued one at once; a running one stops at its replica's next lease renewal and cleans up.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Job id (job_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try JobID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let job = try await session.call { (controller) throws(TenureError) in try controller.cancelJob(id) }
                    output.emit(json: jobDocument(job, now: Date())) {
                        job.state == .cancelled ? "job \(id) cancelled" : "job \(id) asked to stop (it is \(job.state.rawValue))"
                    }
                }
            }
        }
    }
}

func jobDetail(_ job: JobRecord) -> String {
    var lines: [(String, String)] = [
        ("id", job.id.rawValue), ("kind", job.kind.rawValue), ("subject", job.subject), ("state", job.state.rawValue),
        ("attempt", "\(job.attempt) of \(job.maxAttempts)"), ("created", short(job.createdAt)), ("started", short(job.startedAt)),
        ("finished", short(job.finishedAt)),
    ]
    if let owner = job.leaseOwner { lines.append(("replica", owner)) }
    if let ahead = job.waitingFor { lines.append(("waiting for", ahead.rawValue)) }
    if job.cancelRequested { lines.append(("cancel", "requested")) }
    if let bytes = job.progress["bytes"] { lines.append(("bytes", String(bytes))) }
    if let code = job.errorCode { lines.append(("error", "\(code): \(job.errorMessage ?? "")")) }
    let width = lines.map(\.0.count).max() ?? 0
    return lines.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(separator: "\n")
}
