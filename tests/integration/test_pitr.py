"""Point-in-time recovery with pgBackRest (issue 13), against the real container.

The database holds pgbench's tables (113 MB) while backups and restores run.
Every restore here targets an instant after this module's own first writes,
so what other tests left in the database is lost by none of them; each test
removes the volumes its restores kept (data as it was before the restore).
"""
import json
import os
import re
import subprocess
import threading
import time
import uuid

import pytest

from conftest import BACKUP_DIR, BAD_PITR_REQUESTS, CONTAINER, DB_NAME, DB_PORT, OWNER_ROLE, PGBACKREST_CONFIG_DIR, PGBACKREST_REPO, \
    PGBENCH_ROWS, ROOT, VOLUME, docker, ensure_realistic_size, migrations_folder, pitr_request, playbook_env, query, run_playbook, \
    secret, socket_sql

RECORD = f"{BACKUP_DIR}/pitr-restore-{DB_NAME}.json"
PRE_RESTORE_LABEL = f"social-selling.pre-restore-of={VOLUME}"


@pytest.fixture(scope="module", autouse=True)
def realistic_size():
    yield ensure_realistic_size()
    # A restore here may go back to before grants a later run made (on tables other modules
    # created): site.yml puts them back, so that the next module starts from a converged server.
    converged = run_playbook("site.yml")
    assert converged.rc == 0, converged


@pytest.fixture(autouse=True)
def pre_restore_volumes_removed():
    """The test's restores keep the data as it was in new volumes: checked by the test, removed here."""
    before = set(pre_restore_volumes())
    yield
    for name in set(pre_restore_volumes()) - before:
        docker("volume", "rm", name, check=False)


def pre_restore_volumes():
    return docker("volume", "ls", "--quiet", "--filter", f"label={PRE_RESTORE_LABEL}").split()


def pgbackrest(*args, check=True):
    return docker("exec", "--user", "postgres", CONTAINER, "pgbackrest", *args, check=check)


def info():
    return json.loads(pgbackrest("info", "--output=json"))[0]


def owner(sql, args=None):
    """One statement as the schema owner over TCP; its rows (None when it returns none)."""
    return query({"host": "127.0.0.1", "port": DB_PORT, "dbname": DB_NAME, "user": OWNER_ROLE,
                  "password": secret("POSTGRES_OWNER_PASSWORD", "postgres_owner_password"),
                  "connect_timeout": 5}, sql, args)


def server_now():
    """The server's clock, as PostgreSQL prints now()."""
    return socket_sql("SELECT now()")[0]


def restore(target, confirm=DB_NAME, **more):
    variables = {"restore_target_time": target, "restore_confirm": confirm, **more}
    return run_playbook("playbooks/restore.yml", "-e", json.dumps(variables))


def started_at():
    return docker("inspect", "--format", "{{.State.StartedAt}}", CONTAINER).strip()


def pgbench_fingerprint():
    return socket_sql("SELECT count(*), sum(abalance), sum(hashtext(filler)) FROM pgbench_accounts")


def migrate(folder, action="up"):
    """The project's pg-migrate command line, as the owner, with a migrations table of this module's own."""
    url = f"postgresql://{OWNER_ROLE}@127.0.0.1:{DB_PORT}/{DB_NAME}"
    env = playbook_env({"DATABASE_URL": url,
                        "PGPASSWORD": secret("POSTGRES_OWNER_PASSWORD", "postgres_owner_password")})
    return subprocess.run([str(ROOT / ".venv" / "bin" / "pg-migrate"), "-m", str(folder),
                           "--migrations-table", "pitr_migrations", action],
                          env=env, capture_output=True, text=True, check=False, timeout=120)


def applied_pitr_migrations():
    if socket_sql("SELECT to_regclass('public.pitr_migrations') IS NOT NULL")[0] != "t":
        return []
    return socket_sql("SELECT name FROM pitr_migrations ORDER BY id")


def settle():
    """A moment between two writes, so that an instant lies strictly between their commits."""
    time.sleep(1.2)


def test_restore_to_an_instant_keeps_what_came_before_and_drops_what_came_after(tmp_path):
    tag = uuid.uuid4().hex[:8]
    folder = migrations_folder(tmp_path, {
        "1000_pitr-first": f"-- Up Migration\nCREATE TABLE pitr_first_{tag} (id int);\n"
                           f"-- Down Migration\nDROP TABLE pitr_first_{tag};\n",
        "1001_pitr-second": f"-- Up Migration\nCREATE TABLE pitr_second_{tag} (id int);\n"
                            f"-- Down Migration\nDROP TABLE pitr_second_{tag};\n"})
    owner("CREATE TABLE IF NOT EXISTS pitr_rows (value text PRIMARY KEY)")
    owner("INSERT INTO pitr_rows VALUES (%s)", (f"A-{tag}",))
    (folder / "1001_pitr-second.sql").rename(tmp_path / "held-back.sql")
    assert migrate(folder).returncode == 0
    migrations_at_target = applied_pitr_migrations()
    fingerprint = pgbench_fingerprint()
    settle()
    target = server_now()
    settle()
    owner("INSERT INTO pitr_rows VALUES (%s)", (f"B-{tag}",))
    (tmp_path / "held-back.sql").rename(folder / "1001_pitr-second.sql")
    assert migrate(folder).returncode == 0
    assert applied_pitr_migrations()[-1] == "1001_pitr-second"

    result = restore(target)

    assert result.rc == 0, result
    rows = {row[0] for row in owner("SELECT value FROM pitr_rows")}
    assert f"A-{tag}" in rows and f"B-{tag}" not in rows
    assert applied_pitr_migrations() == migrations_at_target
    assert socket_sql(f"SELECT to_regclass('pitr_second_{tag}') IS NULL")[0] == "t"
    assert pgbench_fingerprint() == fingerprint
    # Where the recovery ended: an LSN, and the commit it stopped before.
    assert re.search(r"recovery_end_lsn: '?[0-9A-F]+/[0-9A-F]+", result.output), result
    assert re.search(r"recovery_end: '?before ", result.output), result
    # The data as it was (with row B) is kept in a volume of its own, and the record of the restore is gone.
    kept = [name for name in pre_restore_volumes() if name.startswith(f"{VOLUME}-pre-restore-")]
    assert kept and kept[-1] in result.output
    size = docker("run", "--rm", "--network=none", f"--mount=type=volume,source={kept[-1]},target=/d,readonly",
                  "--entrypoint", "du", image(), "-sm", "/d").split()[0]
    assert int(size) >= 100, size
    assert not os.path.exists(RECORD)
    # The migrations module's own table stays usable after the restore.
    assert migrate(folder, "down").returncode == 0


def test_an_instant_after_the_last_commit_restores_everything_committed():
    """PostgreSQL reaches a time target only at a later commit: the restore commits one itself first."""
    owner("CREATE TABLE IF NOT EXISTS pitr_rows (value text PRIMARY KEY)")
    tag = uuid.uuid4().hex[:8]
    owner("INSERT INTO pitr_rows VALUES (%s)", (f"last-{tag}",))
    settle()
    target = server_now()  # nothing is committed after this instant

    result = restore(target)

    assert result.rc == 0, result
    assert owner("SELECT count(*) FROM pitr_rows WHERE value = %s", (f"last-{tag}",)) == [(1,)]


def image():
    return docker("inspect", "--format", "{{.Config.Image}}", CONTAINER).strip()


def test_a_table_dropped_by_a_bad_migration_comes_back_with_every_row(tmp_path):
    tag = uuid.uuid4().hex[:8]
    owner(f"CREATE TABLE precious_{tag} AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 50000) g")
    expected = owner(f"SELECT count(*), sum(hashtext(payload)) FROM precious_{tag}")
    settle()
    target = server_now()
    settle()
    folder = migrations_folder(tmp_path, {
        "2000_bad-drop": f"-- Up Migration\nDROP TABLE precious_{tag};\n-- Down Migration\n-- pg-migrate: down-noop\n"})
    assert migrate(folder).returncode == 0
    assert socket_sql(f"SELECT to_regclass('precious_{tag}') IS NULL")[0] == "t"

    result = restore(target)

    assert result.rc == 0, result
    assert owner(f"SELECT count(*), sum(hashtext(payload)) FROM precious_{tag}") == expected
    assert "2000_bad-drop" not in applied_pitr_migrations()
    owner(f"DROP TABLE precious_{tag}")


def test_after_losing_the_data_volume_one_restore_brings_back_every_archived_commit():
    """Commits stream in; the WAL is switched (archived) midway; then container and volume are removed."""
    pgbackrest("check")  # what other tests wrote is archived first: only this test's commits are at risk
    owner("CREATE TABLE IF NOT EXISTS pitr_stream (n int PRIMARY KEY, committed_at timestamptz NOT NULL)")
    owner("TRUNCATE pitr_stream")
    committed = []
    for n in range(1, 41):
        owner("INSERT INTO pitr_stream VALUES (%s, clock_timestamp())", (n,))
        committed.append((n, time.time()))
        if n == 25:
            socket_sql("SELECT pg_switch_wal()")
        time.sleep(0.05)
    # What reaches the repository: everything up to the switch for sure; the archiver runs asynchronously.
    deadline = time.monotonic() + 30
    while socket_sql("SELECT last_archived_time > now() - interval '60 seconds' FROM pg_stat_archiver") != ["t"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    lost_at = time.time()
    docker("rm", "--force", CONTAINER)
    docker("volume", "rm", VOLUME)

    result = restore("latest")

    assert result.rc == 0, result
    assert "none: there was no data volume" in result.output
    present = [row[0] for row in owner("SELECT n FROM pitr_stream ORDER BY n")]
    # A prefix of the commits, at least everything before the switch: nothing in between is missing.
    assert present == list(range(1, len(present) + 1))
    assert len(present) >= 25
    last_kept = dict(committed)[present[-1]]
    rpo = lost_at - last_kept
    print(f"RPO measured: {len(committed) - len(present)} of {len(committed)} commits lost, "
          f"{rpo:.1f} s of commits at risk (archive_timeout bounds it)")
    assert rpo <= 60 + 10
    assert socket_sql("SELECT count(*) FROM pgbench_accounts") == [PGBENCH_ROWS]


def repository_files(marker):
    """Every file of the repository (backups, archived WAL, info files): path, first 8 bytes, holds the marker."""
    return docker("run", "--rm", "--network=none", "--user=0",
                  f"--mount=type={'bind' if PGBACKREST_REPO.startswith('/') else 'volume'},"
                  f"source={PGBACKREST_REPO},target=/repo,readonly",
                  "--entrypoint", "sh", image(), "-c", FILE_SCAN, "scan", marker)


FILE_SCAN = r"""
find /repo -type f | while read -r path; do
    head=$(head -c 8 "$path" | od -An -tx1 | tr -d ' \n')
    if grep -qaF -- "$1" "$path"; then found=1; else found=0; fi
    echo "$path $head $found"
done
"""


def test_the_repository_is_encrypted_and_holds_no_table_value_in_clear():
    marker = "pitr-secret-" + uuid.uuid4().hex
    owner("CREATE TABLE IF NOT EXISTS pitr_rows (value text PRIMARY KEY)")
    owner("INSERT INTO pitr_rows VALUES (%s)", (marker,))
    socket_sql("SELECT pg_switch_wal()")
    assert run_playbook("playbooks/backup.yml", "-e", "backup_type=incr").rc == 0

    lines = [line.split() for line in repository_files(marker).splitlines()]

    assert len(lines) > 50
    salted = b"Salted__".hex()
    # Every file, backups, WAL and info files alike, is OpenSSL's aes-256-cbc format, none holds the value.
    assert [path for path, head, _ in lines if head != salted] == []
    assert [path for path, _, found in lines if found == "1"] == []
    assert info()["cipher"] == "aes-256-cbc"
    owner("DELETE FROM pitr_rows WHERE value = %s", (marker,))


def config_digest():
    return docker("run", "--rm", "--network=none", "--user=0",
                  f"--mount=type=bind,source={PGBACKREST_CONFIG_DIR},target=/c,readonly",
                  "--entrypoint", "sha256sum", image(), "/c/pgbackrest.conf").split()[0]


def test_a_wrong_passphrase_is_refused_with_a_clear_error_and_changes_nothing():
    before, container = config_digest(), started_at()

    result = run_playbook("site.yml", env={"PGBACKREST_REPO_CIPHER_PASS": "W" * 64})

    assert result.rc != 0
    assert "differs from the one" in result.output and "Nothing was changed" in result.output
    assert "W" * 64 not in result.output
    assert config_digest() == before and started_at() == container
    assert pgbackrest("check", check=False) == ""  # archiving still works with the right passphrase


READ_REPOSITORY = """
- name: Read the repository as site.yml does when the server is down
  hosts: docker_hosts
  gather_facts: false
  tasks:
    - name: Read the state of the stanza
      ansible.builtin.include_role:
        name: pgbackrest
        tasks_from: info
      vars:
        pgbackrest_container_running: false
        pgbackrest_image: {image}
"""


def test_a_repository_made_with_another_passphrase_is_named_with_a_clear_error(tmp_path):
    """Its configuration lost (a new clone, a wiped /etc): the decrypted garbage must not hide the cause."""
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    with open(f"{PGBACKREST_CONFIG_DIR}/pgbackrest.conf") as real:
        conf = re.sub(r"(?m)^repo1-cipher-pass=.*$", "repo1-cipher-pass=" + "W" * 64, real.read())
    (config_dir / "pgbackrest.conf").write_text(conf)
    for path in (config_dir, config_dir / "pgbackrest.conf"):
        os.chown(path, 999, 999)
    (tmp_path / "read.yml").write_text(READ_REPOSITORY.format(image=image()))

    # An extra var: it wins over TEST_EXTRA_VARS' pgbackrest_config_dir on an isolated stack.
    result = run_playbook(str(tmp_path / "read.yml"), "-e", f"pgbackrest_config_dir={config_dir}")

    assert result.rc != 0, result
    assert "cannot be decrypted with the configured passphrase" in result.output, result
    assert "Refusing to deserialize" not in result.output
    assert "W" * 64 not in result.output


def test_a_corrupted_backup_file_is_reported_by_verify_and_fails_the_backup():
    full = [b["label"] for b in info()["backup"] if b["type"] == "full"][-1]
    victim = docker("exec", CONTAINER, "sh", "-c",
                    f"find /var/lib/pgbackrest/backup/{DB_NAME}/{full}/pg_data/base -type f -size +8k | head -n 1").strip()
    assert victim
    original = docker("exec", CONTAINER, "sh", "-c", f"od -An -tx1 -j 100 -N 1 {victim}").strip()
    flipped = "%02x" % (int(original, 16) ^ 0xFF)
    # bash's printf writes one byte for \\xHH (dash's would write the four characters).
    poke = f"printf '\\x{{}}' | dd of={victim} bs=1 seek=100 conv=notrunc status=none"
    docker("exec", CONTAINER, "bash", "-c", poke.format(flipped))
    try:
        result = run_playbook("playbooks/backup.yml", "-e", "backup_type=incr")

        assert result.rc != 0
        relative = victim.split(f"/backup/{DB_NAME}/")[1]
        assert "pgbackrest verify" in result.output and "invalid checksum" in result.output
        assert relative in result.output
    finally:
        docker("exec", CONTAINER, "bash", "-c", poke.format(original))
    assert run_playbook("playbooks/backup.yml", "-e", "backup_type=incr").rc == 0


@pytest.mark.parametrize("variables, message", BAD_PITR_REQUESTS)
def test_bad_restore_requests_are_refused_before_anything_changes(variables, message):
    variables = pitr_request(variables)
    before = (started_at(), sorted(pre_restore_volumes()))

    result = run_playbook("playbooks/restore.yml", "-e", json.dumps(variables))

    assert result.rc != 0
    assert message in result.output and "Nothing was changed" in result.output, result
    assert (started_at(), sorted(pre_restore_volumes())) == before
    assert not os.path.exists(RECORD)


def test_a_restore_killed_midway_continues_when_run_again():
    owner("CREATE TABLE IF NOT EXISTS pitr_rows (value text PRIMARY KEY)")
    tag = uuid.uuid4().hex[:8]
    owner("INSERT INTO pitr_rows VALUES (%s)", (f"A-{tag}",))
    settle()
    target = server_now()
    settle()
    owner("INSERT INTO pitr_rows VALUES (%s)", (f"B-{tag}",))
    volumes_before = set(pre_restore_volumes())
    killed = threading.Event()

    def kill_the_one_off_container():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed.is_set():
            if docker("ps", "--quiet", "--filter", f"name=^{CONTAINER}-restore$").strip():
                time.sleep(0.3)
                docker("kill", f"{CONTAINER}-restore", check=False)
                killed.set()
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_one_off_container)
    killer.start()
    first = restore(target)
    killer.join()

    assert killed.is_set() and first.rc != 0
    assert os.path.exists(RECORD)
    second = restore(target)

    assert second.rc == 0, second
    rows = {row[0] for row in owner("SELECT value FROM pitr_rows")}
    assert f"A-{tag}" in rows and f"B-{tag}" not in rows
    # One copy of the data as it was: the second run reused the first run's, not the half-restored directory.
    assert len(set(pre_restore_volumes()) - volumes_before) == 1
    assert not os.path.exists(RECORD)


def test_site_yml_again_changes_nothing_and_takes_no_new_full_backup():
    fulls = [b["label"] for b in info()["backup"] if b["type"] == "full"]
    # A restore in this module may have gone back to before the last run's grants (on tables other
    # tests made): the first run may put them back; the second must change nothing.
    first = run_playbook("site.yml")
    assert first.rc == 0, first

    result = run_playbook("site.yml")

    assert result.rc == 0, result
    assert result.changed == 0, result
    assert [b["label"] for b in info()["backup"] if b["type"] == "full"] == fulls


def test_health_reports_the_archiver_and_warns_while_archiving_fails():
    healthy = run_playbook("playbooks/health.yml")
    assert healthy.rc == 0 and "WAL archiving: " in healthy.output
    assert "WAL archiving is failing" not in healthy.output
    archive = f"/var/lib/pgbackrest/archive/{DB_NAME}"
    docker("exec", CONTAINER, "chmod", "000", archive)
    try:
        socket_sql("SELECT pg_switch_wal()")
        owner("CREATE TABLE IF NOT EXISTS pitr_rows (value text PRIMARY KEY)")
        deadline = time.monotonic() + 60
        while socket_sql("SELECT last_failed_time > coalesce(last_archived_time, '-infinity') FROM pg_stat_archiver") != ["t"]:
            assert time.monotonic() < deadline, "archiving never failed"
            owner("INSERT INTO pitr_rows VALUES (%s) ON CONFLICT DO NOTHING", (uuid.uuid4().hex,))
            socket_sql("SELECT pg_switch_wal()")
            time.sleep(1)

        failing = run_playbook("playbooks/health.yml")

        assert failing.rc == 0  # the app is served: a warning, not a failure
        assert "WAL archiving is failing" in failing.output and "failed attempt(s)" in failing.output
    finally:
        docker("exec", CONTAINER, "chmod", "750", archive)
    # After three failures in a row the archiver waits up to 60 s, unless a new WAL segment wakes it.
    deadline = time.monotonic() + 90
    while socket_sql("SELECT last_archived_time > last_failed_time FROM pg_stat_archiver") != ["t"]:
        assert time.monotonic() < deadline, "archiving did not recover"
        owner("INSERT INTO pitr_rows VALUES (%s) ON CONFLICT DO NOTHING", (uuid.uuid4().hex,))
        socket_sql("SELECT pg_switch_wal()")
        time.sleep(1)
    owner("DELETE FROM pitr_rows")
