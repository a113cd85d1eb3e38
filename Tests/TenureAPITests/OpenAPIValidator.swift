import Foundation
import TenureTestSupport

/// Checks real responses against docs/openapi.json: the route and method exist, the status
/// is documented, the content type is one the operation declares, and a JSON body matches
/// its schema (type, enum, required, properties, additionalProperties, items, pattern, $ref).
struct OpenAPIValidator {
    let document: [String: Any]

    init(path: String) throws {
        document = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    func validate(method: String, path: String, response: HTTPResponse) -> [String] {
        let bare = String(path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0])
        let paths = document["paths"] as! [String: Any]
        guard let template = paths.keys.first(where: { matches(template: $0, path: bare) }) else {
            // Unknown routes answer 404 problem+json; anything else is undocumented.
            return response.status == 404 && response.header("content-type") == "application/problem+json" ? [] : ["\(bare): no such path in the document"]
        }
        guard let operation = (paths[template] as! [String: Any])[method.lowercased()] as? [String: Any] else {
            return response.status == 404 || response.status == 405 ? [] : ["\(method) \(template): no such operation"]
        }
        let responses = operation["responses"] as! [String: Any]
        guard let documented = (responses[String(response.status)] ?? responses["default"]) as? [String: Any] else {
            return ["\(method) \(template): status \(response.status) is not documented"]
        }
        guard let content = documented["content"] as? [String: Any] else {
            return response.body.isEmpty ? [] : ["\(method) \(template) \(response.status): a body where none is documented"]
        }
        let mediaType = (response.header("content-type") ?? "").split(separator: ";")[0].trimmingCharacters(in: .whitespaces)
        guard let media = content[mediaType] as? [String: Any] else {
            return ["\(method) \(template) \(response.status): content type '\(mediaType)' is not one of \(content.keys.sorted())"]
        }
        guard mediaType.hasSuffix("json"), let schema = media["schema"] else { return [] }
        guard let value = try? JSONSerialization.jsonObject(with: Data(response.body), options: [.fragmentsAllowed]) else {
            return ["\(method) \(template) \(response.status): body is not JSON"]
        }
        return check(value, against: schema, at: "\(method) \(template) \(response.status) $")
    }

    func matches(template: String, path: String) -> Bool {
        let a = template.split(separator: "/"), b = path.split(separator: "/")
        guard a.count == b.count else { return false }
        return zip(a, b).allSatisfy { $0.hasPrefix("{") || $0 == $1 }
    }

    func resolve(_ schema: Any) -> [String: Any] {
        var schema = schema as! [String: Any]
        while let reference = schema["$ref"] as? String {
            let name = String(reference.split(separator: "/").last!)
            schema = ((document["components"] as! [String: Any])["schemas"] as! [String: Any])[name] as! [String: Any]
        }
        return schema
    }

    func jsonType(_ value: Any) -> String {
        switch value {
        case is NSNull: return "null"
        case let number as NSNumber:
            let type = String(cString: number.objCType)
            if type == "c" { return "boolean" }
            return ["d", "f"].contains(type) ? "number" : "integer"
        case is String: return "string"
        case is [Any]: return "array"
        case is [String: Any]: return "object"
        default: return "unknown"
        }
    }

    func check(_ value: Any, against rawSchema: Any, at location: String) -> [String] {
        let schema = resolve(rawSchema)
        var errors: [String] = []
        let actual = jsonType(value)
        if let type = schema["type"] {
            let allowed = (type as? [String]) ?? [type as! String]
            let ok = allowed.contains(actual) || (actual == "integer" && allowed.contains("number"))
            if !ok { return ["\(location): \(actual) where \(allowed) is expected"] }
        }
        if let options = schema["enum"] as? [String], let text = value as? String, !options.contains(text) {
            errors.append("\(location): '\(text)' is not one of \(options)")
        }
        if let pattern = schema["pattern"] as? String, let text = value as? String, text.range(of: pattern, options: .regularExpression) == nil {
            errors.append("\(location): '\(text)' does not match \(pattern)")
        }
        if let object = value as? [String: Any] {
            let properties = schema["properties"] as? [String: Any] ?? [:]
            for key in schema["required"] as? [String] ?? [] where object[key] == nil {
                errors.append("\(location).\(key): required but missing")
            }
            for (key, item) in object {
                if let property = properties[key] {
                    errors += check(item, against: property, at: "\(location).\(key)")
                } else if let extra = schema["additionalProperties"] {
                    if let allowed = extra as? Bool {
                        if !allowed && !properties.isEmpty || (!allowed && schema["properties"] != nil) {
                            errors.append("\(location).\(key): not in the schema")
                        }
                    } else {
                        errors += check(item, against: extra, at: "\(location).\(key)")
                    }
                }
            }
        }
        if let array = value as? [Any], let items = schema["items"] {
            for (index, item) in array.enumerated() { errors += check(item, against: items, at: "\(location)[\(index)]") }
        }
        return errors
    }
}
