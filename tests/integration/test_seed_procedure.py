"""The seed's Testing Procedure (INFRA-003), steps 3, 4, 5, 7 and 8, as written,
against the provisioned container: `docker exec social_selling_postgres` in
place of `docker compose exec postgres`, playbooks/migrate.yml in place of
`npm run migrate:*`.

The steps build on each other, so the tests run in file order on one module
fixture, which re-applies `up` at the end to restore the state it found.
Skipped when the container is not running, and when the users table holds
real data (step 7 drops it).
"""
import pathlib
import shutil
import subprocess
import sys

import pytest
from conftest import docker_exec, playbook_env, secret

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
CONTAINER = "social_selling_postgres"
INITIAL = "1710000000001_initial-schema"


def container_running():
    if shutil.which("docker") is None:
        return False
    completed = subprocess.run(["docker", "ps", "--filter", "name=^%s$" % CONTAINER,
                                "--format", "{{.Names}}"], capture_output=True, text=True)
    return completed.returncode == 0 and completed.stdout.strip() == CONTAINER


pytestmark = pytest.mark.skipif(not container_running(),
                                reason="container %s is not running (provision first)" % CONTAINER)


def value(stdout):
    """The single value psql printed in its (last) aligned result table."""
    lines = stdout.splitlines()
    separators = [i for i, line in enumerate(lines) if line.strip() and set(line.strip()) <= set("-+")]
    return lines[separators[-1] + 1].strip()


def migrate(action):
    """`npm run migrate:<action>` -> our playbook with the public interface."""
    completed = subprocess.run([str(BIN / "ansible-playbook"), "playbooks/migrate.yml",
                                "-e", "migrate_action=" + action],
                               cwd=ROOT, env=playbook_env(), capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        print(completed.stdout, completed.stderr)  # shown by pytest on failure
    return completed


@pytest.fixture(scope="module")
def psql():
    """`docker exec social_selling_postgres psql -U social_selling_user -d social_selling -c SQL`."""
    password = secret("POSTGRES_PASSWORD", "postgres_app_password")

    def run(sql, user="social_selling_user"):
        completed = docker_exec(CONTAINER, "psql", "-U", user, "-d", "social_selling", "-v", "ON_ERROR_STOP=1",
                                "-c", sql, env={"PGPASSWORD": password} if password else None, timeout=60)
        if completed.returncode != 0:
            print(completed.stdout, completed.stderr)
        return completed
    return run


@pytest.fixture(scope="module")
def procedure(psql):
    """Guard the real data, then restore what was found: the schema (`up`), no test row."""
    probe = psql("SELECT count(*) FROM users WHERE email <> 'test@test.com';")
    if probe.returncode == 0 and value(probe.stdout) != "0":
        pytest.skip("users holds real rows; step 7 (migrate:down) would drop them")
    latest = psql("SELECT name FROM pgmigrations ORDER BY run_on DESC, id DESC LIMIT 1;")
    if latest.returncode == 0 and "(0 rows)" not in latest.stdout and INITIAL not in latest.stdout:
        pytest.skip("migrations after %s are applied; step 7 expects the initial schema to be "
                    "the latest" % INITIAL)
    psql("DELETE FROM users WHERE email = 'test@test.com';")  # left by an interrupted run
    yield
    assert migrate("up").returncode == 0, "could not restore the schema with migrate up"
    psql("DELETE FROM users WHERE email = 'test@test.com';")


def test_step_3_migrate_up_runs_successfully_and_creates_users(procedure, psql):
    assert migrate("up").returncode == 0
    assert value(psql("SELECT to_regclass('public.users');").stdout) == "users"


def test_step_4_users_table_has_every_column(procedure, psql):
    described = psql(r"\d users")
    assert described.returncode == 0
    for column in ("id", "email", "password_hash", "name", "timezone", "language",
                   "subscription_tier", "email_verified", "email_verification_token",
                   "password_reset_token", "password_reset_expires", "last_login_at",
                   "last_login_ip", "created_at", "updated_at", "deleted_at"):
        assert " %s " % column in described.stdout, column


def test_step_5_updated_at_trigger_is_working(procedure, psql):
    result = psql("INSERT INTO users (email, password_hash, name) VALUES ('test@test.com', 'hash', 'Test');\n"
                  "   UPDATE users SET name = 'Updated' WHERE email = 'test@test.com';\n"
                  "   SELECT updated_at > created_at as trigger_working FROM users "
                  "WHERE email = 'test@test.com';")
    assert result.returncode == 0
    assert "trigger_working" in result.stdout and value(result.stdout) == "t"


def test_step_7_migrate_down_rolls_back_and_drops_users(procedure, psql):
    assert migrate("down").returncode == 0
    assert value(psql("SELECT to_regclass('public.users') IS NULL;").stdout) == "t"


def test_step_8_migrate_up_reapplies_the_migration(procedure, psql):
    assert migrate("up").returncode == 0
    assert value(psql("SELECT to_regclass('public.users') IS NOT NULL;").stdout) == "t"
