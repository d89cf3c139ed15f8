#!/usr/bin/env python3
"""Benchmark of whole commands (issue 12): ours and the baseline in the same run.

One command, from the repository root with the venv active:

    python bench/bench_commands.py [--runs 5] [--only cdefg] [--with-site] [--cold]

Each row times a whole command as a user types it (a fresh process: Python,
Ansible or node start-up included), several runs, and compares the medians
with the row's target; the baseline of a ratio target runs in the same round.

  a  ansible-playbook site.yml, nothing to change            <= 8 s
  b  cold site.yml (image present; container, volume gone)   <= 3 x bench/baseline_cold.sh
  c  ansible-playbook playbooks/migrate.yml, 500 pending     <= 1.2 x node-pg-migrate up
  d  migrate.yml, nothing pending                            <= 1.5 s
  e  migrate.yml, one 4.9 MB seed migration (50,000 INSERTs) <= 1.2 x node-pg-migrate up
  f  bin/pg-migrate up, 500 pending                          <= 0.6 x node-pg-migrate up
  g  bin/pg-migrate up, nothing pending                      <  0.3 s
  h  bin/pg-migrate up, row e's seed migration               (reported, no target)
  i  two no-change site.yml at once, the slower of the two   <= 1.3 x one alone

Rows c-g run against any server, each on fresh databases it creates and
drops: PGTEST_HOST (127.0.0.1), PGTEST_PORT (5432, or TEST_EXTRA_VARS's
db_port), PGTEST_ADMIN_USER (postgres), POSTGRES_ADMIN_PASSWORD or
postgres_admin_password in DB_SECRETS_DIR (default .secrets/), as
bench_migrations.py (whose helpers this reuses; node-pg-migrate 9 runs as
there, on the Node.js 20 pinned in tests/integration/node-v9 on Linux x86_64:
node_binary). The playbook is pointed at
that server with -e @<0600 file> (postgres_migrations_login_*,
postgres_migrations_dir), never a password on a command line. The migrations
are bench_migrations.py's generated workloads ("trivial": one SELECT each;
"seed": CREATE TABLE + 100 x COUNT single-row INSERTs).

Rows a, b and i need the project's own Docker deployment: --with-site (on by
default when its container exists: social_selling_postgres, or the
db_container_name of the JSON file TEST_EXTRA_VARS names, whose extra vars
every site.yml run then gets, as in the tests; DB_SECRETS_DIR and
PGTEST_PORT as there). Row b removes that container and its volume (the data
is lost; site.yml then rebuilds both), so it runs only with --cold as well.

Prints a table (ours, baseline, ratio, target, met/missed); exits 1 when a
target is missed or a command fails.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_migrations import (  # noqa: E402  (the benches' shared helpers)
    NODE_CLI, ROOT, admin, ensure_node_modules, generate, libpq_env, node_binary, node_version,
    server_params)

import psycopg2  # noqa: E402

# The stack rows a and b run against: the project's own, or the one TEST_EXTRA_VARS names
# (its container and volume; every site.yml run then gets -e @TEST_EXTRA_VARS), as in the tests.
from conftest import CONTAINER, VOLUME, extra_vars_args  # noqa: E402
BIN = pathlib.Path(sys.executable).parent
BASELINE_COLD = ROOT / "bench" / "baseline_cold.sh"


def pg_migrate_command():
    """What a developer runs: .venv/bin/pg-migrate (make up / make cli), else bin/pg-migrate
    with this Python."""
    wrapper = BIN / "pg-migrate"
    if wrapper.exists():
        return [str(wrapper)]
    return [sys.executable, str(ROOT / "bin" / "pg-migrate")]
#: row: (what, baseline, kind of target, limit). "ratio": ours / baseline <= limit;
#: "max": ours <= limit seconds; "below": ours < limit seconds.
ROWS = {
    "a": ("ansible-playbook site.yml, nothing to change", None, "max", 8.0),
    "b": ("cold site.yml (image present, container+volume removed)", "baseline_cold.sh",
          "ratio", 3.0),
    "c": ("ansible-playbook playbooks/migrate.yml, %(count)d pending", "node-pg-migrate up",
          "ratio", 1.2),
    "d": ("ansible-playbook playbooks/migrate.yml, nothing pending", None, "max", 1.5),
    "e": ("ansible-playbook playbooks/migrate.yml, seed %(seed_mb).1f MB", "node-pg-migrate up",
          "ratio", 1.2),
    "f": ("bin/pg-migrate up, %(count)d pending", "node-pg-migrate up", "ratio", 0.6),
    "g": ("bin/pg-migrate up, nothing pending", None, "below", 0.3),
    # Reported only: the engine's own time on row e's seed, without Ansible.
    "h": ("bin/pg-migrate up, seed %(seed_mb).1f MB (no target)", "node-pg-migrate up", None, None),
    # A host with 2 CPUs or more runs two Ansible runs side by side (Mitogen's own CPU placement
    # put both on one CPU: 1.9 x).
    "i": ("two no-change site.yml at once, the slower one", "one alone", "ratio", 1.3),
}


class CommandFailed(Exception):
    pass


def timed(command, env, cwd=ROOT):
    """Seconds one command takes; its output (CommandFailed when it fails)."""
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=str(cwd), capture_output=True, text=True,
                          check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise CommandFailed("%s failed (%d):\n%s" % (
            " ".join(str(c) for c in command[:3]), proc.returncode,
            (proc.stdout + proc.stderr)[-3000:]))
    return elapsed, proc.stdout


def playbook_env():
    """ansible-playbook as a user runs it from the repository root (no inherited ANSIBLE_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=str(BIN) + os.pathsep + env.get("PATH", ""))
    return env


def playbook(*args):
    return [str(BIN / "ansible-playbook"), *args]


def site_playbook():
    """site.yml on the stack the bench runs against (TEST_EXTRA_VARS, as in the tests)."""
    return playbook(*extra_vars_args(), "site.yml")


def changed_count(output):
    """changed= of the PLAY RECAP (summed over hosts)."""
    return sum(int(n) for n in re.findall(r"^\S+\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M))


class Databases:
    """Fresh databases on the benchmark server, dropped at the end."""

    def __init__(self, params):
        self.params = params
        self.names = []

    def new(self, label):
        name = "bench_cmd_%s_%s" % (label, uuid.uuid4().hex[:8])
        admin(self.params, 'CREATE DATABASE "%s"' % name)
        self.names.append(name)
        return name

    def applied(self, name):
        conn = psycopg2.connect(dbname=name, **self.params)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pgmigrations")
                return cur.fetchone()[0]
        finally:
            conn.close()

    def drop_all(self):
        for name in self.names:
            admin(self.params, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        self.names = []


class Workdir:
    """Generated migration folders and the playbook's 0600 overrides files."""

    def __init__(self, params):
        self.params = params
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="bench-commands-"))
        os.chmod(self.root, 0o700)

    def folder(self, workload, count):
        path = self.root / workload
        if not path.exists():
            path.mkdir()
            generate(path, count, workload)
        return path

    def overrides(self, dbname, folder):
        path = self.root / ("vars-%s.json" % dbname)
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({
                "postgres_migrations_login_host": self.params["host"],
                "postgres_migrations_login_port": self.params["port"],
                "postgres_migrations_login_user": self.params["user"],
                "postgres_migrations_login_password": self.params["password"],
                "postgres_migrations_login_db": dbname,
                "postgres_migrations_dir": str(folder),
            }, handle)
        return path

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)


def node_up(folder, env):
    return timed([node_binary(), str(NODE_CLI), "up", "--migrations-dir", str(folder),
                  "--database-url-var", "DATABASE_URL", "--no-verbose"], env)[0]


def migrate_round(rows, params, work, dbs, count, samples):
    """One round of rows c-g; appends (ours, baseline) to samples[row]."""
    trivial = work.folder("trivial", count) if set(rows) & set("cdfg") else None
    node_trivial = None
    if set(rows) & set("cf"):
        name = dbs.new("node")
        node_trivial = node_up(trivial, libpq_env(params, name))
        expect(dbs, name, count)
    if set(rows) & set("cd"):
        name = dbs.new("play")
        extra = work.overrides(name, trivial)
        first, _ = timed(playbook("playbooks/migrate.yml", "-e", "@%s" % extra), playbook_env())
        expect(dbs, name, count)
        if "c" in rows:
            samples["c"].append((first, node_trivial))
        if "d" in rows:
            again, output = timed(playbook("playbooks/migrate.yml", "-e", "@%s" % extra),
                                  playbook_env())
            if changed_count(output):
                raise CommandFailed("migrate.yml with nothing pending reported changes")
            samples["d"].append((again, None))
    if set(rows) & set("fg"):
        name = dbs.new("cli")
        env = libpq_env(params, name)
        first, _ = timed(pg_migrate_command() + ["up", "-m", str(trivial)], env)
        expect(dbs, name, count)
        if "f" in rows:
            samples["f"].append((first, node_trivial))
        if "g" in rows:
            again, output = timed(pg_migrate_command() + ["up", "-m", str(trivial)], env)
            if not output.startswith("No migrations to run!"):
                raise CommandFailed("pg-migrate up with nothing pending ran something:\n" + output)
            samples["g"].append((again, None))
    if set(rows) & set("eh"):
        seed = work.folder("seed", count)
        name = dbs.new("node_seed")
        node_seed = node_up(seed, libpq_env(params, name))
        expect(dbs, name, 1)
    if "e" in rows:
        name = dbs.new("play_seed")
        ours, _ = timed(playbook("playbooks/migrate.yml", "-e", "@%s" % work.overrides(name, seed)),
                        playbook_env())
        expect(dbs, name, 1)
        samples["e"].append((ours, node_seed))
    if "h" in rows:
        name = dbs.new("cli_seed")
        ours, _ = timed(pg_migrate_command() + ["up", "-m", str(seed)], libpq_env(params, name))
        expect(dbs, name, 1)
        samples["h"].append((ours, node_seed))
    dbs.drop_all()


def expect(dbs, name, count):
    applied = dbs.applied(name)
    if applied != count:
        raise CommandFailed("%s: %d rows in pgmigrations, expected %d" % (name, applied, count))


def docker_ok(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True,
                          check=False).returncode == 0


def container_image():
    proc = subprocess.run(["docker", "inspect", "--format", "{{.Config.Image}}", CONTAINER],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def side_by_side(command, env):
    """Seconds the slower of two copies of a command started together takes."""
    started = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [proc.communicate()[0] for proc in procs]
    elapsed = time.perf_counter() - started
    for proc, output in zip(procs, outputs):
        if proc.returncode != 0 or changed_count(output):
            raise CommandFailed("a side-by-side site.yml failed or changed something:\n%s"
                                % output[-3000:])
    return elapsed


def site_round(rows, samples, image):
    """One round of rows a, b and i against the project's own container."""
    if "a" in rows:
        elapsed, output = timed(site_playbook(), playbook_env())
        if changed_count(output):
            raise CommandFailed("site.yml reported %d change(s) on a converged host"
                                % changed_count(output))
        samples["a"].append((elapsed, None))
    if "b" in rows:
        for command in (["rm", "-f", CONTAINER], ["volume", "rm", "-f", VOLUME]):
            if not docker_ok(*command):
                raise CommandFailed("docker %s failed" % " ".join(command))
        ours, _ = timed(site_playbook(), playbook_env())
        subprocess.run([str(BASELINE_COLD), "down"], check=True)
        try:
            baseline, _ = timed([str(BASELINE_COLD), "up", image], dict(os.environ))
        finally:
            subprocess.run([str(BASELINE_COLD), "down"], check=True)
        samples["b"].append((ours, baseline))
    if "i" in rows:
        alone, _ = timed(site_playbook(), playbook_env())
        samples["i"].append((side_by_side(site_playbook(), playbook_env()), alone))


def verdict(row, ours, baseline):
    _, _, kind, limit = ROWS[row]
    if kind == "ratio":
        value = ours / baseline
        return value, value <= limit, "<= %.1f x" % limit
    if kind is None:
        return (ours / baseline if baseline else None), True, "-"
    if kind == "max":
        return None, ours <= limit, "<= %.1f s" % limit
    return None, ours < limit, "< %.1f s" % limit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each row; medians (default 5)")
    parser.add_argument("--only", default=None, metavar="ROWS",
                        help="rows to run, e.g. cfg or c,f,g (default: c-h, plus a and i with "
                             "--with-site, plus b with --cold)")
    parser.add_argument("--count", type=int, default=500,
                        help="pending migrations of rows c and f; the seed is 100 x COUNT INSERTs")
    site = parser.add_mutually_exclusive_group()
    site.add_argument("--with-site", dest="with_site", action="store_true", default=None,
                      help="run rows a and i (and b with --cold) against the project's container "
                           "(default: when %s exists)" % CONTAINER)
    site.add_argument("--no-with-site", dest="with_site", action="store_false")
    parser.add_argument("--cold", action="store_true",
                        help="allow row b: removes %s and its volume %s (data lost) before "
                             "each timed site.yml" % (CONTAINER, VOLUME))
    args = parser.parse_args()

    image = container_image() if shutil.which("docker") else None
    with_site = (image is not None) if args.with_site is None else args.with_site
    if args.only:
        rows = [r for r in "abcdefghi" if r in args.only.lower()]
        unknown = set(args.only.lower()) - set("abcdefghi, ")
        if unknown or not rows:
            parser.error("--only takes rows among a-i, got %r" % args.only)
    else:
        rows = list("cdefgh") + (["a", "i"] if with_site else []) + (["b"] if with_site and args.cold else [])
    if "b" in rows and not args.cold:
        parser.error("row b removes %s and its volume: add --cold to allow it" % CONTAINER)
    if set(rows) & set("abi") and (not with_site or image is None):
        parser.error("rows a, b and i need the project's container %s (and --with-site)" % CONTAINER)

    migrate_rows = [r for r in rows if r in "cdefgh"]
    params = server_params() if migrate_rows else None
    if set(rows) & set("cefh"):
        ensure_node_modules()
    samples = {row: [] for row in rows}
    work = Workdir(params) if migrate_rows else None
    dbs = Databases(params) if migrate_rows else None
    seed_mb = 0.0
    failures = []
    try:
        if "b" in rows:  # warm-up: the baseline's network and page cache
            subprocess.run([str(BASELINE_COLD), "up", image], check=True, stdout=subprocess.DEVNULL)
            subprocess.run([str(BASELINE_COLD), "down"], check=True)
        if set(rows) & set("ai"):  # converge once, so the timed runs have nothing to change
            timed(site_playbook(), playbook_env())
        for _ in range(args.runs):
            if migrate_rows:
                migrate_round(migrate_rows, params, work, dbs, args.count, samples)
            if set(rows) & set("abi"):
                site_round(rows, samples, image)
        if set(rows) & set("eh"):
            seed_mb = sum(p.stat().st_size for p in work.folder("seed", args.count).iterdir()) / 1e6
    except CommandFailed as exc:
        failures.append(str(exc))
    finally:
        if dbs is not None:
            dbs.drop_all()
        if work is not None:
            work.remove()
        if "b" in rows:
            subprocess.run([str(BASELINE_COLD), "purge"], check=False)

    server = "%s:%s" % (params["host"], params["port"]) if params else "-"
    print("Whole commands, median of %d run(s); server %s; node-pg-migrate %s; %s" % (
        args.runs, server, node_version() if NODE_CLI.exists() else "-",
        "Python %s" % sys.version.split()[0]))
    header = "%-3s %-58s %9s %9s %7s %10s  %s" % (
        "row", "command", "ours s", "base s", "ratio", "target", "result")
    print(header)
    print("-" * len(header))
    missed = []
    for row in rows:
        what, baseline_name, _, _ = ROWS[row]
        what = what % {"count": args.count, "seed_mb": seed_mb}
        pairs = samples[row]
        if not pairs:
            print("%-3s %-58s %9s %9s %7s %10s  %s" % (row, what, "-", "-", "-", "-", "not run"))
            missed.append(row)
            continue
        ours = statistics.median(p[0] for p in pairs)
        baseline = statistics.median(p[1] for p in pairs) if baseline_name else None
        ratio, met, target = verdict(row, ours, baseline)
        result = "reported" if ROWS[row][2] is None else "met" if met else "MISSED"
        print("%-3s %-58s %9.3f %9s %7s %10s  %s" % (
            row, what, ours, "%.3f" % baseline if baseline is not None else "-",
            "%.2f" % ratio if ratio is not None else "-", target, result))
        if not met:
            missed.append(row)
    for row in rows:
        if ROWS[row][1]:
            print("  baseline of %s: %s" % (row, ROWS[row][1]))
    for failure in failures:
        print("FAILED: %s" % failure, file=sys.stderr)
    print("targets: %s" % ("met" if not missed else "MISSED or not run: " + ", ".join(missed)))
    return 1 if missed or failures else 0


if __name__ == "__main__":
    sys.exit(main())
