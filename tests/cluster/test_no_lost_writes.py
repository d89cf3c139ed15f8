"""No acknowledged write is lost across failures (issue 15, "Done means"), Jepsen's set checker.

As Patroni's Jepsen run does it: several writers insert unique integers
through the application's endpoint (PgBouncer, then HAProxy to the primary)
and record every value they attempted and every value whose INSERT was
acknowledged. Meanwhile the cluster goes through fault cycles: the primary
killed, a replica killed, the primary stopped cleanly, a switchover through
playbooks/cluster.yml, each time with the killed or stopped node started again
so that it rejoins (a killed primary with pg_rewind). After the cycles the
cluster is healed and every value is read from the primary:

- acknowledged - present must be empty (no acknowledged write lost);
- present - attempted must be empty (nothing appears that nobody wrote);
- every cycle acknowledged writes (the endpoint followed the primary each time).

Values attempted but not acknowledged (the INSERT failed or its answer was
lost) may be present or not: Jepsen's "indeterminate".
"""
import itertools
import pathlib
import subprocess
import sys
import threading
import time

import psycopg2
import pytest

import cluster_support as cs
from conftest import APP_ROLE, DB_NAME, ROOT, extra_vars_args, playbook_env

TABLE = "jepsen_set"
WRITERS = 4
# Seconds the writers must keep being acknowledged after each fault, before the heal.
WRITE_AFTER_FAULT = 2.0


class SetWriters:
    """WRITERS threads inserting unique integers; attempted and acknowledged values."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counter = itertools.count(1)
        self.attempted = set()
        self.acknowledged = {}  # value -> monotonic time of the acknowledgement
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._write, daemon=True) for _ in range(WRITERS)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        return [thread for thread in self.threads if thread.is_alive()]

    def _write(self):
        conn = None
        while not self.stopping.is_set():
            with self.lock:
                value = next(self.counter)
                self.attempted.add(value)
            try:
                if conn is None:
                    conn = psycopg2.connect(**dict(cs.app_params(), connect_timeout=1))
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {TABLE} (value) VALUES (%s)", (value,))
                with self.lock:
                    self.acknowledged[value] = time.monotonic()
            except psycopg2.Error:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    def acknowledged_since(self, moment):
        with self.lock:
            return sum(1 for at in self.acknowledged.values() if at >= moment)


def role_of(role):
    """A member in this role (Leader, Sync Standby, Replica) of the running cluster."""
    return next(m["Member"] for m in cs.members() if m["Role"] == role)


def writes_resume(writers, since, what):
    """Wait until a write is acknowledged after `since`, then let them run WRITE_AFTER_FAULT seconds more.

    `since` is when the fault's command returned (the container is dead or
    stopped, the switchover done): an acknowledgement after it came from the
    node that leads now. Returns the acknowledgements counted since then.
    """
    cs.wait_until(lambda: writers.acknowledged_since(since) > 0, 90, interval=0.2,
                  what=f"an acknowledged write after {what}")
    time.sleep(WRITE_AFTER_FAULT)
    return writers.acknowledged_since(since)


def fault_kill(writers, role):
    node = role_of(role)
    cs.docker("kill", node)
    acknowledged = writes_resume(writers, time.monotonic(), f"docker kill of {node} ({role})")
    cs.docker("start", node)
    return f"kill {node} ({role})", acknowledged


def fault_stop(writers, role):
    node = role_of(role)
    cs.docker("stop", node, timeout=120)
    acknowledged = writes_resume(writers, time.monotonic(), f"docker stop of {node} ({role})")
    cs.docker("start", node)
    return f"stop {node} ({role})", acknowledged


def fault_switchover(writers, _role):
    old = role_of("Leader")
    proc = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), *extra_vars_args(), "playbooks/cluster.yml",
         "-e", "cluster_action=switchover", "-e", f"cluster_confirm={DB_NAME}"],
        cwd=ROOT, env=playbook_env(), capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    acknowledged = writes_resume(writers, time.monotonic(), "a switchover")
    return f"switchover from {old}", acknowledged


# The cycles: every fault of the issue, the primary's more than once. Each
# killed or stopped node is started again in its cycle and the cluster is whole
# before the next one.
CYCLES = [
    (fault_kill, "Leader"),
    (fault_kill, "Sync Standby"),
    (fault_stop, "Leader"),
    (fault_switchover, None),
    (fault_kill, "Replica"),
    (fault_kill, "Leader"),
    (fault_stop, "Sync Standby"),
    (fault_switchover, None),
    (fault_stop, "Leader"),
    (fault_kill, "Sync Standby"),
]


@pytest.fixture(scope="module")
def set_table():
    """The set's table, writable by the application role; dropped at the end, the cluster left whole."""
    cs.ensure_healthy()
    cs.sql(cs.owner_params(), f"DROP TABLE IF EXISTS {TABLE}")
    cs.sql(cs.owner_params(), f"CREATE TABLE {TABLE} (value bigint PRIMARY KEY)")
    cs.sql(cs.owner_params(), f"GRANT SELECT, INSERT ON {TABLE} TO {APP_ROLE}")
    yield TABLE
    cs.ensure_healthy(timeout=300)
    cs.sql(cs.owner_params(), f"DROP TABLE IF EXISTS {TABLE}")


def test_no_acknowledged_write_is_lost_across_ten_fault_cycles(set_table):
    writers = SetWriters()
    writers.start()
    cycles = []  # (what, acknowledged after the fault, seconds the cycle took)
    try:
        writes_resume(writers, time.monotonic(), "the start")
        for number, (fault, role) in enumerate(CYCLES, start=1):
            started = time.monotonic()
            what, acknowledged = fault(writers, role)
            # Heal before the next cycle: the node rejoins (pg_rewind for a former primary).
            cs.wait_until(cs.healthy, 180, interval=0.5, what=f"a whole cluster after cycle {number}")
            cycles.append((what, acknowledged, round(time.monotonic() - started)))
    finally:
        stuck = writers.stop()
        cs.ensure_healthy(timeout=300)
    assert not stuck, f"{len(stuck)} writers did not stop"

    present = {row[0] for row in cs.sql(cs.owner_params(), f"SELECT value FROM {TABLE}")}
    lost = set(writers.acknowledged) - present
    phantom = present - writers.attempted
    summary = (f"{len(writers.attempted)} attempted, {len(writers.acknowledged)} acknowledged, "
               f"{len(present)} present; cycles (fault, acknowledged after it, seconds): {cycles}")
    print(summary)
    assert not lost, f"acknowledged but lost: {sorted(lost)[:50]} ({len(lost)}); {summary}"
    assert not phantom, f"present but never attempted: {sorted(phantom)[:50]}; {summary}"
    assert len(cycles) >= 10 and all(acknowledged > 0 for _, acknowledged, _ in cycles), \
        f"a cycle without an acknowledged write after its fault: {summary}"
