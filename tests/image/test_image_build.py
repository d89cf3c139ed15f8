"""Issue 10 item 16: the image built from Debian's packages gets security updates.

Real builds with the postgres_image role alone (tests/integration/image_only.yml),
under the repository `wt-image/postgres` and a build folder of their own, so
the image and the build folder of the provisioned database are never touched.
One or two full builds (about a minute each): the module's first run reuses
the image and the build folder an earlier session left (else it builds), then
one refresh; one more debootstrap (about 45 s) for the unreachable security
mirror; the other runs build nothing or fail at the first signature check.
The digest tests push a tiny image to a registry on the loopback (Debian's
`docker-registry`; skipped when it is not installed).
"""
import json
import pathlib
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import docker, run_playbook

pytestmark = pytest.mark.slow

REPOSITORY = "wt-image/postgres"
BUILD_DIR = pathlib.Path("/var/cache/wt-image/pytest-image-build")
PLAYBOOK = "tests/integration/image_only.yml"
# The YAML callback may wrap the message at any space.
REPORT = re.compile(r"postgres_image:\s+package\s+lists\s+from\s+(\S+),\s+(\d+)\s+days\s+old\s+\((\S+)\)")


#: Every run of the role here: always the built image, under this module's names.
BASE_VARIABLES = {"postgres_image_build": "always", "postgres_image_build_repository": REPOSITORY,
                  "postgres_image_build_dir": str(BUILD_DIR)}


def run_role(**extra_vars):
    """Apply the role alone, with BASE_VARIABLES and these."""
    return run_playbook(PLAYBOOK, "-e", json.dumps({**BASE_VARIABLES, **extra_vars}))


def report(run):
    """(packages date, age in days, image ref) from the role's debug line."""
    match = REPORT.search(run.output)
    assert match, run
    return match.group(1), int(match.group(2)), match.group(3)


def image_id(ref):
    return docker("image", "inspect", "--format", "{{.Id}}", ref).strip()


def labels(ref):
    return json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", ref))


def rootfs_archives():
    return sorted(p.name for p in BUILD_DIR.glob("rootfs-*.tar"))


def versions_by_suite(policy):
    """{suite: [versions]} from `apt-cache policy PACKAGE` output, newest first."""
    suites, version = {}, None
    for line in policy.splitlines():
        entry = re.match(r"^ [ *]{3} (\S+) -?\d+$", line)
        source = re.match(r"^\s+-?\d+ \S+ ([^/\s]+)/", line)
        if entry:
            version = entry.group(1)
        elif source and version:
            suites.setdefault(source.group(1), []).append(version)
    return suites


def version_ge(left, right):
    return subprocess.run(["dpkg", "--compare-versions", left, "ge", right], check=False).returncode == 0


def in_image(ref, script, network="none"):
    return docker("run", "--rm", "--network", network, "--entrypoint", "bash", ref, "-c", script)


def refresh_from_the_command_line():
    """A refresh as a user asks for it: `-e postgres_image_refresh=true`, a string."""
    return run_playbook(PLAYBOOK, "-e", json.dumps(BASE_VARIABLES), "-e", "postgres_image_refresh=true")


@pytest.fixture(scope="module")
def build():
    """The module's image: the role run as it finds things (the image and the build folder an
    earlier session left are reused, else it builds), then one refresh, so that every test sees
    a build from today's package lists and the refresh test compares the two."""
    earlier = docker("image", "ls", "--quiet", "--no-trunc", REPOSITORY).split()
    found = run_role()
    assert found.rc == 0, found
    found_date, _, found_ref = report(found)
    found_state = {"date": found_date, "ref": found_ref, "id": image_id(found_ref), "archives": rootfs_archives()}
    run = refresh_from_the_command_line()
    assert run.rc == 0, run
    date, age, ref = report(run)
    state = {"run": run, "date": date, "age": age, "ref": ref, "id": image_id(ref), "found": found_state,
             "replaced": [found_state["id"]]}
    # A build of an earlier session that a refresh left untagged.
    state["replaced"] += [i for i in earlier if docker("image", "inspect", "--format", "{{.RepoTags}}", i).strip() == "[]"]
    yield state
    # Images this module's refreshes left untagged. The last image and its build folder stay: the
    # next session's first run reuses them.
    for old in state["replaced"]:
        if old != state["id"]:
            docker("image", "rm", old, check=False)


def test_the_image_is_tagged_in_its_own_repository_and_labelled_with_the_date_of_its_package_lists(build):
    assert build["ref"].startswith(REPOSITORY + ":15-bookworm-"), build["run"]
    assert build["age"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", build["date"])
    image_labels = labels(build["ref"])
    assert image_labels["social-selling.packages-date"] == build["date"]
    assert image_labels["org.opencontainers.image.created"] == build["date"]


def test_the_root_filesystem_has_the_updates_and_security_suites_all_signature_checked(build):
    sources = in_image(build["ref"], "cat /etc/apt/sources.list; ls /etc/apt/sources.list.d")
    suites = re.findall(r"^deb \[signed-by=(\S+)\] (\S+) (\S+) main$", sources, re.M)
    assert [(mirror, suite) for _, mirror, suite in suites] == [
        ("http://deb.debian.org/debian", "bookworm"),
        ("http://deb.debian.org/debian", "bookworm-updates"),
        ("http://deb.debian.org/debian-security", "bookworm-security"),
    ], sources
    keyring = {key for key, _, _ in suites}
    assert keyring == {"/etc/apt/keyrings/postgres-image-archive.gpg"}
    assert "trusted=yes" not in sources and "allow-insecure" not in sources
    # The keyring in the image is the one debootstrap verified with.
    assert in_image(build["ref"], "sha256sum < /etc/apt/keyrings/postgres-image-archive.gpg").split()[0] == \
        subprocess.run(["sha256sum", "/usr/share/keyrings/debian-archive-keyring.gpg"],
                       capture_output=True, text=True, check=True).stdout.split()[0]


def test_every_package_is_at_the_newest_version_its_suites_offer(build):
    # Fresh lists, fetched inside a throwaway container, with the image's own signature checks.
    out = in_image(build["ref"], "set -e; apt-get update -qq; apt-cache policy postgresql-15;"
                                 " echo UPGRADABLE; apt list --upgradable 2>/dev/null | tail -n +2", network="host")
    policy, upgradable = out.split("UPGRADABLE")
    installed = re.search(r"Installed: (\S+)", policy).group(1)
    candidate = re.search(r"Candidate: (\S+)", policy).group(1)
    assert installed == candidate, policy
    assert upgradable.strip() == "", upgradable
    # Debian 12 ships point and security releases of PostgreSQL through -security:
    # the installed version is at least the newest bookworm-security offers.
    security = versions_by_suite(policy).get("bookworm-security")
    assert security, policy
    assert version_ge(installed, security[0]), policy


def test_the_installed_server_is_at_least_the_newest_the_host_knows_of(build):
    installed = in_image(build["ref"], "dpkg-query -W -f '${Version}' postgresql-15")
    policy = subprocess.run(["apt-cache", "policy", "postgresql-15"], capture_output=True, text=True, check=False).stdout
    suites = versions_by_suite(policy)
    known = [v for suite in ("bookworm", "bookworm-updates", "bookworm-security") for v in suites.get(suite, [])]
    if not known:
        pytest.skip("the host has no bookworm package lists")
    assert all(version_ge(installed, version) for version in known), (installed, policy)


def test_a_second_run_changes_nothing_and_reaches_no_mirror(build):
    # Mirrors nobody listens on and a keyring that does not exist: any build step would fail.
    run = run_role(postgres_image_debian_mirror="http://127.0.0.1:9/debian",
                   postgres_image_debian_security_mirror="http://127.0.0.1:9/debian-security",
                   postgres_image_debian_keyring="/nonexistent/keyring.gpg")
    assert run.rc == 0 and run.changed == 0, run
    assert "Debootstrap" not in run.output, run
    assert report(run) == (build["date"], 0, build["ref"])
    assert image_id(build["ref"]) == build["id"]


def test_package_lists_older_than_allowed_bring_a_warning_but_no_rebuild(build):
    run = run_role(postgres_image_max_age_days=-1)
    assert run.rc == 0 and run.changed == 0, run
    assert re.search(r"WARNING:\s+the\s+package\s+lists\s+of\s+" + re.escape(build["ref"]), run.output), run
    assert "postgres_image_refresh=true" in run.output
    assert "WARNING: the package lists" not in run_role().output


def test_the_refresh_variable_rebuilds_from_fresh_lists_under_the_same_tag(build):
    found = build["found"]
    assert build["run"].changed > 0, build["run"]
    assert build["ref"] == found["ref"] and build["age"] == 0
    assert build["date"] > found["date"], (build["date"], found["date"])
    assert build["id"] != found["id"]
    assert labels(build["ref"])["social-selling.packages-date"] == build["date"]
    # The earlier archive is gone: one archive per build folder, whatever the number of refreshes.
    after = rootfs_archives()
    assert len(after) == 1 and after != found["archives"] and len(found["archives"]) <= 1, (found["archives"], after)
    assert after[0].endswith(build["date"].replace("-", "").replace(":", "") + ".tar")


@pytest.fixture
def empty_keyring(tmp_path):
    path = tmp_path / "empty.gpg"
    path.write_bytes(b"")
    return str(path)


@pytest.mark.parametrize("keyring", ["/usr/share/keyrings/debian-archive-removed-keys.gpg", "empty"],
                         ids=["keyring without the archive's key", "empty keyring"])
def test_a_bad_signature_fails_loudly_keeps_the_log_and_the_image(build, keyring, empty_keyring):
    keyring = empty_keyring if keyring == "empty" else keyring
    tars = rootfs_archives()
    run = run_role(postgres_image_refresh=True, postgres_image_debian_keyring=keyring)
    assert run.rc != 0, run
    match = re.search(r"the full log is kept in (\S+\.failed\.log)\.", run.output)
    assert match, run
    log = pathlib.Path(match.group(1))
    assert log.parent == BUILD_DIR and log.is_file(), run
    assert f"The root filesystem of {build['ref']} could not be built" in run.output
    assert "debootstrap of bookworm" in run.output and keyring in run.output
    # The reason is in the error and in the log kept.
    reason = "E: Release signed by unknown key" if "removed" in keyring else "E: "
    assert reason in run.output and reason in log.read_text(), log.read_text()
    # Nothing else changed: the image and the archive from the last good build stay.
    assert image_id(build["ref"]) == build["id"]
    assert rootfs_archives() == tars
    assert not list(BUILD_DIR.glob("*.partial*")), list(BUILD_DIR.iterdir())


# Pinning by digest. Docker sets RepoDigests only on a push or a pull, and no
# public registry is reachable here: Debian's `docker-registry` serves one on
# the loopback for the duration of these tests.

@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry on 127.0.0.1 (Docker trusts the loopback without TLS); yields its host:port."""
    binary = shutil.which("docker-registry")
    if not binary:
        pytest.skip("docker-registry (Debian package) is not installed: no local registry to pin digests from")
    root = tmp_path_factory.mktemp("registry")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    server = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline and server.poll() is None, "the local registry did not start"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def pushed_image(registry):
    """A tiny image pushed to the local registry; yields (name, digest reference, image id)."""
    local = f"{REPOSITORY}:digest-probe"
    name = f"{registry}/{REPOSITORY}:15"
    subprocess.run(["docker", "import", "--message", "digest probe", "-", local],
                   input=subprocess.run(["tar", "-c", "-T", "/dev/null"], capture_output=True, check=True).stdout,
                   capture_output=True, check=True)
    docker("tag", local, name)
    docker("push", "--quiet", name)
    digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", name))
    assert len(digests) == 1 and digests[0].startswith(f"{registry}/{REPOSITORY}@sha256:"), digests
    try:
        yield name, digests[0], image_id(name)
    finally:
        docker("image", "rm", name, local, check=False)


def resolved_ref(run):
    match = re.search(r"postgres_image_ref=(\S+)", run.output)
    assert match, run
    return match.group(1)


PIN_PLAYBOOK = """---
- name: Resolve the image only
  hosts: docker_hosts
  gather_facts: false
  tasks:
    - name: Run the role's resolution and report
      ansible.builtin.include_role:
        name: postgres_image
    - name: Show the reference
      ansible.builtin.debug:
        msg: postgres_image_ref={{ postgres_image_ref }}
"""


def run_pin_playbook(tmp_path, **variables):
    """The image role in a play that prints postgres_image_ref, under this module's repository and build folder."""
    playbook = tmp_path / "pin.yml"
    playbook.write_text(PIN_PLAYBOOK)
    return run_playbook(str(playbook), "-e", json.dumps({
        "postgres_image_build_repository": REPOSITORY, "postgres_image_build_dir": str(BUILD_DIR), **variables}))


@pytest.mark.parametrize("mode, refresh", [("never", False), ("auto", True)],
                         ids=["present image", "pulled again by a refresh"])
def test_a_registry_image_is_pinned_by_its_digest(pushed_image, mode, refresh, tmp_path):
    name, digest_ref, image = pushed_image
    # The registry path: a container that needs no tool only the built image has (archiving off).
    run = run_pin_playbook(tmp_path, postgres_image_name=name, postgres_image_build=mode,
                           postgres_image_refresh=refresh, postgres_image_tools_required=False)
    assert run.rc == 0, run
    assert resolved_ref(run) == digest_ref
    # The reference names the same image, and the age report reads it.
    assert image_id(digest_ref) == image
    assert report(run)[2] == digest_ref
    assert "Debootstrap" not in run.output
    if refresh:
        assert "Try to pull the image" in run.output and run.changed == 0, run


def test_auto_runs_the_built_image_when_the_container_needs_pgbackrest(pushed_image, build, tmp_path):
    # Archiving on (the default): pgBackRest is only in the built image, so `auto` neither pulls nor
    # runs the registry's image even though it is there.
    name, digest_ref, _ = pushed_image
    run = run_pin_playbook(tmp_path, postgres_image_name=name, postgres_image_build="auto")
    assert run.rc == 0, run
    assert resolved_ref(run) == build["ref"]
    assert re.search(r"Try to pull the image\] \**\s*\nskipping:", run.output), run


def test_an_image_without_a_digest_is_used_by_its_name(tmp_path):
    local = f"{REPOSITORY}:no-digest-probe"
    subprocess.run(["docker", "import", "-", local],
                   input=subprocess.run(["tar", "-c", "-T", "/dev/null"], capture_output=True, check=True).stdout,
                   capture_output=True, check=True)
    try:
        run = run_pin_playbook(tmp_path, postgres_image_name=local, postgres_image_build="never")
        assert run.rc == 0, run
        assert resolved_ref(run) == local
    finally:
        docker("image", "rm", local, check=False)


def test_a_security_suite_that_cannot_be_fetched_fails_the_build_instead_of_being_left_out(build):
    # apt-get update exits 0 when some lists fail to download: the build must not.
    tars = rootfs_archives()
    run = run_role(postgres_image_refresh=True, postgres_image_debian_security_mirror="http://127.0.0.1:9/debian-security")
    assert run.rc != 0, run
    assert "bookworm-security" in run.output and ".failed.log" in run.output, run
    log = next(BUILD_DIR.glob("rootfs-*.failed.log"))
    assert "127.0.0.1:9" in log.read_text()
    assert image_id(build["ref"]) == build["id"]
    assert rootfs_archives() == tars
    assert not list(BUILD_DIR.glob("*.partial*")), list(BUILD_DIR.iterdir())
