#!/usr/bin/env python3
"""Benchmark of the cluster's failover (issue 15), as the application sees it.

    python bench/bench_failover.py [--runs 5] [--only kill,stop,switchover]

On a cluster (db_topology=cluster; TEST_EXTRA_VARS and DB_SECRETS_DIR name an
isolated stack as for the tests), one writer commits one row at a time through
the application's endpoint (PgBouncer on db_port, transaction pooling):
autocommit INSERT ... RETURNING inet_server_addr(), a new connection after any
error (connect_timeout 1 s), --interval seconds between commits. Then,
--runs times each:

  kill        `docker kill` of the primary's container: seconds from the kill
              to the first commit on another node.
              Targets: median <= 20 s, every run <= 25 s (ttl 20: the
              leader key must expire before a replica may take over).
  stop        `docker stop` of the primary (Patroni shuts PostgreSQL down and
              hands the leader key over): seconds from the stop to the first
              commit on another node. Target: median <= 3 s.
  switchover  ansible-playbook playbooks/cluster.yml -e cluster_action=switchover
              -e cluster_confirm=<db>: the longest gap between two successful
              commits while it runs. Target: median <= 2.5 s.

"On another node" is read from inet_server_addr() of each commit, so a commit
the old primary acknowledged just before it died never counts as recovery.
After each event the stopped or killed container is started again and the
bench waits until the cluster is whole (one leader, every member running, a
synchronous standby) before the next run. The table bench_failover is created
by the owner role and dropped at the end.

Prints every run, then medians and maxima against the targets; exits 1 when
a target is missed or the cluster does not come back.
"""
import argparse
import pathlib
import statistics
import subprocess
import sys
import threading
import time

import psycopg2
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cluster")]

import cluster_support as cs  # noqa: E402  (after the path: it reads TEST_EXTRA_VARS like the tests)
from conftest import APP_ROLE, DB_NAME, playbook_env, extra_vars_args  # noqa: E402

TABLE = "bench_failover"
# (median target, every-run target) in seconds; None: no target.
TARGETS = {"kill": (20.0, 25.0), "stop": (3.0, None), "switchover": (2.5, None)}
LABELS = {
    "kill": "docker kill of the primary: kill -> first commit elsewhere",
    "stop": "docker stop of the primary: stop -> first commit elsewhere",
    "switchover": "switchover (cluster.yml): longest gap between commits",
}


class Writer(threading.Thread):
    """Commits one row at a time through the app's endpoint; keeps (start, end, server address) of each commit."""

    def __init__(self, interval):
        super().__init__(daemon=True)
        self.interval = interval
        self.commits = []
        self.errors = []  # (monotonic time, first line of the error)
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        conn = None
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg2.connect(**dict(cs.app_params(), connect_timeout=1))
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {TABLE} DEFAULT VALUES RETURNING host(inet_server_addr())")
                    address = cur.fetchone()[0]
                with self.lock:
                    self.commits.append((started, time.monotonic(), address))
            except psycopg2.Error as error:
                with self.lock:
                    self.errors.append((time.monotonic(), str(error).strip().splitlines()[0][:100]))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
                continue
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def since(self, moment):
        with self.lock:
            return [c for c in self.commits if c[1] >= moment]

    def last_address(self):
        with self.lock:
            return self.commits[-1][2] if self.commits else None


def wait_for_commits(writer, after, timeout=60):
    """Until the writer has committed after `after`; the address of the last commit."""
    cs.wait_until(lambda: writer.since(after), timeout, interval=0.05, what="a commit through the app's endpoint")
    return writer.last_address()


def first_commit_elsewhere(writer, event_started, old_address, timeout=90):
    """Seconds from event_started to the end of the first commit another node acknowledged."""
    def found():
        return [c for c in writer.since(event_started) if c[0] >= event_started and c[2] != old_address]
    commits = cs.wait_until(found, timeout, interval=0.05, what="a commit on another node")
    return commits[0][1] - event_started


def longest_gap(writer, window_start, window_end):
    """Longest interval between consecutive commit ends around [window_start, window_end]."""
    with writer.lock:
        ends = [c[1] for c in writer.commits]
    before = [e for e in ends if e < window_start][-1:]
    inside = [e for e in ends if window_start <= e <= window_end]
    after = [e for e in ends if e > window_end][:1]
    points = before + inside + after
    return max(b - a for a, b in zip(points, points[1:]))


def explain(writer, started, verbose):
    """--verbose: the errors the writer met after `started`, each message with its first and last time."""
    if not verbose:
        return
    seen = {}
    with writer.lock:
        for at, message in writer.errors:
            if at >= started:
                first, last, count = seen.get(message, (at, at, 0))
                seen[message] = (first, at, count + 1)
    for message, (first, last, count) in sorted(seen.items(), key=lambda item: item[1][0]):
        print(f"      {first - started:6.2f} .. {last - started:6.2f} s  x{count:<4} {message}")


def whole(timeout=300):
    cs.wait_until(cs.healthy, timeout, interval=1, what="a whole cluster")


def run_kill_or_stop(writer, how, verbose):
    old = cs.primary()
    old_address = wait_for_commits(writer, time.monotonic())
    started = time.monotonic()
    cs.docker(how, old, timeout=120)
    seconds = first_commit_elsewhere(writer, started, old_address)
    explain(writer, started, verbose)
    cs.docker("start", old)
    whole()
    return seconds, f"{old}: docker {how}"


def run_switchover(writer, verbose):
    old = cs.primary()
    wait_for_commits(writer, time.monotonic())
    started = time.monotonic()
    proc = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), *extra_vars_args(), "playbooks/cluster.yml",
         "-e", "cluster_action=switchover", "-e", f"cluster_confirm={DB_NAME}"],
        cwd=ROOT, env=playbook_env(), capture_output=True, text=True, check=False, timeout=600)
    ended = time.monotonic()
    if proc.returncode != 0:
        raise SystemExit(f"switchover failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-3000:]}")
    whole()
    wait_for_commits(writer, time.monotonic())
    explain(writer, started, verbose)
    return longest_gap(writer, started, ended), f"{old} -> {cs.primary()}, playbook {ended - started:.1f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="kill,stop,switchover",
                        help="comma-separated events among kill, stop, switchover")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between two commits")
    parser.add_argument("--verbose", action="store_true", help="print the errors the writer met in each event")
    options = parser.parse_args()
    events = [e for e in options.only.split(",") if e]
    unknown = set(events) - set(TARGETS)
    if unknown:
        parser.error(f"unknown events: {', '.join(sorted(unknown))}")

    if not cs.healthy():
        cs.ensure_healthy(timeout=300)
    config = yaml.safe_load(cs.docker("exec", cs.primary(), "patronictl", "show-config"))
    print("cluster: " + ", ".join(f"{key} {config.get(key)}" for key in (
        "ttl", "loop_wait", "retry_timeout", "synchronous_mode", "synchronous_mode_strict", "failsafe_mode")),
        flush=True)
    cs.sql(cs.owner_params(), f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, "
                              f"at timestamptz NOT NULL DEFAULT clock_timestamp())")
    cs.sql(cs.owner_params(), f"GRANT SELECT, INSERT ON {TABLE} TO {APP_ROLE}; "
                              f"GRANT USAGE ON SEQUENCE {TABLE}_id_seq TO {APP_ROLE}")
    writer = Writer(options.interval)
    writer.start()
    samples = {event: [] for event in events}
    try:
        for run in range(options.runs):
            for event in events:
                seconds, what = (run_switchover(writer, options.verbose) if event == "switchover"
                                 else run_kill_or_stop(writer, event, options.verbose))
                samples[event].append(seconds)
                print(f"run {run + 1} {event:10} {seconds:6.2f} s  ({what})", flush=True)
    finally:
        writer.stopping.set()
        writer.join(10)
        cs.ensure_healthy(timeout=300)
        cs.sql(cs.owner_params(), f"DROP TABLE IF EXISTS {TABLE}")

    print(f"\n{'event':58} {'runs':>4} {'median':>8} {'max':>8}  target")
    missed = []
    for event in events:
        values = samples[event]
        median, worst = statistics.median(values), max(values)
        limit, every = TARGETS[event]
        ok = median <= limit and (every is None or worst <= every)
        missed += [] if ok else [event]
        target = f"median <= {limit:g} s" + (f", every run <= {every:g} s" if every else "")
        print(f"{LABELS[event]:58} {len(values):4} {median:7.2f}s {worst:7.2f}s  {target}: "
              f"{'met' if ok else 'MISSED'}")
    print(f"writer: {sum(1 for _ in writer.commits)} commits, {len(writer.errors)} failed attempts")
    print("targets: " + ("met" if not missed else "MISSED: " + ", ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
