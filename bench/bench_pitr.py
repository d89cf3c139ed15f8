#!/usr/bin/env python3
"""Benchmark of backups and point-in-time restore (issue 13), beside the logical tools, same run.

    python bench/bench_pitr.py [--runs 3] [--scale 68]

On the project's own deployment (container social_selling_postgres, made by
site.yml with archiving on), a database of its own (bench_pitr) gets
pgbench's tables at --scale (68: about 1 GB). Then, --runs times each:

  full    ansible-playbook playbooks/backup.yml -e backup_type=full
          (backup, `pgbackrest check`, `pgbackrest verify`)
  dump    pg_dump -Fc bench_pitr | age -r <key>   (the logical backup's tools alone)
  pitr    ansible-playbook playbooks/restore.yml -e restore_target_time=<now>
          (the whole cluster: safety copy of the data volume, restore, recovery, restart, health)
  load    pg_restore -j 2 of that dump into an empty database

Target: a PITR restore at most 1.5 x pg_restore of the same data (it also
copies the data volume aside and replays WAL). The full backup is reported
beside pg_dump | age with no target: it backs up the whole cluster, then
`verify` reads every backup in the repository, where pg_dump reads one
database and nothing checks its output. Prints medians and maxima, exits 1
when the target is missed or a command fails. The
bench's full backups count against the repository's retention like any
other; its volumes and database are removed at the end.
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
CONTAINER = "social_selling_postgres"
VOLUME = "social_selling_pgdata"
DB = "bench_pitr"
RECORD = "/var/backups/social-selling/pitr-restore-social_selling.json"


def sh(*argv, stdin=None, stdout=subprocess.PIPE):
    proc = subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode() if stdout == subprocess.PIPE else None


def psql(sql, db="postgres"):
    return sh("docker", "exec", CONTAINER, "psql", "-X", "-U", "postgres", "-d", db, "-Atc", sql).strip()


def playbook(*args):
    started = time.perf_counter()
    sh(str(BIN / "ansible-playbook"), *args)
    return time.perf_counter() - started


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=int, default=68)
    options = parser.parse_args()

    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB}")
    sh("docker", "exec", CONTAINER, "pgbench", "-U", "postgres", "-i", "-q", "-s", str(options.scale), DB)
    size = int(psql(f"SELECT pg_database_size('{DB}')"))
    print(f"database {DB}: {size / 2**20:.0f} MB (pgbench scale {options.scale})", flush=True)
    volumes_before = set(sh("docker", "volume", "ls", "-q").split())
    samples = {"full": [], "dump": [], "pitr": [], "load": []}
    with tempfile.TemporaryDirectory() as work:
        key = pathlib.Path(work) / "key.txt"
        sh("age-keygen", "-o", str(key))
        recipient = [line.split(": ")[1] for line in key.read_text().splitlines() if "public key" in line][0]
        dump = pathlib.Path(work) / "bench.dump.age"
        try:
            for run in range(options.runs):
                samples["full"].append(playbook("playbooks/backup.yml", "-e", "backup_type=full"))

                def dump_and_encrypt():
                    with open(dump, "wb") as out:
                        producer = subprocess.Popen(["docker", "exec", CONTAINER, "pg_dump", "-U", "postgres", "-Fc",
                                                     DB], stdout=subprocess.PIPE)
                        sh("age", "-r", recipient, stdin=producer.stdout, stdout=out)
                        if producer.wait() != 0:
                            raise SystemExit("pg_dump failed")
                samples["dump"].append(timed(dump_and_encrypt))

                target = psql("SELECT now()")
                time.sleep(1)
                samples["pitr"].append(playbook("playbooks/restore.yml", "-e", json.dumps(
                    {"restore_target_time": target, "restore_confirm": "social_selling"})))

                def decrypt_and_load():
                    psql("DROP DATABASE IF EXISTS bench_pitr_load WITH (FORCE)")
                    psql("CREATE DATABASE bench_pitr_load")
                    plain = pathlib.Path(work) / "bench.dump"
                    sh("age", "-d", "-i", str(key), "-o", str(plain), str(dump))
                    sh("docker", "cp", str(plain), f"{CONTAINER}:/tmp/bench.dump")
                    sh("docker", "exec", CONTAINER, "pg_restore", "-U", "postgres", "-j", "2", "-d",
                       "bench_pitr_load", "/tmp/bench.dump")
                    sh("docker", "exec", CONTAINER, "rm", "-f", "/tmp/bench.dump")
                    plain.unlink()
                samples["load"].append(timed(decrypt_and_load))
                # Not in the next run's backups: they cover the same data as the dump.
                psql("DROP DATABASE bench_pitr_load WITH (FORCE)")
                print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in samples.items()), flush=True)
        finally:
            # The copies the bench's restores kept, unless a restore is unfinished (it still needs its copy).
            if not pathlib.Path(RECORD).exists():
                for name in set(sh("docker", "volume", "ls", "-q").split()) - volumes_before:
                    if name.startswith(VOLUME + "-pre-restore-"):
                        sh("docker", "volume", "rm", name)
                psql("DROP DATABASE IF EXISTS bench_pitr_load WITH (FORCE)")
                psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")

    median = {k: statistics.median(v) for k, v in samples.items()}
    rows = [
        ("full backup (backup.yml, with check and verify)", "full", "dump", None),
        ("PITR restore (restore.yml, whole cluster)", "pitr", "load", 1.5),
    ]
    print(f"\n{'command':52} {'median':>8} {'max':>8} {'baseline':>9} {'ratio':>6} {'target':>7}")
    missed = False
    for label, ours, baseline, limit in rows:
        ratio = median[ours] / median[baseline]
        ok = limit is None or ratio <= limit
        missed |= not ok
        verdict = "reported" if limit is None else "met" if ok else "MISSED"
        print(f"{label:52} {median[ours]:7.1f}s {max(samples[ours]):7.1f}s {median[baseline]:8.1f}s "
              f"{ratio:5.2f}x {'-' if limit is None else '<=' + str(limit) + 'x':>7} {verdict}")
    print(f"{'pg_dump -Fc | age (baseline of the backup)':52} {median['dump']:7.1f}s {max(samples['dump']):7.1f}s")
    print(f"{'age -d, pg_restore -j 2 (baseline of the restore)':52} {median['load']:7.1f}s "
          f"{max(samples['load']):7.1f}s")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
