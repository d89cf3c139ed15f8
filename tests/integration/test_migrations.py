"""The migrations engine against a real PostgreSQL 15, one scratch database per test.

Covers issue 6's "Done means": up, status, down, redo, create; a failing
migration in the middle; drift; concurrent runs; lock_timeout; the
no-transaction marker; run_on's time zone; bad input changing nothing.
"""
import os
import pathlib
import threading
import time

import psycopg2
import pytest

import pg_migrate_core as core
from pg_migrate_core import MigrationError, MigrationFailed
from conftest import query, migrations_folder, tracked

ROOT = pathlib.Path(__file__).resolve().parents[2]

FIRST = "1710000000001_create-widgets"
SECOND = "1710000000002_add-widget-color"
THIRD = "1710000000003_create-gadgets"
FILES = {
    FIRST: "-- Up Migration\nCREATE TABLE widgets (id serial PRIMARY KEY, name text NOT NULL);\n\n"
           "-- Down Migration\nDROP TABLE widgets;\n",
    SECOND: "-- Up Migration\nALTER TABLE widgets ADD COLUMN color text;\n\n"
            "-- Down Migration\nALTER TABLE widgets DROP COLUMN color;\n",
    THIRD: "-- Up Migration\nCREATE TABLE gadgets (id serial PRIMARY KEY);\n\n"
           "-- Down Migration\nDROP TABLE gadgets;\n",
}


@pytest.fixture
def folder(tmp_path):
    """A migrations folder with three reversible migrations."""
    return migrations_folder(tmp_path, FILES)


@pytest.fixture
def migrate(scratch_db, folder):
    """Run one action of the engine against the scratch database."""
    def run(action, directory=None, **options):
        runner_options = options.pop("runner_options", {})
        runner_options.setdefault("advisory_lock_wait", 10)
        return core.run(lambda: core.connect(dict(scratch_db)), str(directory or folder), action,
                        runner_options=runner_options, **options)
    return run


def table_exists(params, name):
    return query(params, "SELECT to_regclass(%s) IS NOT NULL", (name,))[0][0]


# --- up / status / down / redo / create -----------------------------------

def test_up_applies_every_pending_migration_in_order(migrate, scratch_db):
    result = migrate("up")
    assert [e["name"] for e in result["executed"]] == [FIRST, SECOND, THIRD]
    assert tracked(scratch_db) == [FIRST, SECOND, THIRD]


def test_second_up_changes_nothing(migrate):
    migrate("up")
    result = migrate("up")
    assert (result["changed"], result["executed"]) == (False, [])


def test_up_with_count_applies_only_that_many(migrate, scratch_db):
    migrate("up", count=2)
    assert tracked(scratch_db) == [FIRST, SECOND]


def test_up_to_a_named_migration_applies_through_it(migrate, scratch_db):
    migrate("up", to=SECOND)
    assert tracked(scratch_db) == [FIRST, SECOND]


def test_status_lists_applied_and_pending(migrate):
    migrate("up", count=1)
    status = migrate("status")
    assert (status["applied"], status["pending"], status["changed"]) == ([FIRST], [SECOND, THIRD], False)


def test_status_on_a_fresh_database_creates_nothing(migrate, scratch_db):
    assert migrate("status")["pending"] == [FIRST, SECOND, THIRD]
    assert tracked(scratch_db) is None


def test_down_rolls_back_only_the_latest_migration_by_default(migrate, scratch_db):
    migrate("up")
    migrate("down")
    assert tracked(scratch_db) == [FIRST, SECOND]
    assert not table_exists(scratch_db, "gadgets")


def test_down_with_count_rolls_back_that_many(migrate, scratch_db):
    migrate("up")
    migrate("down", count=2)
    assert tracked(scratch_db) == [FIRST]


def test_down_to_a_named_migration_keeps_it_applied(migrate, scratch_db):
    migrate("up")
    migrate("down", to=FIRST)
    assert tracked(scratch_db) == [FIRST]


def test_down_removes_the_checksum_rows_too(migrate, scratch_db):
    migrate("up")
    migrate("down", count=3)
    assert query(scratch_db, "SELECT count(*) FROM pgmigrations_checksums")[0][0] == 0


@pytest.mark.parametrize("applied,count", [(0, None), (1, 2), (3, 4)])
def test_down_past_the_first_migration_fails_and_changes_nothing(migrate, scratch_db, applied, count):
    if applied:
        migrate("up", count=applied)
    before = tracked(scratch_db)
    with pytest.raises(MigrationError, match="past the first migration"):
        migrate("down", count=count)
    assert tracked(scratch_db) == before


def test_redo_reapplies_exactly_the_migrations_it_rolled_back(migrate, scratch_db):
    migrate("up", count=2)
    result = migrate("redo")
    assert [(e["name"], e["direction"]) for e in result["executed"]] == [(SECOND, "down"), (SECOND, "up")]
    assert tracked(scratch_db) == [FIRST, SECOND]


def test_create_writes_a_new_migration_that_up_then_runs(migrate, folder, scratch_db):
    result = migrate("create", name="add-orders")
    created = pathlib.Path(result["path"])
    assert created.read_text() == "-- Up Migration\n\n-- Down Migration\n"
    migrate("up")
    assert tracked(scratch_db)[-1] == created.stem


def test_create_in_check_mode_writes_nothing(migrate, folder):
    before = sorted(os.listdir(folder))
    migrate("create", name="add-orders", check_mode=True)
    assert sorted(os.listdir(folder)) == before


def test_check_mode_lists_what_would_run_and_changes_nothing(migrate, scratch_db):
    result = migrate("up", check_mode=True)
    assert [p["name"] for p in result["planned"]] == [FIRST, SECOND, THIRD]
    assert result["changed"] and tracked(scratch_db) is None and not table_exists(scratch_db, "widgets")


def test_check_mode_returns_the_sql_it_would_run(migrate):
    queries = migrate("up", count=1, check_mode=True)["queries"]
    assert "CREATE TABLE widgets" in queries[0] and "INSERT INTO" in queries[1]


# --- failures -------------------------------------------------------------

BROKEN = ("-- Up Migration\nCREATE TABLE half_done (id int);\n"
          "INSERT INTO half_done VALUES (1);\nSELECT 1 / 0;\n"
          "-- Down Migration\nDROP TABLE half_done;\n")


def test_failing_migration_in_the_middle_leaves_the_first_applied_and_nothing_of_itself(
        migrate, folder, scratch_db):
    (folder / (SECOND + ".sql")).write_text(BROKEN)
    with pytest.raises(MigrationFailed):
        migrate("up")
    assert tracked(scratch_db) == [FIRST]
    assert table_exists(scratch_db, "widgets") and not table_exists(scratch_db, "half_done")


def test_failure_names_the_file_the_line_and_postgresql_message(migrate, folder):
    (folder / (SECOND + ".sql")).write_text(BROKEN)
    with pytest.raises(MigrationFailed) as failure:
        migrate("up")
    assert "%s.sql:4:" % SECOND in str(failure.value)
    assert "division by zero" in str(failure.value)
    assert (failure.value.line, failure.value.pgcode) == (4, "22012")


@pytest.mark.parametrize("body,line,message", [
    ("SELECT 1;\n\nSELECT nope FROM\n  missing_table;\n", 5, 'relation "missing_table" does not exist'),
    ("SELECT 1;\nSELEC 2;\n", 3, 'syntax error at or near "SELEC"'),
    ("CREATE TABLE t (a int CHECK (a > 0));\nINSERT INTO t\nVALUES (0);\n", 3, "violates check constraint"),
])
def test_failure_line_points_at_the_failing_statement(migrate, folder, scratch_db, body, line, message):
    (folder / "1710000000004_broken.sql").write_text("-- Up Migration\n" + body)
    migrate("up", count=3)
    with pytest.raises(MigrationFailed) as failure:
        migrate("up")
    assert failure.value.line == line and message in str(failure.value)


def test_failing_tracking_row_is_reported_and_rolls_back_the_migration(migrate, scratch_db):
    migrate("up", count=1)
    query(scratch_db, "ALTER TABLE pgmigrations ADD CONSTRAINT no_third CHECK (name <> %s)", (THIRD,))
    with pytest.raises(MigrationFailed, match="while recording it"):
        migrate("up")
    assert tracked(scratch_db) == [FIRST, SECOND] and not table_exists(scratch_db, "gadgets")


def test_lock_timeout_makes_a_migration_on_a_busy_table_fail_fast(migrate, scratch_db):
    migrate("up", count=1)
    holder = psycopg2.connect(**scratch_db)
    try:
        holder.cursor().execute("LOCK TABLE widgets IN ACCESS SHARE MODE")  # open transaction
        started = time.monotonic()
        with pytest.raises(MigrationFailed, match="lock timeout"):
            migrate("up", count=1, runner_options={"lock_timeout": "300ms"})
        assert time.monotonic() - started < 5
    finally:
        holder.close()


def test_statement_timeout_stops_a_long_statement(migrate, folder):
    (folder / "1710000000004_slow.sql").write_text("-- Up Migration\nSELECT pg_sleep(5);\n")
    migrate("up", count=3)
    with pytest.raises(MigrationFailed, match="statement timeout"):
        migrate("up", runner_options={"statement_timeout": "200ms"})


# --- no-transaction marker ------------------------------------------------

def test_no_transaction_marker_runs_create_index_concurrently(migrate, folder, scratch_db):
    (folder / "1710000000004_index-widgets.sql").write_text(
        "-- Up Migration\n-- pg-migrate: no-transaction\n"
        "CREATE INDEX CONCURRENTLY widgets_name_index ON widgets (name);\n"
        "-- Down Migration\nDROP INDEX CONCURRENTLY widgets_name_index;\n")
    migrate("up")
    assert table_exists(scratch_db, "widgets_name_index")
    migrate("down")
    assert not table_exists(scratch_db, "widgets_name_index")


def test_create_index_concurrently_without_the_marker_fails_cleanly(migrate, folder, scratch_db):
    (folder / "1710000000004_index-widgets.sql").write_text(
        "-- Up Migration\nCREATE INDEX CONCURRENTLY widgets_name_index ON widgets (name);\n")
    with pytest.raises(MigrationFailed, match="cannot run inside a transaction block"):
        migrate("up")
    assert tracked(scratch_db) == [FIRST, SECOND, THIRD]


# --- drift and order ------------------------------------------------------

def test_edited_applied_file_is_reported_by_status(migrate, folder):
    migrate("up")
    (folder / (FIRST + ".sql")).write_text(FILES[FIRST] + "-- edited afterwards\n")
    assert migrate("status")["drift"] == {"changed": [FIRST], "missing": []}


def test_edited_applied_file_stops_up(migrate, folder, scratch_db):
    migrate("up", count=1)
    (folder / (FIRST + ".sql")).write_text(FILES[FIRST] + "-- edited afterwards\n")
    with pytest.raises(MigrationError, match="changed since applied: " + FIRST):
        migrate("up")
    assert tracked(scratch_db) == [FIRST]


def test_allow_drift_goes_on_despite_an_edited_file(migrate, folder, scratch_db):
    migrate("up", count=1)
    (folder / (FIRST + ".sql")).write_text(FILES[FIRST] + "-- edited afterwards\n")
    migrate("up", allow_drift=True)
    assert tracked(scratch_db) == [FIRST, SECOND, THIRD]


def test_missing_applied_file_is_reported_and_stops_up(migrate, folder):
    migrate("up", count=1)
    (folder / (THIRD + ".sql")).unlink()
    (folder / (FIRST + ".sql")).rename(folder.parent / "elsewhere.sql")
    assert migrate("status")["drift"]["missing"] == [FIRST]
    with pytest.raises(MigrationError, match="missing from the folder: " + FIRST):
        migrate("up")


def test_pending_file_sorting_before_an_applied_one_stops_up(migrate, folder, scratch_db):
    migrate("up")
    (folder / "1700000000000_late-arrival.sql").write_text("-- Up Migration\nSELECT 1;\n")
    with pytest.raises(MigrationError, match="Not run migration 1700000000000_late-arrival is preceding"):
        migrate("up")
    assert tracked(scratch_db) == [FIRST, SECOND, THIRD]


def test_check_order_false_applies_the_late_file(migrate, folder, scratch_db):
    migrate("up")
    (folder / "1700000000000_late-arrival.sql").write_text("-- Up Migration\nSELECT 1;\n")
    migrate("up", check_order_enabled=False)
    assert tracked(scratch_db)[-1] == "1700000000000_late-arrival"


# --- concurrency ----------------------------------------------------------

def test_two_up_runs_started_at_once_apply_each_migration_exactly_once(scratch_db, tmp_path):
    folder = tmp_path / "slow"
    folder.mkdir()
    query(scratch_db, "CREATE TABLE applications (name text)")
    for index in range(5):
        (folder / ("17100000000%02d_step.sql" % index)).write_text(
            "-- Up Migration\nSELECT pg_sleep(0.05);\nINSERT INTO applications VALUES ('%d');\n" % index)
    start = threading.Barrier(2)
    errors = []

    def runner():
        start.wait()
        try:
            core.run(lambda: core.connect(dict(scratch_db)), str(folder), "up",
                     runner_options={"advisory_lock_wait": 30, "poll_interval": 0.05})
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    counts = query(scratch_db, "SELECT name, count(*) FROM applications GROUP BY name ORDER BY name")
    assert counts == [(str(index), 1) for index in range(5)]


def test_a_held_migration_lock_fails_after_advisory_lock_wait(migrate, scratch_db):
    holder = psycopg2.connect(**scratch_db)
    try:
        holder.cursor().execute("SELECT pg_advisory_lock(%s)", (core.LOCK_ID,))
        with pytest.raises(MigrationError, match="holds the advisory lock"):
            migrate("up", runner_options={"advisory_lock_wait": 0.3})
    finally:
        holder.close()
    assert tracked(scratch_db) is None


# --- run_on ---------------------------------------------------------------

def test_run_on_uses_the_server_default_time_zone_even_with_pgtz_set(migrate, scratch_db, monkeypatch):
    query(scratch_db, "ALTER DATABASE %s SET timezone TO 'America/Sao_Paulo'" % scratch_db["dbname"])
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    migrate("up", count=1)
    monkeypatch.delenv("PGTZ", raising=False)
    skew = query(scratch_db, "SELECT abs(extract(epoch FROM now()::timestamp - run_on)) FROM pgmigrations")
    assert skew[0][0] < 60


# --- bad input changes nothing --------------------------------------------

def write_bad_no_up_marker(folder):
    (folder / "1710000000004_bad.sql").write_text("CREATE TABLE nope ();\n")


def write_bad_same_prefix(folder):
    (folder / "1710000000002_twin.sql").write_text("-- Up Migration\nSELECT 1;\n")


def write_bad_non_utf8(folder):
    (folder / "1710000000004_latin1.sql").write_bytes(b"-- Up Migration\nSELECT 'caf\xe9';\n")


def write_bad_unreadable(folder):
    os.symlink(folder / "does-not-exist.sql", folder / "1710000000004_dangling.sql")


def write_bad_not_sql(folder):
    (folder / "README.md").write_text("notes\n")


@pytest.mark.parametrize("write_bad,message", [
    (write_bad_no_up_marker, "1710000000004_bad.sql: no '-- Up Migration' marker"),
    (write_bad_same_prefix, "same prefix value"),
    (write_bad_non_utf8, "1710000000004_latin1.sql:2: not valid UTF-8"),
    (write_bad_unreadable, "1710000000004_dangling.sql: cannot read the file"),
    (write_bad_not_sql, "README.md: only .sql migrations are supported"),
], ids=["no-up-marker", "same-prefix", "non-utf8", "unreadable", "not-sql"])
def test_bad_input_fails_with_a_clear_error_and_changes_nothing(migrate, folder, scratch_db, write_bad, message):
    write_bad(folder)
    with pytest.raises(MigrationError) as failure:
        migrate("up")
    assert message in str(failure.value)
    assert tracked(scratch_db) is None and not table_exists(scratch_db, "widgets")


def test_unknown_action_fails_and_changes_nothing(migrate, scratch_db):
    with pytest.raises(MigrationError, match="unknown action 'sideways'"):
        migrate("sideways")
    assert tracked(scratch_db) is None


# --- the project's initial migration ---------------------------------------

def test_initial_migration_creates_the_users_table_indexes_and_trigger(migrate, scratch_db):
    migrate("up", directory=ROOT / "migrations")
    indexes = query(scratch_db, "SELECT indexname FROM pg_indexes WHERE tablename = 'users' ORDER BY 1")
    assert [row[0] for row in indexes] == [
        "users_created_at_index", "users_email_unique_index", "users_last_login_at_index", "users_pkey"]
    assert query(scratch_db, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'users'::regclass "
                             "AND NOT tgisinternal") == [("update_users_updated_at",)]


USERS_COLUMNS = [
    ("id", "uuid", "NO", "gen_random_uuid()"),
    ("email", "character varying", "NO", None),
    ("password_hash", "character varying", "NO", None),
    ("name", "character varying", "NO", None),
    ("timezone", "character varying", "YES", "'America/Sao_Paulo'::character varying"),
    ("language", "character varying", "YES", "'pt-BR'::character varying"),
    ("subscription_tier", "character varying", "YES", "'free'::character varying"),
    ("email_verified", "boolean", "YES", "false"),
    ("email_verification_token", "character varying", "YES", None),
    ("password_reset_token", "character varying", "YES", None),
    ("password_reset_expires", "timestamp without time zone", "YES", None),
    ("last_login_at", "timestamp without time zone", "YES", None),
    ("last_login_ip", "character varying", "YES", None),
    ("created_at", "timestamp without time zone", "NO", "now()"),
    ("updated_at", "timestamp without time zone", "NO", "now()"),
    ("deleted_at", "timestamp without time zone", "YES", None),
]


def test_initial_migration_users_table_has_every_seed_column_and_default(migrate, scratch_db):
    migrate("up", directory=ROOT / "migrations")
    columns = query(scratch_db, "SELECT column_name, data_type, is_nullable, column_default "
                                "FROM information_schema.columns WHERE table_name = 'users' "
                                "ORDER BY ordinal_position")
    assert columns == USERS_COLUMNS


@pytest.mark.parametrize("tier,accepted", [("free", True), ("enterprise", True), ("gold", False)])
def test_initial_migration_checks_subscription_tier(migrate, scratch_db, tier, accepted):
    migrate("up", directory=ROOT / "migrations")
    insert = "INSERT INTO users (email, password_hash, name, subscription_tier) VALUES ('a@b.c', 'h', 'n', %s)"
    if accepted:
        query(scratch_db, insert, (tier,))
    else:
        with pytest.raises(psycopg2.errors.CheckViolation):
            query(scratch_db, insert, (tier,))


def test_initial_migration_email_is_unique_among_live_users_only(migrate, scratch_db):
    migrate("up", directory=ROOT / "migrations")
    insert = "INSERT INTO users (email, password_hash, name) VALUES ('a@b.c', 'h', 'n')"
    query(scratch_db, insert)
    with pytest.raises(psycopg2.errors.UniqueViolation):
        query(scratch_db, insert)
    query(scratch_db, "UPDATE users SET deleted_at = now()")
    query(scratch_db, insert)


def test_updated_at_trigger_moves_updated_at_even_in_the_inserting_transaction(migrate, scratch_db):
    migrate("up", directory=ROOT / "migrations")
    result = query(scratch_db,
                   "INSERT INTO users (email, password_hash, name) VALUES ('test@test.com', 'hash', 'Test');"
                   "UPDATE users SET name = 'Updated' WHERE email = 'test@test.com';"
                   "SELECT updated_at > created_at AS trigger_working FROM users WHERE email = 'test@test.com';")
    assert result == [(True,)]


def test_initial_migration_down_removes_what_up_created_and_keeps_extensions(migrate, scratch_db):
    query(scratch_db, 'CREATE EXTENSION IF NOT EXISTS "pgcrypto"')
    migrate("up", directory=ROOT / "migrations")
    migrate("down", directory=ROOT / "migrations")
    assert not table_exists(scratch_db, "users")
    assert query(scratch_db, "SELECT count(*) FROM pg_proc WHERE proname = 'update_updated_at_column'")[0][0] == 0
    assert query(scratch_db, "SELECT extname FROM pg_extension WHERE extname = 'pgcrypto'") == [("pgcrypto",)]
