"""The Ansible layer: playbooks/migrate.yml, the postgres_migrations role and
the pg_migrate module, against a scratch database.

In the house order: check mode (nothing changes), real run (changes), re-run
(no change); then the error messages users see.
"""
import json
import pathlib
import re
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import extra_vars_args, playbook_env, migrations_folder, tracked

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
FILES = {
    "1710000000001_create-widgets.sql":
        "-- Up Migration\nCREATE TABLE widgets (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE widgets;\n",
    "1710000000002_create-gadgets.sql":
        "-- Up Migration\nCREATE TABLE gadgets (id serial PRIMARY KEY);\n\n-- Down Migration\nDROP TABLE gadgets;\n",
}


@pytest.fixture
def folder(tmp_path):
    return migrations_folder(tmp_path, FILES)


@pytest.fixture
def playbook(scratch_db, folder, tmp_path):
    """Run playbooks/migrate.yml with the public -e interface, pointed at the scratch database."""
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({
        "postgres_migrations_dir": str(folder),
        "postgres_migrations_login_host": scratch_db["host"],
        "postgres_migrations_login_port": scratch_db["port"],
        "postgres_migrations_login_user": scratch_db["user"],
        "postgres_migrations_login_password": scratch_db["password"],
        "postgres_migrations_login_db": scratch_db["dbname"],
    }))

    def run(*extra, check=True):
        command = [str(BIN / "ansible-playbook"), "playbooks/migrate.yml", *extra_vars_args(), "-e", "@" + str(overrides)]
        for item in extra:
            command += [item] if item.startswith("-") else ["-e", item]
        completed = subprocess.run(command, cwd=ROOT, env=playbook_env(), capture_output=True, text=True,
                                   timeout=300)
        output = completed.stdout + completed.stderr
        if check and completed.returncode != 0:
            print(output)  # shown by pytest on failure
            raise AssertionError("ansible-playbook failed")
        completed.output = output
        completed.text = " ".join(output.split())  # the YAML callback wraps long lines
        match = re.search(r"changed=(\d+)", completed.stdout)
        completed.changed = int(match.group(1)) if match else None
        return completed
    return run


ALL = [name[:-4] for name in FILES]


def test_check_mode_reports_what_would_run_and_changes_nothing(playbook, scratch_db):
    result = playbook("migrate_action=up", "--check", "--diff")
    assert "Would run up: 1710000000001_create-widgets up, 1710000000002_create-gadgets up" in result.text
    assert "CREATE TABLE widgets" in result.output  # diff mode shows the SQL
    assert tracked(scratch_db) is None


def test_up_through_the_playbook_applies_and_reports_changed(playbook, scratch_db):
    result = playbook("migrate_action=up")
    assert result.changed == 1 and tracked(scratch_db) == ALL


def test_second_up_through_the_playbook_reports_no_change(playbook, scratch_db):
    playbook("migrate_action=up")
    assert playbook("migrate_action=up").changed == 0


def test_down_and_redo_through_the_playbook(playbook, scratch_db):
    playbook("migrate_action=up")
    playbook("migrate_action=down")
    assert tracked(scratch_db) == ALL[:1]
    playbook("migrate_action=redo", "migrate_count=1")
    assert tracked(scratch_db) == ALL[:1]


def test_up_with_count_and_to_through_the_playbook(playbook, scratch_db):
    playbook("migrate_action=up", "migrate_count=1")
    assert tracked(scratch_db) == ALL[:1]
    playbook("migrate_action=down", "migrate_to=" + ALL[0])
    assert tracked(scratch_db) == ALL[:1]


def test_status_through_the_playbook_shows_applied_and_pending(playbook):
    playbook("migrate_action=up", "migrate_count=1")
    result = playbook("migrate_action=status")
    assert "summary: 1 applied; 1 pending" in result.text and result.changed == 0


def test_status_through_the_playbook_fails_on_an_edited_applied_file(playbook, folder):
    playbook("migrate_action=up")
    (folder / "1710000000001_create-widgets.sql").write_text(FILES["1710000000001_create-widgets.sql"] + "--\n")
    result = playbook("migrate_action=status", check=False)
    assert result.returncode != 0 and "changed since applied: 1710000000001_create-widgets" in result.text


def test_create_through_the_playbook_writes_into_the_control_node_folder(playbook, folder):
    playbook("migrate_action=create", "migrate_name=add-orders")
    created = sorted(folder.glob("*_add-orders.sql"))
    assert len(created) == 1 and created[0].read_text().startswith("-- Up Migration")


@pytest.mark.parametrize("extra,message", [
    (["migrate_action=sideways"],
     "value of postgres_migrations_action must be one of: up, down, redo, status, create, got: sideways"),
    (["migrate_action=down", "migrate_count=0"], "count must be a whole number of at least 1, got 0"),
    (["migrate_action=up", "migrate_count=two"], "argument 'postgres_migrations_count' is of type"),
    (["migrate_action=status", "migrate_to=1710000000001_create-widgets"],
     "count and to apply to up, down and redo, not status"),
    (["migrate_action=create"], "create needs a name"),
    (["migrate_action=create", "migrate_name=../escape"], "invalid migration name '../escape'"),
], ids=["unknown-action", "count-zero", "count-not-a-number", "to-with-status", "create-without-name",
        "create-bad-name"])
def test_bad_extra_vars_fail_with_a_clear_error_before_anything_changes(playbook, scratch_db, extra, message):
    result = playbook(*extra, check=False)
    assert result.returncode != 0 and message in result.text
    assert tracked(scratch_db) is None


def test_down_past_the_first_migration_fails_through_the_playbook(playbook, scratch_db):
    result = playbook("migrate_action=down", check=False)
    assert result.returncode != 0 and "past the first migration" in result.text


def test_failing_migration_error_names_the_file_and_line_through_the_playbook(playbook, folder, scratch_db):
    (folder / "1710000000003_broken.sql").write_text("-- Up Migration\nSELECT 1;\nSELECT 1 / 0;\n")
    result = playbook("migrate_action=up", check=False)
    assert result.returncode != 0
    assert "1710000000003_broken.sql:3:" in result.text and "division by zero" in result.text
    assert tracked(scratch_db) == ALL


def test_password_never_appears_in_the_output(playbook, scratch_db):
    result = playbook("migrate_action=up", "-vvv")
    assert scratch_db["password"] not in result.output


def test_module_documentation_renders_with_ansible_doc():
    completed = subprocess.run([str(BIN / "ansible-doc"), "-M", "library", "pg_migrate"],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and "node-pg-migrate" in completed.stdout


def test_files_are_mirrored_on_the_docker_host_without_stale_extras(playbook, tmp_path, scratch_db):
    host_dir = tmp_path / "on-the-host"
    host_dir.mkdir()
    (host_dir / "1700000000000_deleted-upstream.sql").write_text("-- Up Migration\nSELECT 1;\n")
    playbook("migrate_action=up", "postgres_migrations_copy_to_host=true",
             "postgres_migrations_host_dir=" + str(host_dir))
    assert sorted(p.name for p in host_dir.iterdir()) == sorted(FILES)
    assert tracked(scratch_db) == ALL


def test_the_default_mirror_on_the_docker_host_is_root_only(playbook, scratch_db):
    # Not a world-writable place such as /var/tmp, where a planted symlink
    # would redirect the copy and the clean-up that run as root.
    host_dir = pathlib.Path("/var/lib/social-selling/migrations") / scratch_db["dbname"]
    try:
        playbook("migrate_action=up", "postgres_migrations_copy_to_host=true")
        for folder in (host_dir.parent, host_dir):
            info = folder.lstat()
            assert stat.S_ISDIR(info.st_mode) and info.st_uid == 0, folder
            assert stat.S_IMODE(info.st_mode) == 0o700, (folder, oct(info.st_mode))
        assert sorted(p.name for p in host_dir.iterdir()) == sorted(FILES)
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in host_dir.iterdir())
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
