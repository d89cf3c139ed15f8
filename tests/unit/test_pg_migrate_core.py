"""Unit tests of the pure logic of pg_migrate_core: parsing, ordering,
checkOrder, planning, drift, statement splitting and create. No database."""
import datetime
import os

import pytest

import pg_migrate_core as core
from pg_migrate_core import MigrationError

UP_DOWN = "-- Up Migration\nSELECT 1;\n-- Down Migration\nSELECT 2;\n"


def mig(file_name, text=UP_DOWN):
    return core.parse_migration(file_name, text.encode("utf-8"))


def names(migrations):
    return [m.name for m in migrations]


THREE = [mig("1710000000001_a.sql"), mig("1710000000002_b.sql"), mig("1710000000003_c.sql")]
A, B, C = names(THREE)


# --- file format ----------------------------------------------------------

@pytest.mark.parametrize("marker", [
    "-- Up Migration", "--up migration", "-- UP MIGRATION", "   -- Up Migration",
    "-- - up migration", "----up   migration", "-- Up Migration of the users table",
    "\t--\tup\tmigration", "-- up\u00a0migration",
])
def test_up_marker_variants_node_pg_migrate_accepts_are_recognised(marker):
    migration = mig("1_x.sql", marker + "\nSELECT 1;\n")
    assert migration.section("up").strip().endswith("SELECT 1;")


@pytest.mark.parametrize("text", [
    "-- upmigration\nSELECT 1;", "-- up_migration\nSELECT 1;", "SELECT 1; -- Up Migration",
    "/* -- Up Migration */ SELECT 1;",
])
def test_text_that_is_not_an_up_marker_is_rejected(text):
    with pytest.raises(MigrationError, match="no '-- Up Migration' marker"):
        mig("1_x.sql", text)


def test_up_section_runs_from_its_marker_to_the_down_marker():
    migration = mig("1_x.sql", UP_DOWN)
    assert migration.section("up") == "-- Up Migration\nSELECT 1;\n"
    assert migration.section("down") == "-- Down Migration\nSELECT 2;\n"


def test_down_section_first_is_sliced_like_node_pg_migrate():
    migration = mig("1_x.sql", "-- Down Migration\nDROP TABLE t;\n-- Up Migration\nCREATE TABLE t ();\n")
    assert migration.section("down") == "-- Down Migration\nDROP TABLE t;\n"
    assert migration.section("up") == "-- Up Migration\nCREATE TABLE t ();\n"


def test_file_without_down_marker_cannot_be_rolled_back():
    assert not mig("1_x.sql", "-- Up Migration\nSELECT 1;\n").reversible


def test_text_before_the_up_marker_warns_about_node_pg_migrate_6():
    migration = mig("1_x.sql", "-- header\n-- Up Migration\nSELECT 1;\n-- Down Migration\nSELECT 2;\n")
    assert any("6.x" in warning for warning in migration.warnings)


def test_up_marker_on_the_first_line_gives_no_warning():
    assert mig("1_x.sql").warnings == []


@pytest.mark.parametrize("file_name", [
    "initial.sql", "1710000000001-initial.sql", "1710000000001_initial.js", "x1_initial.sql",
    "1710000000001.sql",
])
def test_file_names_not_prefix_underscore_name_sql_are_rejected(file_name):
    with pytest.raises(MigrationError, match=file_name.replace(".", r"\.")):
        mig(file_name)


def test_name_longer_than_pgmigrations_column_is_rejected():
    with pytest.raises(MigrationError, match="at most 255"):
        mig("1_%s.sql" % ("x" * 260))


def test_name_is_the_file_name_without_extension():
    assert mig("1710000000001_initial-schema.sql").name == "1710000000001_initial-schema"


def test_non_utf8_file_is_rejected_naming_the_file_and_byte():
    with pytest.raises(MigrationError, match=r"1_x\.sql:2: not valid UTF-8 \(byte 24"):
        core.parse_migration("1_x.sql", b"-- Up Migration\nSELECT '\xe9';\n")


def test_utf8_byte_order_mark_is_accepted():
    assert mig("1_x.sql", "\ufeff" + UP_DOWN).section("up").startswith("-- Up Migration")


def test_checksum_is_sha256_of_the_file_bytes():
    assert mig("1_x.sql").checksum == core.hashlib.sha256(UP_DOWN.encode()).hexdigest()


@pytest.mark.parametrize("text,transaction", [
    (UP_DOWN, True),
    ("-- Up Migration\n-- pg-migrate: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);\n", False),
    ("-- Up Migration\n  --PG-MIGRATE:no-transaction  \nSELECT 1;\n", False),
    ("-- Up Migration\nSELECT 1; -- pg-migrate: no-transaction\n", True),
])
def test_no_transaction_marker_must_be_a_line_of_its_own(text, transaction):
    assert mig("1_x.sql", text).transaction is transaction


# --- ordering -------------------------------------------------------------

@pytest.mark.parametrize("prefix,key", [
    ("1710000000001", 1710000000001),
    ("20200513070724505", 1589353644505),
    ("20240101000000000", 1704067200000),
    ("0001", 1),
    ("42", 42),
    ("123456789012345678", int(float(123456789012345678))),
])
def test_prefix_value_is_what_node_pg_migrate_sorts_by(prefix, key):
    assert core.prefix_sort_key(prefix) == key


def test_17_digit_prefix_matches_javascript_date_utc():
    moment = datetime.datetime(2020, 5, 13, 7, 7, 24, 505000, tzinfo=datetime.timezone.utc)
    assert core.prefix_sort_key("20200513070724505") == int(moment.timestamp() * 1000)


def test_17_digit_prefix_that_is_no_date_is_rejected():
    with pytest.raises(MigrationError, match="not a valid UTC date"):
        mig("20201340000000000_x.sql")


def test_13_and_17_digit_prefixes_are_ordered_by_time_not_text():
    ordered = core.order_migrations([mig("1710000000001_march.sql"), mig("20240101000000000_january.sql")])
    assert names(ordered) == ["20240101000000000_january", "1710000000001_march"]


def test_mixed_prefix_lengths_warn_that_node_pg_migrate_6_orders_differently():
    ordered = core.order_migrations([mig("1710000000001_march.sql"), mig("20240101000000000_january.sql")])
    assert core.order_warnings(ordered)


def test_same_length_prefixes_give_no_order_warning():
    assert core.order_warnings(THREE) == []


def test_numeric_not_textual_order_for_short_prefixes():
    ordered = core.order_migrations([mig("10_c.sql"), mig("2_b.sql"), mig("1_a.sql")])
    assert names(ordered) == ["1_a", "2_b", "10_c"]


@pytest.mark.parametrize("first,second", [
    ("1710000000001_a.sql", "1710000000001_b.sql"),
    ("1704067200000_a.sql", "20240101000000000_b.sql"),
])
def test_two_files_with_the_same_prefix_value_are_rejected(first, second):
    with pytest.raises(MigrationError, match="same prefix value"):
        core.order_migrations([mig(first), mig(second)])


# --- checkOrder -----------------------------------------------------------

@pytest.mark.parametrize("applied", [[], [A], [A, B], [A, B, C]])
def test_check_order_accepts_applied_names_that_prefix_the_files(applied):
    assert core.check_order(applied, THREE) is None


@pytest.mark.parametrize("applied", [[B], [A, C], [B, A]])
def test_check_order_rejects_a_pending_file_before_an_applied_one(applied):
    assert "is preceding already run migration" in core.check_order(applied, THREE)


# --- planning -------------------------------------------------------------

@pytest.mark.parametrize("applied,count,to,expected", [
    ([], None, None, [A, B, C]),
    ([A], None, None, [B, C]),
    ([A, B, C], None, None, []),
    ([], 2, None, [A, B]),
    ([A], 1, None, [B]),
    ([A], 5, None, [B, C]),
    ([], None, B, [A, B]),
    ([A], None, C, [B, C]),
    ([A, B], None, A, []),
])
def test_plan_up(applied, count, to, expected):
    assert names(core.plan_up(THREE, applied, count, to)) == expected


def test_plan_up_to_unknown_migration_fails():
    with pytest.raises(MigrationError, match="no such migration file"):
        core.plan_up(THREE, [], to="1710000000009_nope")


@pytest.mark.parametrize("count", [0, -1, True])
def test_count_below_one_is_rejected_unlike_node_pg_migrate_down_0(count):
    with pytest.raises(MigrationError, match="at least 1"):
        core.plan_down(THREE, [A, B, C], count=count)


@pytest.mark.parametrize("applied,count,to,expected", [
    ([A, B, C], None, None, [C]),
    ([A, B, C], 2, None, [C, B]),
    ([A, B, C], 3, None, [C, B, A]),
    ([A, B, C], None, A, [C, B]),
    ([A, B, C], None, C, []),
])
def test_plan_down(applied, count, to, expected):
    assert names(core.plan_down(THREE, applied, count, to)) == expected


@pytest.mark.parametrize("applied,count", [([], None), ([A], 2), ([A, B, C], 4)])
def test_down_past_the_first_migration_fails(applied, count):
    with pytest.raises(MigrationError, match="past the first migration"):
        core.plan_down(THREE, applied, count)


def test_down_to_a_migration_that_is_not_applied_fails():
    with pytest.raises(MigrationError, match="not applied"):
        core.plan_down(THREE, [A], to=B)


def test_down_of_a_file_without_down_section_fails():
    files = [mig("1_a.sql", "-- Up Migration\nSELECT 1;\n")]
    with pytest.raises(MigrationError, match="no '-- Down Migration' section"):
        core.plan_down(files, ["1_a"])


def test_down_of_a_deleted_file_fails():
    with pytest.raises(MigrationError, match="no longer in the migrations folder"):
        core.plan_down(THREE[:1], [A, B])


def test_down_follows_applied_order_not_file_order():
    assert names(core.plan_down(THREE, [B, A], count=1)) == [A]


@pytest.mark.parametrize("count,expected", [
    (None, [(C, "down"), (C, "up")]),
    (2, [(C, "down"), (B, "down"), (B, "up"), (C, "up")]),
])
def test_redo_reapplies_exactly_what_it_rolled_back(count, expected):
    plan = core.plan_action("redo", THREE, [A, B, C], count)
    assert [(m.name, d) for m, d in plan] == expected


def test_redo_leaves_other_pending_migrations_pending():
    plan = core.plan_action("redo", THREE, [A, B], 1)
    assert [(m.name, d) for m, d in plan] == [(B, "down"), (B, "up")]


def test_unknown_action_is_rejected():
    with pytest.raises(MigrationError, match="unknown action 'sideways'"):
        core.plan_action("sideways", THREE, [])


# --- drift ----------------------------------------------------------------

def rows(*applied):
    return [core.AppliedRow(index + 1, name) for index, name in enumerate(applied)]


def test_inspect_reports_applied_and_pending():
    report = core.inspect(THREE, rows(A), {1: THREE[0].checksum})
    assert (report["applied"], report["pending"]) == ([A], [B, C])


def test_inspect_reports_an_applied_file_changed_since():
    edited = [mig("1710000000001_a.sql", UP_DOWN + "-- edited\n")] + THREE[1:]
    report = core.inspect(edited, rows(A), {1: THREE[0].checksum})
    assert report["changed"] == [A]


def test_inspect_reports_an_applied_file_that_is_missing():
    report = core.inspect(THREE[1:], rows(A), {1: THREE[0].checksum})
    assert report["missing"] == [A]


def test_checksum_of_another_row_id_is_not_trusted():
    """node-pg-migrate re-applied the file (new pgmigrations id): no stale match."""
    edited = [mig("1710000000001_a.sql", UP_DOWN + "-- edited\n")] + THREE[1:]
    report = core.inspect(edited, [core.AppliedRow(7, A)], {1: THREE[0].checksum})
    assert (report["changed"], report["unverified"]) == ([], [A])


def test_migrations_applied_without_checksum_are_unverified():
    assert core.inspect(THREE, rows(A, B), {})["unverified"] == [A, B]


@pytest.mark.parametrize("report,allow,stops", [
    ({"changed": [A], "missing": []}, False, True),
    ({"changed": [], "missing": [A]}, False, True),
    ({"changed": [A], "missing": []}, True, False),
    ({"changed": [], "missing": []}, False, False),
])
def test_drift_stops_unless_allowed(report, allow, stops):
    assert bool(core.drift_error(report, allow)) is stops


# --- statement splitting --------------------------------------------------

@pytest.mark.parametrize("sql,expected", [
    ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
    ("SELECT 'a;b';", ["SELECT 'a;b'"]),
    ("SELECT 'it''s;';", ["SELECT 'it''s;'"]),
    ("SELECT E'a\\';b';", ["SELECT E'a\\';b'"]),
    ('SELECT 1 AS "x;y";', ['SELECT 1 AS "x;y"']),
    ("SELECT $$;$$; SELECT $f$ $$ ; $f$;", ["SELECT $$;$$", "SELECT $f$ $$ ; $f$"]),
    ("-- a; comment\nSELECT 1;", ["SELECT 1"]),
    ("/* a; /* nested; */ b; */ SELECT 1;", ["SELECT 1"]),
    ("SELECT 1;\n-- trailing; comment\n", ["SELECT 1"]),
    ("SELECT 1", ["SELECT 1"]),
    (";; SELECT 1;;", ["SELECT 1"]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
     "SELECT CASE WHEN true THEN 2 END; END; SELECT 3;",
     ["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
      "SELECT CASE WHEN true THEN 2 END; END", "SELECT 3"]),
    ("create or replace procedure p() language sql begin atomic insert into t values (1); end;"
     "\nSELECT 2;",
     ["create or replace procedure p() language sql begin atomic insert into t values (1); end",
      "SELECT 2"]),
    ("SELECT a$b FROM t; SELECT 2;", ["SELECT a$b FROM t", "SELECT 2"]),
    ("SELECT 'é;ü'; SELECT 2;", ["SELECT 'é;ü'", "SELECT 2"]),
])
def test_split_statements(sql, expected):
    assert [text for _, text in core.split_statements(sql)] == expected


def test_statement_offsets_point_at_the_first_token():
    text = "-- Up Migration\n\nCREATE TABLE t ();\n  SELECT 1;\n"
    assert [offset for offset, _ in core.split_statements(text)] == [17, 38]


def test_line_of_an_offset():
    migration = mig("1_x.sql", "-- Up Migration\nSELECT 1;\n\nSELECT oops;\n")
    offset = migration.content.index("SELECT oops")
    assert migration.line_of(offset) == 4


# --- issue 10 item 4: an unterminated comment, quote or dollar quote -------

@pytest.mark.parametrize("tail,message", [
    ("/* CREATE TABLE b (id int);\nCREATE TABLE c (id int);\n", r"unterminated /\* comment"),
    ("INSERT INTO a VALUES ('b);\nCREATE TABLE c (id int);\n", "unterminated quoted string"),
    ("DO $body$ BEGIN NULL; END $$;\nCREATE TABLE c (id int);\n", "unterminated dollar-quoted string"),
    ('CREATE TABLE "b (id int);\nCREATE TABLE c (id int);\n', "unterminated quoted identifier"),
])
def test_unterminated_comment_or_quote_is_an_error_naming_file_and_line(tail, message):
    migration = mig("1_x.sql", "-- Up Migration\nCREATE TABLE a (id int);\n" + tail
                    + "-- Down Migration\nDROP TABLE a;\n")
    with pytest.raises(MigrationError, match=r"1_x\.sql:3: " + message):
        migration.statements("up")


def test_unterminated_comment_after_non_ascii_text_names_its_own_line():
    migration = mig("1_x.sql", "-- Up Migration\nSELECT 'ééé';\nSELECT 'ü';\n\n/* open\nSELECT 2;\n")
    with pytest.raises(MigrationError, match=r"1_x\.sql:5: unterminated /\* comment"):
        migration.statements("up")


def test_unterminated_comment_in_the_down_section_stops_down_before_it_runs():
    files = [mig("1_a.sql", "-- Up Migration\nSELECT 1;\n-- Down Migration\nSELECT 1; /* open\n")]
    with pytest.raises(MigrationError, match=r"1_a\.sql:4: unterminated /\* comment"):
        core.plan_down(files, ["1_a"])


# --- issue 10 item 5: CR-only and mixed line endings -----------------------

def test_cr_only_file_splits_into_its_statements():
    migration = mig("1_x.sql", "-- Up Migration\rCREATE TABLE a (id int);\r-- second\rCREATE TABLE b (id int);\r"
                               "-- Down Migration\rDROP TABLE b;\rDROP TABLE a;\r")
    assert [text for _, text in migration.statements("up")] == [
        "CREATE TABLE a (id int)", "CREATE TABLE b (id int)"]
    assert [text for _, text in migration.statements("down")] == ["DROP TABLE b", "DROP TABLE a"]


def test_comment_ended_by_a_lone_cr_does_not_swallow_the_next_statement():
    assert [text for _, text in core.split_statements("-- note\rSELECT 1;\r\nSELECT 2;")] == [
        "SELECT 1", "SELECT 2"]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_line_numbers_count_every_line_ending(newline):
    migration = mig("1_x.sql", newline.join(["-- Up Migration", "SELECT 1;", "", "SELECT 2;", ""]))
    offsets = [offset for offset, _ in migration.statements("up")]
    assert [migration.line_of(offset) for offset in offsets] == [2, 4]


# --- issue 10 item 6: transaction control in a transactional migration -----

@pytest.mark.parametrize("statement", [
    "COMMIT;", "BEGIN;", "END;", "ROLLBACK;", "commit work;", "Rollback Transaction;",
    "START TRANSACTION;", "start transaction isolation level serializable;", "ABORT;",
    "BEGIN ISOLATION LEVEL SERIALIZABLE;", "COMMIT AND CHAIN;", "END TRANSACTION;",
    "PREPARE TRANSACTION 'x';", "COMMIT PREPARED 'x';", "ROLLBACK PREPARED 'x';",
    "/* why */ COMMIT;", "COMMIT",
])
def test_transaction_control_in_a_transactional_migration_is_an_error(statement):
    migration = mig("1_x.sql", "-- Up Migration\nCREATE TABLE a (id int);\n" + statement
                    + "\nCREATE TABLE b (id int);\n")
    with pytest.raises(MigrationError, match=r"1_x\.sql:3: .*ends or starts a transaction"):
        migration.validate("up")


def test_begin_select_end_is_refused_not_run_as_three_statements():
    """It used to split into three ordinary statements, ending the migration's transaction."""
    migration = mig("1_x.sql", "-- Up Migration\nBEGIN; SELECT 1; END;\n")
    with pytest.raises(MigrationError, match=r"1_x\.sql:2: BEGIN ends or starts a transaction"):
        migration.validate("up")


def test_transaction_control_in_the_down_section_is_an_error_too():
    files = [mig("1_a.sql", "-- Up Migration\nSELECT 1;\n-- Down Migration\nDROP TABLE t;\nCOMMIT;\n")]
    with pytest.raises(MigrationError, match=r"1_a\.sql:5: COMMIT"):
        files[0].validate("down")


@pytest.mark.parametrize("statement", [
    "SAVEPOINT s; RELEASE SAVEPOINT s;", "SAVEPOINT s; ROLLBACK TO SAVEPOINT s;",
    "SAVEPOINT s; ROLLBACK TO s;", "PREPARE q AS SELECT 1;",
    "SELECT 'COMMIT;';", "-- COMMIT;\nSELECT 1;", "DO $$ BEGIN PERFORM 1; END $$;",
    "CREATE TABLE begin_log (commit int);", "SELECT 1 AS \"commit\";",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
])
def test_savepoints_and_the_word_commit_elsewhere_are_fine(statement):
    mig("1_x.sql", "-- Up Migration\n" + statement + "\n").validate("up")


def test_transaction_control_is_allowed_outside_a_transaction():
    mig("1_x.sql", "-- Up Migration\n-- pg-migrate: no-transaction\nCOMMIT;\nVACUUM t;\n").validate("up")


# --- issue 10 item 7: an empty down section --------------------------------

@pytest.mark.parametrize("down", ["", "\n\n", "-- nothing to undo\n", "/* later */\n;\n"])
def test_down_section_without_a_statement_cannot_be_rolled_back(down):
    files = [mig("1_a.sql", "-- Up Migration\nCREATE TABLE t ();\n\n-- Down Migration\n" + down)]
    with pytest.raises(MigrationError, match=r"cannot roll back 1_a\.sql: .*holds no statement.*"
                                             r"-- pg-migrate: down-noop"):
        core.plan_down(files, ["1_a"])


def test_the_file_create_writes_cannot_be_rolled_back_until_its_down_section_is_written(tmp_path):
    path, _ = core.create_migration(str(tmp_path), "add-orders", now_ms=1760000000000)
    files, _ = core.load_migrations(str(tmp_path))
    with pytest.raises(MigrationError, match="holds no statement"):
        core.plan_action("redo", files, [files[0].name])


@pytest.mark.parametrize("down", [
    "-- pg-migrate: down-noop\n", "  --PG-MIGRATE:down-noop\r\n", "SELECT 1;\n",
])
def test_down_noop_marker_or_a_statement_makes_the_down_section_reversible(down):
    files = [mig("1_a.sql", "-- Up Migration\nCREATE TABLE t ();\n-- Down Migration\n" + down)]
    assert core.plan_down(files, ["1_a"]) == files


def test_down_noop_marker_inside_a_string_does_not_count():
    files = [mig("1_a.sql", "-- Up Migration\nSELECT 1;\n-- Down Migration\n/*\n-- pg-migrate: down-noop\n*/\n")]
    with pytest.raises(MigrationError, match="holds no statement"):
        core.plan_down(files, ["1_a"])


# --- issue 10 item 8: the no-transaction marker ----------------------------

@pytest.mark.parametrize("text", [
    "-- Up Migration\nSELECT '\n-- pg-migrate: no-transaction\n';\n",
    "-- Up Migration\nSELECT $$\n-- pg-migrate: no-transaction\n$$;\n",
    "-- Up Migration\n/*\n-- pg-migrate: no-transaction\n*/\nSELECT 1;\n",
    "-- Up Migration\nSELECT \"x\n-- pg-migrate: no-transaction\n\" FROM t;\n",
])
def test_no_transaction_marker_inside_a_string_or_block_comment_is_not_a_marker(text):
    assert mig("1_x.sql", text).transaction is True


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_no_transaction_marker_is_found_with_any_line_ending(newline):
    text = newline.join(["-- Up Migration", "-- pg-migrate: no-transaction",
                         "CREATE INDEX CONCURRENTLY i ON t (c);", "-- Down Migration",
                         "DROP INDEX CONCURRENTLY i;", ""])
    assert mig("1_x.sql", text).transaction is False


# --- create ---------------------------------------------------------------

def test_create_file_name_uses_a_13_digit_millisecond_prefix():
    assert core.new_migration_file_name("add-orders", [], now_ms=1760000000123) == \
        "1760000000123_add-orders.sql"


def test_create_file_name_sorts_after_the_latest_existing_file():
    existing = [mig("1999999999999_future.sql")]
    assert core.new_migration_file_name("next", existing, now_ms=1760000000000) == \
        "2000000000000_next.sql"


def test_create_continues_a_folder_of_17_digit_utc_prefixes():
    existing = [mig("20200513070724505_old.sql")]
    name = core.new_migration_file_name("next", existing, now_ms=1760000000123)
    assert name == "20251009085320123_next.sql"


@pytest.mark.parametrize("bad", ["", "has space", "../evil", "-leading-dash", "dots.sql"])
def test_create_rejects_names_that_are_not_plain_words(bad):
    with pytest.raises(MigrationError, match="invalid migration name"):
        core.new_migration_file_name(bad, [])


def test_create_writes_both_section_markers(tmp_path):
    path, _ = core.create_migration(str(tmp_path), "add-orders", now_ms=1760000000000)
    migration = core.parse_migration(os.path.basename(path), open(path, "rb").read())
    assert migration.down_span and migration.section("up").startswith("-- Up Migration")


def test_create_never_overwrites_an_existing_file(tmp_path, monkeypatch):
    existing = tmp_path / "1760000000000_add-orders.sql"
    existing.write_text("-- Up Migration\nSELECT 'keep me';\n")
    monkeypatch.setattr(core, "new_migration_file_name", lambda *args, **kwargs: existing.name)
    with pytest.raises(MigrationError, match="not overwriting"):
        core.create_migration(str(tmp_path), "add-orders")
    assert "keep me" in existing.read_text()


# --- options --------------------------------------------------------------

@pytest.mark.parametrize("value", ["5s", "500ms", "0", "2min", "1h", 10])
def test_valid_durations(value):
    assert core.validate_duration("lock_timeout", value) == str(value)


@pytest.mark.parametrize("value", ["5 seconds", "-1", "", "5s; DROP TABLE users"])
def test_invalid_durations_are_rejected(value):
    with pytest.raises(MigrationError, match="lock_timeout must be a PostgreSQL duration"):
        core.validate_duration("lock_timeout", value)
