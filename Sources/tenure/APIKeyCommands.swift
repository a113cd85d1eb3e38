import ArgumentParser
import Foundation
import TenureCatalog
import TenureControl
import TenureCore


struct APIKeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apikey", abstract: "Create, list and revoke API keys for the HTTP API (stored only as hashes).",
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an API key; the key is printed once and never stored.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "A name for the key (a DNS label).") var name: String
        @Option(name: .customLong("scope"), help: "read, write or admin; repeat or separate with commas.") var scopes: [String] = []

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let scopes = self.scopes.flatMap { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
                try await Session.with(options) { (session) async throws(TenureError) in
                    let created = try await session.call { (controller) throws(TenureError) in try controller.createAPIKey(name: name, scopes: scopes) }
                    var document = apiKeyDocument(created.record)
                    document["key"] = created.key
                    output.emit(json: document) {
                        "API key \(created.record.id) (\(created.record.name), scopes \(created.record.scopes.map(\.rawValue).joined(separator: ","))):\n\n\(created.key)\n\nshown once: it is stored only as a hash"
                    }
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List API keys (never the keys themselves).")
        @OptionGroup var options: GlobalOptions

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                try await Session.with(options) { (session) async throws(TenureError) in
                    let keys = try await session.call { (controller) throws(TenureError) in try controller.apiKeys() }
                    output.emit(json: ["api_keys": keys.map(apiKeyDocument)]) {
                        table(
                            ["ID", "NAME", "SCOPES", "CREATED", "STATE"],
                            keys.map {
                                [$0.id.rawValue, $0.name, $0.scopes.map(\.rawValue).joined(separator: ","), RFC3339.format($0.createdAt), $0.revokedAt == nil ? "active" : "revoked"]
                            })
                    }
                }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke an API key.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "API key id (key_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let id = try APIKeyID(parsing: id)
                try await Session.with(options) { (session) async throws(TenureError) in
                    let record = try await session.call { (controller) throws(TenureError) in try controller.revokeAPIKey(id) }
                    output.emit(json: apiKeyDocument(record)) { "revoked API key \(id) (\(record.name))" }
                }
            }
        }
    }
}
