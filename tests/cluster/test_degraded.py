"""Degraded but safe (issue 15, "Done means").

- With one of three nodes down (the primary, the synchronous standby or the
  other replica), writes through the application's endpoint continue.
- With synchronous_mode_strict on and both replicas down, a write blocks
  instead of committing unreplicated (the client gets no acknowledgement and
  no other session sees the row), and commits once a replica is back.

Each test leaves the cluster whole; strict mode is put back as the inventory sets it.
"""
import subprocess
import threading
import time

import psycopg2
import pytest
import yaml

import cluster_support as cs
from conftest import APP_ROLE, EXTRA_VARS, ROOT

TABLE = "degraded_writes"
# Successful commits in a row that count as "writes continue".
COMMITS = 20


@pytest.fixture(scope="module")
def table():
    cs.ensure_healthy()
    cs.sql(cs.owner_params(), f"DROP TABLE IF EXISTS {TABLE}")
    cs.sql(cs.owner_params(), f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, note text NOT NULL)")
    cs.sql(cs.owner_params(), f"GRANT SELECT, INSERT ON {TABLE} TO {APP_ROLE}; "
                              f"GRANT USAGE ON SEQUENCE {TABLE}_id_seq TO {APP_ROLE}")
    yield TABLE
    cs.ensure_healthy(timeout=300)
    cs.sql(cs.owner_params(), f"DROP TABLE IF EXISTS {TABLE}")


@pytest.fixture
def whole_afterwards():
    """Whatever the test stopped is started again and the cluster is whole before the next test."""
    yield
    cs.ensure_healthy(timeout=300)


def member(role):
    return next(m["Member"] for m in cs.members() if m["Role"] == role)


def commit(note):
    """One INSERT through the app's endpoint, on a new connection; True when acknowledged."""
    try:
        conn = psycopg2.connect(**dict(cs.app_params(), connect_timeout=1))
    except psycopg2.OperationalError:
        return False
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (note,))
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def present(note):
    return cs.sql(cs.owner_params(), f"SELECT count(*) FROM {TABLE} WHERE note = %s", (note,))[0][0]


@pytest.mark.parametrize("role", ["Leader", "Sync Standby", "Replica"])
def test_writes_continue_with_one_of_three_nodes_down(table, whole_afterwards, role):
    node = member(role)
    cs.docker("stop", node, timeout=120)
    # The first write may wait for Patroni to react (a new leader, another synchronous standby).
    cs.wait_until(lambda: commit(f"{role} down: first"), 60, what=f"a commit with {node} ({role}) down")
    acknowledged = sum(commit(f"{role} down: {n}") for n in range(COMMITS))
    states = {m["Member"]: (m["Role"], m["State"]) for m in cs.members()}
    assert acknowledged == COMMITS, f"{acknowledged}/{COMMITS} commits with {node} ({role}) down; members {states}"
    assert node not in states or states[node][1] != "running", states
    assert present(f"{role} down: {COMMITS - 1}") == 1


# synchronous_mode_strict as the inventory sets it (what site.yml would put back).
CONFIGURED_STRICT = bool(EXTRA_VARS.get(
    "db_cluster_synchronous_mode_strict",
    yaml.safe_load((ROOT / "inventory" / "group_vars" / "all.yml").read_text())["db_cluster_synchronous_mode_strict"]))


def set_strict(value):
    """patronictl edit-config on the first node that answers (the setting lives in etcd)."""
    for node in cs.NODES:
        proc = subprocess.run(["docker", "exec", node, "patronictl", "edit-config", "--force",
                               "-s", f"synchronous_mode_strict={str(value).lower()}"],
                              capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode == 0:
            return
    raise AssertionError(f"no node could set synchronous_mode_strict={value}: {proc.stderr}")


@pytest.fixture
def strict_mode():
    """synchronous_mode_strict on for one test (Patroni's configuration in etcd), then as configured.

    Put back first, before the stopped nodes are started: a failed test never leaves strict mode on.
    """
    set_strict(True)
    try:
        yield
    finally:
        set_strict(CONFIGURED_STRICT)
        cs.ensure_healthy(timeout=300)


def test_strict_mode_blocks_a_write_without_replicas_and_commits_it_when_one_is_back(table, strict_mode):
    replicas = [m["Member"] for m in cs.members() if m["Role"] != "Leader"]
    assert len(replicas) == 2, cs.members()
    for node in replicas:
        cs.docker("stop", node, timeout=120)
    leader = cs.primary()
    cs.wait_until(lambda: cs.node_sql(leader, "SELECT count(*) FROM pg_stat_replication") == ["0"], 60,
                  what="no standby streaming from the primary")
    # Time for Patroni to react (a loop): without strict mode it would empty synchronous_standby_names now.
    time.sleep(cs.dcs_config()["loop_wait"] + 1)

    outcome = {}

    def write():
        conn = psycopg2.connect(**dict(cs.app_params(), connect_timeout=5))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {TABLE} (note) VALUES ('strict')")
            outcome["acknowledged"] = time.monotonic()
        except psycopg2.Error as error:
            outcome["error"] = error
        finally:
            conn.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(15)
    assert writer.is_alive(), f"the write did not block with both replicas down: {outcome}"
    assert present("strict") == 0, "another session sees the unreplicated row"

    restarted = time.monotonic()
    cs.docker("start", replicas[0])
    writer.join(120)
    assert not writer.is_alive(), f"the write still blocks with {replicas[0]} back; members {cs.members()}"
    assert "acknowledged" in outcome, outcome
    print(f"the write committed {outcome['acknowledged'] - restarted:.1f} s after {replicas[0]} was started")
    assert present("strict") == 1
