"""Unit tests of module_utils/pg_connection.py, the modules' shared connection base."""
import pytest

import pg_connection as conn


FULL = dict(login_host="db.example", login_port=5433, login_user="owner", login_password="s3cret",
            login_db="app", connect_timeout=3, ssl_mode="verify-full", ca_cert="/etc/ca.pem",
            action="up", pool_max=20)


def test_options_become_libpq_keywords_and_nothing_else():
    assert conn.connection_params(FULL) == {
        "host": "db.example", "port": 5433, "user": "owner", "password": "s3cret",
        "dbname": "app", "connect_timeout": 3, "sslmode": "verify-full",
        "sslrootcert": "/etc/ca.pem"}


def test_unset_options_are_left_to_libpq():
    params = conn.connection_params(dict(FULL, login_password=None, login_db=None, ca_cert=None))
    assert not {"password", "dbname", "sslrootcert"} & set(params)


def test_empty_host_means_libpqs_default_socket():
    assert "host" not in conn.connection_params(dict(FULL, login_host=""))


def test_module_keywords_are_added_and_none_ones_dropped():
    params = conn.connection_params(FULL, application_name="ansible-x", options=None)
    assert params["application_name"] == "ansible-x" and "options" not in params


@pytest.mark.parametrize("with_timeout", [True, False])
def test_spec_has_libpq_defaults_and_no_application_ones(with_timeout):
    spec = conn.connection_argument_spec(connect_timeout=with_timeout)
    assert ("connect_timeout" in spec) is with_timeout
    assert spec["login_host"]["default"] == "127.0.0.1"
    assert spec["login_port"]["default"] == 5432
    assert spec["login_user"]["default"] == "postgres"
    assert spec["login_password"] == {"type": "str", "no_log": True}
    assert spec["login_db"] == {"type": "str", "aliases": ["db"]}
    assert spec["ssl_mode"]["choices"] == ["disable", "allow", "prefer", "require",
                                           "verify-ca", "verify-full"]
    assert spec["ca_cert"] == {"type": "path"}


def test_each_call_returns_a_fresh_spec_a_module_may_change():
    first = conn.connection_argument_spec()
    first["login_db"]["required"] = True
    assert "required" not in conn.connection_argument_spec()["login_db"]


def test_target_description_never_holds_the_password():
    text = conn.describe_target(FULL)
    assert text == "database app on db.example:5433 as owner" and "s3cret" not in text
    assert "(default socket)" in conn.describe_target(dict(FULL, login_host=""))


@pytest.mark.parametrize("library, shown", [("psycopg2", "psycopg2, pip package psycopg2-binary"),
                                            ("pglast", "(pglast)")])
def test_missing_library_message_is_ansibles_and_names_the_package(library, shown):
    message = conn.missing_library_message(library)
    assert message.startswith("Failed to import the required Python library") and shown in message
