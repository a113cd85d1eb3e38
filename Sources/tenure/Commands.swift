import ArgumentParser
import Foundation
import TenureCatalog
import TenureControl
import TenureCore

/// Options every command takes.
struct GlobalOptions: ParsableArguments {
    @Flag(name: .long, help: "Print one JSON document on stdout instead of a table.")
    var json = false

    @Option(name: .long, help: ArgumentHelp("State directory (overrides TENURE_HOME).", valueName: "path"))
    var home: String?

    func configuration() throws(TenureError) -> TenureConfiguration {
        var environment = ProcessInfo.processInfo.environment
        if let home { environment["TENURE_HOME"] = home }
        return try TenureConfiguration.load(environment: environment)
    }
}

extension Plan: ExpressibleByArgument {}
extension DatabaseState: ExpressibleByArgument {}

struct Tenure: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenure",
        abstract: "Lifecycle manager for database-per-tenant PostgreSQL hosting.",
        discussion: """
            Configuration comes from an optional file ($TENURE_HOME/tenure.conf or $TENURE_CONFIG), then TENURE_* environment \
            variables, then flags. Without TENURE_CATALOG_URL, Tenure starts its own PostgreSQL under TENURE_HOME (default ./var).

            Exit codes: 0 success, 1 failure (server unreachable, PostgreSQL error), 2 usage or invalid input, 3 not found, \
            4 conflict (state does not allow it, someone else changed it first, legal hold, sweep refused).
            """,
        subcommands: [
            Migrate.self, ServerCommand.self, DatabaseCommand.self, AuditCommand.self, Expire.self, Serve.self, ConfigCommand.self,
            BackupCommand.self, RestoreCommand.self, VerifyCommand.self, APIKeyCommand.self, UploadCommand.self, JobCommand.self, BackupStatusCommand.self, DrillCommand.self,
            KeyCommand.self, SigningKeyCommand.self, CertificateCommand.self,
        ]
    )
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply the catalog's migrations (also done at every start).")
    @OptionGroup var options: GlobalOptions

    func run() async {
        await runCommand(json: options.json) { (output) async throws(TenureError) in
            try await Session.with(options) { (session) async throws(TenureError) in
                let status = try await session.call { (controller) throws(TenureError) in try controller.migrationStatus() }
                output.emit(json: ["version": status.applied, "latest": status.known]) {
                    "catalog schema at version \(status.applied) (latest known \(status.known))"
                }
            }
        }
    }
}

// MARK: - server

struct ServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server", abstract: "Register and list the PostgreSQL servers that host tenant databases.",
        subcommands: [Add.self, List.self, Update.self, Drain.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Register a tenant server (checked by connecting to it).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Server name (a DNS label).") var name: String
        @Option(help: "Admin connection URL (a role that may create roles and databases).") var url: String
        @Option(help: "Host tenants connect to (default: the URL's host).") var publicHost: String?
        @Option(help: "Port tenants connect to (default: the URL's port).") var publicPort: Int?
        @Option(help: "How many live databases it takes (default 500); placement fills servers by share of capacity.") var capacity: Int?

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                try await Session.with(options) { (session) async throws(TenureError) in
                    let server = try await session.serverWork { (controller) throws(TenureError) in
                        try controller.addServer(name: name, url: url, publicHost: publicHost, publicPort: publicPort, capacity: capacity)
                    }
                    output.emit(json: serverDocument(server)) { "registered server \(server.name) (\(server.redactedURL))" }
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tenant servers.")
        @OptionGroup var options: GlobalOptions

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                try await Session.with(options) { (session) async throws(TenureError) in
                    let servers = try await session.serverWork { (controller) throws(TenureError) in try controller.serverSummaries() }
                    output.emit(json: ["servers": servers.map(serverSummaryDocument)]) {
                        table(
                            ["NAME", "STATE", "PLACED", "CAPACITY", "BYTES", "PUBLIC", "ADMIN URL"],
                            servers.map {
                                [
                                    $0.server.name.rawValue, $0.server.state.rawValue, String($0.placed), String($0.server.capacity),
                                    $0.bytes.map { formatBytes($0) } ?? "?", "\($0.server.publicHost):\($0.server.publicPort)", $0.server.redactedURL,
                                ]
                            })
                    }
                }
            }
        }
    }
}

extension ServerCommand {
    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a tenant server's capacity or state (draining: no new databases placed there).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Server name.") var name: String
        @Option(help: "How many live databases it takes.") var capacity: Int?
        @Option(help: "active or draining.") var state: String?

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                var parsed: ServerState?
                if let state {
                    guard let value = ServerState(rawValue: state) else { throw TenureError(.invalidRequest, "--state must be active or draining, not '\(printable(state))'") }
                    parsed = value
                }
                guard capacity != nil || parsed != nil else { throw TenureError(.invalidRequest, "give --capacity and/or --state") }
                let newState = parsed
                try await Session.with(options) { (session) async throws(TenureError) in
                    let server = try await session.call { (controller) throws(TenureError) in
                        try controller.updateServer(name: name, capacity: capacity, state: newState)
                    }
                    output.emit(json: serverDocument(server)) { "server \(server.name): \(server.state.rawValue), capacity \(server.capacity)" }
                }
            }
        }
    }

    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop placing new databases on a server (its state becomes draining; `server update NAME --state active` undoes it).",
            discussion: """
                With --move, every live database on it is moved to the servers placement picks: one move job each, at most \
                TENURE_MOVE_CONCURRENCY_PER_SERVER at once; this command runs them and waits (or --no-wait).
                """)
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Server name.") var name: String
        @Flag(help: "Also move every database off it.") var move = false
        @Flag(help: "With --move: return once the moves are queued.") var noWait = false

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                try await Session.with(options) { (session) async throws(TenureError) in
                    let drained = try await session.serverWork { (controller) throws(TenureError) in try controller.drainServer(name, move: move) }
                    var moved: [[String: Any]] = []
                    if !noWait {
                        for job in drained.jobs {
                            let result = try await session.runJob(job, json: options.json)
                            let database = result["database"] as? [String: Any] ?? [:]
                            moved.append(["database_id": job.subject, "server": database["server"] ?? NSNull(), "downtime_seconds": result["downtime_seconds"] ?? NSNull()])
                        }
                    }
                    var document = serverDocument(drained.server)
                    document["jobs"] = drained.jobs.map { jobDocument($0, now: Date()) }
                    document["moved"] = moved
                    output.emit(json: document) {
                        "server \(drained.server.name) is draining: no new databases are placed there"
                            + (move ? "; \(drained.jobs.count) moves \(noWait ? "queued" : "done")" : "")
                    }
                }
            }
        }
    }
}


// MARK: - db

struct DatabaseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db", abstract: "Create hosted databases and move them through their lifecycle.",
        subcommands: [
            Create.self, List.self, Show.self, Subscribe.self, Cancel.self, Reactivate.self, Destroy.self, Hold.self, Release.self,
            Backup.self, Backups.self, Export.self, RestoreBackup.self, Extension.self, Certificate.self, RotatePassword.self, Duplicate.self, Move.self,
        ])

    struct Extension: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Extensions of a hosted database.", subcommands: [Add.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create an extension in a trial or active database: a trusted one, or one TENURE_EXTENSIONS lists (its tables go to the database's owner). Audited; idempotent.")
            @OptionGroup var options: GlobalOptions
            @Argument(help: "Database id (db_…).") var id: String
            @Argument(help: "Extension name, as PostgreSQL spells it (postgis, pg_trgm, …).") var name: String

            func run() async {
                await runCommand(json: options.json) { (output) async throws(TenureError) in
                    let id = try DatabaseID(parsing: id)
                    try await Session.with(options) { (session) async throws(TenureError) in
                        let added = try await session.serverWork { (controller) throws(TenureError) in try controller.addExtension(id, name: name) }
                        output.emit(json: ["database_id": id.rawValue, "extension": added.name, "version": added.version, "created": added.created]) {
                            added.created ? "extension \(added.name) \(added.version) created in \(id)" : "\(id) already has extension \(added.name) \(added.version)"
                        }
                    }
                }
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a database and its owner role; prints the connection URL with its password, once.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The customer's name for it: a DNS label (lowercase letters, digits, '-', up to 63).") var name: String
        @Option(help: "trial or paid.") var plan: Plan = .trial
        @Option(help: "Tenant server to place it on (default: default).") var server: String?

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                try await Session.with(options) { (session) async throws(TenureError) in
                    let created = try await session.serverWork { (controller) throws(TenureError) in try controller.createDatabase(name: name, plan: plan, serverName: server) }
                    var document = databaseDocument(created.record)
                    document["connection_url"] = created.connectionURL
                    output.emit(json: document) {
                        databaseDetail(created.record) + "\n\nconnection URL (shown once, keep it safe):\n" + created.connectionURL
                    }
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List databases.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "Only this state: provisioning, trial, active, deactivated or destroyed.") var state: DatabaseState?

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                try await Session.with(options) { (session) async throws(TenureError) in
                    let records = try await session.call { (controller) throws(TenureError) in try controller.databases(state: state, after: nil, limit: 1_000_000) }
                    output.emit(json: ["databases": records.map(databaseDocument)]) {
                        table(
                            ["ID", "NAME", "STATE", "PLAN", "SERVER", "DEADLINE", "HOLD"],
                            records.map { record in
                                let l = record.lifecycle
                                let deadline: String
                                switch l.state {
                                case .trial: deadline = "trial ends " + short(l.trialEndsAt)
                                case .deactivated: deadline = "destroy after " + short(l.destroyAfter)
                                case .destroyed: deadline = "destroyed " + short(l.destroyedAt)
                                case .provisioning, .active: deadline = "-"
                                }
                                return [record.id.rawValue, record.name, l.state.rawValue, l.plan.rawValue, record.serverName, deadline, l.legalHold == nil ? "-" : "held"]
                            })
                    }
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one database (or its tombstone).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let record = try await session.call { (controller) throws(TenureError) in try controller.database(id) }
                    output.emit(json: databaseDocument(record)) { databaseDetail(record) }
                }
            }
        }
    }

    struct Subscribe: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Turn a trial into a paid, active database.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        func run() async { await transition(options, id, .subscribe) }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel an active database: login disabled, sessions ended, data kept for the grace period.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        func run() async { await transition(options, id, .cancel) }
    }

    struct Reactivate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reactivate a deactivated database within its grace period.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        @Flag(help: "Also set and print a new password (shown once).") var newPassword = false
        func run() async { await transition(options, id, .reactivate, newPassword: newPassword) }
    }

    struct Duplicate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy a live database into a new one (own id, role and password) from one snapshot, streamed; the source stays online.",
            discussion: """
                The new connection URL (with its password) is printed once, when the request is accepted. The copy runs as a job: this \
                command runs it and waits (progress on a terminal), or returns at once with --no-wait (follow it with `tenure job show`). \
                With --neutralize the scripts of TENURE_NEUTRALIZE_SCRIPTS run on the copy before it becomes reachable.
                """)
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Source database id (db_…).") var id: String
        @Option(help: "The new database's name (a DNS label).") var name: String
        @Option(help: "trial or paid.") var plan: Plan = .trial
        @Option(help: "Tenant server for the copy (default: placed by capacity).") var server: String?
        @Flag(help: "Run the neutralize scripts on the copy.") var neutralize = false
        @Flag(help: "Return once the request is accepted; do not wait for the copy.") var noWait = false

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let accepted = try await session.serverWork { (controller) throws(TenureError) in
                        try controller.requestDuplicate(id, name: name, plan: plan, serverName: server, neutralize: neutralize)
                    }
                    // Shown once, before the copy runs, so it is not lost if the wait is interrupted.
                    if !options.json {
                        FileHandle.standardOutput.write(Data("duplicate of \(id) accepted as \(accepted.record.id) (\(accepted.record.name)), job \(accepted.job.id); its connection URL, shown once:\n\n\(accepted.connectionURL)\n\n".utf8))
                    }
                    var document = jobDocument(accepted.job, now: Date())
                    document["connection_url"] = accepted.connectionURL
                    document["new_database_id"] = accepted.record.id.rawValue
                    if noWait {
                        output.emit(json: document) { "not waiting: follow it with tenure job show \(accepted.job.id)" }
                        return
                    }
                    let result = try await session.runJob(accepted.job, json: options.json)
                    let finished = try await session.call { (controller) throws(TenureError) in try controller.job(accepted.job.id) }
                    document = jobDocument(finished, now: Date())
                    document["connection_url"] = accepted.connectionURL
                    document["new_database_id"] = accepted.record.id.rawValue
                    document["result"] = result
                    output.emit(json: document) { "\(accepted.record.id) (\(accepted.record.name)) is ready: a copy of \(id)" }
                }
            }
        }
    }

    struct Move: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a database to another server: writes frozen, streamed, checked, switched, then the source dropped.",
            discussion: "The password stays the same; the connection URL's host and port change. Waits for the job (or --no-wait) and prints the downtime.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        @Option(help: "The server to move it to.") var server: String
        @Flag(help: "Return once the job is queued.") var noWait = false

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let job = try await session.call { (controller) throws(TenureError) in try controller.requestMove(id, to: server) }
                    if noWait {
                        output.emit(json: jobDocument(job, now: Date())) { "move of \(id) queued as job \(job.id)" }
                        return
                    }
                    let result = try await session.runJob(job, json: options.json)
                    let finished = try await session.call { (controller) throws(TenureError) in try controller.job(job.id) }
                    var document = jobDocument(finished, now: Date())
                    document["result"] = result
                    let url = (result["database"] as? [String: Any])?["connection_url"] as? String ?? ""
                    let downtime = result["downtime_seconds"] as? Double ?? 0
                    output.emit(json: document) { "moved \(id) to \(server) (writes frozen \(String(format: "%.1f", downtime)) s); connect at \(url) with the same password" }
                }
            }
        }
    }

    struct RotatePassword: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-password",
            abstract: "Give the database's owner role a new password (printed once); the old one stops working at once.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        @Flag(help: "Also end the role's open sessions.") var endSessions = false

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let outcome = try await session.serverWork { (controller) throws(TenureError) in try controller.rotateCredentials(id, endSessions: endSessions) }
                    var document = databaseDocument(outcome.record)
                    document["connection_url"] = outcome.connectionURL
                    output.emit(json: document) {
                        "new password for \(id) (\(outcome.record.name)), shown once:\n\n\(outcome.connectionURL ?? "")\n"
                    }
                }
            }
        }
    }

    struct Destroy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Request deletion: destroy the database and its role now, keeping a tombstone.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        @Option(help: "The database's name, to confirm.") var confirm: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let outcome = try await session.serverWork { (controller) throws(TenureError) in try controller.requestDeletion(id, confirmName: confirm) }
                    try await session.runPendingPurges()
                    output.emit(json: databaseDocument(outcome.record)) { "destroyed \(id) (\(outcome.record.name))" }
                }
            }
        }
    }

    struct Hold: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Place a legal hold: no destruction until released.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        @Option(help: "Why (recorded in the audit trail).") var reason: String
        func run() async { await transition(options, id, .hold, reason: reason) }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Lift a legal hold.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String
        func run() async { await transition(options, id, .release) }
    }
}

/// The shared path of the transition commands.
func transition(_ options: GlobalOptions, _ text: String, _ event: LifecycleEvent, reason: String? = nil, newPassword: Bool = false) async {
    await runCommand(json: options.json) { (output) async throws(TenureError) in
        let id = try DatabaseID(parsing: text)
        try await Session.with(options) { (session) async throws(TenureError) in
            let outcome = try await session.serverWork { (controller) throws(TenureError) in try controller.apply(event, to: id, reason: reason, newPassword: newPassword) }
            var document = databaseDocument(outcome.record)
            if let url = outcome.connectionURL { document["connection_url"] = url }
            output.emit(json: document) {
                var text = "\(event.rawValue): \(id) (\(outcome.record.name)) is now \(outcome.record.state.rawValue)"
                if outcome.record.lifecycle.legalHold != nil { text += ", under legal hold" }
                if let url = outcome.connectionURL { text += "\n\nnew connection URL (shown once, keep it safe):\n\(url)" }
                return text
            }
        }
    }
}

// MARK: - audit

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "audit", abstract: "Show the audit trail (of one database, or the latest events).")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "Database id (db_…); all databases if omitted.") var id: String?
    @Option(help: "At most this many events.") var limit: Int = 200

    func run() async {
        await runCommand(json: options.json) { (output) async throws(TenureError) in
            let id = try id.map { (text) throws(TenureError) in try DatabaseID(parsing: text) }
            guard (1...100_000).contains(limit) else { throw TenureError(.invalidRequest, "--limit must be from 1 to 100000") }
            try await Session.with(options) { (session) async throws(TenureError) in
                let events = try await session.call { (controller) throws(TenureError) in try controller.auditTrail(id, limit: limit) }
                // A rolled-back create leaves no database row, only its audit trail.
                output.emit(json: [
                    "events": events.map(auditDocument)
                ]) {
                    table(
                        ["AT", "DATABASE", "ACTOR", "ACTION", "FROM", "TO", "REASON"],
                        events.map {
                            [RFC3339.format($0.at), $0.databaseID ?? "-", $0.actor, $0.action, $0.fromState ?? "-", $0.toState ?? "-", $0.reason ?? "-"]
                        })
                }
            }
        }
    }
}

// MARK: - expire

struct Expire: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the expiry sweep: end trials past their end, destroy deactivated databases past their grace and uploads past their hold.",
        discussion: """
            --dry-run lists exactly what a real sweep would do, with the rule and deadline of each; with --as-of it answers for \
            that instant. A real sweep always runs at the current time. A sweep that would destroy more than \
            TENURE_MAX_DESTROY_FRACTION of the live fleet or TENURE_MAX_DESTROY_COUNT databases destroys nothing and exits 4.
            """)
    @OptionGroup var options: GlobalOptions
    @Flag(help: "Only say what would be done.") var dryRun = false
    @Option(help: ArgumentHelp("With --dry-run: the instant to plan for (RFC 3339).", valueName: "instant")) var asOf: String?

    func run() async {
        var refused = false
        await runCommand(json: options.json) { (output) async throws(TenureError) in
            let asOf = try asOf.map { (text) throws(TenureError) in try RFC3339.parse(text, setting: "--as-of") }
            if asOf != nil && !dryRun {
                throw TenureError(.invalidRequest, "--as-of needs --dry-run: a real sweep runs only at the current time")
            }
            try await Session.with(options) { (session) async throws(TenureError) in
                let report = try await session.serverWork { (controller) throws(TenureError) in try controller.sweep(dryRun: dryRun, asOf: asOf) }
                if !dryRun { try await session.runPendingPurges() }
                output.emit(json: sweepDocument(report)) { sweepText(report) }
                refused = report.refusal != nil || report.plan.refusal != nil || report.uploadPlan.refusal != nil
            }
        }
        // Exit only after the session closed (it may own the embedded server).
        if refused { Foundation.exit(ExitStatus.conflict.rawValue) }
    }
}


func outcomeText(_ outcome: SweepReport.ItemOutcome) -> String {
    switch outcome {
    case .planned: return "planned"
    case .done: return "done"
    case .skipped(let why): return "skipped: \(why)"
    case .refused(let why): return "refused: \(why)"
    }
}

func sweepText(_ report: SweepReport) -> String {
    var lines: [String] = []
    let verb = report.dryRun ? "a sweep at \(RFC3339.format(report.plan.asOf)) would" : "the sweep at \(RFC3339.format(report.plan.asOf))"
    if let refusal = report.refusal { return "sweep refused: \(refusal)" }
    if report.plan.items.isEmpty {
        lines.append("\(verb) \(report.dryRun ? "do nothing" : "found nothing due") (\(report.plan.fleetSize) live databases)")
    } else {
        lines.append("\(verb)\(report.dryRun ? "" : " handled"):")
        lines.append(
            table(
                ["ID", "NAME", "ACTION", "RULE", "DEADLINE", "OUTCOME"],
                zip(report.plan.items, report.outcomes).map { item, outcome in
                    return [item.id.rawValue, item.name, item.decision.rawValue, item.rule.rawValue, RFC3339.format(item.deadline), outcomeText(outcome)]
                }))
    }
    if let refusal = report.plan.refusal { lines.append("destruction refused: \(refusal)") }
    if !report.uploadPlan.items.isEmpty {
        lines.append("uploads whose hold ended:")
        lines.append(
            table(
                ["ID", "ACTION", "HOLD ENDED", "OUTCOME"],
                zip(report.uploadPlan.items, report.uploadOutcomes).map { item, outcome in
                    return [item.id.rawValue, item.decision.rawValue, RFC3339.format(item.deadline), outcomeText(outcome)]
                }))
    }
    if let refusal = report.uploadPlan.refusal { lines.append("upload destruction refused: \(refusal)") }
    for action in report.recovered { lines.append("recovered \(action.databaseID): \(action.outcome)") }
    return lines.joined(separator: "\n")
}

// MARK: - config

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Show the effective configuration (secrets redacted) and every setting with its default.")
    @OptionGroup var options: GlobalOptions

    func run() async {
        await runCommand(json: options.json) { (output) async throws(TenureError) in
            let configuration = try options.configuration()
            let effective: [String: Any] = [
                "TENURE_HOME": configuration.home,
                "TENURE_CATALOG_URL": configuration.catalogURL.map(redactPassword(in:)) ?? NSNull(),
                "TENURE_TRIAL_PERIOD": PolicyDuration.format(configuration.policy.trialPeriod),
                "TENURE_GRACE_PERIOD": PolicyDuration.format(configuration.policy.gracePeriod),
                "TENURE_MAX_DESTROY_FRACTION": configuration.sweepLimits.maximumDestroyFraction,
                "TENURE_MAX_DESTROY_COUNT": configuration.sweepLimits.maximumDestroyCount,
                "TENURE_MAX_CLOCK_SKEW": PolicyDuration.format(configuration.sweepLimits.maximumClockSkew),
                "TENURE_SWEEP_INTERVAL": PolicyDuration.format(configuration.sweepInterval),
                "TENURE_PG_BIN": configuration.postgresBinDirectory,
                "TENURE_LOG_LEVEL": configuration.logLevel,
                "TENURE_BACKUP_DIR": configuration.backupDirectory,
                "TENURE_BACKUP_STORE": redactPassword(in: configuration.backupStore.description),
                "TENURE_JOBS": configuration.engineJobs,
                "TENURE_PG_DUMP": configuration.pgDumpPath,
            ]
            output.emit(json: effective) {
                table(
                    ["SETTING", "VALUE", "DEFAULT", "MEANING"],
                    TenureConfiguration.settings.map { setting in
                        ["\(setting.key)", effective[setting.key].map { "\($0 is NSNull ? "(embedded)" : $0)" } ?? "-", setting.defaultValue, setting.help]
                    })
            }
        }
    }
}
