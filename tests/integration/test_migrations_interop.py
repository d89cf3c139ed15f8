"""Interoperability with the real node-pg-migrate, installed from npm.

tests/integration/node/package.json pins node-pg-migrate 6.2.2 (the seed's
version, as node-pg-migrate-v6; runs on Debian 12's Node 18) and
tests/integration/node-v9/package.json 9.0.0 (current; needs Node.js 20.11 or
newer); `npm ci` runs when node_modules is missing. Every test runs against
both versions; the 9.0.0 runs are skipped, with that reason, where node is
older. A missing node or npm fails the tests naming it, unless
SKIP_NODE_TESTS=1 (tests/conftest.py: node_version).
"""
import os
import subprocess

import pytest

import pg_migrate_core as core
from conftest import NODE_DIR, NODE_V9_DIR, migrations_folder, node_version, npm_ci, query

# name: (package folder, CLI inside it, the Node.js version it needs)
CLIS = {
    "node-pg-migrate-9.0.0": (NODE_V9_DIR, "node-pg-migrate/bin/node-pg-migrate.js", (20, 11)),
    "node-pg-migrate-6.2.2": (NODE_DIR, "node-pg-migrate-v6/bin/node-pg-migrate", (12, 20)),
}
FILES = {
    "1710000000001_create-widgets":
        "-- Up Migration\nCREATE TABLE widgets (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE widgets;\n",
    "1710000000002_create-gadgets":
        "-- Up Migration\nCREATE TABLE gadgets (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE gadgets;\n",
    "1710000000003_create-gizmos":
        "-- Up Migration\nCREATE TABLE gizmos (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE gizmos;\n",
}
ALL = list(FILES)


@pytest.fixture(params=sorted(CLIS))
def node_pg_migrate(request, scratch_db, folder):
    """Run the real node-pg-migrate CLI against the scratch database."""
    package_dir, cli, needs = CLIS[request.param]
    version = node_version()
    if version < needs:
        pytest.skip("%s needs Node.js %s or newer; this host has %s (a version gate: the other version ran)"
                    % (request.param, ".".join(map(str, needs)), ".".join(map(str, version))))
    cli = npm_ci(package_dir) / cli
    url = "postgres://{user}:{password}@{host}:{port}/{dbname}".format(**scratch_db)

    def run(*args, check=True):
        completed = subprocess.run(
            ["node", str(cli), *args, "--migrations-dir", str(folder),
             "--database-url-var", "PG_MIGRATE_TEST_URL", "--no-verbose"],
            env=dict(os.environ, PG_MIGRATE_TEST_URL=url), capture_output=True, text=True,
            cwd=str(folder.parent), timeout=120)
        if check and completed.returncode != 0:
            print(completed.stdout, completed.stderr)  # shown by pytest on failure
            raise AssertionError("node-pg-migrate %s failed" % " ".join(args))
        return completed
    return run


@pytest.fixture
def folder(tmp_path):
    return migrations_folder(tmp_path, FILES)


@pytest.fixture
def ours(scratch_db, folder):
    def run(action, **options):
        return core.run(lambda: core.connect(dict(scratch_db)), str(folder), action, **options)
    return run


def tracked(params):
    return [row[0] for row in query(params, "SELECT name FROM pgmigrations ORDER BY run_on, id")]


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
