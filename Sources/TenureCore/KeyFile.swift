import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A key file: 64 hex digits and a newline, mode 0600, created with O_EXCL so that two
/// processes starting at once end up with one key.
public enum KeyFile {
    /// The key, or nil when the file does not exist; an unreadable or malformed file is an error.
    public static func read(_ path: String, setting: String) throws(TenureError) -> [UInt8]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw TenureError(.invalidConfiguration, "\(setting) \(path) cannot be read (check its owner and mode)")
        }
        guard let key = hexBytes(text.trimmingCharacters(in: .whitespacesAndNewlines)), key.count == 32 else {
            throw TenureError(.invalidConfiguration, "\(setting) \(path) is not a key (64 hex digits)")
        }
        return key
    }

    /// Writes a new key file (fsynced); false if one exists already.
    public static func create(_ path: String, key: [UInt8], setting: String) throws(TenureError) -> Bool {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
                throw TenureError(.invalidConfiguration, "cannot create \(directory) for \(setting): \(error.localizedDescription)")
            }
        }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            if errno == EEXIST { return false }
            throw TenureError(.invalidConfiguration, "cannot create \(setting) \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        let line = Array((SHA256.hex(key) + "\n").utf8)
        let written = line.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        guard written == line.count, fsync(descriptor) == 0 else {
            unlink(path)
            throw TenureError(.invalidConfiguration, "cannot write \(setting) \(path): \(String(cString: strerror(errno)))")
        }
        return true
    }

    public static func syncDirectory(of path: String) {
        let directory = open((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent, O_RDONLY | O_CLOEXEC)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
    }
}

/// The bytes a string of hex digits (either case) spells; nil for an odd count or any other
/// character.
public func hexBytes<S: StringProtocol>(_ text: S) -> [UInt8]? {
    let digits = Array(text.utf8)
    guard digits.count % 2 == 0 else { return nil }
    func value(_ digit: UInt8) -> UInt8? {
        switch digit {
        case 48...57: digit - 48
        case 97...102: digit - 87
        case 65...70: digit - 55
        default: nil
        }
    }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(digits.count / 2)
    var index = 0
    while index < digits.count {
        guard let high = value(digits[index]), let low = value(digits[index + 1]) else { return nil }
        bytes.append(high << 4 | low)
        index += 2
    }
    return bytes
}
