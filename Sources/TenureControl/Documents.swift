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
            render(outcome, into: &entry)
            return entry
        },
        "uploads": [
            "fleet_size": report.uploadPlan.fleetSize, "destroy_count": report.uploadPlan.destroyCount,
            "destroy_allowance": report.uploadPlan.destroyAllowance, "refusal": report.uploadPlan.refusal.map { $0 as Any } ?? NSNull(),
            "items": zip(report.uploadPlan.items, report.uploadOutcomes).map { item, outcome -> [String: Any] in
                var entry: [String: Any] = [
                    "id": item.id.rawValue, "rule": "hold_end", "deadline": RFC3339.format(item.deadline), "action": item.decision.rawValue,
                ]
                render(outcome, into: &entry)
                return entry
            },
        ] as [String: Any],
    ]
    if let id = report.sweepID { document["sweep_id"] = id }
    if !report.recovered.isEmpty {
        document["recovered"] = report.recovered.map { ["intent": $0.intentID.rawValue, "database_id": $0.databaseID.rawValue, "outcome": $0.outcome] }
    }
    return document
}

private func render(_ outcome: SweepReport.ItemOutcome, into entry: inout [String: Any]) {
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
}

/// An upload of the upgrade service; `hold` computes when it will be destroyed.
public func uploadDocument(_ record: UploadRecord, hold: UploadHold) -> [String: Any] {
    var document: [String: Any] = [
        "id": record.id.rawValue, "state": record.state.rawValue, "name": record.label, "format": record.format ?? NSNull(), "server": record.serverName,
        "version": record.version, "created_at": RFC3339.format(record.createdAt), "updated_at": RFC3339.format(record.updatedAt),
        "uploaded_at": instant(record.uploadedAt), "last_run_at": instant(record.lastRunAt), "last_upgraded_at": instant(record.lastUpgradedAt),
        "upgrade_count": record.upgradeCount, "bytes": record.byteCount, "statements": record.statementCount, "skipped_statements": record.skippedCount,
        "original_deleted_at": instant(record.originalDeletedAt), "applied_scripts": record.appliedScripts,
        "result_available": record.lastUpgradedAt != nil && record.postgresDatabase != nil && record.state != .destroyed,
        "hold_until": record.state.holdsData || record.state == .upgrading ? RFC3339.format(record.candidate.holdEnds(hold)) as Any : NSNull(),
        "legal_hold": record.legalHoldReason != nil,
        "reject_reason": record.rejectReason ?? NSNull(),
        "last_failure": record.failedError.map { error -> Any in
            ["script": record.failedScript ?? NSNull(), "error": error, "sqlstate": record.failedSQLState ?? NSNull()] as [String: Any]
        } ?? NSNull(),
        "postgres": ["database": record.postgresDatabase ?? NSNull(), "role": record.postgresRole] as [String: Any],
    ]
    if let reason = record.legalHoldReason {
        document["legal_hold_reason"] = reason
        document["legal_hold_since"] = instant(record.legalHoldSince)
    }
    if record.state == .destroyed {
        document["destroyed_at"] = instant(record.destroyedAt)
        document["destroyed_by"] = record.destroyedBy ?? NSNull()
        document["destroy_reason"] = record.destroyReason ?? NSNull()
    }
    return document
}

/// A backup; `store` (the CLI's backup directory) adds its path, which the API never shows.
public func backupDocument(_ record: BackupRecord, store: String?) -> [String: Any] {
    var document: [String: Any] = [
        "id": record.id.rawValue, "database_id": record.databaseID.rawValue, "state": record.state.rawValue, "format": record.format,
        "started_at": RFC3339.format(record.startedAt),
        "finished_at": record.finishedAt.map { RFC3339.format($0) as Any } ?? NSNull(),
    ]
    if let store { document["path"] = store + "/" + record.path }
    if let bytes = record.byteCount { document["bytes"] = bytes }
    if let rows = record.rowCount { document["rows"] = rows }
    document["scheduled"] = record.scheduled
    document["drilled_at"] = record.drilledAt.map { RFC3339.format($0) as Any } ?? NSNull()
    document["drill_outcome"] = record.drillOutcome.map { $0.rawValue as Any } ?? NSNull()
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

/// A server with its placement, as `tenure server list --json` and `GET /v1/servers` show it.
public func serverSummaryDocument(_ summary: ServerSummary) -> [String: Any] {
    var document = serverDocument(summary.server)
    document["placed"] = summary.placed
    document["bytes"] = summary.bytes.map { $0 as Any } ?? NSNull()
    return document
}

/// A server as the CLI and the HTTP API show it (the admin URL's password redacted).
public func serverDocument(_ server: ServerRecord) -> [String: Any] {
    [
        "name": server.name.rawValue, "admin_url": server.redactedURL, "public_host": server.publicHost, "public_port": server.publicPort,
        "capacity": server.capacity, "state": server.state.rawValue,
        "created_at": RFC3339.format(server.createdAt),
    ]
}
