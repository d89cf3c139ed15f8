"""Issue 2: the image built from Debian's packages honours the official image's contract.

Each test starts a throwaway container from the built image (no published
port: everything goes through `docker exec`) and removes it afterwards. The
image is the one the postgres_image role builds (`postgres_image_build=always`
through tests/integration/image_only.yml, which reuses it when present and
builds it otherwise, about 70 s), whichever image the provisioned container
runs: the air-gapped path is proven on hosts that pull `postgres:15` too.
"""
import json
import subprocess
import time
import uuid

import pytest

from conftest import docker, docker_exec, run_playbook

PASSWORD = "contract-test-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def built_image():
    """The image the postgres_image role builds from Debian's packages, built now when missing."""
    run = run_playbook("tests/integration/image_only.yml", "-e", "postgres_image_build=always",
                       env={"ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}, timeout=1800)
    assert run.rc == 0, run
    output = run.output[run.output.index("{"):]
    refs = [result["ansible_facts"]["postgres_image_ref"]
            for play in json.JSONDecoder().raw_decode(output)[0]["plays"] for task in play["tasks"]
            for result in task["hosts"].values() if "postgres_image_ref" in result.get("ansible_facts", {})]
    assert refs and refs[-1].startswith("social-selling/postgres:15-"), run
    docker("image", "inspect", refs[-1])
    return refs[-1]


@pytest.fixture
def start(built_image):
    """Start a throwaway container; returns its name. Removed (with its volumes) afterwards."""
    names = []

    def _start(*args, command=(), wait=True):
        name = "contract_" + uuid.uuid4().hex[:10]
        names.append(name)
        docker("run", "-d", "--name", name, *args, built_image, *command)
        if wait:
            _wait_ready(name)
        return name

    yield _start
    for name in names:
        docker("rm", "-f", "-v", name, check=False)


def _wait_ready(name, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = json.loads(docker("inspect", name))[0]["State"]
        if not state["Running"]:
            raise AssertionError(f"{name} exited: {docker('logs', name, check=False)}")
        if _exec_rc(name, "pg_isready", "-q", "-h", "127.0.0.1") == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} not ready: {docker('logs', name, check=False)}")


def _exec_rc(name, *argv, env=None):
    return docker_exec(name, *argv, env=env).returncode


def _psql_tcp(name, user, password, db, sql):
    """Run SQL over TCP inside the container, authenticating with the password."""
    return docker_exec(name, "psql", "-h", "127.0.0.1", "-U", user, "-d", db, "-Atc", sql,
                       env={"PGPASSWORD": password}, check=True).stdout


def _wait_exit(name, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not json.loads(docker("inspect", name))[0]["State"]["Running"]:
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
            return logs.stdout + logs.stderr
        time.sleep(0.5)
    raise AssertionError(f"{name} kept running")


@pytest.fixture
def initdb_dir(tmp_path):
    (tmp_path / "01-schema.sql").write_text("CREATE TABLE init_marker (note text); INSERT INTO init_marker VALUES ('sql');\n")
    script = tmp_path / "02-note.sh"
    script.write_text('#!/bin/bash\nset -e\necho ran >> "$PGDATA/init-script-runs"\n'
                      'psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "INSERT INTO init_marker VALUES (\'sh\')"\n')
    script.chmod(0o755)
    tmp_path.chmod(0o755)
    return tmp_path


def test_user_database_password_and_init_files_follow_the_official_contract(start, initdb_dir):
    name = start("-e", "POSTGRES_USER=alice", "-e", f"POSTGRES_PASSWORD={PASSWORD}", "-e", "POSTGRES_DB=appdb",
                 "-v", f"{initdb_dir}:/docker-entrypoint-initdb.d:ro")
    assert _psql_tcp(name, "alice", PASSWORD, "appdb", "SELECT string_agg(note, ',' ORDER BY note) FROM init_marker").strip() == "sh,sql"


def test_init_files_run_only_on_an_empty_data_directory(start, initdb_dir):
    name = start("-e", f"POSTGRES_PASSWORD={PASSWORD}", "-v", f"{initdb_dir}:/docker-entrypoint-initdb.d:ro")
    docker("restart", name)
    _wait_ready(name)
    assert docker("exec", name, "cat", "/var/lib/postgresql/data/init-script-runs").split() == ["ran"]


def test_password_file_readable_by_root_only_is_honoured(start, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    name = start("-e", "POSTGRES_PASSWORD_FILE=/run/secrets/pw", "-v", f"{secret}:/run/secrets/pw:ro")
    assert _psql_tcp(name, "postgres", PASSWORD, "postgres", "SELECT 1").strip() == "1"
    assert PASSWORD not in docker("inspect", name)


def test_tcp_login_with_a_wrong_password_is_refused(start):
    name = start("-e", f"POSTGRES_PASSWORD={PASSWORD}")
    # The right password gets in, so a refusal below is the password's, not a connection error.
    assert _psql_tcp(name, "postgres", PASSWORD, "postgres", "SELECT 1").strip() == "1"
    refused = docker_exec(name, "psql", "-h", "127.0.0.1", "-U", "postgres", "-c", "SELECT 1", env={"PGPASSWORD": "wrong"})
    assert refused.returncode == 2, refused
    assert 'password authentication failed for user "postgres"' in refused.stderr, refused.stderr


def test_every_tcp_rule_uses_scram(start):
    name = start("-e", f"POSTGRES_PASSWORD={PASSWORD}")
    methods = _psql_tcp(name, "postgres", PASSWORD, "postgres",
                        "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type LIKE 'host%'")
    assert methods.split() == ["scram-sha-256"]


def test_initdb_args_are_passed_to_initdb(start):
    name = start("-e", f"POSTGRES_PASSWORD={PASSWORD}", "-e", "POSTGRES_INITDB_ARGS=--data-checksums")
    assert _psql_tcp(name, "postgres", PASSWORD, "postgres", "SHOW data_checksums").strip() == "on"


@pytest.mark.parametrize("command", [("postgres", "-c", "work_mem=7MB"), ("-c", "work_mem=7MB")],
                         ids=["postgres -c", "bare -c"])
def test_server_options_are_taken_as_postgres_arguments(start, command):
    name = start("-e", f"POSTGRES_PASSWORD={PASSWORD}", command=command)
    assert _psql_tcp(name, "postgres", PASSWORD, "postgres", "SHOW work_mem").strip() == "7MB"


def test_missing_password_stops_with_a_clear_error(start):
    name = start(wait=False)
    assert "no superuser password is set: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" in _wait_exit(name)


def test_trust_authentication_is_refused(start):
    name = start("-e", f"POSTGRES_PASSWORD={PASSWORD}", "-e", "POSTGRES_HOST_AUTH_METHOD=trust", wait=False)
    assert "POSTGRES_HOST_AUTH_METHOD=trust is not allowed" in _wait_exit(name)


def test_image_declares_sigint_healthcheck_and_pgdata_volume(built_image):
    config = json.loads(docker("image", "inspect", built_image))[0]["Config"]
    assert config["StopSignal"] == "SIGINT"
    assert "pg_isready" in config["Healthcheck"]["Test"]
    assert "/var/lib/postgresql/data" in config["Volumes"]
    assert "PGDATA=/var/lib/postgresql/data" in config["Env"]


def test_server_process_runs_as_postgres(start):
    name = start("-e", f"POSTGRES_PASSWORD={PASSWORD}")
    assert docker("exec", name, "stat", "-c", "%U", "/proc/1").strip() == "postgres"
