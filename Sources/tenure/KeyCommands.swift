import ArgumentParser
import Foundation
import TenureCatalog
import TenureControl
import TenureCore

// MARK: - key

struct KeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "The master key that wraps every database's and upload's data key.", subcommands: [Rotate.self])

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-wrap every data key under a new master key.",
            discussion: """
                The new key is written to TENURE_MASTER_KEY_FILE.next first; every data key is re-wrapped under it, and only then does \
                it replace TENURE_MASTER_KEY_FILE. Interrupted at any point, every data key still opens with the old or the new file, and \
                running the command again finishes the rotation. Copy the new file to every replica (and to the key's backup) afterwards.
                """)
        @OptionGroup var options: GlobalOptions

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                try await Session.with(options) { (session) async throws(TenureError) in
                    let rotated = try await session.call { (controller) throws(TenureError) in try controller.rotateMasterKey() }
                    output.emit(json: ["from_key_id": rotated.from, "to_key_id": rotated.to, "data_keys_rewrapped": rotated.rewrapped]) {
                        "master key rotated from \(rotated.from) to \(rotated.to): \(rotated.rewrapped) data keys re-wrapped"
                    }
                }
            }
        }
    }
}

// MARK: - signing-key

struct SigningKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signing-key", abstract: "Print the public key deletion certificates are signed with (PEM SubjectPublicKeyInfo, Ed25519).")
    @OptionGroup var options: GlobalOptions

    func run() async {
        await runCommand(json: options.json) { (output) async throws(TenureError) in
            try await Session.with(options) { (session) async throws(TenureError) in
                let key = try await session.call { (controller) throws(TenureError) in try controller.signingKey() }
                output.emit(json: ["key_id": key.keyID, "algorithm": "Ed25519", "public_key_pem": key.publicKeyPEM]) {
                    key.publicKeyPEM.trimmingCharacters(in: .newlines)
                }
            }
        }
    }
}

// MARK: - certificates

/// Prints a certificate as the one JSON object an auditor keeps (with or without --json).
func printCertificate(_ record: CertificateRecord) {
    let data = (try? JSONSerialization.data(withJSONObject: certificateDocument(record), options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}

struct CertificateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certificate", abstract: "Deletion certificates: signed statements that a database or upload and every copy of it are gone.",
        subcommands: [Verify.self])

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a deletion certificate's Ed25519 signature and show what it states.",
            discussion: "Without --public-key the installation's own signing key is used. docs/deletion-certificate.md shows the same check with OpenSSL or Python.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The certificate (JSON), or - for stdin.") var file: String
        @Option(help: "A PEM file with the public key (as `tenure signing-key` or GET /v1/signing-key prints it).") var publicKey: String?

        func run() async {
            await runCommand(json: options.json) { (output) async throws(TenureError) in
                let text: Data?
                if file == "-" { text = FileHandle.standardInput.readDataToEndOfFile() } else { text = FileManager.default.contents(atPath: file) }
                guard let text else { throw TenureError(.invalidRequest, "cannot read the certificate \(file)") }
                let key: [UInt8]
                if let publicKey {
                    guard let pem = FileManager.default.contents(atPath: publicKey), let raw = SigningKey.publicKey(pem: String(decoding: pem, as: UTF8.self)) else {
                        throw TenureError(.invalidRequest, "\(publicKey) is not a PEM Ed25519 public key")
                    }
                    key = raw
                } else {
                    key = try await Session.with(options) { (session) async throws(TenureError) in
                        try await session.call { (controller) throws(TenureError) in try controller.signingKey().publicKey }
                    }
                }
                let check = try verifyCertificate(Array(text), publicKey: key)
                output.emit(json: ["ok": true, "key_id": check.keyID, "subject": check.subject, "destroyed_at": check.destroyedAt, "backups": check.backups]) {
                    "certificate OK: \(check.subject) destroyed at \(check.destroyedAt), \(check.backups) stored copies deleted; signed by key \(check.keyID)"
                }
            }
        }
    }
}

extension DatabaseCommand {
    struct Certificate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the deletion certificate of a destroyed database (JSON: payload, signature, key_id).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Database id (db_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (_) async throws(TenureError) in
                let id = try DatabaseID(parsing: id)
                let record = try await Session.with(options) { (session) async throws(TenureError) in
                    try await session.call { (controller) throws(TenureError) in try controller.databaseCertificate(id) }
                }
                printCertificate(record)
            }
        }
    }
}

extension UploadCommand {
    struct Certificate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the deletion certificate of a destroyed upload (JSON: payload, signature, key_id).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "Upload id (up_…).") var id: String

        func run() async {
            await runCommand(json: options.json) { (_) async throws(TenureError) in
                let id = try UploadID(parsing: id)
                let record = try await Session.with(options) { (session) async throws(TenureError) in
                    try await session.call { (controller) throws(TenureError) in try controller.uploadCertificate(id) }
                }
                printCertificate(record)
            }
        }
    }
}
