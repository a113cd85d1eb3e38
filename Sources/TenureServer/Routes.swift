import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import TenureControl
import TenureCore

/// The HTTP surface. Each handler parses and checks its input, calls one use case of the
/// controller (the same ones the CLI calls) on the catalog pool, and renders the result
/// with the documents `--json` prints. No lifecycle logic lives here.
struct Routes: Sendable {
    let pool: ControlPool
    let jobs: JobService
    let metrics: ServerMetrics
    let configuration: TenureConfiguration
    let logger: Logger

    var maximumBody: Int { configuration.http.maximumBodyByteCount }

    func register(on router: Router<APIContext>) {
        router.get("/healthz") { _, _ in jsonResponse(["status": "ok"]) }
        router.get("/readyz") { _, _ in try await ready() }
        router.get("/metrics") { _, _ in
            // Gauges read when scraped: this replica's running jobs, the fleet's queued ones.
            metrics.set("tenure_jobs_running", Double(jobs.worker.runningJobs.count))
            if let queued = try? await pool.withController(actor: "metrics", { (controller) throws(TenureError) in try controller.queuedJobCount() }) {
                metrics.set("tenure_jobs_queued", Double(queued))
            }
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.render())))
        }
        router.get("/openapi.json") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: openAPIDocument)))
        }

        let v1 = router.group("v1")
        v1.post("databases") { request, context in try await createDatabase(request, context) }
        v1.get("databases") { request, context in try await listDatabases(request, context) }
        v1.get("databases/:id") { request, context in try await showDatabase(request, context) }
        v1.delete("databases/:id") { request, context in try await requestDeletion(request, context) }
        v1.post("databases/:id/subscribe") { request, context in try await transition(.subscribe, request, context) }
        v1.post("databases/:id/cancel") { request, context in try await transition(.cancel, request, context) }
        v1.post("databases/:id/reactivate") { request, context in try await transition(.reactivate, request, context) }
        v1.put("databases/:id/legal-hold") { request, context in try await transition(.hold, request, context) }
        v1.delete("databases/:id/legal-hold") { request, context in try await transition(.release, request, context) }
        v1.get("databases/:id/audit") { request, context in try await audit(request, context) }
        v1.get("databases/:id/backups") { request, context in try await listBackups(request, context) }
        v1.post("databases/:id/extensions") { request, context in try await addExtension(request, context) }
        v1.post("databases/:id/backups") { request, context in try await startBackup(request, context) }
        v1.get("databases/:id/backups/:backup") { request, context in try await showBackup(request, context) }
        v1.get("databases/:id/backups/:backup/download") { request, context in try await download(request, context) }
        v1.post("databases/:id/restore") { request, context in try await startRestore(request, context) }
        v1.get("databases/:id/export") { request, context in try await export(request, context) }
        v1.post("databases/:id/move") { request, context in try await move(request, context) }
        v1.post("databases/:id/duplicate") { request, context in try await duplicate(request, context) }
        v1.post("databases/:id/credentials/rotate") { request, context in try await rotateCredentials(request, context) }
        v1.get("databases/:id/deletion-certificate") { request, context in try await databaseCertificate(request, context) }
        v1.get("signing-key") { request, context in try await signingKey(request, context) }
        v1.get("servers") { request, context in try await listServers(request, context) }
        v1.get("expiry") { request, context in try await expiry(request, context) }
        registerUploads(on: v1)
        registerPolicy(on: v1)
        v1.get("jobs") { request, context in try await listJobs(request, context) }
        v1.get("jobs/:id") { request, context in try await showJob(request, context) }
        v1.post("jobs/:id/cancel") { request, context in try await cancelJob(request, context) }
    }

    // MARK: - Servers

    /// Tenant servers with capacity, placed count, bytes and state (admin URLs redacted).
    func listServers(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        _ = try Query(request, allowed: [])
        let servers = try await pool.withServerWork(actor: context.actor) { (controller) throws(TenureError) in try controller.serverSummaries() }
        return jsonResponse(["servers": servers.map(serverSummaryDocument)])
    }

    // MARK: - Deletion certificates

    func databaseCertificate(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let record = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.databaseCertificate(id) }
        return jsonResponse(certificateDocument(record))
    }

    /// The Ed25519 public key certificates are signed with, as PEM SubjectPublicKeyInfo.
    func signingKey(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        _ = try Query(request, allowed: [])
        let key = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.signingKey() }
        return Response(
            status: .ok, headers: [.contentType: "application/x-pem-file", HTTPField.Name("Tenure-Key-Id")!: key.keyID],
            body: ResponseBody(byteBuffer: ByteBuffer(string: key.publicKeyPEM)))
    }

    // MARK: - Health

    func ready() async throws(TenureError) -> Response {
        let status = try await pool.withController(actor: "api") { (controller) throws(TenureError) in try controller.migrationStatus() }
        guard status.applied == status.known else {
            throw TenureError(
                .catalogUnavailable, "the catalog has \(status.applied) of \(status.known) migrations applied; run tenure migrate",
                context: ["applied": String(status.applied), "known": String(status.known)])
        }
        let running = jobs.worker.runningJobs.map { ["id": $0.id.rawValue, "kind": $0.kind.rawValue, "subject": $0.subject] }
        return jsonResponse(["status": "ready", "migrations": status.applied, "replica": jobs.worker.replicaID, "running_jobs": running])
    }

    // MARK: - Databases

    func createDatabase(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let body = try await JSONBody.read(request, context: context, allowed: ["name", "plan", "server"], maximumByteCount: maximumBody)
        let name = try body.string("name", required: true)!
        let planText = try body.string("plan") ?? Plan.trial.rawValue
        guard let plan = Plan(rawValue: planText) else {
            throw TenureError(.invalidRequest, "field 'plan' must be trial or paid, not '\(printable(planText))'")
        }
        let server = try body.string("server")
        let idempotencyKey = request.headers[HTTPField.Name("Idempotency-Key")!]
        let apiKeyID = context.apiKey?.id.rawValue ?? "-"
        let hash = SHA256.hex(SHA256.hash(Array(body.canonical)))
        let outcome = try await pool.withServerWork(actor: context.actor) { (controller) throws(TenureError) -> CreateOutcome in
            if let idempotencyKey {
                return try controller.createDatabase(
                    name: name, plan: plan, serverName: server,
                    idempotency: IdempotencyClaim(apiKeyID: apiKeyID, key: idempotencyKey, requestHash: hash))
            }
            return .created(try controller.createDatabase(name: name, plan: plan, serverName: server))
        }
        switch outcome {
        case .created(let created):
            metrics.add("tenure_transitions_total", [("event", "create")])
            var document = databaseDocument(created.record)
            document["connection_url"] = created.connectionURL
            return jsonResponse(document, status: .created, headers: [.location: "/v1/databases/\(created.record.id)", .eTag: etag(created.record)])
        case .replayed(let body):
            var headers: HTTPFields = [.contentType: "application/json"]
            headers[HTTPField.Name("Idempotent-Replayed")!] = "true"
            return Response(status: .created, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: body + "\n")))
        }
    }

    func listDatabases(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        let query = try Query(request, allowed: ["state", "limit", "cursor"])
        let state = try query["state"].map { (text) throws(TenureError) -> DatabaseState in
            guard let state = DatabaseState(rawValue: text) else {
                throw TenureError(
                    .invalidRequest, "state '\(printable(text))' is not one of \(DatabaseState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return state
        }
        let limit = try query["limit"].map { (text) throws(TenureError) -> Int in
            guard let value = Int(text), (1...1000).contains(value) else { throw TenureError(.invalidRequest, "limit must be a whole number from 1 to 1000") }
            return value
        } ?? 100
        let cursor = try query["cursor"].map { (text) throws(TenureError) in try DatabaseID(parsing: text) }
        let records = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            try controller.databases(state: state, after: cursor, limit: limit + 1)
        }
        let page = Array(records.prefix(limit))
        let next: Any = records.count > limit ? page.last!.id.rawValue : NSNull()
        return jsonResponse(["databases": page.map(databaseDocument), "next_cursor": next])
    }

    func showDatabase(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let record = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.database(id) }
        return jsonResponse(databaseDocument(record), headers: [.eTag: etag(record)])
    }

    /// `POST /v1/databases/{id}/extensions` `{"name": …}`: 201 when created, 200 when the
    /// database already had it.
    func addExtension(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let body = try await JSONBody.read(request, context: context, allowed: ["name"], maximumByteCount: maximumBody)
        let name = try body.string("name", required: true)!
        let added = try await pool.withServerWork(actor: context.actor) { (controller) throws(TenureError) in
            try controller.addExtension(id, name: name)
        }
        return jsonResponse(
            ["database_id": id.rawValue, "extension": added.name, "version": added.version, "created": added.created],
            status: added.created ? .created : .ok)
    }

    func etag(_ record: DatabaseRecord) -> String { "\"\(record.version)\"" }

    /// The version an `If-Match` header asks for, if any (412 when it no longer matches).
    func expectedVersion(_ request: Request) throws(TenureError) -> Int64? {
        guard let header = request.headers[.ifMatch] else { return nil }
        var text = header.trimmingCharacters(in: .whitespaces)
        if text.hasPrefix("W/") { text.removeFirst(2) }
        guard text.count >= 3, text.hasPrefix("\""), text.hasSuffix("\""), let version = Int64(text.dropFirst().dropLast()) else {
            throw TenureError(.invalidRequest, "If-Match must be an ETag from GET /v1/databases/{id}, such as \"3\"")
        }
        return version
    }

    func transition(_ event: LifecycleEvent, _ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        let allowed: Set<String>
        switch event {
        case .hold:
            try context.require(.admin)
            allowed = ["reason"]
        case .release:
            try context.require(.admin)
            allowed = []
        case .reactivate:
            try context.require(.write)
            allowed = ["new_password"]
        case .subscribe, .cancel:
            try context.require(.write)
            allowed = []
        case .create, .ready, .trialEnd, .graceEnd, .deletionRequest:
            preconditionFailure("\(event) has no route of its own")
        }
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let body = try await JSONBody.read(request, context: context, allowed: allowed, maximumByteCount: maximumBody)
        let reason = try body.string("reason")
        if event == .hold, reason == nil { throw TenureError(.invalidRequest, "field 'reason' is required: say why the data must be kept") }
        let newPassword = try body.bool("new_password") ?? false
        let expected = try expectedVersion(request)
        let outcome = try await pool.withServerWork(actor: context.actor) { (controller) throws(TenureError) in
            try controller.apply(event, to: id, reason: reason, newPassword: newPassword, ifMatch: expected)
        }
        metrics.add("tenure_transitions_total", [("event", event.rawValue)])
        var document = databaseDocument(outcome.record)
        if let url = outcome.connectionURL { document["connection_url"] = url }
        return jsonResponse(document, headers: [.eTag: etag(outcome.record)])
    }

    /// 202 with the move job; its result has the new connection URL (no password: it is
    /// unchanged) and the measured downtime.
    func move(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let body = try await JSONBody.read(request, context: context, allowed: ["server"], maximumByteCount: maximumBody)
        guard let server = try body.string("server") else { throw TenureError(.invalidRequest, "field 'server' is required: the server to move to") }
        let job = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.requestMove(id, to: server) }
        return accepted(job)
    }

    /// 202 with the duplicate job, the new database's id and its connection URL (shown once).
    func duplicate(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let body = try await JSONBody.read(request, context: context, allowed: ["name", "plan", "server", "neutralize"], maximumByteCount: maximumBody)
        guard let name = try body.string("name") else { throw TenureError(.invalidRequest, "field 'name' is required: the new database's name") }
        let planText = try body.string("plan") ?? "trial"
        guard let plan = Plan(rawValue: planText) else { throw TenureError(.invalidRequest, "plan must be trial or paid, not '\(printable(planText))'") }
        let server = try body.string("server")
        let neutralize = try body.bool("neutralize") ?? false
        let accepted = try await pool.withServerWork(actor: context.actor) { (controller) throws(TenureError) in
            try controller.requestDuplicate(id, name: name, plan: plan, serverName: server, neutralize: neutralize)
        }
        jobs.worker.wake()
        var document = jobs.document(accepted.job)
        document["connection_url"] = accepted.connectionURL
        document["new_database_id"] = accepted.record.id.rawValue
        return jsonResponse(document, status: .accepted, headers: [.location: "/v1/jobs/\(accepted.job.id)", .cacheControl: "no-store"])
    }

    /// A new password, shown once in this answer; `{"end_sessions": true}` also ends the role's sessions.
    func rotateCredentials(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let body = try await JSONBody.read(request, context: context, allowed: ["end_sessions"], maximumByteCount: maximumBody)
        let endSessions = try body.bool("end_sessions") ?? false
        let outcome = try await pool.withServerWork(actor: context.actor) { (controller) throws(TenureError) in
            try controller.rotateCredentials(id, endSessions: endSessions)
        }
        var document = databaseDocument(outcome.record)
        if let url = outcome.connectionURL { document["connection_url"] = url }
        return jsonResponse(document, headers: [.eTag: etag(outcome.record), .cacheControl: "no-store"])
    }

    func requestDeletion(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        let query = try Query(request, allowed: ["confirm"])
        let id = try context.id("id", as: DatabaseID.self)
        guard let confirm = query["confirm"] else {
            throw TenureError(.confirmationMismatch, "give the database's name as ?confirm=NAME to request its deletion; nothing was destroyed")
        }
        let expected = try expectedVersion(request)
        let outcome = try await pool.withServerWork(actor: context.actor) { (controller) throws(TenureError) in
            try controller.requestDeletion(id, confirmName: confirm, ifMatch: expected)
        }
        metrics.add("tenure_transitions_total", [("event", LifecycleEvent.deletionRequest.rawValue)])
        return jsonResponse(databaseDocument(outcome.record))
    }

    func audit(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        let query = try Query(request, allowed: ["limit"])
        let id = try context.id("id", as: DatabaseID.self)
        let limit = try query["limit"].map { (text) throws(TenureError) -> Int in
            guard let value = Int(text), (1...10_000).contains(value) else { throw TenureError(.invalidRequest, "limit must be a whole number from 1 to 10000") }
            return value
        } ?? 1000
        let events = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.auditTrail(id, limit: limit) }
        return jsonResponse(["events": events.map(auditDocument)])
    }

    func expiry(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        let query = try Query(request, allowed: ["as_of"])
        let asOf = try query["as_of"].map { (text) throws(TenureError) in try RFC3339.parse(text, setting: "as_of") }
        let report = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            try controller.sweep(dryRun: true, asOf: asOf)
        }
        return jsonResponse(sweepDocument(report))
    }

    // MARK: - Backups

    func listBackups(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let backups = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.backups(of: id) }
        return jsonResponse(["backups": backups.map { backupDocument($0, store: nil) }])
    }

    func showBackup(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let backupID = try context.id("backup", as: BackupID.self)
        let backup = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.backupOf(id, backupID) }
        return jsonResponse(backupDocument(backup, store: nil))
    }

    func startBackup(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        _ = try await JSONBody.read(request, context: context, allowed: [], maximumByteCount: maximumBody)
        let job = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.requestBackup(id) }
        return accepted(job)
    }

    func startRestore(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let body = try await JSONBody.read(request, context: context, allowed: ["backup_id"], maximumByteCount: maximumBody)
        let backupID = try BackupID(parsing: try body.string("backup_id", required: true)!)
        let job = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            try controller.requestRestore(id, backupID: backupID)
        }
        return accepted(job)
    }

    /// An export takes its turn among the database's jobs: its row is queued, and this replica
    /// takes it when no earlier job of the database is unfinished, waiting up to
    /// `TENURE_EXPORT_WAIT`; after that the row is cancelled and the answer is 409 naming the
    /// job ahead. Jobs requested while the export streams wait for it.
    func takeTurn(_ id: DatabaseID, format: BackupFormat, actor: String) async throws(TenureError) -> JobRecord {
        let queued = try await pool.withController(actor: actor) { (controller) throws(TenureError) in try controller.requestExport(id, format: format) }
        let deadline = ContinuousClock.now + configuration.jobs.exportWait
        while true {
            let claimed = try await pool.withController(actor: actor) { (controller) throws(TenureError) in try controller.claimTurn(queued.id) }
            if let claimed { return claimed }
            var cancelled = false
            do { try await Task.sleep(for: .milliseconds(250)) } catch { cancelled = true }
            if cancelled || ContinuousClock.now >= deadline {
                let ahead = try await pool.withController(actor: actor) { (controller) throws(TenureError) -> JobRecord? in
                    _ = try? controller.cancelJob(queued.id)
                    return try controller.unfinishedJobs(subject: id.rawValue).first { $0.id != queued.id }
                }
                let blocking = ahead.map { "job \($0.id) (\($0.kind.rawValue), \($0.state.rawValue))" } ?? "another job"
                throw TenureError(
                    .lifecycleConflict, "database \(id) is busy with \(blocking); retry the export when it has finished",
                    context: ["database_id": id.rawValue, "job_id": ahead?.id.rawValue ?? "", "retry_after": "10"])
            }
        }
    }

    /// 202 with the queued job; this replica looks for work at once.
    func accepted(_ job: JobRecord) -> Response {
        jobs.worker.wake()
        return jsonResponse(jobs.document(job), status: .accepted, headers: [.location: "/v1/jobs/\(job.id)"])
    }

    /// A verified backup file, with single-range support so a broken download resumes.
    func download(_ request: Request, _ context: APIContext) async throws -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: DatabaseID.self)
        let backupID = try context.id("backup", as: BackupID.self)
        let backup = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.backupOf(id, backupID) }
        guard backup.state == .verified else {
            throw TenureError(.lifecycleConflict, "backup \(backupID) is \(backup.state.rawValue); only verified backups can be downloaded")
        }
        let etag = "\"\(backupID.rawValue)\""
        guard let size = backup.byteCount else { throw TenureError(.internal, "backup \(backupID) has no recorded size") }
        let (range, headers) = try ranged(request, size: size, etag: etag, contentType: "application/x-tar", filename: "\(backupID).tenure")
        let store = configuration.backupStore
        let first = range?.first ?? 0
        let count = range?.count ?? size
        // A whole download is checked against the digest recorded when the backup was
        // verified; the last chunk is held back until it matches, so a client never receives
        // all of an object that was altered in the store (the transfer ends short instead).
        let digest = range == nil ? backup.digest : nil
        let logger = self.logger
        // The object streams from the store as the client reads, opened with the database's
        // data key (only the segments the range needs).
        let source = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) -> SourceBox in
            do throws(TenureError) { return SourceBox(try controller.openStoredBackup(backup, first: first, count: count)) } catch {
                guard error.code == .invalidRequest else { throw error }
                throw TenureError(.backupNotFound, "the file of backup \(backupID) is missing from the backup store")
            }
        }
        let body = ResponseBody(contentLength: Int(count)) { writer in
            var remaining = count
            var hasher = XXH64()
            var held: [UInt8]?
            while remaining > 0 {
                let want = Int(min(remaining, 256 << 10))
                let bytes = try await pool.withBlocking { () throws(TenureError) -> [UInt8] in
                    var bytes = [UInt8](repeating: 0, count: want)
                    let read = try bytes.withMutableBytes { (raw) throws(TenureError) in try source.source.readFully(into: raw) }
                    guard read > 0 else { throw TenureError(.internal, "backup \(backupID) ended early in the backup store") }
                    bytes.removeSubrange(read...)
                    return bytes
                }
                if digest != nil { hasher.update(bytes) }
                if let held { try await writer.write(ByteBuffer(bytes: held)) }
                held = bytes
                remaining -= Int64(bytes.count)
            }
            if let digest, XXH64.hex(hasher.digest()) != digest {
                logger.error(
                    "a backup's stored bytes differ from those verified; the download was cut short",
                    metadata: ["tenure.backup_id": "\(backupID)", "tenure.store": "\(store.description)"])
                throw TenureError(.internal, "backup \(backupID) was altered in the backup store")
            }
            if let held { try await writer.write(ByteBuffer(bytes: held)) }
            try await writer.finish(nil)
        }
        return Response(status: range == nil ? .ok : .partialContent, headers: headers, body: body)
    }

    /// The range a request asks for (honouring If-Range) and the headers of its answer; a
    /// range that cannot be satisfied is a 416 naming the size.
    func ranged(_ request: Request, size: Int64, etag: String, contentType: String, filename: String) throws -> (ByteRange?, HTTPFields) {
        var range: ByteRange?
        do throws(TenureError) {
            if request.headers[.ifRange] == nil || request.headers[.ifRange] == etag {
                range = try ByteRange.parse(request.headers[.range], size: size)
            }
        } catch {
            var problem = Problem(error)
            problem.headers[.contentRange] = "bytes */\(size)"
            throw ProblemError(problem: problem)
        }
        var headers: HTTPFields = [
            .contentType: contentType, .acceptRanges: "bytes", .eTag: etag, .contentDisposition: "attachment; filename=\"\(filename)\"",
        ]
        if let range { headers[.contentRange] = "bytes \(range.first)-\(range.last)/\(size)" }
        return (range, headers)
    }

    /// Streams a fresh backup as it is produced: the engine writes into a bounded channel,
    /// the response drains it; a slow client slows the backup, a client that goes away
    /// cancels it and nothing is kept.
    func export(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        let query = try Query(request, allowed: ["format"])
        let id = try context.id("id", as: DatabaseID.self)
        let formatText = query["format"] ?? "native"
        guard let format = BackupFormat(rawValue: formatText) else {
            throw TenureError(.invalidRequest, "format must be native or sql, not '\(printable(formatText))'")
        }
        let record = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.database(id) }
        switch record.state {
        case .trial, .active, .deactivated: break
        case .provisioning, .destroyed:
            throw TenureError(.lifecycleConflict, "a \(record.state.rawValue) database cannot be exported", context: ["database_id": id.rawValue])
        }
        try await jobs.acquireTransfer()
        let progress = TransferProgress()
        let job: JobRecord
        do {
            job = try await takeTurn(id, format: format, actor: context.actor)
        } catch {
            jobs.releaseTransfer()
            throw error
        }
        jobs.worker.adopt(job, progress: progress)
        let channel = ChunkChannel()
        let logger = self.logger
        let metrics = self.metrics
        let jobs = self.jobs
        pool.detached(actor: context.actor, name: "tenure-export") { controller in
            let result: Result<BackupSummary, TenureError>
            do throws(TenureError) {
                result = .success(try controller.get().exportDatabase(id, format: format, sink: channel, progress: progress))
            } catch {
                result = .failure(error)
            }
            switch result {
            case .success:
                metrics.add("tenure_backup_bytes_total", [], Double(progress.compressedBytes.load(ordering: .relaxed)))
                jobs.worker.endAdopted(job.id, error: nil)
            case .failure(let error):
                channel.fail(error)
                logger.warning("export failed", metadata: ["tenure.database_id": "\(id)", "tenure.error": "\(error.message)"])
                jobs.worker.endAdopted(job.id, error: error)
            }
            jobs.releaseTransfer()
        }
        let name = format == .native ? "\(record.name).tenure" : "\(record.name).sql.zst"
        let headers: HTTPFields = [
            .contentType: format == .native ? "application/x-tar" : "application/zstd",
            .contentDisposition: "attachment; filename=\"\(name)\"",
        ]
        let body = ResponseBody { writer in
            do {
                while let buffer = try await channel.next() {
                    try await writer.write(buffer)
                }
                try await writer.finish(nil)
            } catch {
                // Client gone or export failed: stop the producer; the engine aborts.
                progress.cancel()
                channel.closeReader()
                throw error
            }
        }
        return Response(status: .ok, headers: headers, body: body)
    }

    // MARK: - Jobs

    func listJobs(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        let query = try Query(request, allowed: ["database_id", "upload_id", "state", "limit", "cursor"])
        let databaseID = try query["database_id"].map { (text) throws(TenureError) in try DatabaseID(parsing: text) }
        let uploadID = try query["upload_id"].map { (text) throws(TenureError) in try UploadID(parsing: text) }
        let state = try query["state"].map { (text) throws(TenureError) -> JobState in
            guard let state = JobState(rawValue: text) else {
                throw TenureError(.invalidRequest, "state '\(printable(text))' is not one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return state
        }
        let limit = try query["limit"].map { (text) throws(TenureError) -> Int in
            guard let value = Int(text), (1...1000).contains(value) else { throw TenureError(.invalidRequest, "limit must be a whole number from 1 to 1000") }
            return value
        } ?? 100
        let cursor = query["cursor"]
        let page = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in
            try controller.listJobs(databaseID: databaseID, uploadID: uploadID, state: state, limit: limit, cursor: cursor)
        }
        return jsonResponse(["jobs": page.jobs.map { jobs.document($0) }, "next_cursor": page.nextCursor.map { $0 as Any } ?? NSNull()])
    }

    func showJob(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.read)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: JobID.self)
        let job = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.job(id) }
        return jsonResponse(jobs.document(job))
    }

    func cancelJob(_ request: Request, _ context: APIContext) async throws(TenureError) -> Response {
        try context.require(.write)
        _ = try Query(request, allowed: [])
        let id = try context.id("id", as: JobID.self)
        let job = try await pool.withController(actor: context.actor) { (controller) throws(TenureError) in try controller.cancelJob(id) }
        // Running here: stop it now rather than at the next lease renewal.
        jobs.worker.cancelLocal(id)
        return jsonResponse(jobs.document(job), status: .accepted)
    }
}

/// A store object's stream, read by one request's body (one read at a time, on the pool).
final class SourceBox: @unchecked Sendable {
    let source: any ByteSource
    init(_ source: any ByteSource) { self.source = source }
}

/// A problem with extra headers (416 carries Content-Range), thrown through a handler.
struct ProblemError: Error {
    var problem: Problem
}
