"""Point-in-time restore of the cluster with pgBackRest: one node restored, the others re-created from it.

Against the scenario's cluster (TEST_EXTRA_VARS), at realistic size: pgbench's
tables (113 MB) are in the database, and the full backup the restores start
from is taken after a switchover, on a node that was a replica until then.
Every restore targets an instant after this module's own first writes; each
test removes the volumes its restores kept (a node's data as it was).
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from cluster_support import NODES, ETCD, docker, healthy, members, node_sql, owner_params, primary, sql, wait_until
from conftest import BACKUP_DIR, BAD_PITR_REQUESTS, DB_NAME, PGBENCH_ROWS, PGBENCH_SCALE, ROOT, VOLUME, extra_vars_args, \
    pitr_request, playbook_env, run_playbook

# roles/pgbackrest's record of a restore in progress (pgbackrest_state_dir: db_backup_dir).
RECORD = f"{BACKUP_DIR}/pitr-restore-{DB_NAME}.json"
PRE_RESTORE_LABEL = "social-selling.pre-restore-of"
# roles/pgbackrest's task that restores the files and runs the recovery.
RESTORE_TASK = "Restore the files and recover to the target in a one-off container"


def volume_of(node):
    return f"{VOLUME}_{node.rsplit('_', 1)[1]}"


def pre_restore_volumes():
    """The volumes restores kept of this cluster's nodes (never another stack's: the label names the node's volume)."""
    return sorted({name for node in NODES for name in docker(
        "volume", "ls", "--quiet", "--filter", f"label={PRE_RESTORE_LABEL}={volume_of(node)}").split()})


@pytest.fixture(autouse=True)
def pre_restore_volumes_removed():
    """The test's restores keep the restored node's data as it was in new volumes: checked by the test, removed here."""
    before = set(pre_restore_volumes())
    yield
    for name in set(pre_restore_volumes()) - before:
        docker("volume", "rm", name, check=False)


@pytest.fixture(scope="module", autouse=True)
def realistic_size():
    """pgbench's tables (113 MB) on the primary, and a full backup taken on a node that was a replica."""
    wait_until(healthy, 120, what="a whole cluster")
    leader = primary()
    present = node_sql(leader, "SELECT to_regclass('pgbench_accounts') IS NOT NULL") == ["t"]
    if not present or node_sql(leader, "SELECT count(*) FROM pgbench_accounts") != [PGBENCH_ROWS]:
        docker("exec", leader, "pgbench", "-U", "postgres", "-i", "-q", "-s", str(PGBENCH_SCALE), DB_NAME,
               timeout=600)
    size = int(node_sql(leader, "SELECT pg_database_size(current_database())")[0])
    assert size >= 100 * 1024 * 1024, size
    # Backups come from whichever node leads: the one after a switchover here.
    switched = run_playbook("playbooks/cluster.yml", "-e", "cluster_action=switchover", "-e", f"cluster_confirm={DB_NAME}")
    assert switched.rc == 0, switched
    assert primary() != leader
    backup = run_playbook("playbooks/backup.yml", "-e", "backup_type=full")
    assert backup.rc == 0, backup
    yield size


def owner(query, args=None):
    """One statement as the schema owner on the primary (HAProxy's direct port)."""
    return sql(owner_params(), query, args)


def server_now():
    return owner("SELECT now()::text")[0][0]


def settle():
    """A moment between two writes, so that an instant lies strictly between their commits."""
    time.sleep(1.2)


def restore(target, confirm=DB_NAME, timeout=1200):
    variables = {"restore_target_time": target, "restore_confirm": confirm}
    return run_playbook("playbooks/restore.yml", "-e", json.dumps(variables), timeout=timeout)


def fingerprint(node):
    return node_sql(node, "SELECT count(*), sum(abalance), sum(hashtext(filler)) FROM pgbench_accounts")


def marks(node):
    return set(node_sql(node, "SELECT mark FROM pitr_cluster_marks"))


def started():
    return {node: docker("inspect", "--format", "{{.State.StartedAt}}", node).strip() for node in NODES}


def image():
    return docker("inspect", "--format", "{{.Config.Image}}", NODES[0]).strip()


def volume_holds(volume, text):
    """Whether a table's page in the volume's data directory holds this text (rows as the server last wrote them)."""
    proc = subprocess.run(["docker", "run", "--rm", "--network=none", "--user=0",
                           f"--mount=type=volume,source={volume},target=/d,readonly", "--entrypoint=grep",
                           image(), "-rqaF", "--", text, "/d/base"], capture_output=True, text=True, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def volume_megabytes(volume):
    return int(docker("run", "--rm", "--network=none", f"--mount=type=volume,source={volume},target=/d,readonly",
                      "--entrypoint=du", image(), "-sm", "/d").split()[0])


def timelines():
    return {m["Member"]: m.get("TL") for m in members()}


def two_writes_around_an_instant():
    """Row A, the target, row B and a change to pgbench's accounts after it; returns (target, A, B, fingerprint)."""
    owner("CREATE TABLE IF NOT EXISTS pitr_cluster_marks (mark text PRIMARY KEY)")
    tag = uuid.uuid4().hex[:8]
    owner("INSERT INTO pitr_cluster_marks VALUES (%s)", (f"before-{tag}",))
    expected = fingerprint(primary())
    settle()
    target = server_now()
    settle()
    owner("INSERT INTO pitr_cluster_marks VALUES (%s)", (f"after-{tag}",))
    node_sql(primary(), "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 5000")  # pgbench's: the superuser's
    return target, f"before-{tag}", f"after-{tag}", expected


def test_a_restore_to_an_instant_brings_every_node_back_to_it_on_one_new_timeline():
    leader = primary()
    timeline_before = max(timelines().values())
    target, before, after, expected = two_writes_around_an_instant()
    assert fingerprint(leader) != expected
    volumes_before = set(pre_restore_volumes())

    result = restore(target)

    assert result.rc == 0, result
    assert [task for task in result.changed_tasks if RESTORE_TASK in task], result
    # Restored into the leader's volume; every node holds the rows committed before the target, none after.
    assert f"restored_into: {leader}, the leader" in result.output, result
    assert primary() == leader
    for node in NODES:
        wait_until(lambda: marks(node) >= {before} and after not in marks(node), 60, what=f"the target's rows on {node}")
        wait_until(lambda: fingerprint(node) == expected, 60, what=f"pgbench's accounts as at the target on {node}")
    # A whole cluster: leader, two streaming replicas, one synchronous; all on the same, new timeline.
    assert healthy(), members()
    assert {m["Role"] for m in members()} == {"Leader", "Sync Standby", "Replica"}
    found = timelines()
    assert len(set(found.values())) == 1 and found[leader] > timeline_before, found
    assert [int(row) for row in node_sql(leader, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")] \
        == [len(NODES) - 1]
    # The report names where the recovery ended.
    assert re.search(r"recovery_end_lsn: '?[0-9A-F]+/[0-9A-F]+", result.output), result
    assert re.search(r"recovery_end: '?before ", result.output), result
    # The restored node's data as it was (row B, written after the target) is kept in a volume of its own.
    kept = sorted(set(pre_restore_volumes()) - volumes_before)
    assert len(kept) == 1 and kept[0].startswith(f"{volume_of(leader)}-pre-restore-") and kept[0] in result.output
    assert docker("volume", "inspect", "--format", f"{{{{index .Labels \"{PRE_RESTORE_LABEL}\"}}}}",
                  kept[0]).strip() == volume_of(leader)
    assert volume_holds(kept[0], after) and volume_megabytes(kept[0]) >= 100
    assert not os.path.exists(RECORD)
    # The new primary archives its timeline to the same repository.
    docker("exec", "--user", "postgres", leader, "pgbackrest", "check", timeout=120)


@pytest.mark.parametrize("variables, message", BAD_PITR_REQUESTS)
def test_bad_restore_requests_are_refused_before_anything_changes(variables, message):
    variables = pitr_request(variables)
    before = (started(), primary(), sorted(pre_restore_volumes()))

    result = run_playbook("playbooks/restore.yml", "-e", json.dumps(variables))

    assert result.rc != 0
    assert message in result.output and "Nothing was changed" in result.output, result
    assert (started(), primary(), sorted(pre_restore_volumes())) == before
    assert healthy()
    assert not os.path.exists(RECORD)


def test_a_restore_is_refused_while_nodes_run_and_none_leads():
    """etcd down: nobody can say which node leads, and the newest WAL may be in no archive."""
    before = started()
    docker("stop", ETCD[0])
    try:
        result = restore("latest")
    finally:
        docker("start", ETCD[0])

    assert result.rc != 0
    assert "leads, but" in result.output and "Nothing was changed" in result.output, result
    assert started() == before
    assert not os.path.exists(RECORD)
    wait_until(healthy, 120, what="a whole cluster after etcd's return")


def kill_when(predicate, action, killed, timeout=600):
    """Run action once predicate holds (polled), then set killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not killed.is_set():
        if predicate():
            action()
            killed.set()
            return
        time.sleep(0.1)


def processes_with_argument(argument):
    """Ids of the processes with exactly this argument on their command line."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if argument.encode() in cmdline.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def restore_in_the_background(target):
    """restore.yml as a separate process (its own session, so that it can be killed whole); its argument."""
    variables = json.dumps({"restore_target_time": target, "restore_confirm": DB_NAME})
    playbook = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), *extra_vars_args(),
         "playbooks/restore.yml", "-e", variables],
        cwd=ROOT, env=playbook_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return playbook, variables


def test_a_restore_interrupted_twice_finishes_on_the_third_run_and_restores_once():
    """Killed in its one-off container, then the rerun killed while the cluster is rebuilt: each
    rerun continues from the record, and the third does not restore again (one test, one set of
    writes and one whole restore for both interruptions: the cluster's restores are its slowest)."""
    leader = primary()
    target, before, after, expected = two_writes_around_an_instant()
    volumes_before = set(pre_restore_volumes())

    # 1. The one-off container that restores the files and recovers is killed.
    killed = threading.Event()
    one_off = f"{leader}-restore"

    def kill_the_one_off_container():
        time.sleep(0.3)
        docker("kill", one_off, check=False)

    killer = threading.Thread(target=kill_when, args=(
        lambda: docker("ps", "--quiet", "--filter", f"name=^{one_off}$").strip(), kill_the_one_off_container, killed))
    killer.start()
    first = restore(target)
    killer.join()

    assert killed.is_set() and first.rc != 0, first
    with open(RECORD) as record:
        assert json.load(record)["container"] == leader
    # Every node was stopped: none leads, so a rerun has only the record to say which node it restores.
    assert primary() is None

    # 2. The rerun restores, then is killed (the playbook and Mitogen's workers) while the restored
    # node starts again and the others are re-created from it.
    playbook, variables = restore_in_the_background(target)
    killed = threading.Event()

    def restored_and_starting():
        """The record says restored and the restored node runs again: the cluster is being rebuilt."""
        try:
            with open(RECORD) as record:
                if json.load(record).get("restored") is not True:
                    return False
        except (OSError, ValueError):
            return False
        return docker("inspect", "--format", "{{.State.Running}}", leader).strip() == "true"

    def kill_the_playbook():
        os.killpg(playbook.pid, signal.SIGKILL)
        # Mitogen's workers leave the process group (setsid): found by this run's own arguments.
        for pid in processes_with_argument(variables):
            os.kill(pid, signal.SIGKILL)

    kill_when(restored_and_starting, kill_the_playbook, killed)
    playbook.wait(timeout=60)
    assert killed.is_set()

    # 3. The third run finishes the rebuild without restoring again.
    third = restore(target)

    assert third.rc == 0, third
    assert not [task for task in third.changed_tasks if RESTORE_TASK in task], third
    assert primary() == leader
    for node in NODES:
        wait_until(lambda: marks(node) >= {before} and after not in marks(node), 60, what=f"the target's rows on {node}")
    assert fingerprint(leader) == expected
    assert healthy()
    # One copy of the data as it was, made by the first run: the reruns reused it, not the
    # half-restored directory.
    kept = set(pre_restore_volumes()) - volumes_before
    assert len(kept) == 1 and volume_holds(kept.pop(), after)
    assert not os.path.exists(RECORD)
