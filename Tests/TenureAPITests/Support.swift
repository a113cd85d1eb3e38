import Foundation
import Testing
import TenurePQ
import TenureTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A running `tenure serve` on its own catalog (on the real test PostgreSQL), its admin key,
/// and helpers that check every response against the OpenAPI document.
final class APIFixture: @unchecked Sendable {
    let server: TestServer
    let catalogName: String
    let home: String
    let environment: [String: String]
    let process: ChildProcess
    let port: Int
    let adminKey: String
    let validator: OpenAPIValidator
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path

    /// A new `tenure serve` on a new catalog, or, `joining` another fixture, a second replica
    /// on that one's catalog and home.
    init(_ extra: [String: String] = [:], joining other: APIFixture? = nil) throws {
        server = try TestServer.shared()
        var environment: [String: String]
        if let other {
            catalogName = other.catalogName
            homeDirectory = other.homeDirectory
            home = homeDirectory.path
            environment = other.environment.filter { !["TENURE_FAILPOINT", "TENURE_REPLICA_ID"].contains($0.key) }
        } else {
            let (name, url) = server.newCatalogURL()
            catalogName = name
            homeDirectory = TemporaryDirectory("tenure-api")
            home = homeDirectory.path
            environment = ["TENURE_CATALOG_URL": url, "TENURE_HOME": home, "TENURE_HTTP_ADDRESS": "127.0.0.1:0", "TENURE_SWEEP_INTERVAL": "1h", "TENURE_JOBS": "2"]
        }
        for (key, value) in extra { environment[key] = value }
        self.environment = environment
        validator = try OpenAPIValidator(path: Self.repository + "/docs/openapi.json")
        process = try startTenure(["serve"], environment: environment)
        let deadline = Date().addingTimeInterval(60)
        var port = 0
        var key = ""
        while Date() < deadline {
            let output = process.currentOutput
            if let range = output.range(of: #"listening on http://127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                port = Int(output[range].split(separator: ":").last!)!
                key = other?.adminKey ?? output.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("tenure_") }?
                    .trimmingCharacters(in: .whitespaces) ?? ""
                break
            }
            usleep(100_000)
        }
        guard port > 0, !key.isEmpty else {
            process.signal(SIGKILL)
            throw HTTPClientError(description: "tenure serve did not start: \(process.currentOutput)")
        }
        self.port = port
        adminKey = key
    }

    /// Shared with the replicas that join this fixture: the home goes with the last of them,
    /// after its process has stopped.
    private let homeDirectory: TemporaryDirectory

    deinit { stop() }

    @discardableResult
    func stop() -> ChildProcess.Outcome {
        process.signal(SIGTERM)
        return process.wait()
    }

    /// One request; the response is checked against the OpenAPI document.
    @discardableResult
    func call(
        _ method: String, _ path: String, key: String? = nil, json: Any? = nil, body: [UInt8]? = nil, headers: [String: String] = [:],
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> HTTPResponse {
        var headers = headers
        if let key = key ?? Optional(adminKey), !key.isEmpty, headers["Authorization"] == nil { headers["Authorization"] = "Bearer \(key)" }
        var bytes = body ?? []
        if let json {
            bytes = Array(try JSONSerialization.data(withJSONObject: json))
            headers["Content-Type"] = "application/json"
        }
        let response = try httpRequest(port: port, method, path, headers: headers, body: bytes)
        let errors = validator.validate(method: method, path: path, response: response)
        #expect(errors.isEmpty, "\(method) \(path): \(errors.joined(separator: "; ")) — \(response)", sourceLocation: sourceLocation)
        if response.status >= 400 {
            #expect(response.header("content-type") == "application/problem+json", "\(response)", sourceLocation: sourceLocation)
        }
        return response
    }

    func tenure(_ arguments: [String]) throws -> ChildProcess.Outcome {
        try runTenure(arguments, environment: environment)
    }

    /// A new API key with these scopes, through the CLI.
    func key(_ name: String, scopes: String) throws -> (id: String, key: String) {
        let outcome = try tenure(["apikey", "create", name, "--scope", scopes, "--json"])
        try #require(outcome.status == 0, "\(outcome)")
        return (outcome.json["id"] as! String, outcome.json["key"] as! String)
    }

    func create(_ name: String, plan: String = "trial") throws -> [String: Any] {
        let response = try call("POST", "/v1/databases", json: ["name": name, "plan": plan])
        try #require(response.status == 201, "\(response)")
        return response.json
    }

    func waitForJob(_ id: String, seconds: Double = 120) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let job = try call("GET", "/v1/jobs/\(id)").json
            if let state = job["state"] as? String, !["queued", "running"].contains(state) { return job }
            usleep(100_000)
        }
        throw HTTPClientError(description: "job \(id) did not finish")
    }

    func catalogRows(_ sql: String, _ parameters: [String?] = []) throws -> [[String?]] {
        try server.rows(sql, parameters, database: catalogName)
    }
}

/// An order-independent fingerprint of a table's rows.
func fingerprint(_ url: String, _ table: String) throws -> String {
    let connection = try PostgresConnection(try ConnectionParameters(parsing: url))
    defer { connection.close() }
    return try connection.query("SELECT count(*)::text || ':' || coalesce(sum(hashtext(t::text)::bigint), 0)::text AS f FROM \(table) t")[0, "f"]!
}

func fill(_ url: String, rows: Int) throws {
    let connection = try PostgresConnection(try ConnectionParameters(parsing: url))
    defer { connection.close() }
    try connection.execute(
        """
        CREATE TABLE items (id bigint PRIMARY KEY, label text, price numeric(12,2), seen timestamptz, extra jsonb);
        INSERT INTO items SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 3), g / 100.0, '2026-01-01'::timestamptz + g * interval '1 minute',
            jsonb_build_object('g', g, 'h', md5(g::text)) FROM generate_series(1, \(rows)) g;
        """)
}
