"""What the cluster tests share: names, endpoints and Patroni's view of the members.

The names follow the inventory as tests/conftest.py does (TEST_EXTRA_VARS for
an isolated stack): nodes <db_container_name>_1.._n, HAProxy and etcd named
after the same prefix; the app's endpoint is PgBouncer on db_port, the primary
is on db_direct_port, the replicas on db_replica_port (all on 127.0.0.1).
"""
import json
import re
import subprocess
import time

import psycopg2

from conftest import APP_ROLE, CONTAINER, DB_NAME, DB_PORT, EXTRA_VARS, OWNER_ROLE, secret

SIZE = int(EXTRA_VARS.get("db_cluster_size", 3))
NODES = [f"{CONTAINER}_{n}" for n in range(1, SIZE + 1)]
PREFIX = re.sub(r"_postgres$", "", CONTAINER)
HAPROXY = f"{PREFIX}_haproxy"
ETCD = [f"{PREFIX}_etcd_1"]
PGBOUNCER = EXTRA_VARS.get("db_pooler_container_name", "social_selling_pgbouncer")
DIRECT_PORT = int(EXTRA_VARS.get("db_direct_port", 5433))
REPLICA_PORT = int(EXTRA_VARS.get("db_replica_port", 5434))
SCOPE = EXTRA_VARS.get("postgres_cluster_scope", DB_NAME)


def docker(*args, check=True, timeout=60):
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def members():
    """patronictl list as JSON, asked of the first node that answers ([] when none does)."""
    for node in NODES:
        try:
            proc = subprocess.run(["docker", "exec", node, "patronictl", "list", "--format", "json"],
                                  capture_output=True, text=True, check=False, timeout=30)
        except subprocess.TimeoutExpired:  # a node starting or a host overloaded: ask the next one
            continue
        if proc.returncode == 0:
            return json.loads(proc.stdout)
    return []


def dcs_config():
    """The cluster-wide settings Patroni keeps in etcd (its REST API's /config), asked of the first node
    that answers (a test may have stopped some)."""
    for node in NODES:
        proc = subprocess.run(["docker", "exec", node, "python3", "-c",
                               "import urllib.request; print(urllib.request.urlopen("
                               "'http://localhost:8008/config').read().decode())"],
                              capture_output=True, text=True, check=False, timeout=30)
        if proc.returncode == 0:
            return json.loads(proc.stdout)
    raise AssertionError(f"no node answered /config; members: {members()}")


def primary():
    """The running leader's name, or None."""
    leaders = [m["Member"] for m in members() if m["Role"] == "Leader" and m["State"] == "running"]
    return leaders[0] if leaders else None


def healthy(expected=SIZE):
    """One running leader, every other member running or streaming, one synchronous standby."""
    found = members()
    return (len(found) == expected
            and sum(m["Role"] == "Leader" and m["State"] == "running" for m in found) == 1
            and all(m["State"] in ("running", "streaming") for m in found)
            and any(m["Role"] == "Sync Standby" for m in found))


def wait_until(predicate, timeout, interval=0.5, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} was not reached within {timeout} s; members: {members()}")


def app_params(**more):
    """The application role through the app's endpoint (PgBouncer, which reaches the primary through HAProxy)."""
    return dict(host="127.0.0.1", port=DB_PORT, dbname=DB_NAME, user=APP_ROLE,
                password=secret("POSTGRES_PASSWORD", "postgres_app_password"), connect_timeout=2, **more)


def owner_params(port=DIRECT_PORT, **more):
    """The schema owner on the primary's direct port (HAProxy), or on the replicas' port."""
    return dict(host="127.0.0.1", port=port, dbname=DB_NAME, user=OWNER_ROLE,
                password=secret("POSTGRES_OWNER_PASSWORD", "postgres_owner_password"), connect_timeout=2, **more)


def admin_params(port=DIRECT_PORT, dbname="postgres"):
    return dict(host="127.0.0.1", port=port, dbname=dbname, user="postgres",
                password=secret("POSTGRES_ADMIN_PASSWORD", "postgres_admin_password"), connect_timeout=2)


def sql(params, query, args=None, autocommit=True):
    """One statement; its rows (None when it returns none)."""
    conn = psycopg2.connect(**params)
    try:
        conn.autocommit = autocommit
        with conn.cursor() as cur:
            cur.execute(query, args)
            rows = cur.fetchall() if cur.description else None
        if not autocommit:
            conn.commit()
        return rows
    finally:
        conn.close()


def node_sql(node, query, db=DB_NAME):
    """One query as the superuser through a node's socket; its rows as text lines."""
    out = docker("exec", node, "psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db,
                 "-Atc", query)
    return [line for line in out.splitlines() if line]


def ensure_healthy(timeout=120):
    """Start any stopped node and wait until the cluster is whole again (tests leave it so)."""
    for node in NODES + ETCD + [HAPROXY, PGBOUNCER]:
        state = docker("inspect", "--format", "{{.State.Running}}", node, check=False).strip()
        if state == "false":
            docker("start", node)
    wait_until(healthy, timeout, what="a whole cluster")
