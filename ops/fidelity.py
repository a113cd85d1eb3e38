#!/usr/bin/env python3
"""make fidelity: PostgreSQL's own standard of dump fidelity, applied to Tenure.

Starts a private PostgreSQL 15 server, builds PostgreSQL's regression database on it with
../shared/regress/make-regression-db.sh (the database pg_upgrade's tests dump and restore),
then makes three copies of it:
  reference  pg_dump -Fc  -> pg_restore           (PostgreSQL's own tools)
  native     tenure backup -> tenure restore
  sql        tenure backup --format sql -> zstd -dc | psql -v ON_ERROR_STOP=1
and compares each Tenure copy with the reference: the schema through
`pg_dump --schema-only --no-owner --no-privileges` (and once more with owners and
privileges), every table's rows as an order-independent fingerprint, every sequence's
value, every large object. Prints what differs and exits 1 on any difference.

Environment: FIDELITY_SHARED (default ../shared beside the checkout), FIDELITY_DIR
(default /tmp/tenure-fidelity), FIDELITY_PORT (55497), TENURE_BIN (the tenure binary).
"""
import difflib, os, re, shutil, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_BIN = os.environ.get("TENURE_PG_BIN", "/usr/lib/postgresql/15/bin")
SHARED = os.environ.get("FIDELITY_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
WORK = os.environ.get("FIDELITY_DIR", "/tmp/tenure-fidelity")
PORT = int(os.environ.get("FIDELITY_PORT", "55497"))
TENURE = os.environ.get("TENURE_BIN") or os.path.join(ROOT, ".build", "debug", "tenure")
AS_ROOT = os.geteuid() == 0
DATA = os.path.join(WORK, "data")
OUT = os.path.join(WORK, "out")
SOURCE = "regression"


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if AS_ROOT else cmd


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def psql_args(db):
    return [PG_BIN + "/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-d", db]


def query(db, sql):
    result = run(psql_args(db) + ["-At", "-F", "\t", "-c", sql], capture_output=True, text=True)
    return [line.split("\t") for line in result.stdout.splitlines() if line]


def url(db):
    return f"postgresql://postgres@127.0.0.1:{PORT}/{db}"


def start_server():
    if os.path.exists(WORK):
        subprocess.run(as_postgres([PG_BIN + "/pg_ctl", "-D", DATA, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(WORK)
    os.makedirs(OUT)
    if AS_ROOT:
        run(["chown", "-R", "postgres:postgres", WORK])
    run(as_postgres([PG_BIN + "/initdb", "-D", DATA, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]),
        stdout=subprocess.DEVNULL)
    with open(os.path.join(DATA, "postgresql.conf"), "a") as conf:
        conf.write(f"port = {PORT}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{WORK}'\n"
                   "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")
    run(as_postgres([PG_BIN + "/pg_ctl", "-D", DATA, "-l", os.path.join(WORK, "server.log"), "-w", "start"]), stdout=subprocess.DEVNULL)


def stop_server():
    subprocess.run(as_postgres([PG_BIN + "/pg_ctl", "-D", DATA, "-m", "fast", "-w", "stop"]), capture_output=True)


def build_regression_database():
    script = os.path.join(SHARED, "regress", "make-regression-db.sh")
    if not os.path.exists(script):
        sys.exit(f"fidelity: {script} not found; set FIDELITY_SHARED to the folder holding regress/")
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(PORT), PGUSER="postgres", REGRESS_DBNAME=SOURCE,
               REGRESS_WORKDIR=os.path.join(WORK, "regress"))
    run(["bash", script], env=env, stdout=subprocess.DEVNULL)


def make_copies():
    timings = {}
    started = time.time()
    dump = os.path.join(OUT, "reference.dump")
    run([PG_BIN + "/pg_dump", "-Fc", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-f", dump, SOURCE])
    run([PG_BIN + "/createdb", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-T", "template0", "reference"])
    run([PG_BIN + "/pg_restore", "--exit-on-error", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-d", "reference", dump])
    timings["reference"] = time.time() - started

    env = dict(os.environ, TENURE_HOME=os.path.join(WORK, "home"))
    started = time.time()
    archive = os.path.join(OUT, "regression.tenure")
    run([TENURE, "backup", "--url", url(SOURCE), "-o", archive], env=env, stdout=subprocess.DEVNULL)
    run([TENURE, "restore", archive, "--url", url("native")], env=env, stdout=subprocess.DEVNULL)
    timings["native"] = time.time() - started

    started = time.time()
    export = os.path.join(OUT, "regression.sql.zst")
    run([TENURE, "backup", "--url", url(SOURCE), "-o", export, "--format", "sql"], env=env, stdout=subprocess.DEVNULL)
    run([PG_BIN + "/createdb", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-T", "template0", "sql"])
    with subprocess.Popen(["zstd", "-dc", export], stdout=subprocess.PIPE) as unpack:
        # Warnings (wal_level and the like) are PostgreSQL's, as with the reference; errors stop psql.
        run(psql_args("sql"), stdin=unpack.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if unpack.returncode != 0:
        sys.exit("fidelity: zstd could not read the SQL export")
    timings["sql"] = time.time() - started
    return timings


def schema(db, privileges):
    flags = [] if privileges else ["--no-owner", "--no-privileges"]
    text = run([PG_BIN + "/pg_dump", "--schema-only", *flags, "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", db],
               capture_output=True, text=True).stdout
    return [line for line in text.splitlines() if not re.match(r"^\\(un)?restrict |^-- (Dumped|Started|Completed)", line)]


def fingerprints(db):
    """Per table: rows and an order-independent hash of their text; per sequence: its state;
    per large object: its size and hash."""
    tables = query(db, """
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'm') AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
          AND (c.relkind = 'r' OR c.relispopulated) ORDER BY 1""")
    statements = [f"SELECT {literal(name)}, count(*), coalesce(md5(string_agg(h, ',' ORDER BY h)), '-') "
                  f"FROM (SELECT md5(t::text) AS h FROM ONLY {name} t) rows;" for (name,) in tables]
    rows = {}
    if statements:
        result = run(psql_args(db) + ["-At", "-F", "\t"], input="\n".join(statements), capture_output=True, text=True)
        for line in result.stdout.splitlines():
            name, count, digest = line.split("\t")
            rows[name] = (int(count), digest)
    sequences = {}
    for (name,) in query(db, """
            SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'S' ORDER BY 1"""):
        sequences[name] = tuple(query(db, f"SELECT last_value, is_called FROM {name}")[0])
    objects = {oid: (size, digest) for oid, size, digest in query(
        db, "SELECT oid, length(lo_get(oid)), md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid")}
    return rows, sequences, objects


def literal(text):
    return "'" + text.replace("'", "''") + "'"


def compare(name, reference, copy):
    differences = []
    for privileges in (False, True):
        expected, actual = schema(reference, privileges), schema(copy, privileges)
        if expected != actual:
            diff = list(difflib.unified_diff(expected, actual, "reference", name, lineterm="", n=2))
            label = "schema with owners and privileges" if privileges else "schema (--no-owner --no-privileges)"
            differences.append(f"{label}: {sum(1 for l in diff if l[:1] in '+-') - 2} lines differ\n  " + "\n  ".join(diff[:80]))
    reference_rows, reference_sequences, reference_objects = fingerprints(reference)
    rows, sequences, objects = fingerprints(copy)
    for table in sorted(set(reference_rows) | set(rows)):
        if reference_rows.get(table) != rows.get(table):
            differences.append(f"table {table}: reference {reference_rows.get(table)}, {name} {rows.get(table)}")
    for sequence in sorted(set(reference_sequences) | set(sequences)):
        if reference_sequences.get(sequence) != sequences.get(sequence):
            differences.append(f"sequence {sequence}: reference {reference_sequences.get(sequence)}, {name} {sequences.get(sequence)}")
    for oid in sorted(set(reference_objects) | set(objects)):
        if reference_objects.get(oid) != objects.get(oid):
            differences.append(f"large object {oid}: reference {reference_objects.get(oid)}, {name} {objects.get(oid)}")
    summary = (f"{len(reference_rows)} tables ({sum(c for c, _ in reference_rows.values())} rows), "
               f"{len(reference_sequences)} sequences, {len(reference_objects)} large objects, "
               f"{len(schema(reference, True))} schema lines")
    return differences, summary


def main():
    if not os.path.exists(TENURE):
        sys.exit(f"fidelity: {TENURE} not found; build it first (make fidelity does)")
    started = time.time()
    start_server()
    try:
        build_regression_database()
        built = time.time() - started
        timings = make_copies()
        failed = False
        for name in ("native", "sql"):
            differences, summary = compare(name, "reference", name)
            if differences:
                failed = True
                print(f"fidelity {name}: {len(differences)} differences from pg_dump -Fc | pg_restore ({summary})")
                for line in differences:
                    print("  " + line)
            else:
                print(f"fidelity {name}: identical to pg_dump -Fc | pg_restore: {summary}; copy took {timings[name]:.1f} s")
        print(f"fidelity: regression database built in {built:.0f} s; pg_dump | pg_restore took {timings['reference']:.1f} s; "
              f"whole run {time.time() - started:.0f} s")
        return 1 if failed else 0
    finally:
        stop_server()


if __name__ == "__main__":
    sys.exit(main())
