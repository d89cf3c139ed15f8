"""Criterion 5 (pool min 2, max 20) with the seed's own client: pg-promise 12 from npm.

tests/integration/node/pool.js opens a pg-promise pool configured from the
inventory's db_pool_* (inventory/group_vars/all.yml, overridden by
TEST_EXTRA_VARS like every playbook run) against the provisioned database as
the application role, and:
- holds the pool's maximum at once: the superuser sees that many distinct
  backends of the application role (this pool's application_name) in
  pg_stat_activity;
- sends one request more while all are held: it waits (timed) and is served,
  by the very connection released, when one is released;
- runs CRUD through the pool on a table the owner role made, and sees the
  users table's updated_at trigger work.
Needs node and npm (tests/conftest.py: node_version; SKIP_NODE_TESTS=1 skips).
"""
import uuid

import pytest
import yaml

from conftest import EXTRA_VARS, ROOT, PoolScript, query

RELEASE_AFTER_MS = 1000


def inventory_pool():
    settings = yaml.safe_load((ROOT / "inventory" / "group_vars" / "all.yml").read_text())
    settings.update(EXTRA_VARS)
    return {key: int(settings[key]) for key in
            ("db_pool_min", "db_pool_max", "db_pool_idle_timeout_ms", "db_pool_connect_timeout_ms")}


@pytest.fixture
def owner_table(owner_params):
    """A scratch table the owner role creates, as a migration would; dropped afterwards."""
    name = "pool_probe_" + uuid.uuid4().hex[:8]
    query(owner_params, f"CREATE TABLE {name} (id serial PRIMARY KEY, note text NOT NULL)")
    yield name
    query(owner_params, f"DROP TABLE IF EXISTS {name}")


def test_the_seed_pool_holds_its_maximum_queues_one_more_and_serves_crud(app_params, admin_params, owner_table):
    pool = inventory_pool()
    assert (pool["db_pool_min"], pool["db_pool_max"]) == (2, 20)  # the seed's numbers, from the inventory
    application_name = "pool-proof-" + uuid.uuid4().hex[:8]
    config = dict(host=app_params["host"], port=app_params["port"], database=app_params["dbname"],
                  user=app_params["user"], password=app_params["password"], application_name=application_name,
                  min=pool["db_pool_min"], max=pool["db_pool_max"],
                  idleTimeoutMillis=pool["db_pool_idle_timeout_ms"],
                  connectionTimeoutMillis=pool["db_pool_connect_timeout_ms"],
                  scratch_table=owner_table, hold_release_ms=RELEASE_AFTER_MS)
    with PoolScript(config) as script:
        options = script.read("options")
        assert (options["min"], options["max"], options["idleTimeoutMillis"], options["connectionTimeoutMillis"]) \
            == (2, 20, 30000, 2000)

        holding = script.read("holding")
        assert len(set(holding["pids"])) == 20 and holding["total"] == 20 and holding["idle"] == 0
        backends = query(admin_params, "SELECT pid FROM pg_stat_activity WHERE usename = %s AND application_name = %s",
                         (app_params["user"], application_name))
        assert sorted(pid for (pid,) in backends) == sorted(holding["pids"])
        script.next()

        extra = script.read("extra")
        # It was still waiting when one was released, and was served only then, by that connection.
        assert extra["waiting_at_release"] == 1
        assert extra["served_after_ms"] >= RELEASE_AFTER_MS
        assert extra["served_after_ms"] < pool["db_pool_connect_timeout_ms"]
        assert extra["served_by"] == extra["released_pid"]

        assert script.read("crud") == {"step": "crud", "inserted": "created", "read": "updated", "deleted": 1}
        assert script.read("trigger") == {"step": "trigger", "moved": True, "equal_at_insert": True}
        script.finish()
    # Nothing left behind: the pool ended, the test user is gone.
    assert query(admin_params, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                 (application_name,)) == [(0,)]
    assert query(dict(admin_params, dbname=app_params["dbname"]),
                 "SELECT count(*) FROM users WHERE email LIKE 'pool-%%@example.test'") == [(0,)]

