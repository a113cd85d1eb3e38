import ArgumentParser
import Foundation
import TenureControl
import TenureCore

struct BackupStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup-status",
        abstract: "Per live database: its newest verified backup and age, next due time, backups kept, last drill; and fleet totals.")
    @OptionGroup var options: GlobalOptions
    @Flag(help: "Only stale databases (newest verified backup older than TENURE_BACKUP_MAX_AGE).") var stale = false

    func run() async {
        await runCommand(json: options.json) { (output) async throws(TenureError) in
            try await Session.with(options) { (session) async throws(TenureError) in
                let status = try await session.call { (controller) throws(TenureError) in try controller.backupStatus(staleOnly: stale) }
                let now = Date()
                output.emit(json: backupStatusDocument(status, now: now)) {
                    table(
                        ["ID", "NAME", "SERVER", "NEWEST VERIFIED", "AGE", "STALE", "NEXT DUE", "KEPT", "LAST DRILL"],
                        status.entries.map { entry in
                            let facts = entry.facts
                            return [
                                facts.databaseID.rawValue, facts.name, facts.serverName, short(facts.newestVerifiedAt),
                                facts.newestVerifiedAt.map { age(now.timeIntervalSince($0)) } ?? "never", entry.stale ? "STALE" : "",
                                short(entry.nextDue), String(facts.kept),
                                facts.lastDrillOutcome.map { "\($0.rawValue) \(short(facts.lastDrillAt))" } ?? "never",
                            ]
                        })
                        + "\n\(status.databases) live databases, \(status.stale) stale, \(status.neverBackedUp) never backed up, "
                        + "\(status.drillFailed) backups failed their drill; schedule \(status.scheduleOn ? "on" : "off")"
                }
            }
        }
    }
}

func age(_ seconds: Double) -> String {
    let value = Int(seconds)
    if value < 120 { return "\(value)s" }
    if value < 7200 { return "\(value / 60)m" }
    if value < 172_800 { return "\(value / 3600)h" }
    return "\(value / 86_400)d"
}

struct DrillCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drill",
        abstract: "Restore drills: a backup restored into a scratch database on TENURE_DRILL_SERVER, checked against its manifest, analyzed, dropped.",
        subcommands: [Run.self, List.self])

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Drill one backup (or a database's newest verified backup) now, as a job, and print the outcome; exit 1 if the drill failed.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "The backup to drill (bk_…).") var backup: String?
        @Option(help: "Drill this database's newest verified backup (db_…).") var database: String?

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let backupID = try backup.map { (text) throws(TenureError) in try BackupID(parsing: text) }
                let databaseID = try database.map { (text) throws(TenureError) in try DatabaseID(parsing: text) }
                guard backupID != nil || databaseID != nil else { throw TenureError(.invalidRequest, "give --backup BK or --database ID") }
                try await Session.with(options) { (session) async throws(TenureError) in
                    let job = try await session.call { (controller) throws(TenureError) in try controller.requestDrill(backupID: backupID, databaseID: databaseID) }
                    let result = try await session.runJob(job, json: options.json)
                    let drill = result["drill"] as? [String: Any] ?? [:]
                    output.emit(json: drill) {
                        "drill \(drill["id"] ?? "?") of backup \(drill["backup_id"] ?? "?"): \(drill["outcome"] ?? "?") in \(drill["duration_ms"] ?? 0) ms"
                            + ((drill["detail"] as? [String: Any])?["error"].map { "\n  \($0)" } ?? "")
                    }
                    if drill["outcome"] as? String != "passed" {
                        throw TenureError(.internal, "the drill of backup \(drill["backup_id"] ?? "?") failed; the backup no longer counts as verified")
                    }
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List restore drills, newest first.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "Only drills of this database (db_…).") var database: String?
        @Option(help: "Only drills of this backup (bk_…).") var backup: String?
        @Option(help: "At most this many (1 to 1000).") var limit: Int = 100

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let databaseID = try database.map { (text) throws(TenureError) in try DatabaseID(parsing: text) }
                let backupID = try backup.map { (text) throws(TenureError) in try BackupID(parsing: text) }
                try await Session.with(options) { (session) async throws(TenureError) in
                    let drills = try await session.call { (controller) throws(TenureError) in try controller.drills(databaseID: databaseID, backupID: backupID, limit: limit) }
                    output.emit(json: ["drills": drills.map(drillDocument)]) {
                        table(
                            ["ID", "BACKUP", "DATABASE", "SERVER", "FINISHED", "MS", "OUTCOME"],
                            drills.map {
                                [$0.id.rawValue, $0.backupID.rawValue, $0.databaseID.rawValue, $0.serverName, short($0.finishedAt), String($0.durationMilliseconds), $0.outcome.rawValue]
                            })
                    }
                }
            }
        }
    }
}
