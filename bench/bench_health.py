#!/usr/bin/env python3
"""Benchmark of the pg_health module's work, next to pg_isready and psql.

One command, from the repository root with the venv active:

    python bench/bench_health.py            # 20 runs of each
    python bench/bench_health.py --runs 50 --ansible-runs 0

Measured in the same run, against the same server, as the application role:

* pg_isready               (baseline: process start + connection probe, no auth)
* psql -c 'select 1'       (baseline: process start + auth + query)
* module health probe      (the module's own work, in-process: connect, SELECT 1,
                            version/extensions/settings; target < 50 ms)
* module full check        (health + headroom + 20-connection pool check with the
                            app's settings; target < 1.5 s)
* ansible -m pg_health     (optional: the health probe end to end through Ansible,
                            to show what Ansible's start-up adds)

Server and credentials come from the same places as the tests: PGTEST_HOST,
PGTEST_PORT, POSTGRES_PASSWORD, else `postgres_app_password` in DB_SECRETS_DIR
(default `.secrets/`). Exits 1 when a target is missed or a run with a target
fails (a failed login is fast, so its time proves nothing).
"""
import argparse
import glob
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "module_utils"))

import pg_health_core as core  # noqa: E402
from pg_connection import connection_params  # noqa: E402

APP_POOL = dict(pool_min=2, pool_max=20, pool_idle_timeout_ms=30000,
                connect_timeout_ms=2000, app_instances=2)


def app_options():
    password = os.environ.get("POSTGRES_PASSWORD")
    secret = pathlib.Path(os.environ.get("DB_SECRETS_DIR") or ROOT / ".secrets") / "postgres_app_password"
    if not password and secret.exists():
        password = secret.read_text().strip()
    if not password:
        sys.exit("POSTGRES_PASSWORD unset and %s missing: provision first" % secret)
    return dict(login_host=os.environ.get("PGTEST_HOST", "127.0.0.1"),
                login_port=int(os.environ.get("PGTEST_PORT", "5432")),
                login_db="social_selling", login_user="social_selling_user",
                login_password=password, **APP_POOL)


def find_binary(name):
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/" + name))
    return candidates[-1] if candidates else None


def timed(fn, runs):
    """Run `fn` `runs` times; wall times in ms. `fn` returns a falsy value on failure."""
    times, failures = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        ok = fn()
        times.append((time.perf_counter() - started) * 1000.0)
        failures += 0 if ok else 1
    return times, failures


def command(cmd, env):
    return lambda: subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each measurement")
    parser.add_argument("--ansible-runs", type=int, default=3,
                        help="runs of the module through Ansible (0 to skip)")
    args = parser.parse_args()
    if args.runs < 1 or args.ansible_runs < 0:
        parser.error("--runs must be at least 1 and --ansible-runs at least 0")

    opts = app_options()
    params = connection_params(opts)
    env = dict(os.environ, PGPASSWORD=opts["login_password"], PGCONNECT_TIMEOUT="2")
    target = ["-h", opts["login_host"], "-p", str(opts["login_port"]),
              "-U", opts["login_user"], "-d", opts["login_db"]]
    rows = []

    pg_isready = find_binary("pg_isready")
    psql = find_binary("psql")
    if pg_isready:
        rows.append(("pg_isready", timed(command([pg_isready] + target, env), args.runs), None))
    else:
        rows.append(("pg_isready", None, None))
    if psql:
        cmd = [psql, "-X", "-q", "-A", "-t", "-c", "select 1"] + target
        rows.append(("psql -c 'select 1'", timed(command(cmd, env), args.runs), None))
    else:
        rows.append(("psql -c 'select 1'", None, None))

    def health():
        return core.probe_health(params, opts["connect_timeout_ms"], core.DEFAULT_EXTENSIONS,
                                 core.tagged_application_name("pg_health-bench"))["is_available"]

    def full_check():
        result = core.run_checks(dict(opts, application_name="pg_health-bench"))
        return result["is_available"] and result["pool"]["ok"]

    rows.append(("module health probe", timed(health, args.runs), 50.0))
    rows.append(("module full check (pool 2..20)", timed(full_check, args.runs), 1500.0))

    if args.ansible_runs:
        with tempfile.TemporaryDirectory() as tmp:
            vars_file = pathlib.Path(tmp) / "vars.json"
            vars_file.write_text(json.dumps({"bench_password": opts["login_password"]}))
            vars_file.chmod(0o600)
            module_args = json.dumps(dict(
                login_host=opts["login_host"], login_port=opts["login_port"],
                login_db=opts["login_db"], login_user=opts["login_user"],
                login_password="{{ bench_password }}", pool_check=False))
            cmd = [str(pathlib.Path(sys.executable).parent / "ansible"), "localhost",
                   "-m", "pg_health", "-a", module_args, "-e", "@%s" % vars_file]
            aenv = dict(os.environ)
            rows.append(("ansible -m pg_health (health only)",
                         timed(lambda: subprocess.run(cmd, cwd=str(ROOT), env=aenv,
                                                      stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.DEVNULL).returncode == 0,
                               args.ansible_runs), None))

    print("pg_health benchmark: %s:%s as %s, %d runs (ansible: %d)"
          % (opts["login_host"], opts["login_port"], opts["login_user"], args.runs,
             args.ansible_runs))
    print("%-36s %5s %11s %11s %9s  %s" % ("measurement", "runs", "median ms", "max ms",
                                            "failures", "target"))
    missed = []
    for name, measured, target_ms in rows:
        if measured is None:
            print("%-36s  not found (install postgresql-client)" % name)
            continue
        times, failures = measured
        median = statistics.median(times)
        verdict = ""
        if target_ms is not None:
            met = median < target_ms and not failures
            verdict = "< %g ms: %s" % (target_ms, "met" if met else "MISSED")
            if not met:
                missed.append(name)
        print("%-36s %5d %11.1f %11.1f %9d  %s" % (name, len(times), median, max(times),
                                                   failures, verdict))
    print("targets: %s" % ("met" if not missed else "MISSED: " + ", ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
