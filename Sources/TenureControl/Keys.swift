import Foundation
import TenureCatalog
import TenureCore
import TenureEngine

#if canImport(Glibc)
import Glibc
#endif

/// A raw data key from a key file (`--data-key-file`: 64 hex digits).
public func readDataKeyFile(_ path: String) throws(TenureError) -> [UInt8] {
    guard let key = try KeyFile.read(path, setting: "--data-key-file") else { throw TenureError(.invalidRequest, "--data-key-file \(path) does not exist") }
    return key
}

/// The master keys this process can use: the current file and, while a rotation is under way,
/// the next one (`TENURE_MASTER_KEY_FILE` + `.next`). A key's id is the first 16 hex digits of
/// its SHA-256.
struct MasterKeys {
    var keys: [String: [UInt8]] = [:]
    var current: (id: String, key: [UInt8])?
    var next: (id: String, key: [UInt8])?

    static func id(_ key: [UInt8]) -> String { String(SHA256.hex(SHA256.hash(key)).prefix(16)) }

    static func load(_ path: String) throws(TenureError) -> MasterKeys {
        var keys = MasterKeys()
        if let key = try KeyFile.read(path, setting: "TENURE_MASTER_KEY_FILE") {
            keys.current = (id(key), key)
            keys.keys[id(key)] = key
        }
        if let key = try KeyFile.read(path + ".next", setting: "TENURE_MASTER_KEY_FILE (.next, from an unfinished rotation)") {
            keys.next = (id(key), key)
            keys.keys[id(key)] = key
        }
        return keys
    }
}

/// A data key opened for use.
public struct DataKey: Sendable {
    public var id: DataKeyID
    public var owner: String
    public var bytes: [UInt8]
}

extension Controller {
    static func wrapContext(_ id: DataKeyID, owner: String) -> [UInt8] { Array("\(id.rawValue)\n\(owner)".utf8) }

    /// Start-up check of the keys: a missing master key is created only while the catalog holds
    /// no data key; otherwise it must be there and open every wrapped key's master id. The
    /// signing key is created if absent. Refuses (an error) rather than start half-keyed.
    public func checkKeys() throws(TenureError) {
        let path = configuration.masterKeyFile
        var keys = try MasterKeys.load(path)
        let inUse = try catalog.masterKeyIDsInUse()
        if keys.current == nil {
            guard inUse.isEmpty else {
                throw TenureError(
                    .invalidConfiguration,
                    "the master key file \(path) (TENURE_MASTER_KEY_FILE) is missing, but the catalog holds data keys wrapped by master key \(inUse.joined(separator: ", ")); put the file back (a new key is never made over existing ones)")
            }
            _ = try KeyFile.create(path, key: Ciphers.randomKey(), setting: "TENURE_MASTER_KEY_FILE")
            keys = try MasterKeys.load(path)
        }
        if let missing = inUse.first(where: { keys.keys[$0] == nil }) {
            throw TenureError(
                .invalidConfiguration,
                "the master key in \(path) (id \(keys.current?.id ?? "?")) is not the one the catalog's data keys need (id \(missing)); refusing to start with the wrong master key")
        }
        // One wrapped key opened proves the file holds that key (not merely a matching id).
        for sample in try catalog.dataKeySamples() {
            guard let key = keys.keys[sample.masterKeyID],
                Ciphers.unwrap(sample.wrapped, key: key, context: Self.wrapContext(sample.id, owner: sample.owner)) != nil
            else {
                throw TenureError(
                    .invalidConfiguration, "data key \(sample.id) does not open with master key \(sample.masterKeyID); the catalog or the key file was altered")
            }
        }
        _ = try signingKey()
    }

    /// The owner's data key, made (wrapped by the current master key) the first time.
    public func dataKey(owner: String) throws(TenureError) -> DataKey {
        let keys = try MasterKeys.load(configuration.masterKeyFile)
        if let stored = try catalog.dataKey(owner: owner) { return try open(stored, keys: keys) }
        guard let master = keys.next ?? keys.current else {
            throw TenureError(.invalidConfiguration, "the master key file \(configuration.masterKeyFile) is missing")
        }
        let id = DataKeyID.random()
        let bytes = Ciphers.randomKey()
        let wrapped = WrappedDataKey(
            id: id, owner: owner, wrapped: Ciphers.wrap(bytes, key: master.key, context: Self.wrapContext(id, owner: owner)), masterKeyID: master.id,
            createdAt: clock.now())
        return try open(try catalog.ensureDataKey(wrapped), keys: keys)
    }

    private func open(_ stored: WrappedDataKey, keys: MasterKeys) throws(TenureError) -> DataKey {
        guard let master = keys.keys[stored.masterKeyID] else {
            throw TenureError(.invalidConfiguration, "data key \(stored.id) is wrapped by master key \(stored.masterKeyID), which \(configuration.masterKeyFile) does not hold")
        }
        guard let bytes = Ciphers.unwrap(stored.wrapped, key: master, context: Self.wrapContext(stored.id, owner: stored.owner)) else {
            throw TenureError(.internal, "data key \(stored.id) does not open with its master key \(stored.masterKeyID); the catalog was altered")
        }
        return DataKey(id: stored.id, owner: stored.owner, bytes: bytes)
    }

    /// The key a sealed file names; a destroyed key is `key.destroyed` saying when and why.
    public func openDataKey(id text: String, owner: String) throws(TenureError) -> [UInt8] {
        if let id = try? DataKeyID(parsing: text), let stored = try catalog.dataKey(id) {
            guard stored.owner == owner else {
                throw TenureError(.invalidRequest, "the file claims to belong to \(printable(owner)) but its data key \(id) is \(stored.owner)'s")
            }
            return try open(stored, keys: try MasterKeys.load(configuration.masterKeyFile)).bytes
        }
        if let destruction = try catalog.dataKeyDestruction(text) {
            throw TenureError(
                .keyDestroyed,
                "the data key \(printable(text)) of \(destruction.owner) was destroyed at \(RFC3339.format(destruction.at)) (\(destruction.action)); no copy of its backups can be decrypted any more",
                context: ["data_key_id": text, "owner": destruction.owner, "destroyed_at": RFC3339.format(destruction.at)])
        }
        throw TenureError(
            .invalidRequest, "the file is sealed with data key '\(printable(text))', which this installation's catalog does not know",
            context: ["data_key_id": printable(text)])
    }

    /// The key lookup the engine's sealed files take.
    public var keyLookup: SealedFile.KeyLookup {
        { (id, owner) throws(TenureError) in try self.openDataKey(id: id, owner: owner) }
    }

    /// A sink that seals what is written to `sink` with the owner's data key.
    public func sealing(_ sink: any ByteSink, owner: String) throws(TenureError) -> any ByteSink {
        let key = try dataKey(owner: owner)
        return SealingSink(sink, dataKey: key.bytes, keyID: key.id.rawValue, owner: owner)
    }

    /// Re-wraps every data key under a new master key. The new key is written first (to
    /// `TENURE_MASTER_KEY_FILE.next`, kept until the end), then each key row is re-wrapped in its own
    /// statement, and only then the new file replaces the old one. Killed at any point, every key
    /// still opens with the old or the new file, and running the command again finishes it.
    public func rotateMasterKey() throws(TenureError) -> (from: String, to: String, rewrapped: Int) {
        let path = configuration.masterKeyFile
        var keys = try MasterKeys.load(path)
        guard let current = keys.current else { throw TenureError(.invalidConfiguration, "the master key file \(path) is missing") }
        if keys.next == nil {
            _ = try KeyFile.create(path + ".next", key: Ciphers.randomKey(), setting: "TENURE_MASTER_KEY_FILE")
            KeyFile.syncDirectory(of: path)
            keys = try MasterKeys.load(path)
        }
        guard let next = keys.next else { throw TenureError(.internal, "the new master key could not be read back") }
        var count = 0
        for stored in try catalog.dataKeys(notWrappedBy: next.id) {
            let opened = try open(stored, keys: keys)
            let wrapped = Ciphers.wrap(opened.bytes, key: next.key, context: Self.wrapContext(stored.id, owner: stored.owner))
            if try catalog.rewrapDataKey(stored.id, from: stored.masterKeyID, wrapped: wrapped, masterKeyID: next.id) { count += 1 }
            Failpoint.keyRotateAfterRewrap.hit()
        }
        guard rename(path + ".next", path) == 0 else {
            throw TenureError(.internal, "cannot move the new master key into place at \(path): \(String(cString: strerror(errno)))")
        }
        KeyFile.syncDirectory(of: path)
        try catalog.audit(
            at: clock.now(), databaseID: nil, actor: actor, action: "master_key_rotated", from: current.id, to: next.id, reason: nil,
            detail: ["data_keys": String(count)])
        return (current.id, next.id, count)
    }

    // MARK: - Signing key

    /// The Ed25519 key deletion certificates are signed with, created the first time.
    public func signingKey() throws(TenureError) -> SigningKey {
        let path = configuration.signingKeyFile
        if let seed = try KeyFile.read(path, setting: "TENURE_SIGNING_KEY_FILE") { return try SigningKey(seed: seed) }
        _ = try KeyFile.create(path, key: Ciphers.randomKey(), setting: "TENURE_SIGNING_KEY_FILE")
        guard let seed = try KeyFile.read(path, setting: "TENURE_SIGNING_KEY_FILE") else {
            throw TenureError(.internal, "the signing key \(path) could not be read back")
        }
        return try SigningKey(seed: seed)
    }
}
