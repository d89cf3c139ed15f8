"""Grant model `seed` (roles/postgres_bootstrap/README.md, "Grant model `seed`").

The seed card's model: the application role owns the database and its public
schema and has ALL PRIVILEGES on the owner role's objects. Each class converges
the container with `postgres_bootstrap_grant_model=seed` once (class-scoped
fixtures: pytest-randomly keeps a class's tests together) and puts the default
model back before the next class. Every statement the application may run is
rolled back, so no test leaves an object behind; every refusal is matched by
its SQLSTATE (42501, insufficient_privilege) and the server's message.
"""
import uuid

import psycopg2
import psycopg2.errors
import pytest

from conftest import APP_ROLE, DB_NAME, OWNER_ROLE, owner_login, query, run_playbook

SEED = ("-e", "postgres_bootstrap_grant_model=seed")

# What only the seed's model allows the application role, and the message the
# default model refuses it with: {table} is a table the owner role (the
# migrations) created while the seed's model was in force, with its sequence.
SEED_ONLY = {
    "create a table in public": ("CREATE TABLE app_made_table (id int)", "permission denied for schema public"),
    "create a schema": ("CREATE SCHEMA app_made_schema", f"permission denied for database {DB_NAME}"),
    "comment on the database it owns": (f"COMMENT ON DATABASE {DB_NAME} IS 'app'",
                                        f"must be owner of database {DB_NAME}"),
    "comment on the schema it owns": ("COMMENT ON SCHEMA public IS 'app'", "must be owner of schema public"),
    "truncate the owner's table": ("TRUNCATE {table}", "permission denied for table {table}"),
    "drop the owner's table": ("DROP TABLE {table}", "must be owner of table {table}"),
    "set the owner's sequence": ("SELECT setval('{table}_id_seq', 42)", "permission denied for sequence {table}_id_seq"),
}

# What the application role may not do in either model.
NEVER = {
    "alter the owner's table": ("ALTER TABLE {table} ADD COLUMN extra int", "must be owner of table {table}"),
    "create a role": ("CREATE ROLE app_made_role", "permission denied to create role"),
    "create a database": ("CREATE DATABASE app_made_db", "permission denied to create database"),
    "read pg_authid": ("SELECT rolpassword FROM pg_authid", "permission denied for table pg_authid"),
}

# Rows stay the application's in both models.
ROWS = "INSERT INTO {table} (note) VALUES ('a'); UPDATE {table} SET note = 'b'; SELECT * FROM {table}; DELETE FROM {table}"


def run_as_app(app_params, statement):
    """Run the statement as the application role and roll it back (CREATE DATABASE: outside a transaction)."""
    conn = psycopg2.connect(**app_params)
    conn.autocommit = statement.startswith("CREATE DATABASE")
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.rollback()
        conn.close()


def assert_refused(app_params, statement, message):
    with pytest.raises(psycopg2.errors.InsufficientPrivilege, match=message):
        run_as_app(app_params, statement)


def owner_table(owner_params):
    """A table with a sequence, created by the owner role as a migration would; its name."""
    name = "seed_probe_" + uuid.uuid4().hex[:8]
    query(owner_params, f"CREATE TABLE {name} (id serial PRIMARY KEY, note text)")
    return name


def drop_table(owner_params, name):
    query(owner_params, f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def later_table(owner_params):
    """A table the owner role creates after the class's converge (a class fixture, set up first); dropped after."""
    name = owner_table(owner_params)
    yield name
    drop_table(owner_params, name)


def converge(*args):
    run = run_playbook("site.yml", *args)
    assert run.rc == 0, run
    return run


class TestSeedModel:
    """Converged with the seed's model: what the application role may and may not do."""

    @pytest.fixture(scope="class")
    def seed(self):
        try:
            first = converge(*SEED)
            again = converge(*SEED)
            yield {"first": first, "again": again}
        finally:
            converge()

    def test_the_switch_to_seed_changes_then_a_rerun_changes_nothing(self, seed):
        assert seed["first"].changed >= 1, seed["first"]
        assert seed["again"].changed == 0, seed["again"]

    def test_the_migrations_and_the_health_check_still_run(self, seed):
        # The owner role, which no longer owns the database, still connects and migrates.
        assert '{"status": "ok", "database": "up"}' in seed["again"].output, seed["again"]

    def test_the_application_role_owns_the_database(self, seed, admin_params):
        assert query(admin_params, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                     (DB_NAME,)) == [(APP_ROLE,)]

    def test_public_still_cannot_connect(self, seed, admin_params):
        assert query(admin_params, "SELECT has_database_privilege('public', %s, 'CONNECT')", (DB_NAME,)) == [(False,)]

    def test_the_application_role_is_still_no_superuser_and_cannot_create_roles_or_databases(self, seed, admin_params):
        assert query(admin_params, "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
                     (APP_ROLE,)) == [(False, False, False)]

    @pytest.mark.parametrize("privilege", ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"])
    def test_all_privileges_on_a_table_the_owner_creates_later(self, seed, admin_params, later_table, privilege):
        assert query(dict(admin_params, dbname=DB_NAME), "SELECT has_table_privilege(%s, %s, %s)",
                     (APP_ROLE, later_table, privilege)) == [(True,)]

    @pytest.mark.parametrize("name", SEED_ONLY)
    def test_the_application_role_may(self, seed, app_params, later_table, name):
        run_as_app(app_params, SEED_ONLY[name][0].format(table=later_table))

    def test_the_application_role_reads_and_writes_rows(self, seed, app_params, later_table):
        run_as_app(app_params, ROWS.format(table=later_table))

    @pytest.mark.parametrize("name", NEVER)
    def test_the_application_role_may_not(self, seed, app_params, later_table, name):
        statement, message = NEVER[name]
        assert_refused(app_params, statement.format(table=later_table), message.format(table=later_table))


class TestBackFromSeed:
    """Seed's model, then the default again: every privilege only seed grants is gone."""

    @pytest.fixture(scope="class")
    def back(self):
        owner_params = owner_login()
        # A table the owner creates while seed is in force gets ALL for the
        # application role (default privileges); the switch back must take it away.
        table = None
        try:
            converge(*SEED)
            table = owner_table(owner_params)
            back = converge()
            again = converge()
            yield {"back": back, "again": again, "table": table}
        finally:
            if table:
                drop_table(owner_params, table)
            converge()

    def test_the_switch_back_changes_then_a_rerun_changes_nothing(self, back):
        assert back["back"].changed >= 1, back["back"]
        assert back["again"].changed == 0, back["again"]

    def test_the_owner_role_owns_the_database_again(self, back, admin_params):
        assert query(admin_params, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                     (DB_NAME,)) == [(OWNER_ROLE,)]

    @pytest.mark.parametrize("name", SEED_ONLY)
    def test_the_application_role_is_refused_again(self, back, app_params, name):
        statement, message = SEED_ONLY[name]
        assert_refused(app_params, statement.format(table=back["table"]), message.format(table=back["table"]))

    def test_the_application_role_still_reads_and_writes_rows(self, back, app_params):
        run_as_app(app_params, ROWS.format(table=back["table"]))

    @pytest.mark.parametrize("privilege, expected", [
        ("SELECT", True), ("INSERT", True), ("UPDATE", True), ("DELETE", True),
        ("TRUNCATE", False), ("REFERENCES", False), ("TRIGGER", False),
    ])
    def test_a_table_the_owner_creates_later_gets_the_default_models_privileges(
            self, back, admin_params, later_table, privilege, expected):
        assert query(dict(admin_params, dbname=DB_NAME), "SELECT has_table_privilege(%s, %s, %s)",
                     (APP_ROLE, later_table, privilege)) == [(expected,)]
