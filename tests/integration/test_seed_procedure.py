"""The seed's Testing Procedure (INFRA-003), steps 3, 4, 5, 7 and 8, as written,
against the provisioned container: `docker exec <container> psql` in place of
`docker compose exec postgres psql`, playbooks/migrate.yml in place of
`npm run migrate:*`.

Every test gets its own freshly created database, made the way the bootstrap
makes `social_selling` (owned by the owner role, CONNECT revoked from PUBLIC,
the extensions, the application role's grants and default privileges), and
dropped afterwards. So `up` really runs on an empty database, `down` really
drops the users table, and the tests run in any order, alone or shuffled,
whatever `social_selling` holds.

pg_hba.conf lets the owner and application roles into `social_selling` only,
so in the fresh database they act through the superuser's login with the
session role set (`PGOPTIONS=-c role=...`): migrations run as the owner role
(the objects it creates belong to it, as in `social_selling`), and the seed's
psql steps run with the application role's privileges (`current_user`).
"""
import json
import pathlib
import subprocess
import sys

import psycopg2
import pytest
from conftest import APP_ROLE, CONTAINER, DB_NAME, OWNER_ROLE, ROOT, docker_exec, extra_vars_args, new_database, playbook_env

BIN = pathlib.Path(sys.executable).parent
INITIAL = "1710000000001_initial-schema"
EXTENSIONS = ["uuid-ossp", "pgcrypto", "pg_trgm", "pg_stat_statements"]


def value(stdout):
    """The single value psql printed in its (last) aligned result table."""
    lines = stdout.splitlines()
    separators = [i for i, line in enumerate(lines) if line.strip() and set(line.strip()) <= set("-+")]
    return lines[separators[-1] + 1].strip()


@pytest.fixture
def seed_db(admin_params):
    """A fresh database bootstrapped like `social_selling`, with no migration applied; dropped afterwards."""
    with new_database(admin_params, "seed_", owner=OWNER_ROLE) as name:
        conn = psycopg2.connect(**admin_params)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{name}" FROM PUBLIC')
            cur.execute(f'GRANT CONNECT ON DATABASE "{name}" TO "{APP_ROLE}"')
        conn.close()
        db = psycopg2.connect(**dict(admin_params, dbname=name))
        db.autocommit = True
        with db.cursor() as cur:
            for extension in EXTENSIONS:
                cur.execute(f'CREATE EXTENSION IF NOT EXISTS "{extension}"')
            cur.execute(f'GRANT USAGE ON SCHEMA public TO "{APP_ROLE}"')
            cur.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{OWNER_ROLE}"')
            for objects, privileges in (("TABLES", "SELECT, INSERT, UPDATE, DELETE"), ("SEQUENCES", "USAGE, SELECT"),
                                        ("FUNCTIONS", "EXECUTE")):
                cur.execute(f'ALTER DEFAULT PRIVILEGES FOR ROLE "{OWNER_ROLE}" IN SCHEMA public '
                            f'GRANT {privileges} ON {objects} TO "{APP_ROLE}"')
            cur.execute("SELECT to_regclass('public.users') IS NULL, to_regclass('public.pgmigrations') IS NULL")
            assert cur.fetchone() == (True, True)
        db.close()
        yield dict(admin_params, dbname=name)


@pytest.fixture
def migrate(seed_db, tmp_path):
    """`npm run migrate:<action>` -> playbooks/migrate.yml, pointed at the fresh database, as the owner role."""
    overrides = tmp_path / "seed-db.json"
    overrides.write_text(json.dumps({
        "postgres_migrations_login_db": seed_db["dbname"],
        "postgres_migrations_login_port": seed_db["port"],
        "postgres_migrations_login_user": seed_db["user"],
        "postgres_migrations_login_password": seed_db["password"],
    }))
    overrides.chmod(0o600)

    def run(action):
        env = playbook_env({"PGOPTIONS": "-c role=" + OWNER_ROLE})
        completed = subprocess.run(
            [str(BIN / "ansible-playbook"), "playbooks/migrate.yml", *extra_vars_args(),
             "-e", "@" + str(overrides), "-e", "migrate_action=" + action],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        print(completed.stdout, completed.stderr)  # shown by pytest on failure
        return completed
    return run


@pytest.fixture
def psql(seed_db):
    """`docker exec <container> psql -d <fresh database> -c SQL` with the application role's privileges."""
    def run(sql, role=APP_ROLE):
        completed = docker_exec(CONTAINER, "psql", "-U", seed_db["user"], "-d", seed_db["dbname"],
                                "-v", "ON_ERROR_STOP=1", "-c", sql, env={"PGOPTIONS": "-c role=" + role},
                                timeout=60)
        print(completed.stdout, completed.stderr)
        return completed
    return run


@pytest.fixture
def migrated(migrate, psql):
    """The fresh database after `migrate up`."""
    assert migrate("up").returncode == 0
    assert value(psql("SELECT to_regclass('public.users');").stdout) == "users"


def test_fresh_database_is_made_like_the_provisioned_one(seed_db, psql):
    """The stand-in database has what `social_selling` has before any migration (and the psql steps act as the app)."""
    who = psql("SELECT current_user;")
    assert who.returncode == 0 and value(who.stdout) == APP_ROLE
    assert value(psql("SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension "
                      "WHERE extname <> 'plpgsql';").stdout) == ",".join(sorted(EXTENSIONS))
    assert value(psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database();")
                 .stdout) == OWNER_ROLE
    assert DB_NAME != seed_db["dbname"]


def test_step_3_migrate_up_runs_successfully_and_creates_users(migrate, psql):
    assert value(psql("SELECT to_regclass('public.users') IS NULL;").stdout) == "t"
    run = migrate("up")
    assert run.returncode == 0
    assert value(psql("SELECT to_regclass('public.users');").stdout) == "users"
    assert value(psql("SELECT string_agg(name, ',') FROM pgmigrations;").stdout) == INITIAL
    # Created by the owner role, as in social_selling: the app role's default privileges apply.
    assert value(psql("SELECT tableowner FROM pg_tables WHERE tablename = 'users';").stdout) == OWNER_ROLE


def test_step_4_users_table_has_every_column(migrated, psql):
    described = psql(r"\d users")
    assert described.returncode == 0
    for column in ("id", "email", "password_hash", "name", "timezone", "language",
                   "subscription_tier", "email_verified", "email_verification_token",
                   "password_reset_token", "password_reset_expires", "last_login_at",
                   "last_login_ip", "created_at", "updated_at", "deleted_at"):
        assert " %s " % column in described.stdout, column


def test_step_5_updated_at_trigger_is_working(migrated, psql):
    result = psql("INSERT INTO users (email, password_hash, name) VALUES ('test@test.com', 'hash', 'Test');\n"
                  "   UPDATE users SET name = 'Updated' WHERE email = 'test@test.com';\n"
                  "   SELECT updated_at > created_at as trigger_working FROM users "
                  "WHERE email = 'test@test.com';")
    assert result.returncode == 0
    assert "trigger_working" in result.stdout and value(result.stdout) == "t"


def test_step_7_migrate_down_rolls_back_and_drops_users(migrated, migrate, psql):
    assert migrate("down").returncode == 0
    assert value(psql("SELECT to_regclass('public.users') IS NULL;").stdout) == "t"
    assert value(psql("SELECT count(*) FROM pgmigrations;").stdout) == "0"


def test_step_8_migrate_up_reapplies_the_migration(migrated, migrate, psql):
    assert migrate("down").returncode == 0
    assert value(psql("SELECT to_regclass('public.users') IS NULL;").stdout) == "t"
    assert migrate("up").returncode == 0
    assert value(psql("SELECT to_regclass('public.users') IS NOT NULL;").stdout) == "t"
    assert value(psql("SELECT string_agg(name, ',') FROM pgmigrations;").stdout) == INITIAL
