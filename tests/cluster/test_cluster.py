"""The Patroni cluster (issue 15) as site.yml -e db_topology=cluster brings it up, and its operations.

Against the real containers: PostgreSQL nodes under Patroni, etcd, HAProxy and
PgBouncer. Every test leaves the cluster whole (one leader, every replica
streaming, one synchronous).
"""
import json
import subprocess

import psycopg2
import pytest

from cluster_support import (DIRECT_PORT, ETCD, HAPROXY, NODES, PGBOUNCER, REPLICA_PORT, app_params, dcs_config,
                             docker, ensure_healthy, healthy, members, node_sql, owner_params, primary, sql, wait_until)
from conftest import DB_NAME, run_playbook, secret

CONFIRM = ["-e", f"cluster_confirm={DB_NAME}"]


@pytest.fixture(autouse=True)
def whole_cluster():
    ensure_healthy()
    yield
    ensure_healthy()


def cluster(action, *args):
    return run_playbook("playbooks/cluster.yml", "-e", f"cluster_action={action}", *args)


def secrets():
    names = ["postgres_admin_password", "postgres_app_password", "postgres_owner_password", "replication_password",
             "patroni_api_password", "pooler_auth_password", "pgbackrest_cipher_pass"]
    return {name: secret("UNSET_" + name.upper(), name) for name in names}


def test_every_node_is_a_member_one_leads_and_one_replica_is_synchronous():
    found = members()
    assert sorted(m["Member"] for m in found) == sorted(NODES)
    assert [m["Role"] for m in found].count("Leader") == 1
    assert [m["Role"] for m in found].count("Sync Standby") == 1
    assert {m["State"] for m in found} <= {"running", "streaming"}
    assert len({m["TL"] for m in found}) == 1


@pytest.mark.parametrize("node", NODES)
def test_patronictl_list_works_inside_every_node_with_no_arguments(node):
    out = docker("exec", node, "patronictl", "list")
    assert all(name in out for name in NODES)


def test_the_endpoints_reach_the_primary_and_the_replicas():
    # The app's endpoint (PgBouncer, transaction pooling) and the direct port lead to the primary.
    assert sql(app_params(), "SELECT pg_is_in_recovery()") == [(False,)]
    assert sql(owner_params(), "SELECT pg_is_in_recovery(), inet_server_addr() IS NOT NULL") == [(False, True)]
    # The replicas' port leads to a replica, read-only.
    assert sql(owner_params(port=REPLICA_PORT), "SELECT pg_is_in_recovery()") == [(True,)]
    with pytest.raises(psycopg2.Error, match="read-only"):
        sql(owner_params(port=REPLICA_PORT), "CREATE TABLE cluster_never (id int)")


def test_bootstrap_and_migrations_ran_on_the_primary_and_reached_every_replica():
    for node in NODES:
        assert node_sql(node, "SELECT count(*) FROM pg_extension WHERE extname IN "
                              "('uuid-ossp', 'pgcrypto', 'pg_trgm', 'pg_stat_statements')") == ["4"]
        assert node_sql(node, "SELECT to_regclass('public.users') IS NOT NULL") == ["t"]


def test_the_safety_settings_are_in_force():
    config = dcs_config()
    assert config["synchronous_mode"] is True
    assert config["failsafe_mode"] is True
    assert config["postgresql"]["use_pg_rewind"] is True
    assert config["ttl"] == 20
    assert config["loop_wait"] + 2 * config["retry_timeout"] <= config["ttl"]
    assert config["maximum_lag_on_failover"] > 0
    leader = primary()
    assert node_sql(leader, "SHOW synchronous_standby_names") != ['']
    assert node_sql(leader, "SELECT sync_state FROM pg_stat_replication ORDER BY 1") \
        == sorted(["sync"] + ["async"] * (len(NODES) - 2))


def test_patronis_write_endpoints_need_its_user_and_password():
    script = ("import urllib.request, urllib.error\n"
              "req = urllib.request.Request('http://localhost:8008/restart', data=b'{}', method='POST')\n"
              "try:\n    urllib.request.urlopen(req)\n    print(200)\n"
              "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    assert docker("exec", NODES[-1], "python3", "-c", script).strip() == "401"


def test_no_secret_in_docker_inspect_logs_or_pg_stat_statements():
    values = [v for v in secrets().values() if len(v) >= 16]
    containers = NODES + ETCD + [HAPROXY, PGBOUNCER]
    inspect = docker("inspect", *containers)
    logs = "".join(subprocess.run(["docker", "logs", c], capture_output=True, text=True, check=False).stdout
                   + subprocess.run(["docker", "logs", c], capture_output=True, text=True, check=False).stderr
                   for c in NODES)
    statements = "\n".join(node_sql(primary(), "SELECT query FROM pg_stat_statements"))
    for value in values:
        assert value not in inspect
        assert value not in logs
        assert value not in statements
    # Patroni's configuration files: the postgres user's only.
    for node in NODES:
        stat = docker("exec", node, "stat", "-c", "%u %a", "/etc/patroni/patroni.yml").split()
        assert stat == ["999", "600"]


def test_health_reports_every_member_and_the_seeds_answer():
    run = run_playbook("playbooks/health.yml")
    assert run.rc == 0, run
    for node in NODES:
        assert f"{node}: " in run.output
    assert "Leader, running" in run.output and "Sync Standby" in run.output
    assert '{"status": "ok", "database": "up"}' in run.output


@pytest.mark.parametrize("action", ["switchover", "restart", "reinit"])
def test_an_operation_that_interrupts_writes_needs_the_confirmation(action):
    before = members()
    run = cluster(action, "-e", f"cluster_member={NODES[-1]}")
    assert run.rc != 0
    assert f"confirm with -e cluster_confirm={DB_NAME}" in run.output and "Nothing was changed" in run.output
    assert run.changed == 0
    assert [(m["Member"], m["Role"], m["TL"]) for m in members()] == [(m["Member"], m["Role"], m["TL"]) for m in before]


@pytest.mark.parametrize("candidate, reason", [
    ("no_such_node", "Cannot switch over to 'no_such_node'"),
    ("async", "the synchronous standby"),
])
def test_a_switchover_to_a_missing_or_unsuitable_member_is_refused(candidate, reason):
    if candidate == "async":
        candidate = next(m["Member"] for m in members() if m["Role"] == "Replica")
    leader = primary()
    run = cluster("switchover", *CONFIRM, "-e", f"cluster_candidate={candidate}")
    assert run.rc != 0 and reason in run.output and "Nothing was changed" in run.output, run
    assert primary() == leader


def test_a_switchover_makes_the_synchronous_replica_primary_and_the_former_primary_follows():
    leader = primary()
    sync = next(m["Member"] for m in members() if m["Role"] == "Sync Standby")
    sql(owner_params(), "CREATE TABLE IF NOT EXISTS cluster_marks (mark text PRIMARY KEY)")
    sql(owner_params(), "INSERT INTO cluster_marks VALUES ('before-switchover') ON CONFLICT DO NOTHING")

    run = cluster("switchover", *CONFIRM)

    assert run.rc == 0, run
    assert primary() == sync
    assert healthy()
    roles = {m["Member"]: m["Role"] for m in members()}
    assert roles[leader] in ("Replica", "Sync Standby")
    assert sql(app_params(), "SELECT pg_is_in_recovery()") == [(False,)]
    assert sql(owner_params(), "SELECT count(*) FROM cluster_marks WHERE mark = 'before-switchover'") == [(1,)]


def test_a_rolling_restart_restarts_every_member_and_keeps_the_primary():
    started = {node: node_sql(node, "SELECT pg_postmaster_start_time()")[0] for node in NODES}

    run = cluster("restart", *CONFIRM)

    assert run.rc == 0, run
    assert healthy()
    for node in NODES:
        assert node_sql(node, "SELECT pg_postmaster_start_time()")[0] != started[node], node


def test_reinit_re_creates_a_replica_and_refuses_the_primary():
    refused = cluster("reinit", *CONFIRM, "-e", f"cluster_member={primary()}")
    assert refused.rc != 0 and "is never re-created" in refused.output, refused
    replica = next(m["Member"] for m in members() if m["Role"] != "Leader")
    started = node_sql(replica, "SELECT pg_postmaster_start_time()")[0]

    run = cluster("reinit", *CONFIRM, "-e", f"cluster_member={replica}")

    assert run.rc == 0, run
    assert healthy()
    assert node_sql(replica, "SELECT pg_postmaster_start_time()")[0] != started


@pytest.mark.parametrize("variables, message", [
    ({"db_cluster_size": 2, "db_cluster_synchronous_mode_strict": True}, "db_cluster_size=2"),
    ({"db_cluster_size": 1}, "db_cluster_size=1"),
    ({"postgres_cluster_etcd_size": 2}, "postgres_cluster_etcd_size=2"),
    ({"db_replica_port": DIRECT_PORT}, f"db_replica_port={DIRECT_PORT}"),
])
def test_bad_cluster_settings_are_refused_before_anything_changes(variables, message):
    before = {node: docker("inspect", "--format", "{{.State.StartedAt}}", node) for node in NODES}
    run = run_playbook("site.yml", "-e", json.dumps(variables))
    assert run.rc != 0 and message in run.output and "Nothing was changed" in run.output, run
    assert run.changed == 0
    assert {node: docker("inspect", "--format", "{{.State.StartedAt}}", node) for node in NODES} == before


def test_a_cluster_over_several_docker_hosts_is_refused_before_anything_changes(tmp_path):
    second = tmp_path / "second-host.yml"
    second.write_text("docker_hosts:\n  hosts:\n    second-host:\n      ansible_connection: local\n"
                      "      ansible_python_interpreter: \"{{ ansible_playbook_python }}\"\n")
    before = {node: docker("inspect", "--format", "{{.State.StartedAt}}", node) for node in NODES}
    run = run_playbook("-i", "inventory/hosts.yml", "-i", str(second), "site.yml")
    assert run.rc != 0 and "this play has 2 (localhost, second-host)" in " ".join(run.output.split()), run
    assert "Nothing was changed" in run.output and run.changed == 0
    assert {node: docker("inspect", "--format", "{{.State.StartedAt}}", node) for node in NODES} == before


def test_backups_are_taken_on_the_primary_with_pgbackrest_and_as_a_dump():
    full = run_playbook("playbooks/backup.yml", "-e", "backup_type=incr")
    assert full.rc == 0, full
    info = json.loads(docker("exec", "--user", "postgres", primary(), "pgbackrest", "info", "--output=json"))[0]
    assert info["status"]["code"] == 0 and info["backup"][-1]["type"] == "incr"
    logical = run_playbook("playbooks/backup.yml")
    assert logical.rc == 0, logical


def test_the_single_server_refuses_to_start_beside_the_cluster():
    run = run_playbook("site.yml", "-e", "db_topology=single")
    assert run.rc != 0 and "are nodes of a cluster" in run.output and "Nothing was changed" in run.output, run
    assert run.changed == 0
    assert docker("ps", "--all", "--quiet", "--filter", f"name=^{NODES[0][:-2]}$").strip() == ""


def test_a_logical_dump_restores_into_the_cluster_through_its_primary():
    """The path from the single server to the cluster: a dump taken elsewhere restores into the primary."""
    sql(owner_params(), "CREATE TABLE IF NOT EXISTS cluster_marks (mark text PRIMARY KEY)")
    sql(owner_params(), "INSERT INTO cluster_marks VALUES ('in-the-dump') ON CONFLICT DO NOTHING")
    backup = run_playbook("playbooks/backup.yml")
    assert backup.rc == 0, backup
    sql(owner_params(), "INSERT INTO cluster_marks VALUES ('after-the-dump')")

    restore = run_playbook("playbooks/restore.yml", "-e", f"restore_confirm={DB_NAME}")

    assert restore.rc == 0, restore
    marks = {row[0] for row in sql(owner_params(), "SELECT mark FROM cluster_marks")}
    assert "in-the-dump" in marks and "after-the-dump" not in marks
    # Restored on the primary, replicated to every node.
    wait_until(lambda: all(node_sql(node, "SELECT count(*) FROM cluster_marks WHERE mark = 'after-the-dump'") == ["0"]
                           for node in NODES), 30, what="the restore on every replica")
