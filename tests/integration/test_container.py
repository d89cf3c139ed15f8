"""Issue 2: the PostgreSQL 15 container, as `site.yml` leaves it.

Seed acceptance: "PostgreSQL 15 container running and accessible", the pool's
server settings, "Query logging enabled in development mode", and the
security considerations that concern the container.
"""
import json
import socket
import subprocess
import time

import psycopg2
import pytest

from conftest import CONTAINER, DB_PORT, NETWORK, VOLUME, container_id, docker, run_playbook, secret, wait_until_ready


@pytest.fixture(scope="module")
def inspect():
    return json.loads(docker("inspect", CONTAINER))[0]


def _show(params, setting):
    with psycopg2.connect(**params) as conn, conn.cursor() as cur:
        cur.execute(f"SHOW {setting}")
        return cur.fetchone()[0]


def test_postgresql_15_answers_docker_exec_psql():
    out = docker("exec", CONTAINER, "psql", "-U", "postgres", "-Atc", "select version()")
    assert out.startswith("PostgreSQL 15."), out


def test_pg_isready_on_the_published_port_accepts_connections(inspect):
    """`pg_isready -h 127.0.0.1 -p <port>` from the Docker host's network namespace.

    The client is the container image's own pg_isready (a throwaway container on
    the host network), so the check runs whether or not the host has
    postgresql-client, and it still goes through the published port.
    """
    proc = subprocess.run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "pg_isready",
                           inspect["Config"]["Image"], "-h", "127.0.0.1", "-p", str(DB_PORT)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0 and f"127.0.0.1:{DB_PORT} - accepting connections" in proc.stdout, \
        proc.stdout + proc.stderr


def test_superuser_logs_in_over_the_published_port(admin_params):
    assert _show(admin_params, "server_version").startswith("15.")


def test_docker_inspect_shows_no_password(inspect, admin_params, app_params, owner_params):
    text = json.dumps(inspect)
    for params in (admin_params, app_params, owner_params):
        assert params["password"] not in text
    assert secret("PGBACKREST_REPO_CIPHER_PASS", "pgbackrest_cipher_pass") not in text
    env_names = [entry.split("=", 1)[0] for entry in inspect["Config"]["Env"]]
    assert "POSTGRES_PASSWORD" not in env_names
    assert "POSTGRES_PASSWORD_FILE" in env_names


def test_port_is_published_on_loopback_only():
    lines = docker("port", CONTAINER).split()
    bindings = [line for line in lines if ":" in line]
    assert bindings, lines
    assert all(b.startswith("127.0.0.1:") for b in bindings), bindings


def test_password_file_on_the_host_is_root_only(inspect):
    bind = next(m for m in inspect["Mounts"] if m["Destination"] == "/run/secrets/postgres")
    proc = subprocess.run(["stat", "-c", "%a %U", bind["Source"], bind["Source"] + "/admin_password"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.split("\n")[:2] == ["700 root", "600 root"]
    assert bind["RW"] is False


@pytest.mark.parametrize("setting, expected", [
    ("shared_preload_libraries", "pg_stat_statements"),
    ("password_encryption", "scram-sha-256"),
])
def test_server_setting(admin_params, setting, expected):
    assert expected in _show(admin_params, setting)


def test_max_connections_covers_every_pool_with_headroom(admin_params):
    # Seed: max 20 per app instance; inventory: 2 instances; 20 kept for admin and migrations.
    assert int(_show(admin_params, "max_connections")) >= 20 * 2 + 20


@pytest.mark.parametrize("setting, expected", [("log_statement", "all"), ("log_min_duration_statement", "0")])
def test_query_logging_is_on_in_development(admin_params, setting, expected):
    assert _show(admin_params, setting) == expected


def test_restart_policy_is_unless_stopped(inspect):
    assert inspect["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


def test_data_lives_on_the_named_volume(inspect):
    data = next(m for m in inspect["Mounts"] if m["Destination"] == "/var/lib/postgresql/data")
    assert (data["Type"], data["Name"]) == ("volume", VOLUME)


def test_container_is_on_the_private_network(inspect):
    assert NETWORK in inspect["NetworkSettings"]["Networks"]


def test_healthcheck_reports_healthy(inspect):
    """Docker's own verdict: `healthy`; `starting` is waited out (bounded), never taken as healthy."""
    assert inspect["Config"]["Healthcheck"]["Test"][:2] == ["CMD", "pg_isready"]
    deadline = time.monotonic() + 120
    status = json.loads(docker("inspect", CONTAINER))[0]["State"]["Health"]["Status"]
    while status == "starting" and time.monotonic() < deadline:
        time.sleep(1)
        status = json.loads(docker("inspect", CONTAINER))[0]["State"]["Health"]["Status"]
    assert status == "healthy"


def test_stop_signal_is_sigint(inspect):
    assert inspect["Config"]["StopSignal"] == "SIGINT"


def test_server_runs_as_the_postgres_user():
    postmaster = docker("exec", CONTAINER, "sh", "-c", 'head -n 1 "$PGDATA/postmaster.pid"').strip()
    out = docker("exec", CONTAINER, "stat", "-c", "%U", f"/proc/{postmaster}")
    assert out.strip() == "postgres"


def test_docker_init_is_pid_1_so_orphans_never_reach_the_postmaster(inspect):
    # The postmaster takes any unknown child exiting non-zero for a crashed backend (test_pitr.py).
    assert inspect["HostConfig"]["Init"] is True
    assert docker("exec", CONTAINER, "sh", "-c", 'head -n 1 "$PGDATA/postmaster.pid"').strip() != "1"


def test_tcp_connections_require_scram(admin_params):
    with psycopg2.connect(**admin_params) as conn, conn.cursor() as cur:
        cur.execute("SELECT auth_method FROM pg_hba_file_rules WHERE type LIKE 'host%' AND auth_method <> 'reject'")
        methods = {row[0] for row in cur.fetchall()}
    assert methods == {"scram-sha-256"}


def test_second_run_changes_nothing_and_keeps_the_container():
    before = container_id()
    run = run_playbook("site.yml")
    assert run.rc == 0 and run.changed == 0, run
    assert container_id() == before


def test_check_mode_on_a_converged_host_reports_no_change():
    run = run_playbook("site.yml", "--check")
    assert run.rc == 0 and run.changed == 0, run


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("extra_vars, message", [
    ({"db_port": 70000}, "db_port=70000 (allowed 1-65535)"),
    ({"db_pool_min": 30}, "db_pool_min=30 and db_pool_max=20"),
    ({"app_env": "staging"}, "app_env"),
    ({"postgres_image_name": "no-such/postgres:15", "postgres_image_build": "never"},
     "The image no-such/postgres:15 is not on"),
    ({"postgres_image_build": "sometimes"}, "postgres_image_build"),
], ids=["port out of range", "pool min above max", "unknown environment", "image neither present nor buildable",
        "unknown build mode"])
def test_bad_input_fails_before_any_change(extra_vars, message):
    before = container_id()
    run = run_playbook("site.yml", "-e", json.dumps(extra_vars))
    assert run.rc != 0, run
    assert message in run.output, run
    assert run.changed == 0, run
    assert container_id() == before


def test_a_port_taken_by_another_process_fails_before_any_change():
    before = container_id()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        run = run_playbook("site.yml", "-e", json.dumps({"db_port": port}))
    assert run.rc != 0, run
    assert f"Port {port} on 127.0.0.1 is already in use" in run.output, run
    assert run.changed == 0, run
    assert container_id() == before


def test_a_changed_setting_recreates_the_container_and_keeps_the_data(admin_params):
    marker = "volume_survives_" + str(_free_port())
    with psycopg2.connect(**admin_params) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {marker} (v text); INSERT INTO {marker} VALUES ('kept')")
    before = container_id()
    try:
        run = run_playbook("site.yml", "-e", json.dumps({"postgres_container_settings": {"work_mem": "8MB"}}))
        assert run.rc == 0, run
        assert container_id() != before
        assert _show(admin_params, "work_mem") == "8MB"
        with psycopg2.connect(**admin_params) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {marker}")
            assert cur.fetchall() == [("kept",)]
    finally:
        restored = run_playbook("site.yml")
        wait_until_ready(admin_params)
        with psycopg2.connect(**admin_params) as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {marker}")
    assert restored.rc == 0, restored


def test_a_cluster_is_refused_beside_the_single_server_before_anything_changes():
    started = docker("inspect", "--format", "{{.State.StartedAt}}", CONTAINER)
    run = run_playbook("site.yml", "-e", "db_topology=cluster")
    assert run.rc != 0 and "is the single server" in run.output and "Nothing was changed" in run.output, run
    assert run.changed == 0
    assert docker("inspect", "--format", "{{.State.StartedAt}}", CONTAINER) == started
    assert docker("ps", "--all", "--quiet", "--filter", f"name=^{CONTAINER}_1$").strip() == ""
