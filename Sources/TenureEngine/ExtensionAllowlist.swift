import TenureCore
import TenurePQ

/// The extensions Tenure creates on a customer's behalf (`TENURE_EXTENSIONS`), as managed
/// platforms do for extensions an owner may not create (untrusted ones: PostGIS, say).
/// Trusted extensions need no listing: the owner creates them itself.
public struct ExtensionAllowlist: Sendable, Equatable {
    public private(set) var names: [String]

    /// `names`: extension names as PostgreSQL spells them (lower case, letters, digits, `_`
    /// and `-`).
    public init(_ names: [String] = []) throws(TenureError) {
        for name in names where name.isEmpty || !name.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "_" || $0 == "-" }) || !name.allSatisfy(\.isASCII) {
            throw TenureError(.invalidConfiguration, "TENURE_EXTENSIONS: '\(printable(name))' is not an extension name (lower-case letters, digits, _ and -)")
        }
        self.names = Array(Set(names)).sorted()
    }

    public init() { names = [] }

    /// `TENURE_EXTENSIONS`: names separated by commas or spaces.
    public static func parse(_ text: String) throws(TenureError) -> ExtensionAllowlist {
        try ExtensionAllowlist(text.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init))
    }

    public func contains(_ name: String) -> Bool { names.contains(name) }

    /// Refuses an extension that is neither listed nor trusted, naming the list.
    public func check(_ name: String, trusted: Bool) throws(TenureError) {
        guard !contains(name) && !trusted else { return }
        let listed = names.isEmpty ? "none is listed" : "listed: \(names.joined(separator: ", "))"
        throw TenureError(
            .uploadRejected,
            "extension '\(printable(name))' is neither trusted nor in TENURE_EXTENSIONS (\(listed)); ask the operator to list it")
    }

    /// Creates `name` with a superuser `session` connected to the tenant's database, then
    /// hands the tables, sequences and views it made to `owner` (PostgreSQL lets their owner
    /// change; its functions stay with the superuser, so nobody gains a C function).
    /// Of the dump's own `CREATE EXTENSION` statement only the schema and version are kept:
    /// Tenure writes the statement it runs itself, never CASCADE (which would create other,
    /// unlisted extensions with a superuser's rights).
    public static func create(statement: String, name: String, owner: String, on session: PostgresConnection) throws(TenureError) {
        precondition(!owner.isEmpty, "extension owner")
        var tokens: [String] = []
        UploadStatementPolicy.scan(statement) { token in
            tokens.append(token)
            return tokens.count < 64
        }
        func after(_ word: String) -> String? {
            tokens.firstIndex(of: word).flatMap { $0 + 1 < tokens.count ? tokens[$0 + 1] : nil }
        }
        var sql = "CREATE EXTENSION IF NOT EXISTS \(quoteIdentifier(name))"
        if let schema = after("SCHEMA") { sql += " SCHEMA \(quoteIdentifier(UploadStatementPolicy.folded(schema)))" }
        if let version = after("VERSION") { sql += " VERSION \(quoteLiteral(UploadStatementPolicy.folded(version.hasPrefix("'") ? String(version.dropFirst().dropLast()) : version)))" }
        do {
            try session.execute("SET search_path = pg_catalog")
            try session.execute(sql)
            let relations = try session.query(
                """
                SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text FROM pg_catalog.pg_depend d
                JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                JOIN pg_catalog.pg_class c ON c.oid = d.objid AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE e.extname = $1 AND d.deptype = 'e' AND c.relkind IN ('r', 'S', 'v', 'm', 'p')
                """, [name])
            for row in relations.rows {
                let kind = ["S": "SEQUENCE", "v": "VIEW", "m": "MATERIALIZED VIEW"][row[1] ?? ""] ?? "TABLE"
                try session.execute("ALTER \(kind) \(row[0]!) OWNER TO \(quoteIdentifier(owner))")
            }
        } catch {
            throw TenureError(.uploadRejected, "creating extension \(name) failed: \(error.message)", sqlState: error.sqlState)
        }
    }
}
