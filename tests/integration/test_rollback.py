"""Issue 5: playbooks/rollback.yml and playbooks/restore.yml never lose data.

Against the real container (tests/conftest.py names it: `social_selling_postgres` on 127.0.0.1:5432), so
these tests reset it: each one leaves it provisioned, migrated and healthy,
with the rows it found (the reset tests restore the pre-reset backup; the
module ends with `site.yml`). Backups go to a per-test folder, never to the
default one. Migrations beyond the project's own come from a scratch copy of
migrations/ and are rolled back again before the test ends.

To develop against a throwaway container instead, point TEST_EXTRA_VARS at
a JSON file of extra vars (tests/conftest.py): every playbook run gets it.
"""
import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from conftest import CONTAINER, DB_NAME as DB, EXTRA_VARS as EXTRA, PGBENCH_ROWS, ROOT, VOLUME, container_id, docker, \
    ensure_realistic_size, socket_sql, \
    extra_vars_args, playbook_env, run_playbook, secret

INITIAL = "1710000000001_initial-schema"
WIDGETS = "1710000000002_create-widgets"
GADGETS = "1710000000003_create-gadgets"
# The gadgets down section sleeps as long as the session setting says (not
# at all unless a test sets it through PGOPTIONS), so a test can kill the
# container while a rollback is in the middle of it.
SCRATCH_FILES = {
    WIDGETS + ".sql": "-- Up Migration\nCREATE TABLE widgets (id serial PRIMARY KEY, label text NOT NULL);\n\n"
                      "-- Down Migration\nDROP TABLE widgets;\n",
    GADGETS + ".sql": "-- Up Migration\nCREATE TABLE gadgets (id serial PRIMARY KEY);\n\n"
                      "-- Down Migration\n"
                      "SELECT pg_sleep(coalesce(nullif(current_setting('rollback_test.sleep', true), ''), '0')::float8);\n"
                      "DROP TABLE gadgets;\n",
}


def container_running():
    if shutil.which("docker") is None:
        return False
    completed = subprocess.run(["docker", "ps", "--filter", "name=^%s$" % CONTAINER, "--format", "{{.Names}}"],
                               capture_output=True, text=True, check=False)
    return completed.stdout.strip() == CONTAINER


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not container_running(), reason="container %s is not running" % CONTAINER)]


# One query as the superuser through the container's socket.
sql = socket_sql


def applied():
    return sql("SELECT name FROM pgmigrations ORDER BY run_on, id")


def wait_for_server(timeout=120):
    deadline = time.monotonic() + timeout
    while subprocess.run(["docker", "exec", CONTAINER, "pg_isready", "-q", "-h", "127.0.0.1"],
                         capture_output=True, check=False).returncode != 0:
        assert time.monotonic() < deadline, "server did not come back"
        time.sleep(1)


def insert_users(count=3):
    """Rows the tests must never lose; returns them as JSON text, ordered by email."""
    marker = uuid.uuid4().hex[:8]
    sql("INSERT INTO users (email, password_hash, name, subscription_tier, last_login_ip) "
        "SELECT format('rollback-test-%s-%s@example.test', '{m}', i), md5(i::text), "
        "format('Name %s ''quoted''', i), (ARRAY['free','pro','basic'])[1 + i % 3], '10.0.0.' || i "
        "FROM generate_series(1, {n}) AS i".format(m=marker, n=count))
    return users_like(marker)


def users_like(marker):
    return sql("SELECT row_to_json(u)::text FROM users u WHERE email LIKE 'rollback-test-{m}-%' "
               "ORDER BY email".format(m=marker))


def delete_test_users():
    sql("DELETE FROM users WHERE email LIKE 'rollback-test-%'")


def dumps(folder):
    return sorted(p.name for p in folder.glob(DB + "-*.dump"))


def decrypted(dump):
    """The plain pg_dump archive inside an encrypted backup (the project's age identity)."""
    identity = secret("POSTGRES_BACKUP_IDENTITY", "backup_age_identity")
    with tempfile.NamedTemporaryFile("w") as key:
        key.write(identity)
        key.flush()
        return subprocess.run(["age", "--decrypt", "--identity", key.name, str(dump)],
                              capture_output=True, check=True).stdout


def checksum_matches(dump):
    recorded = (dump.parent / (dump.name + ".sha256")).read_text().split()
    return recorded == [hashlib.sha256(dump.read_bytes()).hexdigest(), dump.name]


class Runner:
    """ansible-playbook with our extra vars: the per-test backup folder, a migrations folder."""

    def __init__(self, tmp_path, migrations=None):
        self.backups = tmp_path / "backups"
        self.vars_file = tmp_path / "vars.json"
        self.extra = dict(EXTRA, postgres_backup_dir=str(self.backups))
        if migrations:
            self.extra["postgres_migrations_dir"] = str(migrations)
        self.vars_file.write_text(json.dumps(self.extra))

    def args(self, playbook, *extra):
        args = [playbook, "-e", "@" + str(self.vars_file)]
        for item in extra:
            args += ["-e", item]
        return args

    def __call__(self, playbook, *extra, env=None):
        result = run_playbook(*self.args(playbook, *extra), env=env)
        result.text = " ".join(result.output.split())  # the YAML callback wraps long lines
        print(result)  # shown by pytest when the test fails
        return result

    def background(self, playbook, *extra, env):
        """Like run_playbook, but returns the running process."""
        return subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                                 *extra_vars_args(), *self.args(playbook, *extra)],
                                cwd=ROOT, env=playbook_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module", autouse=True)
def provisioned_at_the_end():
    """Whatever happens in between, the module ends with site.yml and no test rows."""
    yield
    result = run_playbook("site.yml")
    assert result.rc == 0, result
    delete_test_users()


# pgbench's tables at this scale make the database about 113 MB: every backup,
# restore, rollback and reset here handles a database of realistic size.
@pytest.fixture(scope="module", autouse=True)
def realistic_size(provisioned_at_the_end):
    yield ensure_realistic_size()
    sql("DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers")


@pytest.fixture
def scratch_migrations(tmp_path):
    """migrations/ plus two later migrations, applied; rolled back again at the end."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in (ROOT / "migrations").glob("*.sql"):
        shutil.copy(path, folder)
    for name, text in SCRATCH_FILES.items():
        (folder / name).write_text(text)
    (tmp_path / "setup").mkdir()
    run = Runner(tmp_path / "setup", folder)
    assert run("playbooks/migrate.yml").rc == 0
    assert applied()[-2:] == [WIDGETS, GADGETS]
    yield folder
    docker("start", CONTAINER, check=False)  # a test may have killed it
    wait_for_server()
    if set(applied()) & {WIDGETS, GADGETS}:
        assert run("playbooks/migrate.yml", "migrate_action=down", "migrate_to=" + INITIAL).rc == 0


def test_rollback_of_one_migration_keeps_the_older_ones_and_writes_a_backup(tmp_path, scratch_migrations):
    run = Runner(tmp_path, scratch_migrations)
    rows = insert_users()
    result = run("playbooks/rollback.yml")
    assert result.rc == 0
    assert applied() == [INITIAL, WIDGETS]
    assert "Rolled back (newest first): %s. Last applied now: %s." % (GADGETS, WIDGETS) in result.text
    [name] = dumps(run.backups)
    assert name.endswith("-pre-rollback.dump") and name in result.text
    assert users_like(rows[0].split("rollback-test-")[1][:8]) == rows
    assert not (run.backups / "rollback-in-progress.json").exists()


@pytest.mark.parametrize("request_vars, rolled_back", [
    (["rollback_count=2"], [GADGETS, WIDGETS]),
    (["rollback_to=" + WIDGETS], [GADGETS]),
], ids=["count-2", "to-widgets"])
def test_rollback_count_or_to_rolls_back_down_to_a_fixed_target(tmp_path, scratch_migrations, request_vars,
                                                                 rolled_back):
    run = Runner(tmp_path, scratch_migrations)
    before = applied()
    result = run("playbooks/rollback.yml", *request_vars)
    assert result.rc == 0
    assert applied() == [name for name in before if name not in rolled_back]
    assert "Rolled back (newest first): %s." % ", ".join(rolled_back) in result.text


def test_old_backups_are_pruned_to_the_configured_count(tmp_path, scratch_migrations):
    run = Runner(tmp_path, scratch_migrations)
    run.backups.mkdir(mode=0o700)
    old = ["%s-2020010%dT000000Z-manual.dump" % (DB, day) for day in (1, 2, 3)]
    for name in old:
        (run.backups / name).write_bytes(b"old")
        (run.backups / (name + ".sha256")).write_text("x  %s\n" % name)
    assert run("playbooks/rollback.yml", "postgres_backup_keep=2").rc == 0
    kept = dumps(run.backups)
    # The pre-rollback dump does not count: it stays until the operator removes it.
    assert kept[:2] == old[1:] and kept[2].endswith("-pre-rollback.dump") and len(kept) == 3
    assert sorted(p.name for p in run.backups.glob("*.sha256")) == [name + ".sha256" for name in kept]


@pytest.mark.parametrize("playbook, request_vars, message", [
    ("playbooks/rollback.yml", ["rollback_scope=everything"],
     "value of postgres_rollback_scope must be one of: migrations, reset, got: everything"),
    ("playbooks/rollback.yml", ["rollback_count=0"],
     "rollback_count=0, rollback_to=none) cannot be planned: count must be a whole number of at least 1, got 0"),
    # Types are the role's argument spec's to check: its own wording.
    ("playbooks/rollback.yml", ["rollback_count=two"], "argument 'postgres_rollback_count' is of type"),
    ("playbooks/rollback.yml", ["rollback_count=9"],
     "cannot be planned: cannot roll back 9 migration(s): only 1 applied"),
    ("playbooks/rollback.yml", ["rollback_to=1710000000009_never-applied"],
     "down to 1710000000009_never-applied: it is not applied, so there is nothing to roll back to (applied: "
     + INITIAL),
    ("playbooks/rollback.yml", ["postgres_backup_dir=/etc/hostname/backups"],
     "The backup folder /etc/hostname/backups on localhost is not writable"),
    ("playbooks/restore.yml", ["restore_confirm=" + DB, "restore_backup=%s-20200101T000000Z-nope.dump" % DB],
     "restore_backup=%s-20200101T000000Z-nope.dump is not a dump of %s in" % (DB, DB)),
    ("playbooks/restore.yml", ["restore_backup=whatever.dump"], "-e restore_confirm=%s (got none)" % DB),
], ids=["scope", "count-zero", "count-word", "count-too-many", "to-not-applied", "folder-not-writable",
        "restore-missing-file", "restore-unconfirmed"])
def test_bad_input_fails_with_a_clear_message_before_any_change(tmp_path, playbook, request_vars, message):
    run = Runner(tmp_path)
    before, container = applied(), container_id(CONTAINER)
    result = run(playbook, *request_vars)
    assert result.rc != 0
    assert message in result.text
    assert "Nothing was changed." in result.text or message.startswith(("argument ", "value of ")), result
    assert applied() == before and container_id(CONTAINER) == container
    assert not run.backups.exists() or dumps(run.backups) == []


@pytest.mark.parametrize("confirm", [[], ["rollback_confirm=social"], ["rollback_confirm=SOCIAL_SELLING"]],
                         ids=["missing", "prefix", "other-case"])
def test_reset_without_the_right_confirmation_fails_with_nothing_changed(tmp_path, confirm):
    run = Runner(tmp_path)
    rows = insert_users(1)
    volume = docker("volume", "inspect", "--format", "{{.CreatedAt}}", VOLUME)
    container = container_id(CONTAINER)
    result = run("playbooks/rollback.yml", "rollback_scope=reset", *confirm)
    assert result.rc != 0 and "-e rollback_confirm=%s" % DB in result.text and "Nothing was changed." in result.text
    assert container_id(CONTAINER) == container
    assert docker("volume", "inspect", "--format", "{{.CreatedAt}}", VOLUME) == volume
    assert users_like(rows[0].split("rollback-test-")[1][:8]) == rows
    assert not run.backups.exists() or dumps(run.backups) == []


@pytest.fixture(scope="module")
def reset(tmp_path_factory):
    """Rows inserted, then one confirmed reset; the data found is restored at the end."""
    tmp_path = tmp_path_factory.mktemp("reset")
    run = Runner(tmp_path)
    rows = insert_users(5)
    found = {"rows": rows, "marker": rows[0].split("rollback-test-")[1][:8],
             "volume": docker("volume", "inspect", "--format", "{{.CreatedAt}}", VOLUME),
             "container": container_id(CONTAINER)}
    result = run("playbooks/rollback.yml", "rollback_scope=reset", "rollback_confirm=" + DB)
    found.update(run=run, result=result, after={
        "applied": applied(), "users": sql("SELECT count(*) FROM users"),
        "volume": docker("volume", "inspect", "--format", "{{.CreatedAt}}", VOLUME),
        "container": container_id(CONTAINER)})
    yield found
    pre_reset = [n for n in dumps(run.backups) if n.endswith("-pre-reset.dump")]
    if pre_reset and sql("SELECT count(*) FROM users") == ["0"]:
        run("playbooks/restore.yml", "restore_confirm=" + DB, "restore_backup=" + pre_reset[0])


def test_reset_with_confirmation_leaves_a_fresh_bootstrapped_migrated_healthy_database(reset):
    result, after = reset["result"], reset["after"]
    assert result.rc == 0
    assert after["volume"] != reset["volume"] and after["container"] != reset["container"]
    assert after["users"] == ["0"] and after["applied"] == [INITIAL]
    assert sql("SELECT extname FROM pg_extension ORDER BY 1") == ["pg_stat_statements", "pg_trgm", "pgcrypto",
                                                                   "plpgsql", "uuid-ossp"]
    assert sql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'social_selling_%' ORDER BY 1") == [
        "social_selling_owner", "social_selling_user"]
    assert '{"status": "ok", "database": "up"}' in result.output
    assert not (reset["run"].backups / "rollback-in-progress.json").exists()


def test_after_a_reset_the_new_cluster_is_archived_and_has_a_full_backup(reset):
    # A reset makes a new cluster: pgBackRest's stanza follows it (stanza-upgrade), or archiving fails.
    assert reset["result"].rc == 0
    system_id = sql("SELECT system_identifier FROM pg_control_system()")[0]
    stanzas = json.loads(docker("exec", "--user", "postgres", CONTAINER, "pgbackrest", "info", "--output=json"))
    # An empty list: the container has no PGBACKREST_STANZA, i.e. it was created without archiving.
    assert stanzas, docker("inspect", "--format", "{{json .Config.Env}} {{json .Mounts}}", CONTAINER)
    info = stanzas[0]
    current = info["db"][-1]
    assert str(current["system-id"]) == system_id
    assert [b for b in info["backup"] if b["database"]["id"] == current["id"] and b["type"] == "full"]
    docker("exec", "--user", "postgres", CONTAINER, "pgbackrest", "check")
    assert sql("SELECT last_failed_time IS NULL OR last_failed_time < last_archived_time FROM pg_stat_archiver") == ["t"]


def test_reset_writes_a_verified_backup_before_removing_anything(reset):
    # The reset's one dump; a restore test of this module may add a -pre-restore one beside it.
    [name] = [n for n in dumps(reset["run"].backups) if not n.endswith("-pre-restore.dump")]
    assert name.endswith("-pre-reset.dump") and checksum_matches(reset["run"].backups / name)
    text = reset["result"].text
    assert text.index("Backup written: ") < text.index("Stop and remove the container")


def test_backup_is_private_complete_and_matches_its_checksum_file(reset):
    backups = reset["run"].backups
    [name] = [n for n in dumps(backups) if n.endswith("-pre-reset.dump")]
    dump = backups / name
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert stat.S_IMODE((backups / (name + ".sha256")).stat().st_mode) == 0o600
    assert checksum_matches(dump)
    assert dump.read_bytes().startswith(b"age-encryption.org/v1\n")
    listing = subprocess.run(["docker", "exec", "-i", CONTAINER, "pg_restore", "--list"], input=decrypted(dump),
                             capture_output=True, check=True).stdout.decode()
    assert "TABLE DATA public users" in listing and "TABLE DATA public pgmigrations" in listing
    assert not list(backups.glob("*.partial"))


def test_restore_of_the_reset_backup_brings_back_exactly_the_rows_inserted_before(reset):
    run = reset["run"]
    [name] = [n for n in dumps(run.backups) if n.endswith("-pre-reset.dump")]
    result = run("playbooks/restore.yml", "restore_confirm=" + DB, "restore_backup=" + name)
    assert result.rc == 0
    assert users_like(reset["marker"]) == reset["rows"]
    assert applied() == [INITIAL]
    users = int(sql("SELECT count(*) FROM users")[0])
    assert "users: %d" % users in result.output and "pgmigrations: 1" in result.output
    assert sql("SELECT count(*) FROM pgbench_accounts") == [PGBENCH_ROWS]
    assert any(n.endswith("-pre-restore.dump") for n in dumps(run.backups))


def test_container_killed_during_a_migration_rollback_the_rerun_finishes_and_nothing_is_lost(
        tmp_path, scratch_migrations):
    run = Runner(tmp_path, scratch_migrations)
    rows = insert_users(2)
    sql("INSERT INTO widgets (label) VALUES ('kept in the backup'), ('and this one')")
    proc = run.background("playbooks/rollback.yml", "rollback_to=" + INITIAL,
                          env={"PGOPTIONS": "-c rollback_test.sleep=600"})
    try:
        deadline = time.monotonic() + 180
        while sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(coalesce%' "
                  "AND state = 'active' AND pid <> pg_backend_pid()") != ["1"]:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the rollback never reached the slow down section")
            time.sleep(0.5)
        docker("kill", CONTAINER)
    finally:
        output = proc.communicate(timeout=300)[0]
    print(output)
    assert proc.returncode != 0
    record = json.loads((run.backups / "rollback-in-progress.json").read_text())
    assert record["target"] == INITIAL and record["scope"] == "migrations"

    result = run("playbooks/rollback.yml")
    assert result.rc == 0 and "Resuming the migrations rollback" in result.text
    assert applied() == [INITIAL]
    assert "Rolled back (newest first): %s, %s." % (GADGETS, WIDGETS) in result.text
    assert not (run.backups / "rollback-in-progress.json").exists()
    assert users_like(rows[0].split("rollback-test-")[1][:8]) == rows
    # The backup taken before the kill is intact and restores; the resume took a fresh one first.
    backup = pathlib.Path(record["backup"])
    assert checksum_matches(backup)
    [fresh] = [name for name in dumps(run.backups) if name != backup.name]
    assert fresh.endswith("-pre-rollback.dump") and fresh in result.text
    scratch = "rollback_test_" + uuid.uuid4().hex[:8]
    sql('CREATE DATABASE "%s"' % scratch, db="postgres")
    try:
        subprocess.run(["docker", "exec", "-i", CONTAINER, "pg_restore", "--exit-on-error", "-U", "postgres",
                        "-d", scratch], input=decrypted(backup), capture_output=True, check=True)
        assert sql("SELECT label FROM widgets ORDER BY id", db=scratch) == ["kept in the backup", "and this one"]
    finally:
        sql('DROP DATABASE "%s" WITH (FORCE)' % scratch, db="postgres")


def test_reset_interrupted_after_the_volume_is_gone_finishes_on_rerun_and_its_backup_restores(tmp_path):
    run = Runner(tmp_path)
    rows = insert_users(2)
    # An impossible password rule makes the bootstrap fail after the volume is removed.
    failed = run("playbooks/rollback.yml", "rollback_scope=reset", "rollback_confirm=" + DB,
                 "postgres_bootstrap_password_min_length=999")
    assert failed.rc != 0
    record = json.loads((run.backups / "rollback-in-progress.json").read_text())
    assert record["phase"] == "volume_removed"

    result = run("playbooks/rollback.yml", "rollback_scope=reset", "rollback_confirm=" + DB)
    assert result.rc == 0 and "Resuming the reset rollback" in result.text
    assert applied() == [INITIAL] and sql("SELECT count(*) FROM users") == ["0"]
    assert not (run.backups / "rollback-in-progress.json").exists()
    assert dumps(run.backups) == [pathlib.Path(record["backup"]).name]

    restored = run("playbooks/restore.yml", "restore_confirm=" + DB, "restore_backup=" + record["backup"])
    assert restored.rc == 0
    assert users_like(rows[0].split("rollback-test-")[1][:8]) == rows


def test_a_stale_migration_rollback_record_is_refused_and_nothing_changes(tmp_path, scratch_migrations):
    run = Runner(tmp_path, scratch_migrations)
    # A rollback whose down section fails leaves its record behind.
    failed = run("playbooks/rollback.yml", env={"PGOPTIONS": "-c rollback_test.sleep=not-a-number"})
    assert failed.rc != 0 and (run.backups / "rollback-in-progress.json").exists()
    # Then the migration is rolled back and applied again by hand (as `make up`
    # would after any interruption), and the application writes rows.
    assert run("playbooks/migrate.yml", "migrate_action=down").rc == 0
    assert run("playbooks/migrate.yml").rc == 0
    rows = insert_users(2)
    before, backups = applied(), dumps(run.backups)
    stale = run("playbooks/rollback.yml")
    assert stale.rc != 0 and "was made for another state of %s" % DB in stale.text, stale
    assert "rm %s" % (run.backups / "rollback-in-progress.json") in stale.text
    assert "Nothing was changed." in stale.text
    assert applied() == before and dumps(run.backups) == backups
    assert users_like(rows[0].split("rollback-test-")[1][:8]) == rows
    (run.backups / "rollback-in-progress.json").unlink()


@pytest.mark.parametrize("phase, fingerprint", [
    ("backup_verified", {"system_identifier": "1", "migration_rows": []}),
    ("backup_verified", None),
    # The container was removed, then `make up` put the same volume back to work.
    ("container_removed", {"system_identifier": "1", "migration_rows": []}),
], ids=["other-server", "no-fingerprint", "container-removed-then-reused"])
def test_a_stale_reset_record_is_refused_and_nothing_is_removed(tmp_path, phase, fingerprint):
    run = Runner(tmp_path)
    run.backups.mkdir(mode=0o700)
    record = {"scope": "reset", "database": DB, "container": CONTAINER, "volume": VOLUME,
              "backup": str(run.backups / ("%s-20200101T000000Z-pre-reset.dump" % DB)),
              "started": "2020-01-01T00:00:00Z", "phase": phase}
    if fingerprint is not None:
        record["fingerprint"] = fingerprint
    (run.backups / "rollback-in-progress.json").write_text(json.dumps(record))
    container = container_id(CONTAINER)
    result = run("playbooks/rollback.yml", "rollback_scope=reset", "rollback_confirm=" + DB)
    assert result.rc != 0 and "was made for another state of %s" % DB in result.text, result
    assert container_id(CONTAINER) == container and dumps(run.backups) == []


def test_dumps_taken_before_a_destructive_action_are_never_pruned(tmp_path):
    run = Runner(tmp_path)
    assert run("playbooks/backup.yml", "postgres_backup_reason=pre-reset").rc == 0
    [pre_reset] = dumps(run.backups)
    for _ in range(3):
        time.sleep(1.1)  # dump names carry the second
        assert run("playbooks/backup.yml", "postgres_backup_keep=1").rc == 0
    kept = dumps(run.backups)
    assert pre_reset in kept and len(kept) == 2, kept


def test_restore_leaves_exactly_what_the_dump_holds_and_its_rerun_restores_the_same_dump(tmp_path):
    run = Runner(tmp_path)
    ensure_realistic_size()
    assert run_playbook("site.yml").rc == 0  # the dump holds a converged database
    assert run("playbooks/backup.yml").rc == 0
    [dump] = dumps(run.backups)
    # Objects and rows the dump does not hold: a table a later migration made, a schema, a row.
    sql("CREATE TABLE made_after_the_dump (id int); CREATE SCHEMA made_after_too; "
        "INSERT INTO pgbench_branches (bid, bbalance) VALUES (999999, 0)")
    first = run("playbooks/restore.yml", "restore_confirm=" + DB)
    assert first.rc == 0 and dump in first.text
    assert sql("SELECT to_regclass('made_after_the_dump') IS NULL, "
               "(SELECT count(*) FROM pg_namespace WHERE nspname = 'made_after_too'), "
               "(SELECT count(*) FROM pgbench_branches WHERE bid = 999999)") == ["t|0|0"]
    assert sql("SELECT count(*) FROM pgbench_accounts") == [PGBENCH_ROWS]
    # The pre-restore dump is never the default: the same command restores the same dump again.
    sql("INSERT INTO pgbench_branches (bid, bbalance) VALUES (999998, 0)")
    # The old name of the confirmation still works, with a deprecation message.
    second = run("playbooks/restore.yml", "rollback_confirm=" + DB)
    assert second.rc == 0 and "DEPRECATED: -e rollback_confirm for restore.yml is renamed" in second.text
    assert "Choose the named dump" in second.text and dump in second.text
    assert sql("SELECT count(*) FROM pgbench_branches WHERE bid >= 999998") == ["0"]
    # Afterwards site.yml finds nothing to change: the schema is as the migrations left it.
    assert run_playbook("site.yml").changed == 0


def backed_up(tmp_path):
    """A runner and the one dump it took of the database at its realistic size."""
    run = Runner(tmp_path)
    ensure_realistic_size()
    assert run("playbooks/backup.yml").rc == 0
    [dump] = dumps(run.backups)
    return run, dump


def test_a_failed_restore_leaves_the_database_untouched(tmp_path):
    run, dump = backed_up(tmp_path)
    # A CHECK constraint calling a function that reads another table (declared IMMUTABLE, which it is
    # not): pg_dump loads aaa_checked's rows before zzz_allowed's, so the check fails midway through
    # the restore, after the schemas were dropped and tables loaded. Only this database is touched
    # (no tablespace or other object a later point-in-time recovery would replay outside it).
    sql("CREATE TABLE zzz_allowed (v int); INSERT INTO zzz_allowed VALUES (1); "
        "CREATE FUNCTION doomed_allowed(int) RETURNS boolean LANGUAGE sql IMMUTABLE "
        "AS 'SELECT EXISTS (SELECT FROM public.zzz_allowed WHERE v = $1)'; "
        "CREATE TABLE aaa_checked (v int CHECK (doomed_allowed(v))); INSERT INTO aaa_checked VALUES (1)")
    try:
        assert run("playbooks/backup.yml").rc == 0
        doomed_dump = dumps(run.backups)[-1]
        sql("DROP TABLE aaa_checked, zzz_allowed; DROP FUNCTION doomed_allowed(int); "
            "CREATE TABLE kept_after_failure (id int)")
        failed = run("playbooks/restore.yml", "restore_confirm=" + DB, "restore_backup=" + doomed_dump)
        assert failed.rc != 0 and "failed and was rolled back" in failed.text, failed
        assert "aaa_checked" in failed.text
        assert sql("SELECT to_regclass('kept_after_failure') IS NOT NULL, to_regclass('aaa_checked') IS NULL") == ["t|t"]
        assert sql("SELECT count(*) FROM pgbench_accounts") == [PGBENCH_ROWS]
    finally:
        sql("DROP TABLE IF EXISTS kept_after_failure, aaa_checked, zzz_allowed; "
            "DROP FUNCTION IF EXISTS doomed_allowed(int)")
    assert dump


def test_roles_the_dump_names_that_are_gone_are_created_without_login_and_the_restore_succeeds(tmp_path):
    """A dump holds grants and owners, not roles: the pooler's auth role after a reset
    with the pooler off, or a role made by hand and dropped since."""
    grantee, owner = "gone_grantee_" + uuid.uuid4().hex[:6], "Gone Owner " + uuid.uuid4().hex[:6]
    run = Runner(tmp_path)
    ensure_realistic_size()
    sql('CREATE ROLE {g} LOGIN; CREATE ROLE "{o}"; CREATE SCHEMA granted_schema; '
        'CREATE TABLE granted_schema.t (id int); GRANT USAGE ON SCHEMA granted_schema TO {g}; '
        'GRANT SELECT ON granted_schema.t TO {g}; ALTER TABLE granted_schema.t OWNER TO "{o}"'.format(g=grantee, o=owner))
    try:
        assert run("playbooks/backup.yml").rc == 0
        [dump] = dumps(run.backups)
        sql('DROP SCHEMA granted_schema CASCADE; DROP ROLE {g}; DROP ROLE "{o}"'.format(g=grantee, o=owner))
        restored = run("playbooks/restore.yml", "restore_confirm=" + DB, "restore_backup=" + dump)
        assert restored.rc == 0, restored
        assert sql("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN ('%s', '%s') ORDER BY rolname"
                   % (grantee, owner)) == ["%s|f" % owner, "%s|f" % grantee]
        assert sql("SELECT has_table_privilege('%s', 'granted_schema.t', 'SELECT'), "
                   "pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'granted_schema.t'::regclass"
                   % grantee) == ["t|%s" % owner]
        assert "roles_created_without_login: '\"%s\", %s'" % (owner, grantee) in restored.text, restored.text
        assert sql("SELECT count(*) FROM pgbench_accounts") == [PGBENCH_ROWS]
    finally:
        sql("DROP SCHEMA IF EXISTS granted_schema CASCADE")
        sql('DROP ROLE IF EXISTS {g}; DROP ROLE IF EXISTS "{o}"'.format(g=grantee, o=owner))


def test_a_restore_that_cannot_decrypt_the_dump_leaves_the_database_untouched(tmp_path):
    run, dump = backed_up(tmp_path)
    sql("CREATE TABLE kept_after_bad_key (id int)")
    try:
        other_key = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
        failed = run("playbooks/restore.yml", "restore_confirm=" + DB, "restore_backup=" + dump,
                     "postgres_backup_before_restore=false", env={"POSTGRES_BACKUP_IDENTITY": other_key})
        assert failed.rc != 0 and "could not be decrypted with the age identity given" in failed.text, failed
        assert "Nothing was changed" in failed.text
        assert "AGE-SECRET-KEY" not in failed.output
        # Nothing was dropped: the schemas, the table made after the dump, every row.
        assert sql("SELECT to_regclass('kept_after_bad_key') IS NOT NULL") == ["t"]
        assert sql("SELECT count(*) FROM pgbench_accounts") == [PGBENCH_ROWS]
        assert applied() == [INITIAL]
    finally:
        sql("DROP TABLE IF EXISTS kept_after_bad_key")


def test_a_backup_refuses_check_mode(tmp_path):
    run = Runner(tmp_path)
    result = run_playbook(*run.args("playbooks/backup.yml"), "--check")
    assert result.rc != 0 and "does not run in check mode" in " ".join(result.output.split()), result
    assert not run.backups.exists() or dumps(run.backups) == []
