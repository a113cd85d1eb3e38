import Foundation
import Synchronization
import Testing
import TenureEmbedded
import TenurePQ
import TenureTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A tenant server that stops answering fails only operations on that server, within their
/// deadline and with its name; the API keeps answering about every other database.
@Suite(.serialized) struct DeadlineTests {
    @Test func aStoppedTenantServerFailsOnlyItsOwnOperations() throws {
        let root = "/tmp/tenure-stopped-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        let second = EmbeddedCluster(root: root, extraSettings: ["fsync = off", "max_connections = 50"])
        try second.start()
        defer {
            if let pid = Self.postmasterPID(second) { kill(pid, SIGCONT) }
            second.stopImmediately()
            try? FileManager.default.removeItem(atPath: root)
        }
        let port = second.port!
        let api = try APIFixture(["TENURE_SERVER_CONNECT_TIMEOUT": "3s", "TENURE_SERVER_STATEMENT_TIMEOUT": "3s"])
        let url = "postgresql://postgres@/postgres?host=\(second.socketDirectory)&port=\(port)"
        let add = try api.tenure(["server", "add", "second", "--url", url, "--public-host", "127.0.0.1", "--public-port", String(port)])
        try #require(add.status == 0, "\(add)")
        let far = try api.call("POST", "/v1/databases", json: ["name": "far", "server": "second"])
        try #require(far.status == 201, "\(far)")
        let farID = far.json["id"] as! String
        let nearID = try api.create("near")["id"] as! String
        #expect(try api.call("POST", "/v1/databases/\(farID)/subscribe").status == 200)

        let pid = try #require(Self.postmasterPID(second))
        kill(pid, SIGSTOP)
        // The operation on the stopped server, from another thread.
        let outcome = Mutex<(status: Int, code: String, seconds: Double)?>(nil)
        let thread = Thread {
            let started = Date()
            let response = try? api.call("POST", "/v1/databases/\(farID)/cancel")
            outcome.withLock { $0 = (response?.status ?? -1, response?.json["code"] as? String ?? "", Date().timeIntervalSince(started)) }
        }
        thread.start()
        usleep(300_000)
        // Meanwhile every request about the other database is answered within a second.
        for _ in 0..<5 {
            let started = Date()
            let near = try api.call("GET", "/v1/databases/\(nearID)")
            #expect(near.status == 200 && Date().timeIntervalSince(started) < 1, "\(near)")
            let subscribe = try api.call("GET", "/v1/databases?limit=5")
            #expect(subscribe.status == 200 && Date().timeIntervalSince(started) < 1)
            usleep(200_000)
        }
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, outcome.withLock({ $0 }) == nil { usleep(100_000) }
        let result = try #require(outcome.withLock { $0 }, "the operation on the stopped server never ended")
        #expect(result.status == 503 && result.code == "server.unreachable", "\(result)")
        #expect(result.seconds < 20, "\(result)")
        kill(pid, SIGCONT)
        // Nothing changed: the far database is still active, and works again once its server does.
        let shown = try api.call("GET", "/v1/databases/\(farID)").json
        #expect(shown["state"] as? String == "active", "\(shown)")
        #expect(try api.call("POST", "/v1/databases/\(farID)/cancel").status == 200)
        #expect(api.stop().status == 0)
    }

    static func postmasterPID(_ cluster: EmbeddedCluster) -> pid_t? {
        guard let text = try? String(contentsOfFile: cluster.dataDirectory + "/postmaster.pid", encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first.flatMap { pid_t($0.trimmingCharacters(in: .whitespaces)) }
    }
}
