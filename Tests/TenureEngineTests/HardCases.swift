import Foundation
import Testing
import TenureCore
import TenurePQ
import TenureTestSupport

/// A database full of the cases a logical backup gets wrong.
let hardCasesSQL = #"""
CREATE EXTENSION hstore;
CREATE EXTENSION citext;
CREATE SCHEMA "Odd Schema";
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE types (
    id serial PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, n numeric(30,8), f4 real, f8 double precision, b boolean,
    t text, vc varchar(40), c char(3), d date, ts timestamp, tz timestamptz, iv interval, tm time, u uuid, j json, jb jsonb,
    ba bytea, arr integer[], tarr text[], ip inet, net cidr, mac macaddr, pt point, rng int4range, bits bit varying(16),
    x xml, m mood, h hstore, ci citext, cash money, tsv tsvector
);
INSERT INTO types (i2, i4, i8, n, f4, f8, b, t, vc, c, d, ts, tz, iv, tm, u, j, jb, ba, arr, tarr, ip, net, mac, pt, rng, bits, x, m, h, ci, cash, tsv)
VALUES
 (1, 2, 3, 12345.678, 1.5, 2.25, true, 'plain', 'v', 'abc', '2026-01-31', '2026-01-31 12:00', '2026-01-31 12:00+02', '1 day 2 hours', '13:14',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": {"c": null}}', '\x00ff10', '{1,2,NULL}', '{"a b","c\"d",NULL}',
  '192.168.0.1', '10.0.0.0/8', '08:00:2b:01:02:03', '(1,2)', '[1,10)', B'1011', '<a>x</a>', 'happy', 'k=>v, "q w"=>NULL', 'MiXeD', 12.34, 'fat cat'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (-32768, -2147483648, -9223372036854775808, 'NaN', 'Infinity', '-Infinity', false, '', '', '', '-infinity', 'infinity', 'epoch', '-1 year', '00:00',
  '00000000-0000-0000-0000-000000000000', '""', '[]', '\x', '{}', '{}', '::1', '::/0', '00:00:00:00:00:00', '(0,0)', 'empty', B'', '<r/>', 'sad', '', '', 0, ''),
 (0, 0, 0, 0.00000001, 0, 0, true, E'back\\slash \\. \\N tab\there\nnew line\r\ncrlf', E'\\.', 'x', '2000-02-29', '1999-12-31 23:59:59.999999',
  '2026-03-29 02:30 Europe/Berlin', '0', '23:59:59', 'ffffffff-ffff-ffff-ffff-ffffffffffff', E'{"s": "line\\nbreak"}', '{"emoji": "😀", "é": "ü"}',
  '\x5c2e0a', '{-1}', E'{"\\\\"}', '10.1.2.3/32', '192.168.1.0/24', 'ff:ff:ff:ff:ff:ff', '(-1.5,2.5)', '(,)', B'1', '<a b="1"/>', 'ok',
  E'"back\\\\slash"=>"x"', 'Ärger', -5.5, 'a:1 b:2'),
 (7, 7, 7, 7, 7, 7, true, 'Grüße, 日本語, עברית, emoji 😀 and a NUL-free \u0001 control', 'ünïcödé', 'ñ', '1970-01-01', NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
-- Only types the restore loads in binary, with their edge values (see BinaryCopyTests).
CREATE TABLE binary_types (
    id integer PRIMARY KEY, b boolean, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision, n numeric, n2 numeric(14,4),
    t text, vc varchar(8), c char(4), ba bytea, d date, ts timestamp, tz timestamptz, j json, jb jsonb, u uuid
);
INSERT INTO binary_types VALUES
 (1, true, -32768, -2147483648, -9223372036854775808, '-Infinity', 'NaN', '-Infinity', 'NaN', '', '', '', '\x', '-infinity', 'infinity', '-infinity', 'null', '{}',
  '00000000-0000-0000-0000-000000000000'),
 (2, false, 32767, 2147483647, 9223372036854775807, 3.4028235e38, 1.7976931348623157e308, '-0.000', '-1234567890.9999', E'tab\there\nnew\\back\r\f\b\v',
  'ünï', 'ab', '\x00ff5c0a09', '2000-02-29', '1999-12-31 23:59:59.999999', '2026-03-29 02:30 Europe/Berlin', E'{"s": "a\\\\b\\n"}', E'{"e": "😀", "k": "t\\t"}',
  'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, true, 0, 0, 0, -0.0, 2.2250738585072014e-308, '123456789012345678901234567890.123456789012345678901234567890', '0.0001', E'\\N', '\.', 'z',
  '\x5c4e', '0001-01-01', '0001-01-01 00:00:00', '10000-01-01 00:00:00.5+00', '[1, 2.5e3]', '{"a": [null, true, 1e-3]}', 'ffffffff-ffff-ffff-ffff-ffffffffffff');
INSERT INTO binary_types SELECT g + 100, g % 2 = 0, (g % 30000)::smallint, g * 7919, g::bigint * 1000003, g / 7.0, g / 3.0, g * 1.0001, (g % 99999) / 10000.0,
  md5(g::text) || E'\\' || g, left(md5(g::text), 8), left(md5(g::text), 3), decode(md5(g::text), 'hex'), date '2024-01-01' - g,
  timestamp '2024-01-01' - g * interval '37 minutes 13.123457 seconds', timestamptz '2024-01-01 00:00+00' + g * interval '1 day 0.000001 seconds',
  json_build_object('g', g), jsonb_build_object('g', g, 't', repeat('x', g % 50)), md5(g::text)::uuid
FROM generate_series(1, 5000) g;
-- Values the binary loader leaves to the server's text input (BC, years past six digits).
CREATE TABLE text_fallback (id integer, d date, tz timestamptz, n numeric);
INSERT INTO text_fallback VALUES (1, '0044-03-15 BC', '0044-03-15 12:00+00 BC', 1), (2, '5874897-12-31', 'infinity', 2), (3, '2026-01-01', '2026-01-01 00:00+00', 3);
-- Types the restore loads in binary through their catalog entries: domains (over scalars and
-- arrays, with checks), an enum, citext, and one-dimensional arrays of the binary kinds.
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE DOMAIN money2 AS numeric(10,2);
CREATE DOMAIN short_label AS varchar(12) NOT NULL;
CREATE DOMAIN label_of_label AS short_label;
CREATE DOMAIN int_list AS integer[] CHECK (cardinality(VALUE) < 10);
CREATE TABLE binary_more (
    id integer PRIMARY KEY, p positive_int, m money2, l short_label, ll label_of_label, e mood, ci citext,
    ai integer[], ab bigint[], at text[], av varchar(5)[], an numeric(8,3)[], aby bytea[], aj jsonb[], au uuid[], ad date[], atz timestamptz[],
    abo boolean[], af float8[], ae mood[], adom positive_int[], il int_list
);
INSERT INTO binary_more VALUES
 (1, 1, 0.005, 'a', 'b', 'sad', 'MiXeD', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}'),
 (2, NULL, NULL, '', '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, 2147483647, -99999999.99, 'tab	x', E'back\\slash', 'happy', E'Ärger\ttab', '{1,NULL,-2147483648}', '{9223372036854775807,NULL}',
  ARRAY['', 'NULL', 'null', NULL, 'a b', 'c,d', '{e}', 'f"g', E'h\\i', E'tab\there', E'new\nline', '😀', ' lead', 'trail '],
  '{abcde,"x y",NULL}', '{1.5,-0.001,NaN,NULL}', ARRAY['\x'::bytea, '\x00ff', NULL], ARRAY['{"a": [1, "b"]}'::jsonb, 'null', '1', '"s"', NULL],
  '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}', '{2000-02-29,infinity,NULL}', '{"2026-03-29 02:30+02",-infinity}', '{t,f,NULL}',
  '{NaN,Infinity,-Infinity,1e-300,-0}', '{happy,NULL,sad}', '{1,2,NULL}', '{3,4}');
INSERT INTO binary_more SELECT g + 100, g, g / 7.0, 'l' || g, 'm' || g, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood, 'Ci' || g,
  ARRAY[g, g + 1], ARRAY[g::bigint * 1000003], ARRAY['t' || g, E'q"' || g], ARRAY[left(md5(g::text), 5)], ARRAY[g / 3.0], ARRAY[decode(md5(g::text), 'hex')],
  ARRAY[jsonb_build_object('g', g)], ARRAY[md5(g::text)::uuid], ARRAY[date '2024-01-01' - g], ARRAY[timestamptz '2024-01-01 00:00+00' + g * interval '1 minute'],
  ARRAY[g % 2 = 0], ARRAY[g / 9.0], ARRAY['ok'::mood], ARRAY[g::positive_int], ARRAY[g]
FROM generate_series(1, 3000) g;
-- More kinds the restore loads in binary: times, intervals, network and MAC addresses, oid,
-- "char", name, and arrays of them.
CREATE TABLE binary_extra (
    id integer PRIMARY KEY, t time, t3 time(3), tz timetz, iv interval, iv0 interval(0), ivym interval YEAR TO MONTH, ip inet, net cidr,
    mac macaddr, mac8 macaddr8, o oid, ch "char", nm name, at time[], atz timetz[], aiv interval[], aip inet[], anet cidr[], ach "char"[], anm name[]
);
INSERT INTO binary_extra VALUES
 (1, '00:00:00', '23:59:59.9994', '00:00:00+00', '00:00:00', '0', '0', '0.0.0.0', '0.0.0.0/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', 0,
  '', '', '{}', '{}', '{}', '{}', '{}', '{}', '{}'),
 (2, '24:00:00', '12:34:56.789', '24:00:00-15:59:59', '-178000000 years', '1 day 23:59:59.5', '-1 year -11 mons', '255.255.255.255',
  '255.255.255.255/32', 'FF:FF:FF:FF:FF:FF', 'ff:ff:ff:ff:ff:ff:ff:ff', 4294967295, E'\t', 'a name, with "quotes" and spaces',
  '{00:00:00,24:00:00,NULL}', '{"12:00:00+05:30","00:00:00-00:00:01",NULL}', '{"1 day","-1 days +02:00:00",00:00:00,NULL}',
  '{::,::1,::ffff:1.2.3.4,192.168.1.5/24,NULL}', '{10.0.0.0/8,::/0,2001:db8::/32,NULL}', ARRAY['', 'a', '"', E'\\', ',', ' ', (-56)::"char", NULL],
  ARRAY['', 'NULL', 'a b', E'tab\there', NULL]::name[]),
 (3, '23:59:59.999999', '00:00:00.0005', '13:14:15.161718+14:59', '178000000 years', '-1 days +02:03:04', '178956970 years 7 mons', '::',
  '::/0', '08:00:2b:01:02:03', '08:00:2b:ff:fe:01:02:03', 12345, (-56)::"char", repeat('n', 63), NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, NULL, NULL, NULL, '1 year -2 mons +3 days -04:05:06.5', '-00:00:00.000001', NULL, '2001:db8::1/64', '2001:db8::/32', NULL, NULL, NULL,
  E'\\', E'back\\slash', NULL, NULL, '{"2562047788:00:54.775807","-2562047788:00:54.775807","100:00:00"}', '{fe80::1:2:3:4/10}', NULL, NULL, NULL),
 (5, NULL, NULL, NULL, '-1 years -2 mons -3 days', '3 mons -1 days', NULL, 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', '::ffff:1.2.3.0/120', NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO binary_extra SELECT g + 100, time '00:00' + g * interval '17.123457 seconds', time '00:00' + g * interval '1.0005 seconds',
  timetz '12:00+05:30' + g * interval '1 minute', g * interval '1 day 1.5 seconds' - interval '40 days',
  make_interval(months => g % 30 - 15, days => g % 7 - 3, secs => g * 0.25 - 300), make_interval(years => g % 5, months => g % 12),
  ('10.' || g % 256 || '.' || g / 256 % 256 || '.' || g % 7 || '/' || (8 + g % 25))::inet, network(('10.' || g % 256 || '.' || g / 256 || '.0/24')::inet)::cidr,
  lpad(to_hex(g), 12, '0')::macaddr, lpad(to_hex(g * 65537), 16, '0')::macaddr8, (g::bigint * 1000003 % 4294967296)::text::oid,
  chr(32 + g % 95)::"char", ('n' || g)::name, ARRAY[time '01:00' + g * interval '1 second'], ARRAY[timetz '01:00-03' + g * interval '1 second'],
  ARRAY[g * interval '1 hour', - g * interval '1 mon'], ARRAY[('2001:db8::' || to_hex(g))::inet, ('192.168.0.' || g % 256)::inet],
  ARRAY[('2001:db8:' || to_hex(g) || '::/48')::cidr], ARRAY[chr(65 + g % 26)::"char"], ARRAY[('m' || g)::name]
FROM generate_series(1, 3000) g;
-- Ranges (built-in and one of the test's own, over a domain) and bit strings, in binary.
CREATE DOMAIN short_float AS float8 CHECK (VALUE > -1e6);
CREATE TYPE short_float_range AS RANGE (subtype = short_float);
CREATE TABLE binary_ranges (
    id integer PRIMARY KEY, i4 int4range, i8 int8range, nr numrange, d daterange, ts tsrange, tz tstzrange, own short_float_range, b bit(3), vb varbit,
    vb5 bit varying(5)
);
INSERT INTO binary_ranges VALUES
 (1, 'empty', '(,)', '[-Infinity,Infinity]', '[2000-02-29,infinity)', '[-infinity,2000-01-01 00:00:00.5)', '(,"2026-03-29 02:30+02"]', '(-1.5,NaN]',
  B'000', B'', B'1'),
 (2, '[1,1]', '[-9223372036854775808,9223372036854775806]', '(0.001,0.002)', '(,)', '(,)', 'empty', 'empty', B'111', repeat('10', 500)::varbit, B'10101'),
 (3, '(,5]', '[3,)', '[1.5,1.5]', '[2000-01-01,2000-01-02)', '["2000-01-01 00:00:00","2000-01-01 00:00:00"]', '[infinity,infinity]', '[,0]',
  NULL, NULL, NULL),
 (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, B'010', B'1', B'');
INSERT INTO binary_ranges SELECT g + 100, int4range(g, g + g % 17, '[]'), int8range(g::bigint * 1000003, NULL), numrange(g / 7.0, g / 3.0, '(]'),
  daterange(date '2024-01-01' - g, date '2024-01-01' + g), tsrange(timestamp '2024-01-01' + g * interval '1 minute', NULL, '()'),
  tstzrange(NULL, timestamptz '2024-01-01 00:00+00' + g * interval '1.5 seconds'), short_float_range(g / 9.0, g, '[]'),
  (g % 8)::bit(3), (g::bit(16) >> (g % 16))::varbit, left((g % 32)::bit(5)::text, g % 6)::varbit(5)
FROM generate_series(1, 3000) g;
-- Geometric types and LSNs, in binary.
CREATE TABLE binary_shapes (id integer PRIMARY KEY, p point, b box, s lseg, l line, c circle, op path, cp path, pg polygon, lsn pg_lsn, ap point[]);
INSERT INTO binary_shapes VALUES
 (1, '(0,0)', '(0,0),(0,0)', '[(0,0),(0,0)]', '{1,0,0}', '<(0,0),0>', '[(0,0)]', '((0,0))', '((0,0))', '0/0', '{}'),
 (2, '(-0,1e-300)', '(-1,-2),(3,4)', '[(1.5,2.5),(-3.25,1e+300)]', '{0,-1.5,NaN}', '<(NaN,Infinity),1e300>', '[(1,2),(3,4),(5,6)]', '((1,2),(3,4))',
  '((0,0),(1,1),(1,0))', 'FFFFFFFF/FFFFFFFF', '{"(1,2)",NULL,"(-Infinity,NaN)"}'),
 (3, '(NaN,-Infinity)', '(Infinity,NaN),(-Infinity,0)', NULL, NULL, NULL, NULL, NULL, NULL, '16/B374D848', NULL);
INSERT INTO binary_shapes SELECT g + 100, point(g / 7.0, -g / 3.0), box(point(g, g * 1.5), point(-g, g / 9.0)), lseg(point(g, 0), point(0, g / 11.0)),
  line(point(g, 1), point(g + 1, g / 13.0)), circle(point(g / 3.0, g), g / 17.0), ('[(' || g || ',1),(2,' || g / 7.0 || ')]')::path,
  ('((' || g || ',1),(2,' || g / 7.0 || '),(3,3))')::path, ('((0,0),(' || g || ',' || g / 3.0 || '),(' || g || ',0))')::polygon,
  '0/0'::pg_lsn + g::numeric * 1000003 * 4099, ARRAY[point(g, g), point(-g, 1.0 / g)]
FROM generate_series(1, 3000) g;
-- Text search vectors, in binary.
CREATE TABLE binary_search (id integer PRIMARY KEY, v tsvector, av tsvector[]);
INSERT INTO binary_search VALUES
 (1, '', '{}'), (2, 'a', ARRAY[''::tsvector, 'b:1']),
 (3, $$'it''s' 'back\\slash':1A,2B,3C,4 'ünï':16383 'tab	x' 'a b'$$, ARRAY[$$'q"uote' 'back\\slash':7$$::tsvector, NULL]);
INSERT INTO binary_search SELECT g + 100, to_tsvector('english', 'The quick brown fox ' || g || ' jumps over the lazy dog ' || md5(g::text)),
  ARRAY[setweight(to_tsvector('simple', 'row ' || g), 'A'), to_tsvector('simple', 'n' || g % 7)]
FROM generate_series(1, 3000) g;
-- Arrays the binary loader leaves to the server's text input (several dimensions, bounds).
CREATE TABLE array_fallback (id integer, a integer[]);
INSERT INTO array_fallback VALUES (1, '{{1,2},{3,4}}'), (2, '[0:1]={5,6}'), (3, '{7}');
CREATE TABLE "Odd Schema"."Mixed ""Quoted"" Name" ("Weird Col" text, "select" integer, "ÜberCol" text);
INSERT INTO "Odd Schema"."Mixed ""Quoted"" Name" VALUES ('a', 1, 'b'), (NULL, NULL, NULL), ('', 0, E'\t');
CREATE TABLE no_columns ();
INSERT INTO no_columns DEFAULT VALUES; INSERT INTO no_columns DEFAULT VALUES; INSERT INTO no_columns DEFAULT VALUES;
CREATE TABLE dropped_column (a integer, b text, c integer);
ALTER TABLE dropped_column DROP COLUMN b;
INSERT INTO dropped_column VALUES (1, 2), (3, NULL);
CREATE TABLE measurements (city integer, logdate date NOT NULL, reading integer) PARTITION BY RANGE (logdate);
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE INDEX measurements_city ON measurements (city);
INSERT INTO measurements SELECT g % 10, date '2025-06-01' + g, g FROM generate_series(1, 400) g;
CREATE TABLE animals (name text PRIMARY KEY);
CREATE TABLE dogs (bark text) INHERITS (animals);
INSERT INTO animals VALUES ('generic');
INSERT INTO dogs VALUES ('rex', 'woof'), ('fido', NULL);
CREATE TABLE generated (a integer, b integer GENERATED ALWAYS AS (a * 10) STORED);
INSERT INTO generated (a) VALUES (1), (2), (NULL);
CREATE TABLE identity_table (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
INSERT INTO identity_table (v) SELECT 'v' || g FROM generate_series(1, 5) g;
CREATE SEQUENCE seq_called;
SELECT setval('seq_called', 1234);
CREATE SEQUENCE seq_not_called;
SELECT setval('seq_not_called', 77, false);
CREATE SEQUENCE "Odd Schema"."Odd Seq" INCREMENT BY -1 MINVALUE -100 MAXVALUE 100 START 5;
SELECT nextval('"Odd Schema"."Odd Seq"');
CREATE TABLE toasty (id integer PRIMARY KEY, big text, blob bytea);
INSERT INTO toasty SELECT 1, string_agg(md5(g::text), ''), decode(string_agg(md5((g * 7)::text), ''), 'hex') FROM generate_series(1, 150000) g;
INSERT INTO toasty VALUES (2, repeat('x', 10), NULL);
SELECT lo_from_bytea(0, 'small large object');
SELECT lo_from_bytea(0, '');
SELECT lo_from_bytea(0, decode(string_agg(md5(g::text), ''), 'hex')) FROM generate_series(1, 200000) g;
CREATE TABLE accounts (id integer PRIMARY KEY, owner text NOT NULL, balance numeric CHECK (balance >= -1000), UNIQUE (owner));
INSERT INTO accounts SELECT g, 'owner' || g, g * 10 FROM generate_series(1, 3000) g;
CREATE TABLE transfers (id bigserial PRIMARY KEY, account integer REFERENCES accounts (id) ON DELETE CASCADE, amount numeric);
INSERT INTO transfers (account, amount) SELECT 1 + g % 3000, g FROM generate_series(1, 20000) g;
CREATE INDEX transfers_expression ON transfers ((amount * 2)) WHERE amount > 10;
CREATE VIEW rich AS SELECT owner FROM accounts WHERE balance > 100;
CREATE MATERIALIZED VIEW totals AS SELECT account, sum(amount) AS total FROM transfers GROUP BY account;
CREATE UNIQUE INDEX totals_account ON totals (account);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    NEW.v := NEW.v || '!';
    RETURN NEW;
END
$body$;
CREATE TRIGGER identity_touch BEFORE INSERT ON identity_table FOR EACH ROW EXECUTE FUNCTION touch();
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON accounts USING (owner = current_user);
COMMENT ON TABLE accounts IS 'Customer accounts; it''s commented';
COMMENT ON COLUMN accounts.balance IS 'in cents, may be "negative"';
"""#

/// Comparison of two databases: schema text, per-table content fingerprints, sequences, large objects.
func fingerprint(_ server: TestServer, _ database: String) throws -> [String] {
    var lines: [String] = []
    let tables = try server.rows(
        """
        SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' ORDER BY 1
        """, database: database)
    for row in tables {
        let name = row[0]!
        let print = try server.rows(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(h, '' ORDER BY h)), '-') FROM (SELECT md5(t::text) AS h FROM ONLY \(name) t) s",
            database: database)
        lines.append("table \(name): \(print[0][0]!)")
    }
    for row in try server.rows(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) FROM pg_sequences ORDER BY 1", database: database)
    {
        let state = try server.rows("SELECT last_value || ' ' || is_called FROM \(row[0]!)", database: database)
        lines.append("sequence \(row[0]!): \(state[0][0]!)")
    }
    for row in try server.rows("SELECT oid || ' ' || md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid", database: database) {
        lines.append("large object \(row[0]!)")
    }
    return lines
}

/// `pg_dump --schema-only`, without the per-run `\restrict` key lines.
func schemaDump(_ server: TestServer, _ database: String) throws -> String {
    let child = try ChildProcess(
        ["/usr/lib/postgresql/15/bin/pg_dump", "--schema-only", "-h", server.cluster.socketDirectory, "-p", String(server.port), "-U", "postgres", database],
        environment: ["PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"])
    let outcome = child.wait()
    #expect(outcome.status == 0, "\(outcome.stderr)")
    return outcome.stdout.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("\\restrict") && !$0.hasPrefix("\\unrestrict") }
        .joined(separator: "\n")
}

func newDatabaseName(_ prefix: String) -> String {
    prefix + "_" + String(DatabaseID.random().rawValue.dropFirst(3))
}

func url(_ server: TestServer, _ database: String) -> String {
    "postgresql://postgres@/\(database)?host=\(server.cluster.socketDirectory)&port=\(server.port)"
}

func createHardCases(_ server: TestServer) throws -> String {
    let name = newDatabaseName("hard")
    _ = try server.rows("CREATE DATABASE \(name)")
    let connection = try server.connect(database: name)
    defer { connection.close() }
    try connection.execute(hardCasesSQL)
    return name
}

func temporaryFile(_ suffix: String) -> String {
    NSTemporaryDirectory() + "tenure-test-\(UUID().uuidString.prefix(8))\(suffix)"
}

/// Databases a failed restore left behind. Tests run side by side on one server, so another
/// test's restore may be in progress: a name counts only if it is still there after every
/// running restore had time to finish.
func leftovers(_ server: TestServer) throws -> [String] {
    let query = "SELECT datname FROM pg_database WHERE datname LIKE 'tenure_restore_%'"
    var names = Set(try server.rows(query).map { $0[0]! })
    let deadline = Date().addingTimeInterval(60)
    while !names.isEmpty && Date() < deadline {
        Thread.sleep(forTimeInterval: 0.5)
        names.formIntersection(try server.rows(query).map { $0[0]! })
    }
    return names.sorted()
}
