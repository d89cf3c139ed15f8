"""Issue 3: database, extensions, roles and least-privilege grants.

Seed acceptance: "Extensions installed: uuid-ossp, pgcrypto, pg_trgm,
pg_stat_statements" and "Application database user created with correct
permissions". Every check logs in for real, through the published port.
"""
import json
import subprocess
import uuid

import psycopg2
import pytest

from conftest import (APP_ROLE, CONTAINER, DB_NAME, OWNER_ROLE, admin_login, app_login, docker_exec, owner_login, query,
                      run_playbook, secret)

EXTENSIONS = ["pg_stat_statements", "pg_trgm", "pgcrypto", "uuid-ossp"]


def test_seed_step_2_query_as_the_app_role_lists_the_extensions(app_params):
    rows = query(app_params, "SELECT extname FROM pg_extension WHERE extname IN "
                             "('uuid-ossp', 'pgcrypto', 'pg_trgm', 'pg_stat_statements') ORDER BY extname")
    assert [r[0] for r in rows] == EXTENSIONS


def test_pg_stat_statements_returnsquery(admin_params):
    params = dict(admin_params, dbname=DB_NAME)
    assert query(params, "SELECT count(*) FROM pg_stat_statements")[0][0] > 0


def test_database_is_utf8_and_owned_by_the_owner_role(admin_params):
    rows = query(admin_params, "SELECT pg_encoding_to_char(encoding), pg_get_userbyid(datdba) "
                               "FROM pg_database WHERE datname = %s", (DB_NAME,))
    assert rows == [("UTF8", OWNER_ROLE)]


@pytest.mark.parametrize("role", [APP_ROLE, OWNER_ROLE])
def test_role_is_no_superuser_and_cannot_create_roles_or_databases(admin_params, role):
    rows = query(admin_params, "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
                 (role,))
    assert rows == [(True, False, False, False)]


@pytest.mark.parametrize("role", [APP_ROLE, OWNER_ROLE])
def test_password_is_stored_as_scram(admin_params, role):
    stored = query(admin_params, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))[0][0]
    assert stored.startswith("SCRAM-SHA-256$")


def test_app_connection_limit_covers_the_pools_with_headroom(admin_params):
    limit = query(admin_params, "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (APP_ROLE,))[0][0]
    assert limit >= 20 * 2 + 1  # pool max x instances, plus headroom


def test_public_cannot_connect_to_the_database(admin_params):
    assert query(admin_params, "SELECT has_database_privilege('public', %s, 'CONNECT')", (DB_NAME,)) == [(False,)]


@pytest.fixture
def owner_table(owner_params):
    """A table the owner role creates after the bootstrap, as a migration would."""
    name = "grant_probe_" + uuid.uuid4().hex[:8]
    with psycopg2.connect(**owner_params) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, note text)")
    yield name
    with psycopg2.connect(**owner_params) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


def test_app_role_reads_and_writes_rows_in_tables_created_later(app_params, owner_table):
    with psycopg2.connect(**app_params) as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {owner_table} (note) VALUES ('a') RETURNING id")
        row_id = cur.fetchone()[0]
        cur.execute(f"UPDATE {owner_table} SET note = 'b' WHERE id = %s", (row_id,))
        cur.execute(f"SELECT note FROM {owner_table} WHERE id = %s", (row_id,))
        assert cur.fetchone() == ("b",)
        cur.execute(f"DELETE FROM {owner_table} WHERE id = %s", (row_id,))
        assert cur.rowcount == 1


@pytest.mark.parametrize("statement", [
    "CREATE TABLE app_made_table (id int)",
    "DROP TABLE {table}",
    "ALTER TABLE {table} ADD COLUMN extra int",
    "TRUNCATE {table}",
    "CREATE ROLE app_made_role",
    "SELECT rolpassword FROM pg_authid",
    "CREATE DATABASE app_made_db",
])
def test_app_role_is_refused(app_params, owner_table, statement):
    conn = psycopg2.connect(**app_params)
    conn.autocommit = True
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(statement.format(table=owner_table))
    finally:
        conn.close()


def test_a_wrong_password_is_refused(app_params):
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(**dict(app_params, password="not-the-password-" + uuid.uuid4().hex))


def test_no_password_appears_in_output_even_with_vvv(admin_params, app_params, owner_params):
    run = run_playbook("site.yml", "-vvv")
    assert run.rc == 0, run
    for params in (admin_params, app_params, owner_params):
        assert params["password"] not in run.output
    assert secret("PGBACKREST_REPO_CIPHER_PASS", "pgbackrest_cipher_pass") not in run.output


# What a change of every password changes, and nothing else: the superuser's (its file on the
# Docker host, then the server), the owner's and the application role's (one task).
PASSWORD_TASKS = ["postgres_container : Write the superuser password file",
                  "postgres_container : Set the superuser password through the local socket",
                  "postgres_bootstrap : Create the owner and application roles with their passwords"]
ROTATED = {"POSTGRES_PASSWORD": "app", "POSTGRES_OWNER_PASSWORD": "owner", "POSTGRES_ADMIN_PASSWORD": "admin"}


def _login(params, password, statement="SELECT 1"):
    """'ok' when these parameters log in with this password and run the statement, else the server's error."""
    try:
        conn = psycopg2.connect(**dict(params, password=password))
    except psycopg2.OperationalError as error:
        return str(error)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
        return "ok"
    finally:
        conn.close()


class TestRotation:
    """Every password rotated by one site.yml, run again, then the old ones put back: the class's
    fixture makes the three runs and records what each password could do in between and after."""

    @pytest.fixture(scope="class")
    def rotation(self):
        params = {"app": app_login(), "owner": owner_login(), "admin": admin_login()}
        new = {name: f"rotated-{name}-{uuid.uuid4().hex}" for name in params}
        env = {variable: new[name] for variable, name in ROTATED.items()}
        # The owner's DDL shows the new password can still do the owner's work.
        work = {"app": "SELECT 1", "owner": "CREATE TEMP TABLE owner_rotation_probe (id int)", "admin": "SELECT 1"}
        seen = {}
        try:
            seen["first"] = run_playbook("site.yml", env=env)
            seen["second"] = run_playbook("site.yml", env=env)
            seen["rotated"] = {name: (_login(params[name], new[name], work[name]),
                                      _login(params[name], params[name]["password"])) for name in params}
            # Development logs every statement and pg_stat_statements keeps utility statements as
            # written. The query text holds no password, so it cannot match itself.
            new_admin = dict(params["admin"], password=new["admin"], dbname=DB_NAME)
            seen["statements"] = [row[0] for row in query(new_admin, "SELECT query FROM pg_stat_statements")]
            logs = subprocess.run(["docker", "logs", CONTAINER], capture_output=True, text=True, check=True)
            seen["logs"] = logs.stdout + logs.stderr
            # grep reads the patterns from stdin: no password on its command line.
            seen["on_volume"] = docker_exec(CONTAINER, "grep", "-rlF", "-f", "/dev/stdin", "/var/lib/postgresql/data",
                                            stdin="\n".join(new.values()) + "\n")
        finally:
            seen["restored"] = run_playbook("site.yml")
        seen["put_back"] = {name: (_login(params[name], params[name]["password"]), _login(params[name], new[name]))
                            for name in params}
        return dict(seen, new=new)

    def test_one_run_changes_every_password_and_a_rerun_changes_nothing(self, rotation):
        first, second = rotation["first"], rotation["second"]
        assert first.rc == 0 and first.changed_tasks == PASSWORD_TASKS, first
        assert second.rc == 0 and second.changed == 0, second

    def test_putting_the_old_passwords_back_changes_them_once(self, rotation):
        restored = rotation["restored"]
        assert restored.rc == 0 and restored.changed_tasks == PASSWORD_TASKS, restored

    @pytest.mark.parametrize("name", ["app", "owner", "admin"])
    def test_the_new_password_works_and_the_old_one_is_refused(self, rotation, name):
        with_new, with_old = rotation["rotated"][name]
        assert with_new == "ok"
        assert "password authentication failed" in with_old, with_old

    @pytest.mark.parametrize("name", ["app", "owner", "admin"])
    def test_after_the_rotation_back_the_old_password_works_and_the_new_one_is_refused(self, rotation, name):
        with_old, with_new = rotation["put_back"][name]
        assert with_old == "ok"
        assert "password authentication failed" in with_new, with_new

    def test_no_password_reaches_the_log_pg_stat_statements_or_the_volume(self, rotation):
        for name, password in rotation["new"].items():
            assert not [q for q in rotation["statements"] if password in q], f"{name} in pg_stat_statements"
            assert password not in rotation["logs"], f"{name} in the server log"
        on_volume = rotation["on_volume"]
        assert on_volume.returncode == 1 and on_volume.stdout == "", f"passwords in files on the volume: {on_volume.stdout}"


def test_check_mode_reports_a_pending_superuser_rotation_and_changes_nothing(admin_params):
    new_admin_password = "checkmode-admin-" + uuid.uuid4().hex
    run = run_playbook("site.yml", "--check", env={"POSTGRES_ADMIN_PASSWORD": new_admin_password})
    assert run.rc == 0, run
    assert run.changed >= 1 and "a real run sets it" in run.output, run
    # The old password still logs in; the new one does not.
    query(admin_params, "SELECT 1")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(**dict(admin_params, password=new_admin_password))


@pytest.mark.parametrize("extra_vars, env, message", [
    ({"db_extensions": ["uuid-ossp", "no_such_extension"]}, {}, "Unknown extension(s) no_such_extension"),
    ({"db_app_user": "Bad-Name"}, {}, "db_app_user=Bad-Name is not a valid name"),
    ({}, {"POSTGRES_PASSWORD": "short"}, "has 5 characters; at least 16 are required"),
    ({"db_app_password": ""}, {}, "has 0 characters; at least 16 are required"),
], ids=["unknown extension", "invalid role name", "short password", "empty password"])
def test_bad_input_fails_before_any_change(admin_params, extra_vars, env, message):
    run = run_playbook("site.yml", "-e", json.dumps(extra_vars), env=env)
    assert run.rc != 0, run
    assert message in run.output, run
    assert run.changed == 0, run
    assert query(admin_params, "SELECT count(*) FROM pg_roles WHERE rolname = 'Bad-Name'") == [(0,)]
