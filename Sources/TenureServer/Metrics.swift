import Foundation
import Metrics
import Prometheus

/// What `/metrics` exposes, recorded through swift-metrics into a swift-prometheus registry of
/// this server's own (no global bootstrap) and rendered in Prometheus' text format.
///
/// Labels are only route templates (`/v1/databases/{id}`), methods, statuses, event names,
/// job kinds and outcomes: never a tenant id, name or key. The set of series is bounded by
/// the routes and enums, so memory stays bounded too. Each name always carries the same
/// label names (the registry requires it).
final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let factory: PrometheusMetricsFactory

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        // Requests take milliseconds to seconds; jobs seconds to hours.
        factory.defaultDurationHistogramBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30].map { Duration.milliseconds(Int64($0 * 1000)) }
        factory.durationHistogramBuckets["tenure_job_duration_seconds"] = [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600].map { Duration.seconds($0) }
        self.factory = factory
        // Series that exist from the start, at zero.
        for name in [
            "tenure_backup_bytes_total", "tenure_restore_bytes_total", "tenure_sweep_destroyed_total", "tenure_backup_retention_deleted_total",
            "tenure_backups_scheduled_total", "tenure_drills_scheduled_total", "tenure_backup_store_errors_total",
        ] {
            Counter(label: name, factory: factory).increment(by: 0)
        }
        for outcome in ["passed", "failed"] {
            Counter(label: "tenure_drills_total", dimensions: [("outcome", outcome)], factory: factory).increment(by: 0)
        }
        Meter(label: "tenure_catalog_up", factory: factory).set(1)
        for name in [
            "tenure_jobs_running", "tenure_jobs_queued", "tenure_exports_running", "tenure_backups_stale", "tenure_backups_drill_failed",
            "tenure_backup_newest_verified_oldest_age_seconds", "tenure_databases_live",
        ] {
            Meter(label: name, factory: factory).set(0)
        }
    }

    /// A counter (`tenure_…_total`) grows by `value`.
    func add(_ name: String, _ labels: [(String, String)] = [], _ value: Double = 1) {
        Counter(label: name, dimensions: labels, factory: factory).increment(by: Int64(value.rounded()))
    }

    /// A duration into a histogram (`tenure_…_duration_seconds`).
    func record(_ name: String, _ labels: [(String, String)], _ duration: Duration) {
        Timer(label: name, dimensions: labels, preferredDisplayUnit: .seconds, factory: factory).recordNanoseconds(
            duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    func set(_ name: String, _ value: Double) {
        Meter(label: name, factory: factory).set(value)
    }

    func gauge(_ name: String, adding delta: Double) {
        let meter = Meter(label: name, factory: factory)
        if delta >= 0 { meter.increment(by: delta) } else { meter.decrement(by: -delta) }
    }

    func render() -> String { registry.emitToString() }
}
