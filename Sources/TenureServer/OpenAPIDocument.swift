import Foundation

/// The OpenAPI 3.1 document served at /openapi.json: the target's resource
/// (`Resources/openapi.json`, which `docs/openapi.json` links to), read once.
let openAPIDocument: String = {
    guard let url = Bundle.module.url(forResource: "openapi", withExtension: "json"),
        let text = try? String(contentsOf: url, encoding: .utf8)
    else {
        fatalError("the OpenAPI document is missing from the tenure_TenureServer resource bundle beside the executable")
    }
    return text
}()
