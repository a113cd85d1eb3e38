import Foundation
import TenureCatalog
import TenureControl
import TenureCore

/// Documented exit codes. One exhaustive switch from the error category.
enum ExitStatus: Int32 {
    case success = 0
    case failure = 1
    case invalidInput = 2
    case notFound = 3
    case conflict = 4

    init(_ category: ErrorCategory) {
        switch category {
        case .invalidInput: self = .invalidInput
        case .notFound: self = .notFound
        case .conflict: self = .conflict
        case .failure, .unauthorized, .forbidden, .limited: self = .failure
        }
    }
}

/// Writes results: one JSON document on stdout with `--json`, a human table otherwise.
/// Errors go to stderr as one line (and, with `--json`, also as a JSON document on stdout).
struct Output {
    let json: Bool

    func emit(json document: Any, human: () -> String) {
        if json {
            let data = (try? JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
            FileHandle.standardOutput.write(data + Data("\n".utf8))
        } else {
            let text = human()
            if !text.isEmpty { FileHandle.standardOutput.write(Data((text.hasSuffix("\n") ? text : text + "\n").utf8)) }
        }
    }

    func fail(_ error: TenureError) -> Never {
        FileHandle.standardError.write(Data("tenure: error: \(error.message)\n".utf8))
        if json {
            var body: [String: Any] = ["code": error.code.rawValue, "message": error.message]
            if !error.context.isEmpty { body["context"] = error.context }
            emit(json: ["error": body]) { "" }
        }
        exit(ExitStatus(error.code.category).rawValue)
    }
}

/// Runs a command body, turning a thrown `TenureError` into its message and exit code.
func runCommand(json: Bool, _ body: (Output) async throws(TenureError) -> Void) async {
    let output = Output(json: json)
    do throws(TenureError) {
        try await body(output)
    } catch {
        output.fail(error)
    }
}



/// A plain text table with a header row; columns padded to their widest cell.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

func short(_ date: Date?) -> String {
    date.map { RFC3339.format($0) } ?? "-"
}

func databaseDetail(_ record: DatabaseRecord) -> String {
    let l = record.lifecycle
    var lines: [(String, String)] = [
        ("id", record.id.rawValue), ("name", record.name), ("state", l.state.rawValue), ("plan", l.plan.rawValue),
        ("server", record.serverName), ("postgres", "database \(record.postgresDatabase), role \(record.postgresRole)"),
        ("created", short(l.createdAt)),
    ]
    if let value = l.trialEndsAt { lines.append(("trial ends", short(value))) }
    if let value = l.deactivatedAt { lines.append(("deactivated", short(value))) }
    if let value = l.destroyAfter, l.state == .deactivated { lines.append(("destroy after", short(value))) }
    if let hold = l.legalHold { lines.append(("legal hold", "since \(short(hold.since)): \(hold.reason)")) }
    if l.state == .destroyed {
        lines.append(("destroyed", "\(short(l.destroyedAt)) (\(l.destructionReason?.rawValue ?? "?"), by \(record.destroyedBy ?? "?"))"))
    }
    let width = lines.map(\.0.count).max() ?? 0
    return lines.map { "\($0.0.padding(toLength: width, withPad: " ", startingAt: 0))  \($0.1)" }.joined(separator: "\n")
}
