"""From db_topology=single to cluster: the single server's data becomes the first primary (issue 15).

A stack of its own (names adopt_*, ports 29432-29434, two nodes), so the
scenario's cluster is not touched: a single server with data, a refused
cluster run, then the confirmed move, every row on every node, the single
server's volume kept as it was, and a second run with changed=0.
"""
import json
import shutil
import subprocess

import pytest

from cluster_support import docker, wait_until
from conftest import DB_NAME, run_playbook

NAME = "adopt_postgres"
VARS = {
    "db_container_name": NAME, "db_port": 29432, "db_direct_port": 29433, "db_replica_port": 29434,
    "postgres_container_network": "adopt_net", "postgres_container_config_root": "/etc/adopt-postgres",
    "db_backup_dir": "/var/backups/adopt", "db_data_volume": "adopt_pgdata", "db_pgbackrest_repo": "adopt_pgbackrest",
    "pgbackrest_config_dir": "/etc/adopt-pgbackrest", "db_pooler_container_name": "adopt_pgbouncer",
    "pgbouncer_config_root": "/etc/adopt-pgbouncer", "postgres_cluster_config_root": "/etc/adopt-cluster",
    "db_cluster_size": 2,
}
ROWS = 20000


def remove_stack():
    ids = docker("ps", "--all", "--quiet", "--filter", "name=^adopt_").split()
    if ids:
        docker("rm", "--force", *ids)
    volumes = docker("volume", "ls", "--quiet", "--filter", "name=^adopt_").split()
    if volumes:
        docker("volume", "rm", "--force", *volumes)
    docker("network", "rm", "adopt_net", check=False)
    for folder in ("/etc/adopt-postgres", "/etc/adopt-pgbackrest", "/etc/adopt-pgbouncer", "/etc/adopt-cluster",
                   "/var/backups/adopt"):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def stack(tmp_path):
    remove_stack()
    extra = tmp_path / "adopt.json"
    extra.write_text(json.dumps(VARS))
    secrets = tmp_path / "secrets"

    def site(*args):
        return run_playbook("site.yml", "-e", f"@{extra}", *args, env={"DB_SECRETS_DIR": str(secrets)})
    yield site
    remove_stack()


def psql(container, query):
    out = docker("exec", container, "psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", DB_NAME,
                 "-Atc", query)
    return [line for line in out.splitlines() if line]


def volume_digest(volume):
    """Names, sizes and times of every file in a volume: changes when anything in it changes."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network=none", f"--mount=type=volume,source={volume},target=/v,readonly",
         "--entrypoint=sh", docker("inspect", "--format", "{{.Config.Image}}", f"{NAME}_1").strip(), "-c",
         "find /v -printf '%P %s %T@\\n' | sort | md5sum"],
        capture_output=True, text=True, check=True).stdout


def test_the_single_servers_data_becomes_the_first_primary_and_reaches_every_replica(stack):
    single = stack("-e", "db_topology=single")
    assert single.rc == 0, single
    psql(NAME, f"CREATE TABLE adopt_rows AS SELECT g AS id, md5(g::text) AS value FROM generate_series(1, {ROWS}) g")
    fingerprint = psql(NAME, "SELECT count(*), sum(hashtext(value)) FROM adopt_rows")

    refused = stack("-e", "db_topology=cluster")
    assert refused.rc != 0 and f"cluster_adopt={DB_NAME}" in refused.output and "Nothing was changed" in refused.output
    assert refused.changed == 0
    assert docker("inspect", "--format", "{{.State.Running}}", NAME).strip() == "true"

    moved = stack("-e", "db_topology=cluster", "-e", f"cluster_adopt={DB_NAME}")

    assert moved.rc == 0, moved
    assert docker("ps", "--all", "--quiet", "--filter", f"name=^{NAME}$").strip() == ""
    for node in (f"{NAME}_1", f"{NAME}_2"):
        wait_until(lambda: psql(node, "SELECT count(*), sum(hashtext(value)) FROM adopt_rows") == fingerprint, 60,
                   what=f"every row on {node}")
    members = json.loads(docker("exec", f"{NAME}_1", "patronictl", "list", "--format", "json"))
    assert {m["Role"] for m in members} == {"Leader", "Sync Standby"}
    assert not any(m.get("Pending restart") for m in members)
    # The single server's volume is kept, as it was.
    kept = volume_digest("adopt_pgdata")
    again = stack("-e", "db_topology=cluster", "-e", f"cluster_adopt={DB_NAME}")
    assert again.rc == 0 and again.changed == 0, again.changed_tasks
    assert volume_digest("adopt_pgdata") == kept
