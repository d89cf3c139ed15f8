"""Issue 10 (items 4-9) and issue 12 against a real PostgreSQL 15: what reaches the server.

Each test failed on the engine before the fix (see the commit that added it).
"""
import uuid

import pytest

import pg_migrate_core as core
from pg_migrate_core import MigrationError, MigrationFailed
from conftest import query, migrations_folder, tracked


@pytest.fixture
def migrate(scratch_db):
    def run(folder, action="up", conn_factory=None, **options):
        factory = conn_factory or (lambda: core.connect(dict(scratch_db)))
        return core.run(factory, str(folder), action,
                        runner_options={"advisory_lock_wait": 10}, **options)
    return run


def tables(params, *names):
    return [name for name in names if query(params, "SELECT to_regclass(%s) IS NOT NULL", (name,))[0][0]]


# --- item 4 -------------------------------------------------------------------

def test_unterminated_comment_runs_nothing_and_names_file_and_line(migrate, scratch_db, tmp_path):
    folder = migrations_folder(tmp_path, {
        "1710000000001_first": "-- Up Migration\nCREATE TABLE first (id int);\n",
        "1710000000002_broken": "-- Up Migration\nCREATE TABLE a (id int); /* CREATE TABLE b (id int);"
                                " CREATE TABLE c (id int);\n",
    })
    with pytest.raises(MigrationError, match=r"1710000000002_broken\.sql:2: unterminated /\* comment"):
        migrate(folder)
    assert tracked(scratch_db) is None and tables(scratch_db, "first", "a", "b", "c") == []


# --- item 5 -------------------------------------------------------------------

def test_cr_only_file_runs_every_statement(migrate, scratch_db, tmp_path):
    folder = migrations_folder(tmp_path, {})
    (folder / "1710000000001_cr.sql").write_bytes(
        b"-- Up Migration\r-- the a table\rCREATE TABLE a (id int);\rCREATE TABLE b (id int);\r"
        b"-- Down Migration\rDROP TABLE b;\rDROP TABLE a;\r")
    migrate(folder)
    assert tables(scratch_db, "a", "b") == ["a", "b"]
    migrate(folder, "down")
    assert tables(scratch_db, "a", "b") == [] and tracked(scratch_db) == []


def test_error_line_in_a_cr_only_file(migrate, tmp_path):
    folder = migrations_folder(tmp_path, {})
    (folder / "1710000000001_cr.sql").write_bytes(b"-- Up Migration\rSELECT 1;\r\rSELECT 1 / 0;\r")
    with pytest.raises(MigrationFailed) as failure:
        migrate(folder)
    assert failure.value.line == 4


# --- item 6 -------------------------------------------------------------------

@pytest.mark.parametrize("statement", ["COMMIT;", "END;", "BEGIN;", "ROLLBACK;", "START TRANSACTION;",
                                       "ABORT;", "PREPARE TRANSACTION 'p';", "COMMIT PREPARED 'p';"])
def test_transaction_control_is_refused_before_anything_runs(migrate, scratch_db, tmp_path, statement):
    folder = migrations_folder(tmp_path, {
        "1710000000001_txn": "-- Up Migration\nCREATE TABLE a (id int);\n%s\nCREATE TABLE b (id int);\n"
                             "SELECT 1 / 0;\n" % statement,
    })
    with pytest.raises(MigrationError, match=r"1710000000001_txn\.sql:3: .*ends or starts a transaction"):
        migrate(folder)
    assert tracked(scratch_db) is None and tables(scratch_db, "a", "b") == []


def test_savepoints_stay_inside_the_migration_transaction(migrate, scratch_db, tmp_path):
    folder = migrations_folder(tmp_path, {
        "1710000000001_sp": "-- Up Migration\nCREATE TABLE a (id int);\nSAVEPOINT s;\n"
                            "CREATE TABLE b (id int);\nROLLBACK TO SAVEPOINT s;\nRELEASE s;\n",
    })
    migrate(folder)
    assert tables(scratch_db, "a", "b") == ["a"] and tracked(scratch_db) == ["1710000000001_sp"]


# --- item 7 -------------------------------------------------------------------

def test_down_of_an_empty_down_section_fails_and_keeps_the_migration(migrate, scratch_db, tmp_path):
    folder = migrations_folder(tmp_path, {
        "1710000000001_t": "-- Up Migration\nCREATE TABLE t (id int);\n\n-- Down Migration\n",
    })
    migrate(folder)
    with pytest.raises(MigrationError, match=r"cannot roll back 1710000000001_t\.sql: .*holds no statement"):
        migrate(folder, "down")
    assert tracked(scratch_db) == ["1710000000001_t"] and tables(scratch_db, "t") == ["t"]


def test_down_noop_marker_rolls_back_the_tracking_row_only(migrate, scratch_db, tmp_path):
    folder = migrations_folder(tmp_path, {
        "1710000000001_t": "-- Up Migration\nCREATE TABLE t (id int);\n\n-- Down Migration\n"
                           "-- pg-migrate: down-noop\n",
    })
    migrate(folder)
    migrate(folder, "down")
    assert tracked(scratch_db) == [] and tables(scratch_db, "t") == ["t"]


# --- item 8 -------------------------------------------------------------------

def test_marker_text_in_a_string_keeps_the_transaction(migrate, scratch_db, tmp_path):
    folder = migrations_folder(tmp_path, {
        "1710000000001_s": "-- Up Migration\nCREATE TABLE a (id int);\nSELECT '\n"
                           "-- pg-migrate: no-transaction\n';\nSELECT 1 / 0;\n",
    })
    with pytest.raises(MigrationFailed, match="rolled back"):
        migrate(folder)
    assert tables(scratch_db, "a") == []


def test_marker_in_a_crlf_file_runs_create_index_concurrently(migrate, scratch_db, tmp_path):
    folder = migrations_folder(tmp_path, {})
    (folder / "1710000000001_t.sql").write_bytes(b"-- Up Migration\r\nCREATE TABLE t (c int);\r\n")
    (folder / "1710000000002_i.sql").write_bytes(
        b"-- Up Migration\r\n-- pg-migrate: no-transaction\r\n"
        b"CREATE INDEX CONCURRENTLY t_c_index ON t (c);\r\n"
        b"-- Down Migration\r\nDROP INDEX CONCURRENTLY t_c_index;\r\n")
    migrate(folder)
    assert tables(scratch_db, "t_c_index") == ["t_c_index"]


# --- item 9 -------------------------------------------------------------------

@pytest.fixture
def owner_and_app(scratch_db):
    """Two roles like the bootstrap's: the app role gets ALL on what the owner creates."""
    suffix = uuid.uuid4().hex[:8]
    owner, app = "mig_owner_" + suffix, "mig_app_" + suffix
    query(scratch_db, 'CREATE ROLE "%s"; CREATE ROLE "%s"; GRANT CREATE, USAGE ON SCHEMA public TO "%s";'
          'ALTER DEFAULT PRIVILEGES FOR ROLE "%s" IN SCHEMA public GRANT ALL ON TABLES TO "%s";'
          'ALTER DEFAULT PRIVILEGES FOR ROLE "%s" IN SCHEMA public GRANT ALL ON SEQUENCES TO "%s";'
          % (owner, app, owner, owner, app, owner, app))
    try:
        yield owner, app
    finally:
        for role in (owner, app):
            query(scratch_db, 'DROP OWNED BY "%s"; DROP ROLE "%s"' % (role, role))


def as_role(params, role):
    def factory():
        conn = core.connect(dict(params))
        with conn.cursor() as cur:
            cur.execute('SET ROLE "%s"' % role)
        return conn
    return factory


WRITES = ["INSERT", "UPDATE", "DELETE", "TRUNCATE"]


def privileges(params, role):
    return {
        (table, privilege): query(params, "SELECT has_table_privilege(%s, %s, %s)", (role, table, privilege))[0][0]
        for table in ("public.pgmigrations", "public.pgmigrations_checksums")
        for privilege in WRITES + ["SELECT"]
    }


def test_app_role_gets_no_write_on_the_migration_tables(migrate, scratch_db, tmp_path, owner_and_app):
    owner, app = owner_and_app
    folder = migrations_folder(tmp_path, {"1710000000001_t": "-- Up Migration\nCREATE TABLE t (id int);\n"})
    result = migrate(folder, conn_factory=as_role(scratch_db, owner))
    granted = privileges(scratch_db, app)
    assert [key for key, held in granted.items() if held] == [
        ("public.pgmigrations", "SELECT"), ("public.pgmigrations_checksums", "SELECT")]
    assert query(scratch_db, "SELECT has_sequence_privilege(%s, 'public.pgmigrations_id_seq', 'USAGE'), "
                             "has_sequence_privilege(%s, 'public.pgmigrations_id_seq', 'UPDATE')",
                 (app, app)) == [(False, False)]
    assert has_table_privilege_of_application_table(scratch_db, app)
    assert result["revoked"]


def has_table_privilege_of_application_table(params, app):
    """The migration's own tables keep the default privileges: only the engine's are narrowed."""
    return query(params, "SELECT has_table_privilege(%s, 'public.t', 'INSERT')", (app,))[0][0]


def test_existing_tables_are_fixed_on_the_next_run_then_left_alone(migrate, scratch_db, tmp_path, owner_and_app):
    owner, app = owner_and_app
    folder = migrations_folder(tmp_path, {"1710000000001_t": "-- Up Migration\nCREATE TABLE t (id int);\n"})
    migrate(folder, conn_factory=as_role(scratch_db, owner))
    query(scratch_db, 'GRANT INSERT, UPDATE, DELETE, TRUNCATE ON pgmigrations, pgmigrations_checksums '
                      'TO "%s", PUBLIC; GRANT ALL ON SEQUENCE pgmigrations_id_seq TO PUBLIC' % app)
    again = migrate(folder, conn_factory=as_role(scratch_db, owner))
    assert again["executed"] == [] and again["changed"] and again["revoked"]
    assert not any(held for (_, privilege), held in privileges(scratch_db, app).items() if privilege in WRITES)
    assert not any(held for (_, privilege), held in privileges(scratch_db, "public").items()
                   if privilege in WRITES)
    third = migrate(folder, conn_factory=as_role(scratch_db, owner))
    assert (third["changed"], third["revoked"]) == (False, [])


# --- issue 12: one round trip, errors still located -------------------------

def test_positionless_error_in_a_long_migration_names_its_statement(migrate, tmp_path):
    body = "".join("INSERT INTO t VALUES (%d);\n" % i for i in range(1000))
    folder = migrations_folder(tmp_path, {
        "1710000000001_seed": "-- Up Migration\nCREATE TABLE t (id int CHECK (id <> 700));\n" + body,
    })
    with pytest.raises(MigrationFailed, match="violates check constraint") as failure:
        migrate(folder)
    assert failure.value.line == 3 + 700


def test_error_position_points_into_the_right_line(migrate, tmp_path):
    folder = migrations_folder(tmp_path, {
        "1710000000001_x": "-- Up Migration\nCREATE TABLE t (id int);\nINSERT INTO t\n  VALUES (1);\n"
                           "SELECT\n  nope\nFROM t;\n",
    })
    with pytest.raises(MigrationFailed, match='column "nope" does not exist') as failure:
        migrate(folder)
    assert failure.value.line == 6
