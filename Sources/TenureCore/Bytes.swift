/// `withUnsafeBytes` for closures with typed throws (the standard library's rethrows as
/// `any Error`).
extension Array where Element == UInt8 {
    public func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws(TenureError) -> T) throws(TenureError) -> T {
        let result: Result<T, TenureError> = withUnsafeBytes { buffer in
            do throws(TenureError) { return .success(try body(buffer)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    public mutating func withMutableBytes<T>(_ body: (UnsafeMutableRawBufferPointer) throws(TenureError) -> T) throws(TenureError) -> T {
        let result: Result<T, TenureError> = withUnsafeMutableBytes { buffer in
            do throws(TenureError) { return .success(try body(buffer)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
