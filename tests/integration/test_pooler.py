"""Issue 14: PgBouncer in front of the server (db_pooler: pgbouncer).

The module's fixture switches the pooler on for the stack the suite runs
against (`ansible-playbook site.yml -e db_pooler=pgbouncer`, after
TEST_EXTRA_VARS) and off again when the module ends, so every other test
module sees the server on db_port as before (pytest-randomly keeps a
module's tests together). While it is on, 127.0.0.1:db_port is PgBouncer
and the server is published on 127.0.0.1:db_direct_port.

Every test proves one "Done means" bullet of the issue against the real
containers; refusals match PgBouncer's own message.
"""
import datetime
import json
import os
import re
import subprocess
import threading
import time
import uuid

import psycopg2
import pytest
import yaml

import pg_health_core
import pg_migrate_core as core
from conftest import (CONFIG_ROOT, CONTAINER, DB_NAME, DB_PORT, EXTRA_VARS, NODE_DIR, NODE_V9_DIR, ROOT, APP_ROLE,
                      OWNER_ROLE, SECRETS_DIR, docker, migrations_folder, new_database, node_v9, node_version, npm_ci,
                      PoolScript, Repeating, query, run_playbook, secret)

SETTINGS = dict(yaml.safe_load((ROOT / "inventory" / "group_vars" / "all.yml").read_text()), **EXTRA_VARS)
DIRECT_PORT = int(SETTINGS["db_direct_port"])
POOLER = SETTINGS["db_pooler_container_name"]
POOL_MAX = int(SETTINGS["db_pool_max"])
# group_vars: default_pool_size = pool max, reserve_pool_size = ceil(pool max / 4).
DEFAULT_POOL_SIZE = POOL_MAX
RESERVE_POOL_SIZE = -(-POOL_MAX // 4)
# The server is sized on PgBouncer's ceiling for the app role, not on its pools.
SERVER_CONNECTIONS_MAX = int(SETTINGS["db_pooler_server_connections_max"])
STATS_USER = SETTINGS["db_pooler_stats_user"]
AUTH_USER = SETTINGS["db_pooler_auth_user"]
ON = ["-e", "db_pooler=pgbouncer"]


def params(port, user, password, dbname=DB_NAME, **extra):
    return dict(host="127.0.0.1", port=port, user=user, password=password, dbname=dbname, connect_timeout=5,
                **extra)


def app_password():
    return secret("POSTGRES_PASSWORD", "postgres_app_password")


def admin_password():
    return secret("POSTGRES_ADMIN_PASSWORD", "postgres_admin_password")


def pooled_app(**extra):
    """The application role through PgBouncer: the app's endpoint, db_port."""
    return params(DB_PORT, APP_ROLE, app_password(), **extra)


def direct_admin(dbname="postgres"):
    """The superuser on the server's own port, db_direct_port."""
    return params(DIRECT_PORT, "postgres", admin_password(), dbname)


def direct_owner(dbname=DB_NAME):
    return params(DIRECT_PORT, OWNER_ROLE, secret("POSTGRES_OWNER_PASSWORD", "postgres_owner_password"), dbname)


def stats_params():
    return params(DB_PORT, STATS_USER, (SECRETS_DIR / "pooler_stats_password").read_text().strip()
                  if not os.environ.get("POSTGRES_POOLER_STATS_PASSWORD")
                  else os.environ["POSTGRES_POOLER_STATS_PASSWORD"], "pgbouncer")


def show(what):
    conn = psycopg2.connect(**stats_params())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW " + what)
            names = [col[0] for col in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        conn.close()


def app_backends():
    return query(direct_admin(), "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                                 "AND backend_type = 'client backend'", (APP_ROLE,))[0][0]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (psycopg2.Error, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %s s waiting for %s" % (timeout, what))
        time.sleep(0.3)


def inspect(name):
    return json.loads(docker("inspect", name))[0]


def converge(*args, env=None):
    run = run_playbook("site.yml", *ON, *args, env=env)
    assert run.rc == 0, run
    return run


@pytest.fixture(scope="module", autouse=True)
def pooler_on():
    """The pooler on for this module; off again (server back on db_port) when it ends."""
    converge()
    yield
    off = run_playbook("site.yml")
    assert off.rc == 0, off


# ---------------------------------------------------------------------------
# Endpoints, idempotence, reload, switching off and on
# ---------------------------------------------------------------------------

def test_the_app_endpoint_is_pgbouncer_and_the_server_is_on_the_direct_port():
    assert inspect(POOLER)["HostConfig"]["PortBindings"]["6432/tcp"] == [{"HostIp": "127.0.0.1",
                                                                          "HostPort": str(DB_PORT)}]
    assert inspect(CONTAINER)["HostConfig"]["PortBindings"]["5432/tcp"] == [{"HostIp": "127.0.0.1",
                                                                             "HostPort": str(DIRECT_PORT)}]
    assert query(pooled_app(), "SELECT current_user") == [(APP_ROLE,)]
    assert [row["pool_mode"] for row in show("POOLS") if row["user"] == APP_ROLE] == ["transaction"]


def test_pgbouncer_runs_as_the_image_postgres_user_not_root():
    assert inspect(POOLER)["Config"]["User"] == "999:999"
    top = docker("top", POOLER, "-o", "pid,uid,args")
    assert re.search(r"^\s*\d+\s+999\s+pgbouncer /etc/pgbouncer/pgbouncer.ini", top, re.M), top


def test_site_yml_again_with_the_pooler_on_changes_nothing():
    assert converge().changed == 0


def test_server_max_connections_no_longer_grows_with_app_instances():
    rows = query(direct_admin(), "SHOW max_connections")
    assert int(rows[0][0]) == SERVER_CONNECTIONS_MAX + 20
    # Ten instances instead of two: nothing to change, on the server or PgBouncer.
    assert converge("-e", "db_app_instances=10", "--check").changed == 0
    assert int(query(direct_admin(), "SHOW max_connections")[0][0]) == SERVER_CONNECTIONS_MAX + 20


def test_a_pool_size_change_reloads_pgbouncer_without_restart_or_dropping_a_client():
    started = inspect(POOLER)["State"]["StartedAt"]
    server_started = inspect(CONTAINER)["State"]["StartedAt"]
    client = psycopg2.connect(**pooled_app())
    client.autocommit = True
    try:
        # The seed's pool grown from 20 to 24: PgBouncer's pool 24 + reserve 6, within the ceiling.
        run = converge("-e", "db_pool_max=%d" % (POOL_MAX + 4))
        assert run.changed == 2 and "Reload PgBouncer" in run.output, run  # pgbouncer.ini and the reload
        config = {row["key"]: row["value"] for row in show("CONFIG")}
        assert (config["default_pool_size"], config["reserve_pool_size"]) == (str(POOL_MAX + 4), "6")
        with client.cursor() as cur:  # the client opened before the reload is still served
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        assert inspect(POOLER)["State"]["StartedAt"] == started
        assert inspect(CONTAINER)["State"]["StartedAt"] == server_started
    finally:
        client.close()
        converge()
    assert {row["key"]: row["value"] for row in show("CONFIG")}["default_pool_size"] == str(DEFAULT_POOL_SIZE)


def test_pools_beyond_the_server_ceiling_are_refused_before_any_change():
    run = run_playbook("site.yml", *ON, "-e", "db_pool_max=40")
    assert run.rc != 0
    assert ("db_pooler_server_connections=50 (allowed up to db_pooler_server_connections_max=%d"
            % SERVER_CONNECTIONS_MAX) in re.sub(r"\s+", " ", run.output), run
    assert run.changed == 0


def test_switching_the_pooler_off_and_on_again_loses_nothing():
    table = "pooler_switch_" + uuid.uuid4().hex[:8]
    query(direct_owner(), f"CREATE TABLE {table} (note text)")
    query(pooled_app(), f"INSERT INTO {table} VALUES ('kept')")
    try:
        off = run_playbook("site.yml")
        assert off.rc == 0, off
        assert docker("ps", "-a", "--filter", f"name=^{POOLER}$", "--format", "{{.Names}}").strip() == ""
        # The server is back on db_port, with the row.
        assert query(params(DB_PORT, APP_ROLE, app_password()), f"SELECT note FROM {table}") == [("kept",)]
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(**direct_admin()).close()
        converge()
        assert query(pooled_app(), f"SELECT note FROM {table}") == [("kept",)]
    finally:
        query(direct_owner(), f"DROP TABLE IF EXISTS {table}")


# ---------------------------------------------------------------------------
# 500 clients, few backends
# ---------------------------------------------------------------------------

def test_500_concurrent_app_clients_use_at_most_pool_plus_reserve_backends():
    clients = 500
    # All connected (first barrier), PgBouncer counted them, then all query at once (second).
    barrier = threading.Barrier(clients + 1, timeout=120)
    go = threading.Barrier(clients + 1, timeout=120)
    errors, results, peak = [], [], [0]
    done = threading.Event()

    def client():
        try:
            conn = psycopg2.connect(**pooled_app(application_name="pooler-500"))
        except psycopg2.Error as exc:
            errors.append("connect: %s" % exc)
            barrier.abort()
            go.abort()
            return
        try:
            conn.autocommit = True
            barrier.wait()
            go.wait()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(0.05), 1")
                results.append(cur.fetchone()[1])
        except (psycopg2.Error, threading.BrokenBarrierError) as exc:
            errors.append("query: %s" % exc)
        finally:
            conn.close()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], app_backends())
            time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    watcher = threading.Thread(target=watch)
    for thread in threads:
        thread.start()
    barrier.wait()
    clients_active = sum(row["cl_active"] + row["cl_waiting"] for row in show("POOLS") if row["user"] == APP_ROLE)
    watcher.start()
    go.wait()
    for thread in threads:
        thread.join(120)
    done.set()
    watcher.join()
    print("clients seen by PgBouncer:", clients_active, "peak app backends:", peak[0])
    assert errors == []
    assert results == [1] * clients
    assert clients_active >= clients
    assert 1 <= peak[0] <= DEFAULT_POOL_SIZE + RESERVE_POOL_SIZE


# ---------------------------------------------------------------------------
# The seed's client through PgBouncer
# ---------------------------------------------------------------------------

def test_the_seed_pg_promise_client_runs_crud_and_the_updated_at_trigger_through_pgbouncer():
    table = "pooler_crud_" + uuid.uuid4().hex[:8]
    query(direct_owner(), f"CREATE TABLE {table} (id serial PRIMARY KEY, note text NOT NULL)")
    app = pooled_app()
    config = dict(host=app["host"], port=app["port"], database=app["dbname"], user=app["user"],
                  password=app["password"], application_name="pooler-seed", min=2, max=20,
                  idleTimeoutMillis=30000, connectionTimeoutMillis=2000, scratch_table=table, hold_release_ms=300)
    try:
        with PoolScript(config) as script:
            for step in ("options", "holding", "extra", "crud", "trigger"):
                script.read(step)
                if step == "holding":
                    # 20 client connections held; the server sees at most PgBouncer's pool.
                    assert script.steps[step]["total"] == 20
                    assert app_backends() <= DEFAULT_POOL_SIZE + RESERVE_POOL_SIZE
                    script.next()
            script.finish()
    finally:
        query(direct_owner(), f"DROP TABLE IF EXISTS {table}")
    steps = script.steps
    assert steps["crud"] == {"step": "crud", "inserted": "created", "read": "updated", "deleted": 1}
    assert steps["trigger"] == {"step": "trigger", "moved": True, "equal_at_insert": True}


# ---------------------------------------------------------------------------
# Migrations through the direct port while the app endpoint serves
# ---------------------------------------------------------------------------

FILES = {
    "1720000000001_create-widgets":
        "-- Up Migration\nCREATE TABLE widgets (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE widgets;\n",
    "1720000000002_create-gadgets":
        "-- Up Migration\nCREATE TABLE gadgets (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE gadgets;\n",
}


class AppTraffic(Repeating):
    """The application's queries through PgBouncer, in the background, counting successes and errors."""

    interval = 0.02

    def __init__(self):
        super().__init__()
        self.ok, self.errors = 0, []

    def step(self):
        try:
            query(pooled_app(), "SELECT 1")
            self.ok += 1
        except psycopg2.Error as exc:
            self.errors.append(str(exc))


@pytest.mark.parametrize("runner", ["pg_migrate", "node-pg-migrate-6.2.2", "node-pg-migrate-9.0.0"])
def test_migrations_run_through_the_direct_port_while_the_app_endpoint_serves(runner, tmp_path):
    folder = migrations_folder(tmp_path, FILES)
    # A database of the test's own (the access rules let the owner role into the app's
    # database only, so the superuser migrates it), on the direct port.
    with new_database(direct_admin(), "pooler_mig_") as name, AppTraffic() as traffic:
        target = direct_admin(name)
        if runner == "pg_migrate":
            core.run(lambda: core.connect(dict(target)), str(folder), "up")
        else:
            if runner == "node-pg-migrate-9.0.0":  # on the Node.js 20 node-v9 pins (conftest.node_v9)
                node, package_dir, cli = node_v9(), NODE_V9_DIR, "node-pg-migrate/bin/node-pg-migrate.js"
            else:
                node_version()  # fails naming node or npm when missing
                node, package_dir, cli = "node", NODE_DIR, "node-pg-migrate-v6/bin/node-pg-migrate"
            url = "postgres://{user}:{password}@{host}:{port}/{dbname}".format(**target)
            done = subprocess.run([node, str(npm_ci(package_dir) / cli), "up", "--migrations-dir", str(folder),
                                   "--database-url-var", "PG_MIGRATE_TEST_URL", "--no-verbose"],
                                  env=dict(os.environ, PG_MIGRATE_TEST_URL=url), capture_output=True, text=True,
                                  cwd=str(folder.parent), timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
        time.sleep(0.3)
        assert [r[0] for r in query(target, "SELECT name FROM pgmigrations ORDER BY id")] == list(FILES)
    assert traffic.errors == [] and traffic.ok > 0


def test_migrate_yml_reaches_the_server_on_the_direct_port():
    run = run_playbook("playbooks/migrate.yml", *ON)
    assert run.rc == 0, run
    assert "Now " in run.output and "pending" in run.output


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------

def test_a_password_rotation_works_through_pgbouncer_at_once_and_the_old_one_is_refused():
    old = app_password()
    new = "Rotated" + uuid.uuid4().hex
    try:
        converge(env={"POSTGRES_PASSWORD": new})
        assert query(params(DB_PORT, APP_ROLE, new), "SELECT current_user") == [(APP_ROLE,)]
        with pytest.raises(psycopg2.OperationalError, match="SASL authentication failed"):
            psycopg2.connect(**params(DB_PORT, APP_ROLE, old))
    finally:
        converge(env={"POSTGRES_PASSWORD": old})
    assert query(params(DB_PORT, APP_ROLE, old), "SELECT 1") == [(1,)]


def test_the_superuser_is_refused_through_pgbouncer():
    with pytest.raises(psycopg2.OperationalError, match="no such user"):
        psycopg2.connect(**params(DB_PORT, "postgres", admin_password()))
    assert query(direct_admin(), "SELECT 1") == [(1,)]  # it still comes in on the direct port


def test_the_owner_role_uses_the_direct_port_only():
    with pytest.raises(psycopg2.OperationalError, match="no such user"):
        psycopg2.connect(**dict(direct_owner(), port=DB_PORT))


def test_the_auth_role_is_no_superuser_reads_no_pg_authid_and_looks_up_the_app_role_only():
    password = (SECRETS_DIR / "pooler_auth_password").read_text().strip()
    assert query(direct_admin(), "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
                 (AUTH_USER,)) == [(False, False, False)]
    auth = params(DIRECT_PORT, AUTH_USER, password)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query(auth, "SELECT rolpassword FROM pg_authid")
    # The lookup function answers for the application role only, never for the superuser or the owner.
    lookup = "SELECT uname, left(phash, 14) FROM pgbouncer.user_lookup(%s)"
    assert query(auth, lookup, (APP_ROLE,)) == [(APP_ROLE, "SCRAM-SHA-256$")]
    assert query(auth, lookup, ("postgres",)) == []
    assert query(auth, lookup, (OWNER_ROLE,)) == []


def test_a_lost_grant_on_the_lookup_function_is_put_back_by_the_next_run():
    query(direct_admin(DB_NAME), f'REVOKE EXECUTE ON FUNCTION pgbouncer.user_lookup(text) FROM "{AUTH_USER}"')
    run = converge()
    assert run.changed == 1 and "Install the SECURITY DEFINER lookup function" in run.output, run
    assert query(direct_admin(DB_NAME), "SELECT has_function_privilege(%s, 'pgbouncer.user_lookup(text)', 'EXECUTE')",
                 (AUTH_USER,)) == [(True,)]
    assert converge().changed == 0


def test_a_wrong_password_is_refused():
    with pytest.raises(psycopg2.OperationalError, match="SASL authentication failed"):
        psycopg2.connect(**params(DB_PORT, APP_ROLE, "wrong-" + uuid.uuid4().hex))


def test_no_password_is_in_pgbouncer_log_docker_inspect_or_its_config():
    passwords = {name: (SECRETS_DIR / name).read_text().strip() for name in
                 ("postgres_app_password", "postgres_admin_password", "postgres_owner_password",
                  "pooler_auth_password", "pooler_stats_password") if (SECRETS_DIR / name).exists()}
    logs = subprocess.run(["docker", "logs", POOLER], capture_output=True, text=True, check=True)
    inspected = docker("inspect", POOLER)
    # The image's VOLUME gives the container an anonymous volume too, listed in any order.
    [config_root] = [m["Source"] for m in inspect(POOLER)["Mounts"] if m["Destination"] == "/etc/pgbouncer"]
    ini = open(os.path.join(config_root, "pgbouncer.ini")).read()
    for name, password in passwords.items():
        assert password not in logs.stdout + logs.stderr, name
        assert password not in inspected, name
        assert password not in ini, name
    userlist = open(os.path.join(config_root, "userlist.txt")).read()
    # The stats user as a SCRAM verifier; the auth user's cleartext is the one PgBouncer needs (0600, uid 999).
    assert passwords["pooler_stats_password"] not in userlist
    assert re.search(r'^"%s" "SCRAM-SHA-256\$4096:' % STATS_USER, userlist, re.M)
    for name in ("userlist.txt", "pgbouncer.ini"):
        info = os.stat(os.path.join(config_root, name))
        assert (oct(info.st_mode & 0o777), info.st_uid) == ("0o600", 999)


def test_no_password_is_in_the_output_of_site_yml_with_the_pooler_on_even_with_vvv():
    passwords = [(SECRETS_DIR / name).read_text().strip() for name in
                 ("postgres_app_password", "postgres_admin_password", "pooler_auth_password",
                  "pooler_stats_password")]
    run = converge("-vvv")
    for password in passwords:
        assert password not in run.output


# ---------------------------------------------------------------------------
# A killed PgBouncer restarts by itself; health says so
# ---------------------------------------------------------------------------

def test_killed_pgbouncer_restarts_by_itself_clients_reconnect_and_health_says_what_happened():
    # Docker applies a restart policy only to a container that has been up 10 s (so that one that
    # cannot start does not loop): a test run just after a recreation waits for that first.
    started = datetime.datetime.fromisoformat(inspect(POOLER)["State"]["StartedAt"][:26].rstrip("Z") + "+00:00")
    time.sleep(max(0.0, 11 - (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()))
    before = inspect(POOLER)
    client = psycopg2.connect(**pooled_app())
    client.autocommit = True
    # Its process killed (SIGKILL, as the OOM killer does). `docker kill` would count as a
    # manual stop, which Docker's restart policy honours by not restarting.
    subprocess.run(["kill", "-KILL", str(before["State"]["Pid"])], check=True)
    with pytest.raises(psycopg2.Error):
        with client.cursor() as cur:
            cur.execute("SELECT 1")
    client.close()
    # While Docker waits to restart it, State says Running and Restarting.
    after = wait_for(lambda: (lambda c: c if c["RestartCount"] > before["RestartCount"]
                              and c["State"]["Running"] and not c["State"]["Restarting"]
                              and c["State"]["StartedAt"] != before["State"]["StartedAt"] else None)(inspect(POOLER)),
                     30, "the restart")
    assert wait_for(lambda: query(pooled_app(), "SELECT 1") == [(1,)], 30, "a client to reconnect")
    health = run_playbook("playbooks/health.yml", *ON)
    assert health.rc == 0, health
    assert re.search(r"restarted\s+%d\s+time" % after["RestartCount"], health.output), health
    assert '{"status": "ok", "database": "up"}' in health.output


def test_health_reports_pgbouncer_pools_and_stats():
    run = run_playbook("playbooks/health.yml", *ON)
    assert run.rc == 0, run
    assert re.search(r"clients\s+active\s+\d+,\s+waiting\s+\d+,\s+server\s+connections\s+\d+\s+"
                     r"\(active\s+\d+\),\s+max\s+wait", run.output), run


def test_probe_pooler_reads_show_pools_and_stats_as_the_stats_user():
    result = pg_health_core.probe_pooler(
        {k: v for k, v in stats_params().items() if k != "connect_timeout"}, DB_NAME, 2000)
    assert result["is_available"], result
    assert result["users"][APP_ROLE]["pool_mode"] == "transaction"
    refused = pg_health_core.probe_pooler(
        dict({k: v for k, v in stats_params().items() if k != "connect_timeout"}, password="wrong"), DB_NAME, 2000)
    assert not refused["is_available"] and "SASL authentication failed" in refused["reason"]


# ---------------------------------------------------------------------------
# TLS with the server's (production)
# ---------------------------------------------------------------------------

def test_in_production_clients_need_tls_to_pgbouncer_and_pgbouncer_verifies_the_server():
    ca = os.path.join(CONFIG_ROOT, "ca.crt")
    try:
        converge("-e", "app_env=production")
        assert converge("-e", "app_env=production").changed == 0
        rows = query(pooled_app(sslmode="verify-full", sslrootcert=ca),
                     "SELECT current_user, current_setting('server_version')")
        assert rows[0][0] == APP_ROLE
        with pytest.raises(psycopg2.OperationalError, match="SSL required"):
            psycopg2.connect(**pooled_app(sslmode="disable"))
        # PgBouncer's own connections to the server are TLS too.
        assert query(direct_admin(), "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                                     "WHERE a.usename IN (%s, %s)", (APP_ROLE, AUTH_USER)) == [(True,)]
    finally:
        converge("-e", "app_env=development")
