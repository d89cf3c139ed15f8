"""Issue 7: TLS, access rules and logging, in production and development.

The tests at module level run against the inventory's default, development.
The production tests are one class (pytest-randomly keeps a class's tests
together): it converges the shared container with app_env=production (TLS
required) once, and puts development back after its last test.
"""
import datetime
import hashlib
import ipaddress
import json
import os
import pathlib
import socket
import ssl
import struct
import subprocess
import uuid

import psycopg2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import (APP_ROLE, CONFIG_ROOT, CONTAINER, DB_NAME, DB_PORT, admin_login, container_id, docker_exec, query,
                      run_playbook, secret)

CA_FILE = CONFIG_ROOT + "/ca.crt"


def _connect(params, **extra):
    return psycopg2.connect(**dict(params, **extra))


# Development (the inventory's default): access rules.

def test_an_address_not_in_pg_hba_is_refused(app_params):
    # Inside the container, 127.0.0.1 is not a client network: only the Docker
    # network (where the host's published port comes from) is.
    proc = docker_exec(CONTAINER, "psql", "-h", "127.0.0.1", "-U", APP_ROLE, "-d", DB_NAME, "-c", "SELECT 1",
                       env={"PGPASSWORD": app_params["password"]})
    assert proc.returncode != 0 and "pg_hba.conf rejects connection" in proc.stderr, proc.stderr


def test_a_role_not_named_in_pg_hba_is_refused_over_tcp(admin_params):
    with _connect(admin_params) as conn, conn.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS hba_probe; CREATE ROLE hba_probe LOGIN PASSWORD 'hba-probe-password-123'")
    try:
        with pytest.raises(psycopg2.OperationalError, match="pg_hba.conf rejects connection"):
            _connect(admin_params, user="hba_probe", password="hba-probe-password-123", dbname=DB_NAME)
    finally:
        with _connect(admin_params) as conn, conn.cursor() as cur:
            cur.execute("DROP ROLE IF EXISTS hba_probe")


def test_changed_access_rules_reload_without_restart(admin_params):
    started = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", CONTAINER],
                             capture_output=True, text=True, check=True).stdout
    extra = json.dumps({"postgres_container_client_cidrs": ["10.99.0.0/16", "172.16.0.0/12"]})
    try:
        run = run_playbook("site.yml", "-e", extra)
        assert run.rc == 0, run
        assert "Reload the server configuration" in run.output
        with _connect(admin_params) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_hba_file_rules WHERE address = '10.99.0.0'")
            assert cur.fetchone()[0] == 1
    finally:
        assert run_playbook("site.yml").rc == 0
    after = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", CONTAINER],
                           capture_output=True, text=True, check=True).stdout
    assert after == started


def _hba_text():
    return pathlib.Path(CONFIG_ROOT, "conf", "pg_hba.conf").read_text()


@pytest.mark.parametrize("cidr", ["10.99.0.1/16", "10.99.0.0", "not-a-network/8"],
                         ids=["host-bits", "no-prefix", "not-an-address"])
def test_a_bad_client_network_fails_before_any_change(cidr):
    before = _hba_text()
    run = run_playbook("site.yml", "-e", json.dumps({"postgres_container_client_cidrs": ["10.20.0.0/16", cidr]}))
    assert run.rc != 0 and run.changed == 0, run
    assert f"postgres_container_client_cidrs has {cidr}, which is not a network in CIDR form" in \
        " ".join(run.output.split()), run
    assert _hba_text() == before


def test_access_rules_the_server_rejects_are_put_back_and_not_reloaded(admin_params):
    before = _hba_text()
    # A role name with a space splits the line: the server reads "role" as the address.
    extra = json.dumps({"postgres_container_client_roles": ["social_selling_user", "bad role"]})
    run = run_playbook("site.yml", "-e", extra)
    assert run.rc != 0, run
    text = " ".join(run.output.split())
    assert "the previous files were put back" in text and "pg_hba.conf line" in text, run
    assert _hba_text() == before
    with _connect(admin_params) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL")
        assert cur.fetchone()[0] == 0


def test_client_networks_never_cut_off_the_published_port():
    # The project's own modules (migrations as the owner, health as the app
    # role) come through 127.0.0.1, i.e. from the Docker network's gateway.
    try:
        run = run_playbook("site.yml", "-e", json.dumps({"postgres_container_client_cidrs": ["10.99.0.0/16"]}))
        assert run.rc == 0, run
        assert '{"status": "ok", "database": "up"}' in run.output
    finally:
        assert run_playbook("site.yml").rc == 0


@pytest.fixture
def other_ca_pair(tmp_path):
    """A certificate and a key that does not belong to it."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=probe", "-keyout", str(tmp_path / "a.key"), "-out", str(tmp_path / "a.crt"))
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(tmp_path / "b.key"))
    return tmp_path


@pytest.mark.parametrize("files, message", [
    ({"cert": "missing.crt", "key": "a.key", "ca": "a.crt"}, "does not exist on the control node"),
    ({"cert": "a.crt", "key": "b.key", "ca": "a.crt"}, "is not the key of"),
], ids=["certificate path that does not exist", "key that does not match its certificate"])
def test_bad_tls_files_fail_before_any_change(other_ca_pair, files, message):
    before = container_id()
    extra = {"app_env": "production",
             "postgres_container_ssl_cert_file": str(other_ca_pair / files["cert"]),
             "postgres_container_ssl_key_file": str(other_ca_pair / files["key"]),
             "postgres_container_ssl_ca_file": str(other_ca_pair / files["ca"])}
    run = run_playbook("site.yml", "-e", json.dumps(extra))
    assert run.rc != 0 and message in run.output, run
    assert run.changed == 0, run
    assert container_id() == before


# Your own certificate: postgres_container_ssl_cert_file, _key_file and _ca_file.

def _write_pem(path, data):
    path.write_bytes(data)
    return str(path)


def _make_ca(folder, name):
    """A self-signed CA of our own: (its key, its certificate, the certificate's PEM path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert, _write_pem(folder / (name + ".crt"), cert.public_bytes(serialization.Encoding.PEM))


def _served_certificate(cafile, host="localhost"):
    """The DER certificate the server presents, fetched as libpq does (SSLRequest, then TLS), verified
    against cafile and the host name."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", DB_PORT), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert sock.recv(1) == b"S", "the server refused TLS"
        with context.wrap_socket(sock, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True)


_OWN_TLS_PATHS = [CA_FILE, CONFIG_ROOT + "/conf/server.crt", CONFIG_ROOT + "/conf/server.key"]


class TestOwnCertificate:
    """A CA and a server certificate of our own, given to the role with TLS on; the stack's TLS
    state before (files on the Docker host, ssl on or off) is put back afterwards."""

    @pytest.fixture(scope="class")
    def own(self, tmp_path_factory):
        folder = tmp_path_factory.mktemp("own-tls")
        ca_key, ca_cert, ca_file = _make_ca(folder, "own-test-ca")
        server_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "own-test-server")]))
            .issuer_name(ca_cert.subject).public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
        _, _, other_ca_file = _make_ca(folder, "other-test-ca")
        files = {
            "postgres_container_ssl_cert_file": _write_pem(
                folder / "server.crt", server_cert.public_bytes(serialization.Encoding.PEM)),
            "postgres_container_ssl_key_file": _write_pem(folder / "server.key", server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
            "postgres_container_ssl_ca_file": ca_file,
        }
        admin = admin_login()
        ssl_before = query(admin, "SHOW ssl")[0][0]
        served_before = _served_certificate(CA_FILE) if ssl_before == "on" else None
        saved = {}
        for path in _OWN_TLS_PATHS:
            saved[path] = (pathlib.Path(path).read_bytes(), os.stat(path)) if os.path.exists(path) else None
        extra = json.dumps(dict(files, postgres_container_ssl=True))
        try:
            first = run_playbook("site.yml", "-e", extra)
            assert first.rc == 0, first
            again = run_playbook("site.yml", "-e", extra)
            yield {"first": first, "again": again, "ca_file": ca_file, "other_ca_file": other_ca_file,
                   "cert": server_cert}
        finally:
            for path, kept in saved.items():
                if kept is None:
                    pathlib.Path(path).unlink(missing_ok=True)
                else:
                    content, stat = kept
                    pathlib.Path(path).write_bytes(content)
                    os.chown(path, stat.st_uid, stat.st_gid)
                    os.chmod(path, stat.st_mode & 0o7777)
            restored = run_playbook("site.yml")
            assert restored.rc == 0, restored
            assert query(admin, "SHOW ssl")[0][0] == ssl_before
            if served_before is not None:
                assert _served_certificate(CA_FILE) == served_before

    def test_own_certificate_is_accepted_and_a_rerun_changes_nothing(self, own):
        assert own["first"].changed >= 1, own["first"]
        assert own["again"].rc == 0 and own["again"].changed == 0, own["again"]

    @pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
    def test_verify_full_with_own_ca_connects_over_tls(self, own, app_params, host):
        with _connect(app_params, host=host, sslmode="verify-full", sslrootcert=own["ca_file"]) as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() in [(True, "TLSv1.2"), (True, "TLSv1.3")]

    def test_the_server_presents_exactly_the_own_certificate(self, own):
        served = x509.load_der_x509_certificate(_served_certificate(own["ca_file"]))
        assert served.serial_number == own["cert"].serial_number
        assert hashlib.sha256(served.public_bytes(serialization.Encoding.DER)).hexdigest() == \
            hashlib.sha256(own["cert"].public_bytes(serialization.Encoding.DER)).hexdigest()

    def test_the_ca_published_for_clients_is_the_own_ca(self, own):
        # Application containers mount CONFIG_ROOT/ca.crt (README, "Connecting an application container").
        assert pathlib.Path(CA_FILE).read_bytes() == pathlib.Path(own["ca_file"]).read_bytes()

    def test_a_client_trusting_another_ca_is_refused(self, own, app_params):
        with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
            _connect(app_params, sslmode="verify-full", sslrootcert=own["other_ca_file"])


# Backups: encrypted with age before they reach the disk.

@pytest.fixture
def marked_user(app_params):
    marker = "encryption-probe-" + uuid.uuid4().hex
    query(app_params, "INSERT INTO users (email, password_hash, name) VALUES (%s, 'x', %s)",
          (marker + "@example.test", marker))
    yield marker
    query(app_params, "DELETE FROM users WHERE name = %s", (marker,))


def test_a_backup_holds_no_plain_row_and_restores_it(tmp_path, app_params, marked_user):
    folder = tmp_path / "backups"
    run = run_playbook("playbooks/backup.yml", "-vvv", "-e", f"postgres_backup_dir={folder}")
    assert run.rc == 0 and "encrypted with age" in run.output, run
    [dump] = folder.glob("social_selling-*.dump")
    content = dump.read_bytes()
    assert content.startswith(b"age-encryption.org/v1\n")
    assert marked_user.encode() not in content
    query(app_params, "DELETE FROM users WHERE name = %s", (marked_user,))
    restored = run_playbook("playbooks/restore.yml", "-vvv", "-e", f"postgres_backup_dir={folder}",
                            "-e", f"restore_backup={dump.name}", "-e", "rollback_confirm=social_selling")
    assert restored.rc == 0, restored
    # Not one line of the age identity in either run's -vvv output (it travels on stdin only).
    identity = secret("POSTGRES_BACKUP_IDENTITY", "backup_age_identity")
    secret_lines = [line.strip() for line in identity.splitlines() if line.strip() and not line.startswith("#")]
    assert secret_lines
    for line in secret_lines:
        assert line not in run.output and line not in restored.output
    assert query(app_params, "SELECT email FROM users WHERE name = %s", (marked_user,)) == [
        (marked_user + "@example.test",)]


def test_a_missing_backup_key_fails_before_any_change(tmp_path):
    folder = tmp_path / "backups"
    folder.mkdir(mode=0o700)
    run = run_playbook("playbooks/backup.yml", "-e", json.dumps({
        "postgres_backup_dir": str(folder), "postgres_backup_generate_identity": False,
        "postgres_backup_identity_file": str(tmp_path / "no-such-identity")}))
    assert run.rc != 0 and "there is no age identity" in run.output, run
    assert run.changed == 0, run
    assert list(folder.iterdir()) == []


# Production: TLS required.

def _not_after(pem_path=None, served=False):
    """The notAfter date of the server certificate on disk, or of the one the server presents."""
    if served:
        pem = subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-connect", f"127.0.0.1:{DB_PORT}"],
                             input="", capture_output=True, text=True, timeout=30).stdout
    else:
        pem = pathlib.Path(pem_path).read_text()
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate"], input=pem, capture_output=True, text=True,
                         check=True).stdout
    return datetime.datetime.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z")


class TestProduction:
    """app_env=production, converged once for the class; development again after its last test."""

    @pytest.fixture(scope="class", autouse=True)
    def production(self):
        try:
            run = run_playbook("site.yml", "-e", "app_env=production")
            assert run.rc == 0, run
            yield run
        finally:
            back = run_playbook("site.yml")
            assert back.rc == 0, back

    def test_production_run_recreates_nothing_on_the_second_run(self):
        before = container_id()
        cert_before = os.stat(CONFIG_ROOT + "/conf/server.crt").st_mtime_ns
        again = run_playbook("site.yml", "-e", "app_env=production")
        assert again.rc == 0 and again.changed == 0, again
        assert container_id() == before
        assert os.stat(CONFIG_ROOT + "/conf/server.crt").st_mtime_ns == cert_before

    @pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
    def test_verify_full_with_our_ca_connects(self, app_params, host):
        with _connect(app_params, host=host, sslmode="verify-full", sslrootcert=CA_FILE) as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ssl, version = cur.fetchone()
        assert ssl is True and version in ("TLSv1.2", "TLSv1.3")

    def test_sslmode_disable_is_refused_in_production(self, app_params):
        with pytest.raises(psycopg2.OperationalError, match="no encryption"):
            _connect(app_params, sslmode="disable")

    def test_every_app_connection_is_encrypted_with_tls_1_2_or_newer(self, app_params, admin_params):
        keep = _connect(app_params, sslmode="require")
        try:
            with _connect(admin_params, sslmode="require") as conn, conn.cursor() as cur:
                cur.execute("SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                            "WHERE a.usename = %s", (APP_ROLE,))
                rows = cur.fetchall()
        finally:
            keep.close()
        assert rows and all(ssl and version in ("TLSv1.2", "TLSv1.3") for ssl, version in rows), rows

    @pytest.mark.parametrize("setting, expected", [
        ("ssl", "on"), ("ssl_min_protocol_version", "TLSv1.2"), ("log_connections", "on"),
        ("log_disconnections", "on"), ("log_statement", "none"), ("log_min_duration_statement", "-1"),
    ])
    def test_production_server_setting(self, admin_params, setting, expected):
        with _connect(admin_params, sslmode="require") as conn, conn.cursor() as cur:
            cur.execute(f"SHOW {setting}")
            assert cur.fetchone()[0] == expected

    def test_production_log_line_names_time_user_database_and_client(self, admin_params):
        with _connect(admin_params, sslmode="require") as conn, conn.cursor() as cur:
            cur.execute("SHOW log_line_prefix")
            prefix = cur.fetchone()[0]
        for escape in ("%m", "%u", "%d", "%h"):
            assert escape in prefix

    def test_server_key_belongs_to_the_server_user_only(self):
        owner = subprocess.run(["docker", "exec", CONTAINER, "stat", "-c", "%U %a",
                                "/etc/social-selling-postgres/server.key"], capture_output=True, text=True, check=True)
        assert owner.stdout.split() == ["postgres", "600"]

    def test_a_certificate_about_to_expire_is_renewed_and_reloaded_without_restart(self, admin_params):
        server_crt = CONFIG_ROOT + "/conf/server.crt"
        os.remove(server_crt)
        short = run_playbook("site.yml", "-e", "app_env=production", "-e", "postgres_container_ssl_valid_days=20",
                             "-e", "postgres_container_ssl_renew_days=5")
        assert short.rc == 0, short
        soon = datetime.datetime.utcnow() + datetime.timedelta(days=21)
        assert _not_after(server_crt) < soon and _not_after(served=True) < soon
        before = container_id()
        with _connect(admin_params, sslmode="require") as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_postmaster_start_time()")
            started = cur.fetchone()[0]

        renewed = run_playbook("site.yml", "-e", "app_env=production")
        assert renewed.rc == 0 and renewed.changed >= 1, renewed
        later = datetime.datetime.utcnow() + datetime.timedelta(days=800)
        assert _not_after(server_crt) > later and _not_after(served=True) > later
        with _connect(admin_params, sslmode="require") as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_postmaster_start_time()")
            assert cur.fetchone()[0] == started
        assert container_id() == before
        again = run_playbook("site.yml", "-e", "app_env=production")
        assert again.rc == 0 and again.changed == 0, again
