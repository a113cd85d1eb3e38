#!/usr/bin/env python3
"""make fleet: the backup schedule on a fleet (issue 15). Two private PostgreSQL servers, the
catalog on the first; `tenure serve` with a short TENURE_BACKUP_INTERVAL backs up
FLEET_DATABASES databases (default 50, half on each server) until each has FLEET_ROUNDS
scheduled backups (default 3). Prints, from the catalog: scheduled backups per server, the peak
number of backups that ran at once on each server (TENURE_BACKUP_CONCURRENCY_PER_SERVER holds
it), how late each job was queued after its database's slot, how many verified backups each
database keeps after retention, and the stale count. Never part of `make test`.
"""
import json, os, re, shutil, subprocess, sys, time, urllib.request

PG_BIN = os.environ.get("TENURE_PG_BIN", "/usr/lib/postgresql/15/bin")
TENURE = os.environ.get("TENURE_BIN") or sys.exit("set TENURE_BIN")
WORK = os.environ.get("FLEET_DIR", "/tmp/tenure-fleet")
COUNT = int(os.environ.get("FLEET_DATABASES", "50"))
ROUNDS = int(os.environ.get("FLEET_ROUNDS", "3"))
INTERVAL = os.environ.get("FLEET_INTERVAL", "30s")
PER_SERVER = os.environ.get("FLEET_PER_SERVER", "1")
AS_ROOT = os.geteuid() == 0
SERVERS = {"default": 55511, "second": 55512}


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if AS_ROOT else cmd


def sock(name):
    return os.path.join(WORK, name, "sock")


def url(name, db):
    return f"postgresql://postgres@/{db}?host={sock(name)}&port={SERVERS[name]}"


def psql(name, db, sql, fetch=False):
    out = subprocess.run([PG_BIN + "/psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h", sock(name), "-p",
                          str(SERVERS[name]), "-U", "postgres", "-d", db, "-c", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line] if fetch else None


def start(name):
    data = os.path.join(WORK, name, "data")
    os.makedirs(sock(name))
    if AS_ROOT:
        subprocess.run(["chown", "-R", "postgres:postgres", os.path.join(WORK, name)], check=True)
    subprocess.run(as_postgres([PG_BIN + "/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]),
                   check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(data, "postgresql.conf"), "a") as conf:
        conf.write(f"port = {SERVERS[name]}\nunix_socket_directories = '{sock(name)}'\nlisten_addresses = '127.0.0.1'\n"
                   "fsync = off\nmax_connections = 200\n")
    subprocess.run(as_postgres([PG_BIN + "/pg_ctl", "-D", data, "-l", os.path.join(WORK, name, "server.log"), "-w", "start"]),
                   check=True, stdout=subprocess.DEVNULL)


def stop(name):
    subprocess.run(as_postgres([PG_BIN + "/pg_ctl", "-D", os.path.join(WORK, name, "data"), "-m", "immediate", "stop"]), capture_output=True)


def api(base, key, method, path, body=None):
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request))


def main():
    for name in SERVERS:
        stop(name)
    shutil.rmtree(WORK, ignore_errors=True)
    for name in SERVERS:
        start(name)
    psql("default", "postgres", "CREATE DATABASE tenure_catalog")
    home = os.path.join(WORK, "home")
    os.makedirs(home)
    env = dict(os.environ, TENURE_HOME=home, TENURE_CATALOG_URL=url("default", "tenure_catalog"), TENURE_HTTP_ADDRESS="127.0.0.1:0",
               TENURE_BACKUP_INTERVAL=INTERVAL, TENURE_BACKUP_CONCURRENCY_PER_SERVER=PER_SERVER, TENURE_HTTP_MAX_TRANSFERS="4",
               TENURE_JOBS="1", TENURE_DRILL_INTERVAL="off", TENURE_SWEEP_INTERVAL="1h", TENURE_LOG_LEVEL="warning",
               TENURE_PG_DUMP=PG_BIN + "/pg_dump", TENURE_HTTP_MAX_QUEUED_JOBS="200")
    subprocess.run([TENURE, "server", "add", "second", "--url", url("second", "postgres"), "--public-host", "127.0.0.1", "--public-port",
                    str(SERVERS["second"])], env=env, check=True, stdout=subprocess.DEVNULL)
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
        ids = []
        for n in range(COUNT):
            server = "default" if n % 2 == 0 else "second"
            created = api(base, key, "POST", "/v1/databases", {"name": f"fleet-{n}", "server": server})
            ids.append(created["id"])
            database = created["postgres"]["database"] if "postgres" in created and "database" in created["postgres"] else created["id"]
            psql(server, database, "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
        started = time.time()
        print(f"{COUNT} databases created on 2 servers; interval {INTERVAL}, at most {PER_SERVER} backup(s) at once per server", flush=True)
        while True:
            rows = psql("default", "tenure_catalog",
                        "SELECT count(*) FILTER (WHERE n >= %d), count(*) FROM (SELECT subject, count(*) AS n FROM jobs WHERE kind = 'backup' "
                        "AND actor = 'scheduler' AND state = 'succeeded' GROUP BY subject) s" % ROUNDS, fetch=True)
            done = int(rows[0][0])
            if done >= COUNT:
                break
            if time.time() - started > 3600:
                sys.exit(f"only {done} of {COUNT} databases reached {ROUNDS} scheduled backups within an hour")
            time.sleep(2)
        elapsed = time.time() - started
        status = api(base, key, "GET", "/v1/backup-status")
    finally:
        serve.terminate()
        serve.wait(timeout=120)
        log.close()
    jobs = psql("default", "tenure_catalog",
                "SELECT server_name, subject, extract(epoch FROM created_at), extract(epoch FROM started_at), extract(epoch FROM finished_at), state "
                "FROM jobs WHERE kind = 'backup' AND actor = 'scheduler' AND started_at IS NOT NULL", fetch=True)
    print(f"\n{len(jobs)} scheduled backup jobs in {elapsed:.0f} s (until every database had {ROUNDS})")
    for server in SERVERS:
        mine = [j for j in jobs if j[0] == server and j[4]]
        events = sorted([(float(j[3]), 1) for j in mine] + [(float(j[4]), -1) for j in mine], key=lambda e: (e[0], e[1]))
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        waits = sorted(float(j[3]) - float(j[2]) for j in mine)
        durations = sorted(float(j[4]) - float(j[3]) for j in mine)
        print(f"  {server:8} {len(mine):4} backups, succeeded {sum(1 for j in mine if j[5] == 'succeeded'):4}, "
              f"peak concurrent {peak} (limit {PER_SERVER}), median run {durations[len(durations) // 2]:.2f} s, "
              f"median wait in queue {waits[len(waits) // 2]:.2f} s, max wait {waits[-1]:.1f} s")
    kept = psql("default", "tenure_catalog",
                "SELECT count(*) FILTER (WHERE state = 'verified'), count(*) FILTER (WHERE state = 'deleted') FROM backups", fetch=True)[0]
    totals = status["totals"]
    print(f"  backups verified (kept) {kept[0]}, deleted by retention {kept[1]}; stale {totals['stale']} of {totals['databases']}")


if __name__ == "__main__":
    try:
        main()
    finally:
        for name in SERVERS:
            stop(name)
