"""The Docker engine the docker_host role starts on a host without a service manager.

dockerd outlives the run that started it: it must not inherit that run's
environment (passwords, the backup identity), must run once, and its log
must not grow without bound. These tests stop the engine and let site.yml
start it again, as on a fresh host; the container comes back by its restart
policy and site.yml.
"""
import os
import pathlib
import subprocess
import time
import uuid

import pytest

from conftest import run_playbook

LOG = pathlib.Path("/var/log/dockerd.log")

pytestmark = pytest.mark.skipif(
    pathlib.Path("/run/systemd/system").exists(), reason="the host has a service manager: systemd starts dockerd")


def dockerd_pids():
    out = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def stop_dockerd():
    for pid in dockerd_pids():
        os.kill(pid, 15)
    deadline = time.monotonic() + 60
    while dockerd_pids():
        assert time.monotonic() < deadline, "dockerd did not stop"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def restarted():
    """dockerd stopped, then started by site.yml with secrets in the run's environment."""
    marker = "secret-marker-" + uuid.uuid4().hex
    stop_dockerd()
    LOG.write_bytes(b"x" * 2048)  # an old log past the size limit below
    run = run_playbook("site.yml", "-e", "docker_host_dockerd_log_max_bytes=1024",
                       env={"POSTGRES_BACKUP_IDENTITY": marker, "SOME_API_TOKEN": marker})
    try:
        yield {"run": run, "marker": marker}
    finally:
        if not dockerd_pids():
            assert run_playbook("site.yml").rc == 0


def test_site_yml_starts_the_engine_and_the_database(restarted):
    run = restarted["run"]
    assert run.rc == 0, run
    assert '{"status": "ok", "database": "up"}' in run.output


def test_dockerd_inherits_nothing_of_the_run_environment(restarted):
    [pid] = dockerd_pids()
    environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = sorted(item.split(b"=", 1)[0].decode() for item in environ if item)
    assert restarted["marker"].encode() not in b"\0".join(environ)
    assert not [name for name in names if name.startswith(("POSTGRES", "ANSIBLE", "SOME_API"))], names
    assert set(names) <= {"PATH", "HOME", "LANG", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
                          "https_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR"}, names


def test_the_old_log_is_rotated_at_start(restarted):
    # containerd-shims of the stopped engine may still append a few lines after the x's.
    assert pathlib.Path(str(LOG) + ".1").read_bytes().startswith(b"x" * 2048)
    assert LOG.exists() and not LOG.read_bytes().startswith(b"x")  # a new log


def test_a_second_run_starts_no_second_daemon(restarted):
    before = dockerd_pids()
    again = run_playbook("site.yml")
    assert again.rc == 0 and again.changed == 0, again
    assert dockerd_pids() == before and len(before) == 1


def test_an_engine_slow_to_answer_is_not_started_twice(restarted, tmp_path):
    # A ping that fails (here: the wrong socket) while dockerd runs must not start another.
    before = dockerd_pids()
    play = tmp_path / "engine.yml"
    play.write_text("- hosts: docker_hosts\n  gather_facts: false\n  roles: [docker_host]\n")
    run = run_playbook(str(play), "-e", "docker_host_socket=/run/no-such-docker.sock",
                       "-e", "docker_host_start_timeout=2")
    assert run.rc != 0, run
    assert run.changed == 0, run  # the start step saw the live dockerd and started nothing
    assert dockerd_pids() == before
