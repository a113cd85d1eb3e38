import Foundation
import TenureEngine

/// Counters and gauges exposed at `/metrics` in Prometheus' text format.
///
/// Labels are only route templates (`/v1/databases/{id}`), methods, statuses, event names,
/// job kinds and outcomes: never a tenant id, name or key. The set of series is bounded by
/// the routes and enums, so memory stays bounded too.
final class ServerMetrics: Sendable {
    private struct State {
        var counters: [String: [String: Double]] = [:]
        var gauges: [String: Double] = [:]
    }
    private let state = Locked(State())

    static let help: [(name: String, type: String, help: String)] = [
        ("tenure_http_requests_total", "counter", "HTTP requests by route template, method and status."),
        ("tenure_http_request_seconds_sum", "counter", "Total seconds spent answering HTTP requests, by route template."),
        ("tenure_transitions_total", "counter", "Lifecycle transitions applied through the API, by event."),
        ("tenure_jobs_total", "counter", "Jobs finished, by kind and outcome."),
        ("tenure_jobs_running", "gauge", "Jobs running now."),
        ("tenure_jobs_queued", "gauge", "Jobs waiting for a slot."),
        ("tenure_exports_running", "gauge", "Streamed exports running now."),
        ("tenure_backup_bytes_total", "counter", "Archive bytes written by backups and exports."),
        ("tenure_restore_bytes_total", "counter", "Table data bytes loaded by restores."),
        ("tenure_sweeps_total", "counter", "Expiry sweeps run by the service, by outcome."),
        ("tenure_sweep_destroyed_total", "counter", "Databases destroyed by the expiry sweep."),
    ]

    func add(_ name: String, _ labels: [(String, String)] = [], _ value: Double = 1) {
        let key = labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",")
        state.withLock { $0.counters[name, default: [:]][key, default: 0] += value }
    }

    func set(_ name: String, _ value: Double) {
        state.withLock { $0.gauges[name] = value }
    }

    func gauge(_ name: String, adding delta: Double) {
        state.withLock { $0.gauges[name, default: 0] += delta }
    }

    func render() -> String {
        let snapshot = state.withLock { $0 }
        var lines: [String] = []
        for metric in Self.help {
            lines.append("# HELP \(metric.name) \(metric.help)")
            lines.append("# TYPE \(metric.name) \(metric.type)")
            if metric.type == "gauge" {
                lines.append("\(metric.name) \(Self.number(snapshot.gauges[metric.name] ?? 0))")
                continue
            }
            let series = snapshot.counters[metric.name] ?? [:]
            if series.isEmpty, !metric.name.contains("_total") || metric.name == "tenure_backup_bytes_total" || metric.name == "tenure_restore_bytes_total"
                || metric.name == "tenure_sweep_destroyed_total"
            {
                lines.append("\(metric.name) 0")
            }
            for (labels, value) in series.sorted(by: { $0.key < $1.key }) {
                lines.append(labels.isEmpty ? "\(metric.name) \(Self.number(value))" : "\(metric.name){\(labels)} \(Self.number(value))")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
