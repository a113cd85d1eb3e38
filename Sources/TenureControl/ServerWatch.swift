import Foundation
import Logging
import TenureCore
import TenurePQ

/// Watches the tenant server of a long data operation (backup, restore, upgrade) while it
/// runs. Data sessions have no statement deadline (a big table's COPY or index build may take
/// hours), so progress is what is watched: when the operation's counters have not moved for
/// `TENURE_SERVER_STALL_PROBE`, a fresh session asks the server `SELECT 1` within the control
/// deadlines. A server that answers is only busy (an index build, a lock wait) and the
/// operation goes on; one that does not answer stops the operation, which then fails with an
/// error naming the server, instead of waiting on it for ever.
struct ServerWatch {
    let server: ServerRecord
    let parameters: ConnectionParameters
    let deadlines: ServerDeadlines
    let logger: Logger

    /// Runs `body` (the operation, bumping `progress`) under the watch.
    func during<T>(_ what: String, progress: TransferProgress, _ body: () throws(TenureError) -> T) throws(TenureError) -> T {
        let done = DispatchSemaphore(value: 0)
        let ended = DispatchSemaphore(value: 0)
        let watch = self
        let thread = Thread {
            watch.watch(what, progress: progress, done: done)
            ended.signal()
        }
        thread.name = "tenure-server-watch"
        thread.start()
        defer {
            done.signal()
            ended.wait()
        }
        do {
            return try body()
        } catch {
            throw progress.stopReason ?? error
        }
    }

    private func watch(_ what: String, progress: TransferProgress, done: DispatchSemaphore) {
        func counters() -> Int64 {
            progress.rawBytes.load(ordering: .relaxed) &+ progress.compressedBytes.load(ordering: .relaxed) &+ progress.rows.load(ordering: .relaxed)
        }
        let tick = min(1.0, seconds(deadlines.stallProbe) / 4)
        var last = counters()
        var lastMoved = ContinuousClock.now
        while done.wait(timeout: .now() + tick) == .timedOut {
            let now = counters()
            if now != last || progress.isCancelled {
                last = now
                lastMoved = ContinuousClock.now
                continue
            }
            guard ContinuousClock.now - lastMoved >= deadlines.stallProbe else { continue }
            if let failure = probe() {
                logger.error(
                    "tenant server stopped answering; stopping the operation",
                    metadata: ["tenure.server": "\(server.name)", "tenure.operation": "\(what)", "tenure.error": "\(failure)"])
                progress.stop(
                    because: TenureError(
                        .serverUnreachable,
                        "tenant server '\(server.name)' stopped answering during the \(what) (no progress for \(deadlines.stallProbe.components.seconds) s, and \(failure)); the \(what) was stopped",
                        context: ["server": server.name.rawValue]))
                return
            }
            lastMoved = ContinuousClock.now
        }
    }

    /// Nil when the server answered (or refused us for a reason of its own, which proves it
    /// runs); else what went wrong.
    private func probe() -> String? {
        var parameters = self.parameters
        parameters["connect_timeout"] = String(deadlines.connect.components.seconds)
        do throws(TenureError) {
            let connection = try PostgresConnection(parameters, applicationName: "tenure-probe")
            defer { connection.close() }
            connection.deadline = deadlines.connect
            _ = try connection.query("SELECT 1")
            return nil
        } catch {
            // "FATAL: ..." is the server speaking (too many clients, say): it is alive.
            if error.message.contains("FATAL:") { return nil }
            return "a check got no answer: \(error.message)"
        }
    }

    private func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

extension Controller {
    /// Watches `server` while `body` works on it (see `ServerWatch`).
    func watching<T>(_ server: ServerRecord, _ what: String, progress: TransferProgress, _ body: () throws(TenureError) -> T) throws(TenureError) -> T {
        let parameters: ConnectionParameters
        do { parameters = try adminParameters(server) } catch { return try body() }
        return try ServerWatch(server: server, parameters: parameters, deadlines: configuration.serverDeadlines, logger: logger).during(
            what, progress: progress, body)
    }
}
