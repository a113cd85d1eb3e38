import Foundation
import TenureCatalog
import TenureCore

// The JSON documents the CLI (`--json`) and the HTTP API both return: one rendering per
// record type, so the two interfaces cannot drift apart. Keys are snake_case; instants
// are RFC 3339 in UTC; absent values are null.

public func instant(_ date: Date?) -> Any {
    date.map { RFC3339.format($0) as Any } ?? NSNull()
}

public func databaseDocument(_ record: DatabaseRecord) -> [String: Any] {
    let l = record.lifecycle
    var document: [String: Any] = [
        "id": record.id.rawValue, "name": record.name, "state": l.state.rawValue, "plan": l.plan.rawValue, "server": record.serverName,
        "version": record.version, "created_at": instant(l.createdAt), "updated_at": instant(record.updatedAt),
        "trial_ends_at": instant(l.trialEndsAt), "deactivated_at": instant(l.deactivatedAt), "destroy_after": instant(l.destroyAfter),
        "legal_hold": l.legalHold != nil,
        "postgres": ["database": record.postgresDatabase, "role": record.postgresRole],
    ]
    if let hold = l.legalHold {
        document["legal_hold_reason"] = hold.reason
        document["legal_hold_since"] = RFC3339.format(hold.since)
    }
    if l.state == .destroyed {
        document["destroyed_at"] = instant(l.destroyedAt)
        document["destroy_reason"] = l.destructionReason?.rawValue ?? NSNull()
        document["destroyed_by"] = record.destroyedBy ?? NSNull()
    }
    return document
}

public func apiKeyDocument(_ record: APIKeyRecord) -> [String: Any] {
    [
        "id": record.id.rawValue, "name": record.name, "scopes": record.scopes.map(\.rawValue), "created_at": RFC3339.format(record.createdAt),
        "revoked_at": record.revokedAt.map { RFC3339.format($0) as Any } ?? NSNull(), "state": record.revokedAt == nil ? "active" : "revoked",
    ]
}

public func sweepDocument(_ report: SweepReport) -> [String: Any] {
    var document: [String: Any] = [
        "dry_run": report.dryRun, "as_of": RFC3339.format(report.plan.asOf), "fleet_size": report.plan.fleetSize,
        "destroy_count": report.plan.destroyCount, "destroy_allowance": report.plan.destroyAllowance,
        "refusal": (report.refusal ?? report.plan.refusal).map { $0 as Any } ?? NSNull(),
        "items": zip(report.plan.items, report.outcomes).map { item, outcome -> [String: Any] in
            var entry: [String: Any] = [
                "id": item.id.rawValue, "name": item.name, "rule": item.rule.rawValue, "deadline": RFC3339.format(item.deadline),
                "action": item.decision.rawValue,
            ]
            switch outcome {
            case .planned: entry["outcome"] = "planned"
            case .done: entry["outcome"] = "done"
            case .skipped(let why):
                entry["outcome"] = "skipped"
                entry["why"] = why
            case .refused(let why):
                entry["outcome"] = "refused"
                entry["why"] = why
            }
            return entry
        },
    ]
    if let id = report.sweepID { document["sweep_id"] = id }
    if !report.recovered.isEmpty {
        document["recovered"] = report.recovered.map { ["intent": $0.intentID.rawValue, "database_id": $0.databaseID.rawValue, "outcome": $0.outcome] }
    }
    return document
}

/// A backup; `store` (the CLI's backup directory) adds its path, which the API never shows.
public func backupDocument(_ record: BackupRecord, store: String?) -> [String: Any] {
    var document: [String: Any] = [
        "id": record.id.rawValue, "database_id": record.databaseID.rawValue, "state": record.state, "format": record.format,
        "started_at": RFC3339.format(record.startedAt),
        "finished_at": record.finishedAt.map { RFC3339.format($0) as Any } ?? NSNull(),
    ]
    if let store { document["path"] = store + "/" + record.path }
    if let bytes = record.byteCount { document["bytes"] = bytes }
    if let rows = record.rowCount { document["rows"] = rows }
    if let tables = record.tableCount { document["tables"] = tables }
    if let error = record.error { document["error"] = error }
    return document
}

public func auditDocument(_ event: AuditEvent) -> [String: Any] {
    [
        "id": event.id, "at": RFC3339.format(event.at), "database_id": event.databaseID ?? NSNull(), "actor": event.actor,
        "action": event.action, "from": event.fromState ?? NSNull(), "to": event.toState ?? NSNull(), "reason": event.reason ?? NSNull(),
        "detail": (try? JSONSerialization.jsonObject(with: Data(event.detail.utf8))) ?? [:],
    ]
}
