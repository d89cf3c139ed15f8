#!/usr/bin/env python3
"""Benchmark of PgBouncer against the server itself (issue 14), same run, same server.

One command, from the repository root with the venv active, against a stack
provisioned with the pooler on:

    python bench/bench_pooler.py [--seconds 30] [--steady-seconds 30]

Both paths log in as the application role with SCRAM-SHA-256 (PgBouncer
checks the client against the verifier auth_query reads, then reuses its
server connections):

  a  pgbench -C -S, 50 clients: a new connection per transaction
     direct (db_direct_port) and through PgBouncer (db_port);
     target: PgBouncer's TPS >= 2 x direct. The most server backends of the
     application role seen during each run (pg_stat_activity, sampled every
     50 ms) are reported beside it.
  b  pgbench -S, 200 clients, connections kept: p99 latency of each path
     (from pgbench's per-transaction log); reported, no target.

pgbench's tables (scale 1) are created by the owner role in the application's
database for the run and dropped at its end. Passwords reach pgbench through
a 0600 PGPASSFILE, never the command line or the environment.

The direct path needs room the pooled sizing does not give (that is the
point): max_connections >= 260 and no connection limit on the application
role. The bench lifts the role's limit for the run and puts it back; the
server's max_connections must be raised at provisioning, e.g.

    ansible-playbook site.yml -e db_pooler=pgbouncer \\
      -e '{"postgres_container_settings": {"max_connections": "300"}}'

Connection settings come from inventory/group_vars/all.yml and
TEST_EXTRA_VARS (a JSON file of extra vars, as the tests read it); secrets
from the environment variables, else DB_SECRETS_DIR (default .secrets/).

Prints the figures; exits 1 when a target is missed or a run fails.
"""
import argparse
import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import psycopg2
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from conftest import Repeating  # noqa: E402  (the tests' support module)

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXTRA = json.loads(pathlib.Path(os.environ["TEST_EXTRA_VARS"]).read_text()) \
    if os.environ.get("TEST_EXTRA_VARS") else {}
SETTINGS = dict(yaml.safe_load((ROOT / "inventory" / "group_vars" / "all.yml").read_text()), **EXTRA)
SECRETS = pathlib.Path(os.environ.get("DB_SECRETS_DIR") or ROOT / ".secrets")
HOST = "127.0.0.1"
DB = SETTINGS["db_name"]
APP = SETTINGS["db_app_user"]
OWNER = SETTINGS["db_owner_user"]
POOLED_PORT = int(SETTINGS["db_port"])
DIRECT_PORT = int(SETTINGS["db_direct_port"])
RATIO_TARGET = 2.0
NEEDED_MAX_CONNECTIONS = 260


def secret(env, name):
    return os.environ.get(env) or (SECRETS / name).read_text().strip()


def connect(port, user, password, dbname=DB):
    return psycopg2.connect(host=HOST, port=port, user=user, password=password, dbname=dbname,
                            connect_timeout=5)


def sql(conn, statement, args=None):
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return cur.fetchall() if cur.description else None


@contextlib.contextmanager
def passfile():
    """A 0600 PGPASSFILE with the app and owner passwords on both ports."""
    with tempfile.NamedTemporaryFile("w", prefix="bench-pgpass-") as handle:
        os.chmod(handle.name, 0o600)
        for port in (POOLED_PORT, DIRECT_PORT):
            for user, password in ((APP, secret("POSTGRES_PASSWORD", "postgres_app_password")),
                                   (OWNER, secret("POSTGRES_OWNER_PASSWORD", "postgres_owner_password"))):
                handle.write("%s:%d:%s:%s:%s\n" % (HOST, port, DB, user, password.replace("\\", "\\\\")
                                                   .replace(":", "\\:")))
        handle.flush()
        yield handle.name


class BackendPeak(Repeating):
    """The most backends of the app role in pg_stat_activity while a run lasts (sampled every 50 ms)."""

    def __init__(self, admin):
        super().__init__()
        self.admin, self.peak = admin, 0

    def step(self):
        count = sql(self.admin, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                                "AND backend_type = 'client backend'", (APP,))[0][0]
        self.peak = max(self.peak, count)


def pgbench(env, port, args, log_dir=None):
    argv = ["pgbench", "-n", "-h", HOST, "-p", str(port), "-U", APP, *args]
    if log_dir:
        argv += ["-l", "--log-prefix", str(pathlib.Path(log_dir) / "tx")]
    proc = subprocess.run(argv + [DB], env=env, capture_output=True, text=True, cwd=log_dir or None)
    if proc.returncode != 0:
        raise RuntimeError("pgbench on port %d failed: %s" % (port, proc.stderr.strip()[-600:]))
    tps = re.search(r"tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing|"
                    r"including connections establishing)?", proc.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    return {"tps": float(tps.group(1)), "failed": int(failed.group(1)) if failed else 0,
            "stdout": proc.stdout}


def p99_ms(log_dir):
    """p99 of the per-transaction latencies (3rd column, microseconds) pgbench logged."""
    values = []
    for path in pathlib.Path(log_dir).glob("tx*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                values.append(int(fields[2]))
    values.sort()
    if not values:
        raise RuntimeError("pgbench wrote no transaction log in %s" % log_dir)
    return values[max(0, int(len(values) * 0.99) - 1)] / 1000.0, len(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30, help="length of each -C run (default 30)")
    parser.add_argument("--steady-seconds", type=int, default=30, help="length of each 200-client run")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--steady-clients", type=int, default=200)
    args = parser.parse_args()

    admin = connect(DIRECT_PORT, SETTINGS["db_admin_user"], secret("POSTGRES_ADMIN_PASSWORD",
                                                                   "postgres_admin_password"))
    admin.autocommit = True
    max_conn = int(sql(admin, "SHOW max_connections")[0][0])
    if max_conn < NEEDED_MAX_CONNECTIONS:
        print("max_connections is %d; the direct path needs %d: provision with "
              "-e '{\"postgres_container_settings\": {\"max_connections\": \"300\"}}'"
              % (max_conn, NEEDED_MAX_CONNECTIONS), file=sys.stderr)
        return 1
    limit = sql(admin, "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (APP,))[0][0]
    failures = []
    with passfile() as pgpass:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSFILE": pgpass, "PGSSLMODE": "prefer"}
        init = subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", HOST, "-p", str(DIRECT_PORT),
                               "-U", OWNER, DB], env=env, capture_output=True, text=True)
        if init.returncode != 0:
            print("pgbench -i failed: " + init.stderr, file=sys.stderr)
            return 1
        owner = connect(DIRECT_PORT, OWNER, secret("POSTGRES_OWNER_PASSWORD", "postgres_owner_password"))
        owner.autocommit = True
        sql(owner, "GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO %s"
            % APP)
        sql(admin, 'ALTER ROLE "%s" CONNECTION LIMIT -1' % APP)
        try:
            rows = {}
            for name, port in (("direct", DIRECT_PORT), ("pgbouncer", POOLED_PORT)):
                with BackendPeak(admin) as peak:
                    run = pgbench(env, port, ["-C", "-S", "-c", str(args.clients), "-j", "2",
                                              "-T", str(args.seconds)])
                rows[name] = dict(run, backends=peak.peak)
                if run["failed"]:
                    failures.append("%s -C run: %d failed transactions" % (name, run["failed"]))
            ratio = rows["pgbouncer"]["tps"] / rows["direct"]["tps"]
            print("a  pgbench -C -S, %d clients, %d s (new connection per transaction, SCRAM both)"
                  % (args.clients, args.seconds))
            for name in ("direct", "pgbouncer"):
                print("   %-10s %9.1f tps   server backends of %s at most %d"
                      % (name, rows[name]["tps"], APP, rows[name]["backends"]))
            met = ratio >= RATIO_TARGET
            print("   ratio      %9.2f x   target >= %.1f x: %s" % (ratio, RATIO_TARGET, "met" if met else "MISSED"))
            if not met:
                failures.append("TPS ratio %.2f below %.1f" % (ratio, RATIO_TARGET))

            print("b  pgbench -S, %d clients, %d s (connections kept)" % (args.steady_clients, args.steady_seconds))
            for name, port in (("direct", DIRECT_PORT), ("pgbouncer", POOLED_PORT)):
                with tempfile.TemporaryDirectory(prefix="bench-pooler-") as log_dir, BackendPeak(admin) as peak:
                    run = pgbench(env, port, ["-S", "-c", str(args.steady_clients), "-j", "2",
                                              "-T", str(args.steady_seconds)], log_dir=log_dir)
                    p99, count = p99_ms(log_dir)
                print("   %-10s %9.1f tps   p99 %7.2f ms over %d transactions   server backends at most %d"
                      % (name, run["tps"], p99, count, peak.peak))
                if run["failed"]:
                    failures.append("%s steady run: %d failed transactions" % (name, run["failed"]))
        finally:
            sql(admin, 'ALTER ROLE "%s" CONNECTION LIMIT %d' % (APP, limit))
            sql(owner, "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history")
            owner.close()
            admin.close()
    for failure in failures:
        print("FAILED: " + failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
