#!/usr/bin/env python3
"""make bench: Tenure's backup/restore against pg_dump/pg_restore on one private server.

Generates a benchmark database (BENCH_SCALE GiB of table data, default 1: one big table of
about 60 %, 6 medium tables, 300 small ones; numeric, timestamptz, jsonb, text, bytea;
indexes and a foreign key), then times each tool in one run with N = cores and prints
seconds, output bytes, peak RSS and the ratios against the targets of issue 4. Then the
HTTP API (issue 5): `tenure serve` on the same server, a managed copy of the benchmark
database exported over HTTP (curl) against `tenure backup` to a file, and wrk on
GET /v1/databases/{id}. Then uploads (issue 18): a plain-SQL and a custom-format dump of the
benchmark database through `tenure upload create`, against psql -f and pg_restore -j N.
BENCH_PARTS=http runs only the HTTP part (with its backup baseline); BENCH_PARTS=upload the
HTTP part and the uploads.
Never part of `make test`.
"""
import json, os, re, shutil, subprocess, sys, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_BIN = os.environ.get("TENURE_PG_BIN", "/usr/lib/postgresql/15/bin")
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
JOBS = int(os.environ.get("BENCH_JOBS", str(os.cpu_count() or 2)))
WORK = os.environ.get("BENCH_DIR", "/tmp/tenure-bench")
PORT = int(os.environ.get("BENCH_PORT", "55499"))
TENURE = os.environ.get("TENURE_BIN") or os.path.join(ROOT, ".build", "release", "tenure")
AS_ROOT = os.geteuid() == 0
SOCKET = os.path.join(WORK, "sock")
DATA = os.path.join(WORK, "data")
OUT = os.path.join(WORK, "out")


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if AS_ROOT else cmd


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def psql(db, sql):
    run([PG_BIN + "/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", SOCKET, "-p", str(PORT), "-U", "postgres", "-d", db, "-c", sql],
        stdout=subprocess.DEVNULL)


def url(db):
    return f"postgresql://postgres@/{db}?host={SOCKET}&port={PORT}"


def start_server():
    if os.path.exists(WORK):
        subprocess.run(as_postgres([PG_BIN + "/pg_ctl", "-D", DATA, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(WORK)
    os.makedirs(SOCKET)
    os.makedirs(OUT)
    if AS_ROOT:
        run(["chown", "-R", "postgres:postgres", WORK])
    run(as_postgres([PG_BIN + "/initdb", "-D", DATA, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]),
        stdout=subprocess.DEVNULL)
    with open(os.path.join(DATA, "postgresql.conf"), "a") as conf:
        conf.write(f"port = {PORT}\nunix_socket_directories = '{SOCKET}'\nlisten_addresses = ''\n"
                   "shared_buffers = 1GB\nmax_wal_size = 8GB\ncheckpoint_timeout = 30min\nmax_connections = 100\n"
                   "maintenance_work_mem = 512MB\nwork_mem = 64MB\n")
    run(as_postgres([PG_BIN + "/pg_ctl", "-D", DATA, "-l", os.path.join(WORK, "server.log"), "-w", "start"]), stdout=subprocess.DEVNULL)


def stop_server():
    subprocess.run(as_postgres([PG_BIN + "/pg_ctl", "-D", DATA, "-m", "fast", "-w", "stop"]), capture_output=True)


def generate():
    psql("postgres", "CREATE DATABASE bench")
    big_rows = int(SCALE * 3_300_000)
    medium_rows = int(SCALE * 180_000)
    statements = [
        "CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, email text, created timestamptz, profile jsonb)",
        "INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com', now() - g * interval '1 minute', "
        "jsonb_build_object('tier', g % 5, 'tags', jsonb_build_array('a', 'b', g % 7)) FROM generate_series(1, 50000) g",
        # The big table: ~60 % of the data.
        "CREATE TABLE events (id bigint PRIMARY KEY, customer integer NOT NULL REFERENCES customers (id), amount numeric(14,2), "
        "happened timestamptz, kind text, payload jsonb, note text, digest bytea)",
        f"INSERT INTO events SELECT g, 1 + g % 50000, (g % 100000) / 7.0, timestamptz '2024-01-01' + g * interval '1 second', "
        f"(ARRAY['click','view','buy','refund'])[1 + g % 4], jsonb_build_object('n', g, 'ua', 'Mozilla/5.0 (' || (g % 97) || ')', 'ok', g % 3 = 0), "
        f"'note ' || md5(g::text) || ' ' || repeat(chr(97 + g % 26), g % 40), decode(md5((g * 31)::text), 'hex') "
        f"FROM generate_series(1, {big_rows}) g",
        "CREATE INDEX events_customer ON events (customer)",
        "CREATE INDEX events_happened ON events (happened)",
    ]
    for m in range(1, 7):
        statements += [
            f"CREATE TABLE medium_{m} (id integer PRIMARY KEY, label text, value numeric, at timestamptz, attributes jsonb, blob bytea)",
            f"INSERT INTO medium_{m} SELECT g, 'label ' || (g % 1000) || ' ' || md5((g * {m})::text), g * 1.25, now() - g * interval '1 hour', "
            f"jsonb_build_object('m', {m}, 'g', g, 'text', repeat('x', g % 50)), decode(md5(g::text) || md5((g+1)::text), 'hex') "
            f"FROM generate_series(1, {medium_rows}) g",
            f"CREATE INDEX medium_{m}_label ON medium_{m} (label)",
        ]
    for s in range(1, 301):
        statements += [
            f"CREATE TABLE small_{s} (id integer PRIMARY KEY, name text, amount numeric, at timestamptz)",
            f"INSERT INTO small_{s} SELECT g, 'row ' || g, g * {s}, now() FROM generate_series(1, 100) g",
        ]
    sql = ";\n".join(statements) + ";\nANALYZE;\n"
    run([PG_BIN + "/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", SOCKET, "-p", str(PORT), "-U", "postgres", "-d", "bench"],
        input=sql.encode(), stdout=subprocess.DEVNULL)
    run(as_postgres([PG_BIN + "/vacuumdb", "-h", SOCKET, "-p", str(PORT), "-U", "postgres", "--freeze", "-q", "bench"]))


def timed(name, shell):
    """Runs a shell command under GNU time; returns seconds and peak RSS (KiB) of the largest process."""
    start = time.monotonic()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", "sh", "-c", shell], capture_output=True, text=True)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stderr}")
    rss = int(result.stderr.strip().split("\n")[-1])
    return seconds, rss


def size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def http_bench(results, jobs):
    """Export over HTTP vs tenure backup to a file; wrk on GET /v1/databases/{id}."""
    home = os.path.join(WORK, "home")
    os.makedirs(home, exist_ok=True)
    psql("postgres", "CREATE DATABASE tenure_catalog")
    env = dict(os.environ, TENURE_HOME=home, TENURE_CATALOG_URL=url("tenure_catalog"), TENURE_HTTP_ADDRESS="127.0.0.1:0",
               TENURE_JOBS=str(jobs), TENURE_SWEEP_INTERVAL="1h", TENURE_LOG_LEVEL="warning",
               TENURE_PG_DUMP=PG_BIN + "/pg_dump")
    log = open(os.path.join(WORK, "serve.log"), "w")
    serve = subprocess.Popen([TENURE, "serve"], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        key = port = None
        while port is None:
            line = serve.stdout.readline()
            if not line:
                sys.exit("tenure serve did not start; see " + os.path.join(WORK, "serve.log"))
            if line.strip().startswith("tenure_"):
                key = line.strip()
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        base = f"http://127.0.0.1:{port}"
        request = urllib.request.Request(base + "/v1/databases", data=json.dumps({"name": "benchmark", "plan": "paid"}).encode(),
                                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        created = json.load(urllib.request.urlopen(request))
        database = created["id"]
        # The managed database becomes a copy of the benchmark database.
        psql("postgres", f"DROP DATABASE \"{database}\" WITH (FORCE)")
        psql("postgres", f"CREATE DATABASE \"{database}\" TEMPLATE bench OWNER \"{created['postgres']['role']}\"")
        psql("postgres", "CHECKPOINT")
        s, r = timed("tenure backup (managed copy)", f"{TENURE} backup --url '{url(database)}' -o {OUT}/h.tenure --jobs {jobs}")
        record = {"seconds": s, "rss_kib": r, "bytes": size(f"{OUT}/h.tenure")}
        results["tenure backup (same db, file)"] = record
        serve_rss = lambda: int(open(f"/proc/{serve.pid}/status").read().split("VmHWM:")[1].split()[0])
        s, _ = timed("export over HTTP", f"curl -sf -H 'Authorization: Bearer {key}' -o {OUT}/h-http.tenure '{base}/v1/databases/{database}/export'")
        results["export over HTTP (curl)"] = {"seconds": s, "rss_kib": serve_rss(), "bytes": size(f"{OUT}/h-http.tenure")}
        subprocess.run([TENURE, "verify", f"{OUT}/h-http.tenure"], check=True, stdout=subprocess.DEVNULL)
        wrk = subprocess.run(["wrk", "-t2", "-c32", "-d15s", "--latency", "-H", f"Authorization: Bearer {key}", f"{base}/v1/databases/{database}"],
                             capture_output=True, text=True, check=True).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1))
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", wrk)
        p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
        return {"rps": rps, "p99_ms": p99_ms, "non2xx": int(errors.group(1)) if errors else 0}
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        log.close()


def main():
    if not os.path.exists(TENURE):
        sys.exit(f"{TENURE} not built; run make bench")
    start_server()
    try:
        t0 = time.monotonic()
        generate()
        data_bytes = int(subprocess.run([PG_BIN + "/psql", "-X", "-At", "-h", SOCKET, "-p", str(PORT), "-U", "postgres", "-d", "bench", "-c",
                                          "SELECT sum(pg_relation_size(oid)) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"],
                                         capture_output=True, text=True, check=True).stdout)
        print(f"benchmark database: {data_bytes / 2**30:.2f} GiB of table data, generated in {time.monotonic() - t0:.0f} s; N = {JOBS}", flush=True)
        psql("bench", "CHECKPOINT")
        pg = PG_BIN
        conn = f"-h {SOCKET} -p {PORT} -U postgres"
        results = {}

        def record(key, seconds, rss, path=None):
            results[key] = {"seconds": seconds, "rss_kib": rss, "bytes": size(path) if path else None}
            print(f"  {key}: {seconds:.1f} s, {rss / 1024:.0f} MiB", flush=True)

        parts = os.environ.get("BENCH_PARTS", "all")
        if parts in ("http", "upload"):
            timed("warm", f"{pg}/pg_dump {conn} -Fc -Z0 bench > /dev/null")
            http = http_bench(results, JOBS)
            print_http(results, http)
            if parts == "upload":
                upload_bench(JOBS)
            return
        # Warm the cache once so the first tool is not penalised.
        timed("warm", f"{pg}/pg_dump {conn} -Fc -Z0 bench > /dev/null")
        s, r = timed("pg_dump -Fd", f"{pg}/pg_dump {conn} -Fd -j {JOBS} -f {OUT}/fd bench")
        record("pg_dump -Fd -j N", s, r, f"{OUT}/fd")
        s, r = timed("pg_dump | zstd", f"{pg}/pg_dump {conn} bench | zstd -q -3 -T1 > {OUT}/plain.sql.zst")
        record("pg_dump | zstd -3 -T1", s, r, f"{OUT}/plain.sql.zst")
        # Sealing (issue 16): what the backup store holds is sealed with the database's data key.
        # Plain and sealed backups alternate, BENCH_SEAL_RUNS times each, and the medians count.
        key_file = os.path.join(WORK, "data.key")
        with open(key_file, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        seal_runs = int(os.environ.get("BENCH_SEAL_RUNS", "3"))
        backups = {"tenure backup": [], "tenure backup (sealed)": []}
        for attempt in range(seal_runs):
            backups["tenure backup"].append(timed("tenure backup", f"{TENURE} backup --url '{url('bench')}' -o {OUT}/b.tenure --jobs {JOBS}"))
            if attempt < seal_runs - 1:
                os.unlink(f"{OUT}/b.tenure")
            backups["tenure backup (sealed)"].append(timed(
                "tenure backup (sealed)", f"{TENURE} backup --url '{url('bench')}' -o {OUT}/b.sealed --jobs {JOBS} --data-key-file {key_file}"))
            if attempt < seal_runs - 1:
                os.unlink(f"{OUT}/b.sealed")
        for key, values in backups.items():
            ordered = sorted(values)
            print(f"  {key} runs: " + ", ".join(f"{v[0]:.1f}" for v in values), flush=True)
            record(key, ordered[len(ordered) // 2][0], max(v[1] for v in values), f"{OUT}/b.tenure" if key == "tenure backup" else f"{OUT}/b.sealed")
        s, r = timed("tenure backup level 3", f"{TENURE} backup --url '{url('bench')}' -o {OUT}/b3.tenure --jobs {JOBS} --level 3")
        record("tenure backup --level 3", s, r, f"{OUT}/b3.tenure")
        s, r = timed("tenure backup sql", f"{TENURE} backup --url '{url('bench')}' -o {OUT}/b.sql.zst --format sql --jobs {JOBS}")
        record("tenure backup --format sql", s, r, f"{OUT}/b.sql.zst")
        s, r = timed("tenure verify", f"{TENURE} verify {OUT}/b.tenure")
        record("tenure verify", s, r)
        # Restores vary most on a shared machine: each runs RESTORE_RUNS times, alternating,
        # from a checkpointed server, and the median counts. Both start with no database and
        # end with a new one: `tenure restore` creates its database, so pg_restore's time
        # includes the `createdb` it needs (about 0.1 s).
        runs = int(os.environ.get("BENCH_RESTORE_RUNS", "5"))
        samples = {"pg_restore -j N": [], "tenure restore": [], "tenure restore (sealed)": []}
        for attempt in range(runs):
            for key in samples:
                psql("postgres", "DROP DATABASE IF EXISTS r_pg")
                psql("postgres", "DROP DATABASE IF EXISTS r_tenure")
                psql("postgres", "CHECKPOINT")
                if key == "pg_restore -j N":
                    samples[key].append(timed(key, f"{pg}/createdb {conn} r_pg && {pg}/pg_restore {conn} -j {JOBS} -d r_pg {OUT}/fd"))
                elif key == "tenure restore (sealed)":
                    samples[key].append(timed(
                        key, f"{TENURE} restore {OUT}/b.sealed --url '{url('r_tenure')}' --jobs {JOBS} --data-key-file {key_file}"))
                else:
                    samples[key].append(timed(key, f"{TENURE} restore {OUT}/b.tenure --url '{url('r_tenure')}' --jobs {JOBS}"))
        for key, values in samples.items():
            ordered = sorted(values)
            print(f"  {key} runs: " + ", ".join(f"{v[0]:.1f}" for v in values), flush=True)
            record(key, ordered[len(ordered) // 2][0], max(v[1] for v in values))

        def ratio(a, b, key="seconds"):
            return results[a][key] / results[b][key]

        rows = [
            ("backup vs pg_dump -Fd -j N", ratio("tenure backup", "pg_dump -Fd -j N"), 0.35),
            ("backup vs pg_dump | zstd -3 -T1", ratio("tenure backup", "pg_dump | zstd -3 -T1"), 0.75),
            ("restore vs createdb + pg_restore -j N", ratio("tenure restore", "pg_restore -j N"), 0.6),
            ("sql export vs pg_dump | zstd -3 -T1", ratio("tenure backup --format sql", "pg_dump | zstd -3 -T1"), 1.0),
            ("archive size vs pg_dump | zstd -3", ratio("tenure backup", "pg_dump | zstd -3 -T1", "bytes"), 1.1),
            ("sealed backup vs plain backup", ratio("tenure backup (sealed)", "tenure backup"), 1.1),
            ("sealed restore vs plain restore", ratio("tenure restore (sealed)", "tenure restore"), 1.1),
        ]
        print()
        print(f"| run (N = {JOBS}, {data_bytes / 2**30:.2f} GiB of table data) | seconds | output bytes | peak RSS MiB |")
        print("|---|---:|---:|---:|")
        for key, value in results.items():
            out = f"{value['bytes']:,}" if value["bytes"] is not None else "-"
            print(f"| {key} | {value['seconds']:.1f} | {out} | {value['rss_kib'] / 1024:.0f} |")
        print()
        print("| ratio | measured | target | |")
        print("|---|---:|---:|---|")
        for name, value, target in rows:
            print(f"| {name} | {value:.2f} | ≤ {target} | {'ok' if value <= target else 'MISSED'} |")
        tenure_rss = max(results[k]["rss_kib"] for k in results if k.startswith("tenure")) / 1024
        print(f"| tenure peak RSS (MiB) | {tenure_rss:.0f} | ≤ 200 | {'ok' if tenure_rss <= 200 else 'MISSED'} |")
        http = http_bench(results, JOBS)
        print_http(results, http)
        uploads = upload_bench(JOBS)
        with open(os.path.join(WORK, "results.json"), "w") as f:
            json.dump({"runs": results, "http": http, "uploads": uploads}, f, indent=2)
    finally:
        stop_server()


def upload_bench(jobs):
    """Issue 18: uploads of a plain-SQL and a custom-format dump of the benchmark database
    against psql -f and createdb + pg_restore -j N of the same files into an empty database.
    Runs after http_bench (it uses the catalog that made)."""
    home = os.path.join(WORK, "home")
    env = dict(os.environ, TENURE_HOME=home, TENURE_CATALOG_URL=url("tenure_catalog"), TENURE_JOBS=str(jobs), TENURE_LOG_LEVEL="warning",
               TENURE_PG_DUMP=PG_BIN + "/pg_dump", TENURE_PG_RESTORE=PG_BIN + "/pg_restore")
    pg = PG_BIN
    conn = f"-h {SOCKET} -p {PORT} -U postgres"
    timed("plain dump", f"{pg}/pg_dump {conn} bench > {OUT}/plain.sql")
    timed("custom dump", f"{pg}/pg_dump {conn} -Fc bench > {OUT}/b.dump")
    results = {}
    samples = {}

    def keep(name, seconds, rss):
        samples.setdefault(name, []).append((seconds, rss))
        print(f"  {name}: {seconds:.1f} s", flush=True)

    def upload(name, path):
        psql("postgres", "CHECKPOINT")
        start = time.monotonic()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", TENURE, "upload", "create", path, "--json"], env=env, capture_output=True, text=True)
        seconds = time.monotonic() - start
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stdout}\n{done.stderr}")
        upload_id = json.loads(done.stdout)["id"]
        subprocess.run([TENURE, "upload", "delete", upload_id, "--confirm", upload_id], env=env, capture_output=True, check=True)
        keep(name, seconds, int(done.stderr.strip().split("\n")[-1]))

    def baseline(name, database, shell):
        psql("postgres", f"DROP DATABASE IF EXISTS {database}")
        psql("postgres", "CHECKPOINT")
        s, r = timed(name, f"{pg}/createdb {conn} {database} && {shell}")
        psql("postgres", f"DROP DATABASE {database}")
        keep(name, s, r)

    baseline("createdb + psql -f (plain SQL)", "u_psql", f"{pg}/psql {conn} -X -q -v ON_ERROR_STOP=1 -d u_psql -f {OUT}/plain.sql > /dev/null")
    upload("tenure upload (plain SQL)", f"{OUT}/plain.sql")
    # The custom-format pair alternates BENCH_UPLOAD_RUNS times (default 3); medians count.
    for _ in range(int(os.environ.get("BENCH_UPLOAD_RUNS", "3"))):
        baseline("createdb + pg_restore -j N (custom)", "u_pgr", f"{pg}/pg_restore {conn} -j {jobs} --no-owner -d u_pgr {OUT}/b.dump")
        upload("tenure upload (custom)", f"{OUT}/b.dump")
    for name, values in samples.items():
        ordered = sorted(values)
        if len(values) > 1:
            print(f"  {name} runs: " + ", ".join(f"{v[0]:.1f}" for v in values), flush=True)
        results[name] = {"seconds": ordered[len(ordered) // 2][0], "rss_kib": max(v[1] for v in values), "runs": [v[0] for v in values]}
    print()
    print("| upload (issue 18) | seconds | peak RSS MiB |")
    print("|---|---:|---:|")
    for key, value in results.items():
        runs = value["runs"]
        label = f"{key} (median of {len(runs)}: " + ", ".join(f"{v:.1f}" for v in runs) + ")" if len(runs) > 1 else key
        print(f"| {label} | {value['seconds']:.1f} | {value['rss_kib'] / 1024:.0f} |")
    rows = [
        ("upload plain SQL vs psql -f", results["tenure upload (plain SQL)"]["seconds"] / results["createdb + psql -f (plain SQL)"]["seconds"], 1.2),
        ("upload custom vs pg_restore -j N", results["tenure upload (custom)"]["seconds"] / results["createdb + pg_restore -j N (custom)"]["seconds"], 1.0),
    ]
    print()
    print("| ratio | measured | target | |")
    print("|---|---:|---:|---|")
    for name, value, target in rows:
        print(f"| {name} | {value:.2f} | ≤ {target} | {'ok' if value <= target else 'MISSED'} |")
    rss = max(results[k]["rss_kib"] for k in results if k.startswith("tenure")) / 1024
    print(f"| tenure upload peak RSS (MiB) | {rss:.0f} | ≤ 200 | {'ok' if rss <= 200 else 'MISSED'} |")
    return results


def print_http(results, http):
    file = results["tenure backup (same db, file)"]
    over = results["export over HTTP (curl)"]
    print()
    print("| HTTP (issue 5) | seconds | bytes | MiB/s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for key, value in (("tenure backup to a file", file), ("export over HTTP (curl)", over)):
        rate = value["bytes"] / value["seconds"] / 2**20
        print(f"| {key} | {value['seconds']:.1f} | {value['bytes']:,} | {rate:.0f} | {value['rss_kib'] / 1024:.0f} |")
    ratio = (over["bytes"] / over["seconds"]) / (file["bytes"] / file["seconds"])
    print()
    print(f"| export over HTTP throughput vs tenure backup to a file | {ratio:.2f} | ≥ 0.9 | {'ok' if ratio >= 0.9 else 'MISSED'} |")
    print(f"| wrk GET /v1/databases/{{id}} (2 threads, 32 connections, 15 s) | {http['rps']:.0f} req/s | p99 {http['p99_ms']:.1f} ms | non-2xx {http['non2xx']} |")


if __name__ == "__main__":
    main()
