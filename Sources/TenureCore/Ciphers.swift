import Crypto
import Foundation

/// Authenticated encryption and signatures, all from swift-crypto: AES-256-GCM for data keys
/// (wrapped by the master key) and for the segments of a stored file, HKDF-SHA-256 for a file's
/// own key, Ed25519 for deletion certificates. No hand-written primitive.
public enum Ciphers {
    /// 32 random bytes from the system's generator.
    public static func randomKey() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// Encrypts `secret` under `key` with a fresh random nonce: nonce (12) ‖ ciphertext ‖ tag (16).
    /// `context` is authenticated, not stored: opening needs the same context.
    public static func wrap(_ secret: [UInt8], key: [UInt8], context: [UInt8]) -> [UInt8] {
        // Sealing with a random nonce and a 32-byte key cannot fail.
        let box = try! AES.GCM.seal(secret, using: SymmetricKey(data: key), authenticating: context)
        return Array(box.combined!)
    }

    /// Opens what `wrap` made; nil when the key or the context is not the one it was made with,
    /// or a byte was changed.
    public static func unwrap(_ wrapped: [UInt8], key: [UInt8], context: [UInt8]) -> [UInt8]? {
        guard wrapped.count >= 28, let box = try? AES.GCM.SealedBox(combined: wrapped),
            let plain = try? AES.GCM.open(box, using: SymmetricKey(data: key), authenticating: context)
        else { return nil }
        return Array(plain)
    }

    /// HKDF-SHA-256 of `key` with `salt` and `info`, 32 bytes.
    public static func deriveKey(_ key: [UInt8], salt: [UInt8], info: [UInt8]) -> [UInt8] {
        let derived = HKDF<Crypto.SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: key), salt: salt, info: info, outputByteCount: 32)
        return derived.withUnsafeBytes { Array($0) }
    }
}

/// One file's AES-256-GCM key and nonce scheme: segment `n` is sealed with the 12-byte nonce
/// `0x00000000 ‖ n` (big-endian), authenticating the file's header, `n` and whether it is the
/// last segment, so segments can be neither reordered, nor moved between files, nor dropped
/// from the end.
public struct SegmentCipher {
    public static let tagBytes = 16
    let key: SymmetricKey
    let header: [UInt8]

    public init(fileKey: [UInt8], header: [UInt8]) {
        key = SymmetricKey(data: fileKey)
        self.header = header
    }

    func nonceAndContext(index: UInt64, final: Bool) -> (AES.GCM.Nonce, [UInt8]) {
        var nonce = [UInt8](repeating: 0, count: 12)
        var context = header
        for shift in 0..<8 {
            let byte = UInt8(truncatingIfNeeded: index >> (56 - 8 * UInt64(shift)))
            nonce[4 + shift] = byte
            context.append(byte)
        }
        context.append(final ? 1 : 0)
        return (try! AES.GCM.Nonce(data: nonce), context)
    }

    /// Ciphertext ‖ tag of one segment, appended to `output`.
    public func seal(_ plain: UnsafeRawBufferPointer, index: UInt64, final: Bool, into output: inout [UInt8]) {
        let (nonce, context) = nonceAndContext(index: index, final: final)
        let box = try! AES.GCM.seal(plain, using: key, nonce: nonce, authenticating: context)
        output.append(contentsOf: box.ciphertext)
        output.append(contentsOf: box.tag)
    }

    /// The plain bytes of one sealed segment; nil when it does not authenticate.
    public func open(_ sealed: UnsafeRawBufferPointer, index: UInt64, final: Bool) -> [UInt8]? {
        guard sealed.count >= Self.tagBytes else { return nil }
        let (nonce, context) = nonceAndContext(index: index, final: final)
        let split = sealed.count - Self.tagBytes
        guard let box = try? AES.GCM.SealedBox(
                nonce: nonce, ciphertext: UnsafeRawBufferPointer(rebasing: sealed[..<split]),
                tag: UnsafeRawBufferPointer(rebasing: sealed[split...])),
            let plain = try? AES.GCM.open(box, using: key, authenticating: context)
        else { return nil }
        return Array(plain)
    }
}

/// An Ed25519 signing key (deletion certificates) and what is published of it.
public struct SigningKey: Sendable {
    public let seed: [UInt8]
    public let publicKey: [UInt8]

    /// From its 32-byte seed (the file holds it as 64 hex digits).
    public init(seed: [UInt8]) throws(TenureError) {
        guard let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed) else {
            throw TenureError(.invalidConfiguration, "the signing key is not a 32-byte Ed25519 seed")
        }
        self.seed = seed
        publicKey = Array(key.publicKey.rawRepresentation)
    }

    /// The first 16 hex digits of the SHA-256 of the raw public key.
    public var keyID: String { Self.keyID(publicKey: publicKey) }

    public static func keyID(publicKey: [UInt8]) -> String { String(SHA256.hex(SHA256.hash(publicKey)).prefix(16)) }

    public func sign(_ message: [UInt8]) -> [UInt8] {
        Array(try! Curve25519.Signing.PrivateKey(rawRepresentation: seed).signature(for: message))
    }

    /// The public key as PEM SubjectPublicKeyInfo (RFC 8410): what OpenSSL and Python's
    /// `cryptography` load.
    public var publicKeyPEM: String { Self.pem(publicKey: publicKey) }

    static let spkiPrefix: [UInt8] = [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00]

    public static func pem(publicKey: [UInt8]) -> String {
        let body = Data(spkiPrefix + publicKey).base64EncodedString()
        return "-----BEGIN PUBLIC KEY-----\n\(body)\n-----END PUBLIC KEY-----\n"
    }

    /// The raw 32-byte key of a PEM SubjectPublicKeyInfo of an Ed25519 key; nil for anything else.
    public static func publicKey(pem: String) -> [UInt8]? {
        let body = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        guard let der = Data(base64Encoded: body).map(Array.init), der.count == 44, Array(der.prefix(12)) == spkiPrefix else { return nil }
        return Array(der.suffix(32))
    }

    public static func verify(_ signature: [UInt8], of message: [UInt8], publicKey: [UInt8]) -> Bool {
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: publicKey) else { return false }
        return key.isValidSignature(signature, for: message)
    }
}
