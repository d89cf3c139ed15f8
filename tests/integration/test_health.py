"""Integration tests of the pg_health module and playbooks/health.yml.

They talk to a real PostgreSQL 15 (tests/conftest.py says which; no mocks).
The module runs through Ansible (`ansible localhost -m pg_health`, JSON
callback); the password travels in an extra-vars file, never on a command
line. The tests that bound how fast a down database is answered call the
module's core in-process and time it with the wall clock, so Ansible's own
start-up (about a second) is not counted against the connect timeout.
"""
import json
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import psycopg2
import pytest
import yaml

import pg_health_core as core
from conftest import CONTAINER, extra_vars_args, playbook_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
EXTENSIONS = ["uuid-ossp", "pgcrypto", "pg_trgm", "pg_stat_statements"]
# The app's pool (seed Phase 3) and the inventory's defaults.
APP_POOL = dict(pool_min=2, pool_max=20, pool_idle_timeout_ms=30000,
                connect_timeout_ms=2000, app_instances=2)

_cache = {}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def run_module(params, tmp_path, check=False, **options):
    """Run pg_health through Ansible against `params`; return the task result."""
    args = dict(login_host=params["host"], login_port=params["port"],
                login_db=params["dbname"], login_user=params["user"],
                login_password="{{ pg_health_test_password }}")
    args.update(options)
    vars_file = tmp_path / ("vars-%s.json" % uuid.uuid4().hex[:8])
    vars_file.write_text(json.dumps({"pg_health_test_password": params["password"]}))
    vars_file.chmod(0o600)
    cmd = [str(BIN / "ansible"), "localhost", "-m", "pg_health", "-a", json.dumps(args),
           "-e", "@%s" % vars_file]
    if check:
        cmd.append("--check")
    env = playbook_env({"ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"})
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True,
                          timeout=120)
    try:
        result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        print(proc.stdout, proc.stderr)
        raise
    assert params["password"] not in proc.stdout + proc.stderr
    return result


def run_playbook(params, *extra_args, **extra_vars):
    """ansible-playbook playbooks/health.yml aimed at `params`' server."""
    variables = dict(db_host=params["host"], db_port=params["port"], db_name=params["dbname"],
                     db_app_user=params["user"])
    variables.update(extra_vars)
    # The inventory takes the app password from POSTGRES_PASSWORD.
    env = playbook_env({"POSTGRES_PASSWORD": params["password"]})
    cmd = [str(BIN / "ansible-playbook"), "playbooks/health.yml", *extra_vars_args(), "-e", json.dumps(variables)]
    cmd.extend(extra_args)
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True,
                          timeout=180)
    return proc


def last_msg(stdout):
    """The `msg` of the last task output before the recap, as JSON."""
    last_task = stdout.split("PLAY RECAP")[0].rsplit("TASK [", 1)[1]
    payload = re.split(r"=>[ \t]*\n", last_task, maxsplit=1)[1]
    return json.loads(yaml.safe_load(textwrap.dedent(payload))["msg"])


def recap(stdout):
    return dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", stdout.split("PLAY RECAP")[1]))


def healthy(app_params, tmp_path):
    """The module's result with the app's pool settings (run once per server)."""
    key = (app_params["host"], app_params["port"])
    if key not in _cache:
        _cache[key] = run_module(app_params, tmp_path, extensions=EXTENSIONS, **APP_POOL)
    return _cache[key]


def core_options(params, **overrides):
    opts = dict(login_host=params["host"], login_port=params["port"],
                login_db=params["dbname"], login_user=params["user"],
                login_password=params["password"], extensions=EXTENSIONS, **APP_POOL)
    opts.update(overrides)
    return opts


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_server():
    """A TCP port on 127.0.0.1 that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def limited_role(admin_params, app_params):
    """The app role with its CONNECTION LIMIT lowered to 3 for one test, then restored.

    The app role itself, because pg_hba.conf lets only the app and owner roles
    in over TCP.
    """
    conn = psycopg2.connect(**admin_params)
    conn.autocommit = True
    role = app_params["user"]
    with conn.cursor() as cur:
        cur.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (role,))
        previous = cur.fetchone()[0]
        cur.execute('ALTER ROLE "%s" CONNECTION LIMIT 3' % role)
    try:
        yield dict(app_params, connection_limit=3)
    finally:
        with conn.cursor() as cur:
            cur.execute('ALTER ROLE "%s" CONNECTION LIMIT %d' % (role, previous))
        conn.close()


# ---------------------------------------------------------------------------
# Backend can connect to PostgreSQL; health check returns status
# ---------------------------------------------------------------------------

def test_healthy_database_answers_status_ok_database_up(app_params, tmp_path):
    result = healthy(app_params, tmp_path)
    assert result["health"] == {"status": "ok", "database": "up"}
    assert result["is_available"] is True and result["reason"] == ""


def test_backend_role_connects_to_postgresql_15(app_params, tmp_path):
    result = healthy(app_params, tmp_path)
    assert result["server_version"]["major"] == 15
    assert (result["role"], result["database"]) == (app_params["user"], app_params["dbname"])


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_required_extension_is_reported_installed(app_params, tmp_path, extension):
    assert healthy(app_params, tmp_path)["extensions"][extension]["installed"] is True


def test_health_answer_reports_round_trip_latency(app_params, tmp_path):
    latency = healthy(app_params, tmp_path)["latency_ms"]
    assert 0 < latency["connect"] and 0 < latency["query"] <= latency["total"]


def test_health_check_is_read_only_and_runs_in_check_mode(app_params, tmp_path):
    result = run_module(app_params, tmp_path, check=True, pool_check=False)
    assert result["changed"] is False and result["health"]["status"] == "ok"


def test_healthy_run_reports_no_change_and_no_problem(app_params, tmp_path):
    result = healthy(app_params, tmp_path)
    assert result["changed"] is False and result["problems"] == []


# ---------------------------------------------------------------------------
# Connection pool configured (min 2, max 20)
# ---------------------------------------------------------------------------

def test_pool_opens_its_minimum_at_start(app_params, tmp_path):
    pool = healthy(app_params, tmp_path)["pool"]
    assert (pool["opened_at_start"], pool["server_connections_at_start"]) == (2, 2)


def test_pool_grows_to_max_all_held_at_once_under_the_app_role(app_params, tmp_path):
    pool = healthy(app_params, tmp_path)["pool"]
    assert pool["reached"] == 20
    assert pool["server_roles_at_peak"] == {app_params["user"]: 20}


def test_pool_connections_carry_the_application_name_the_module_sets(app_params, tmp_path):
    result = healthy(app_params, tmp_path)
    assert re.match(r"^pg_health:[0-9a-f]{8}$", result["pool"]["application_name"])
    assert result["pool"]["server_connections_at_peak"] == 20


def test_every_pool_connection_opens_within_the_connect_timeout(app_params, tmp_path):
    pool = healthy(app_params, tmp_path)["pool"]
    assert pool["all_opened_within_connect_timeout"] is True
    assert pool["latency_ms"]["connect"]["max"] <= 2000


# That a request beyond max waits then is refused, and that idle connections
# are closed down to min, is how the module's Pool class behaves on any
# server: tests/unit/test_pg_health_core.py checks it, not every deploy.


@pytest.mark.parametrize("kind", ["connect", "query"])
def test_pool_reports_latency_p50_p95_max(app_params, tmp_path, kind):
    summary = healthy(app_params, tmp_path)["pool"]["latency_ms"][kind]
    assert summary["count"] == 20
    assert 0 < summary["p50"] <= summary["p95"] <= summary["max"]


def test_result_reports_how_long_the_whole_check_took(app_params, tmp_path):
    result = healthy(app_params, tmp_path)
    assert result["duration_ms"] >= result["pool"]["duration_ms"] > 0


def test_every_pool_check_passes_with_the_apps_settings(app_params, tmp_path):
    pool = healthy(app_params, tmp_path)["pool"]
    assert pool["checks"] == dict((name, True) for name in pool["checks"]) and pool["ok"]


# ---------------------------------------------------------------------------
# Headroom: server and role limits against pool max x app instances
# ---------------------------------------------------------------------------

def test_server_and_role_limits_cover_pool_max_times_app_instances(app_params, tmp_path):
    headroom = healthy(app_params, tmp_path)["headroom"]
    assert headroom["required"] == 40
    assert headroom["ok"], headroom["short"]


@pytest.mark.parametrize("pool_max, app_instances, short_by", [(5, 1, 2), (20, 2, 37)])
def test_pool_max_above_role_connection_limit_is_reported_short_by_how_much(
        limited_role, tmp_path, pool_max, app_instances, short_by):
    result = run_module(limited_role, tmp_path, pool_check=False, pool_min=1,
                        pool_max=pool_max, app_instances=app_instances)
    assert result["health"]["status"] == "ok" and result["headroom"]["ok"] is False
    assert [(s["limit"], s["short_by"]) for s in result["headroom"]["short"]] == [
        ("role", short_by)]
    assert "role limit 3 is short by %d" % short_by in result["problems"][0]


def test_pool_growth_stops_at_the_role_connection_limit_and_says_why(limited_role, tmp_path):
    result = run_module(limited_role, tmp_path, pool_min=1, pool_max=5, app_instances=1)
    assert result["pool"]["ok"] is False and result["pool"]["reached"] == 3
    assert "too many connections for role" in result["pool"]["errors"][0]


# ---------------------------------------------------------------------------
# Database down or refusing the role: reported, within the connect timeout
# ---------------------------------------------------------------------------

def test_wrong_password_is_reported_down_with_the_reason(app_params, tmp_path):
    result = run_module(dict(app_params, password="not-the-password"), tmp_path)
    assert result.get("failed") is not True
    assert result["health"] == {"status": "error", "database": "down"}
    assert "password authentication failed" in result["reason"]


def test_down_database_is_reported_not_failed_by_default(app_params, tmp_path):
    result = run_module(dict(app_params, host="127.0.0.1", port=free_port()), tmp_path)
    assert result.get("failed") is not True and result["is_available"] is False
    assert result["health"] == {"status": "error", "database": "down"}


def test_fail_on_down_fails_the_task_with_the_reason(app_params, tmp_path):
    result = run_module(dict(app_params, host="127.0.0.1", port=free_port()), tmp_path,
                        fail_on_down=True)
    assert result["failed"] is True and result["msg"].startswith("Database is down: ")
    assert result["health"]["database"] == "down"


UNREACHABLE = {
    "unused port on 127.0.0.1": lambda silent: ("127.0.0.1", free_port()),
    "address in 127.0.0.0/8 nothing listens on": lambda silent: ("127.77.0.1", free_port()),
    "server that accepts and never answers": lambda silent: ("127.0.0.1", silent),
}


@pytest.mark.parametrize("case", sorted(UNREACHABLE))
def test_unreachable_host_is_answered_down_within_the_connect_timeout(
        app_params, silent_server, case):
    host, port = UNREACHABLE[case](silent_server)
    started = time.monotonic()
    result = core.run_checks(core_options(app_params, login_host=host, login_port=port))
    elapsed = time.monotonic() - started
    assert result["health"] == {"status": "error", "database": "down"}, result["reason"]
    assert elapsed < 2.0 + 1.0


def _container_port():
    """Published host port of the container's 5432, or None if it is not running."""
    if not shutil.which("docker"):
        return None
    running = subprocess.run(["docker", "ps", "--filter", "name=^%s$" % CONTAINER,
                              "--filter", "status=running", "--format", "{{.Names}}"],
                             capture_output=True, text=True)
    if running.stdout.strip() != CONTAINER:
        return None
    ports = subprocess.run(["docker", "port", CONTAINER, "5432/tcp"],
                           capture_output=True, text=True).stdout.split()
    return int(ports[0].rsplit(":", 1)[1]) if ports else None


def _wait_until_accepting(params, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(**dict(params, connect_timeout=2)).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_stopped_container_is_reported_down_within_connect_timeout_plus_one_second(
        app_params, admin_params):
    port = _container_port()
    if port is None:
        pytest.skip("container %s is not running: nothing to stop" % CONTAINER)
    if port != app_params["port"]:
        pytest.skip("tests target port %s, not the container's %s" % (app_params["port"], port))
    subprocess.run(["docker", "stop", CONTAINER], check=True, capture_output=True)
    try:
        started = time.monotonic()
        result = core.run_checks(core_options(app_params))
        elapsed = time.monotonic() - started
    finally:
        subprocess.run(["docker", "start", CONTAINER], check=True, capture_output=True)
        _wait_until_accepting(admin_params)
    assert result["health"] == {"status": "error", "database": "down"}, result["reason"]
    assert elapsed < 2.0 + 1.0


# ---------------------------------------------------------------------------
# Bad input: a clear error naming the value
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("options, expected", [
    ({"pool_min": 25, "pool_max": 20}, "pool_min=25 is above pool_max=20"),
    ({"pool_max": 0}, "pool_max=0 is out of range: allowed 1 to 10000"),
    ({"connect_timeout_ms": -1}, "connect_timeout_ms=-1 is out of range: allowed 1 to 600000 ms"),
    ({"pool_idle_timeout_ms": -30000}, "pool_idle_timeout_ms=-30000 is out of range"),
    ({"app_instances": 0}, "app_instances=0 is out of range: allowed 1 to 1000"),
])
def test_bad_input_fails_with_a_message_naming_the_value(app_params, tmp_path, options, expected):
    result = run_module(app_params, tmp_path, **options)
    assert result["failed"] is True and expected in result["msg"]


# ---------------------------------------------------------------------------
# playbooks/health.yml: prints the health JSON last, fails when down
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [["--check"], []], ids=["check mode", "real run"])
def test_playbook_ends_with_status_ok_database_up_and_changes_nothing(app_params, mode):
    proc = run_playbook(app_params, *mode)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert last_msg(proc.stdout) == {"status": "ok", "database": "up"}
    assert (recap(proc.stdout)["changed"], recap(proc.stdout)["failed"]) == (0, 0)


def test_playbook_fails_when_the_database_is_down(app_params):
    proc = run_playbook(dict(app_params, port=free_port()))
    assert proc.returncode != 0
    answer = last_msg(proc.stdout)
    assert (answer["status"], answer["database"]) == ("error", "down") and answer["reason"]


def test_playbook_never_prints_the_password(app_params):
    proc = run_playbook(app_params, "-vvv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert app_params["password"] not in proc.stdout + proc.stderr


def test_playbook_fails_when_query_logging_does_not_match_app_env(app_params, admin_params):
    """Development logs every statement; production must not (and vice versa).

    The server's own word: `SHOW log_statement` / `log_min_duration_statement`
    as the superuser and the statement found in the container's log, not the
    helper the playbook grades itself with. The container runs as the inventory
    leaves it (development); the playbook told it is production must fail.
    """
    conn = psycopg2.connect(**admin_params)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW log_statement")
            log_statement = cur.fetchone()[0]
            cur.execute("SHOW log_min_duration_statement")
            log_min_duration = cur.fetchone()[0]
    finally:
        conn.close()
    assert (log_statement, log_min_duration) == ("all", "0")
    marker = "query_logging_probe_" + uuid.uuid4().hex
    conn = psycopg2.connect(**app_params)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT %s AS probe", (marker,))
    finally:
        conn.close()
    deadline = time.monotonic() + 10
    while True:
        logs = subprocess.run(["docker", "logs", "--since", "2m", CONTAINER], capture_output=True, text=True)
        if "statement: SELECT '%s' AS probe" % marker in logs.stdout + logs.stderr:
            break
        assert time.monotonic() < deadline, "the statement is not in the server log"
        time.sleep(0.5)
    proc = run_playbook(app_params, app_env="production")
    assert proc.returncode != 0 and "expected False for app_env" in proc.stdout, proc.stdout
