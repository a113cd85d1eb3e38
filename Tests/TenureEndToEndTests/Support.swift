import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

/// One test's world: the shared real server, its own catalog database, its own TENURE_HOME.
struct Fixture {
    let server: TestServer
    let catalogName: String
    let catalogURL: String
    let home: String
    /// Removes the home when the test's last copy of the fixture goes.
    let homeDirectory: TemporaryDirectory
    var environment: [String: String]

    init(_ extra: [String: String] = [:]) throws {
        server = try TestServer.shared()
        (catalogName, catalogURL) = server.newCatalogURL()
        homeDirectory = TemporaryDirectory("tenure-home")
        home = homeDirectory.path
        environment = ["TENURE_CATALOG_URL": catalogURL, "TENURE_HOME": home]
        for (key, value) in extra { environment[key] = value }
    }

    @discardableResult
    func tenure(_ arguments: String..., environment extra: [String: String] = [:]) throws -> ChildProcess.Outcome {
        try tenure(arguments, environment: extra)
    }

    @discardableResult
    func tenure(_ arguments: [String], environment extra: [String: String] = [:]) throws -> ChildProcess.Outcome {
        var environment = self.environment
        for (key, value) in extra { environment[key] = value }
        return try runTenure(arguments, environment: environment)
    }

    func start(_ arguments: [String], environment extra: [String: String] = [:]) throws -> ChildProcess {
        var environment = self.environment
        for (key, value) in extra { environment[key] = value }
        return try startTenure(arguments, environment: environment)
    }

    /// Creates a database through the CLI and returns its id and connection URL.
    func create(_ name: String, plan: String = "trial", environment extra: [String: String] = [:]) throws -> (id: String, url: String) {
        let outcome = try tenure(["db", "create", name, "--plan", plan, "--json"], environment: extra)
        try #require(outcome.status == 0, "\(outcome)")
        let json = outcome.json
        return (json["id"] as! String, json["connection_url"] as! String)
    }

    func show(_ id: String) throws -> [String: Any] {
        let outcome = try tenure("db", "show", id, "--json")
        try #require(outcome.status == 0, "\(outcome)")
        return outcome.json
    }

    func state(_ id: String) throws -> String { try show(id)["state"] as! String }

    /// Catalog rows, read directly.
    func catalogRows(_ sql: String, _ parameters: [String?] = []) throws -> [[String?]] {
        try server.rows(sql, parameters, database: catalogName)
    }
}

/// Whether the tenant can log in with its connection URL (over TCP, with its SCRAM password).
func canLogin(_ url: String) -> Bool {
    guard let parameters = try? ConnectionParameters(parsing: url), let connection = try? PostgresConnection(parameters) else { return false }
    defer { connection.close() }
    return (try? connection.query("SELECT 1")) != nil
}
