# -*- coding: utf-8 -*-
"""Connection options shared by the project's PostgreSQL modules.

The same shape as community.postgresql's `postgres_common_argument_spec()`
and its `community.postgresql.postgres` doc fragment, for the modules in
library/: every module builds its argument_spec on
`connection_argument_spec()`, documents the options with the doc fragment
`postgres_connection` (doc_fragments/postgres_connection.py), turns them into
libpq keywords with `connection_params()` and reports a missing Python
library with `missing_library_message()`.

Defaults are libpq's or neutral ones, never the application's: the role,
the database and the password come from the inventory through the roles.

Plain Python (the Ansible import is deferred to `missing_library_message`),
so the modules' pure cores and their unit tests use it directly.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

# libpq's sslmode values, weakest first.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
DEFAULT_USER = "postgres"
DEFAULT_SSL_MODE = "prefer"
DEFAULT_CONNECT_TIMEOUT = 10

# Module option -> libpq keyword.
_LIBPQ_KEYWORDS = (
    ("login_host", "host"),
    ("login_port", "port"),
    ("login_user", "user"),
    ("login_password", "password"),
    ("login_db", "dbname"),
    ("connect_timeout", "connect_timeout"),
    ("ssl_mode", "sslmode"),
    ("ca_cert", "sslrootcert"),
)

# Import name -> what to install (requirements.txt pins these).
PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "pglast": "pglast",
}


def connection_argument_spec(connect_timeout=True):
    """The connection options, as an AnsibleModule argument_spec.

    A module extends the returned dict with its own options (and may tighten
    one, e.g. make `login_password` required). `connect_timeout=False` leaves
    out the libpq `connect_timeout` option (whole seconds) for a module that
    bounds its connects itself; the doc fragment documents that option
    separately (`postgres_connection.connect_timeout`).
    """
    spec = dict(
        login_host=dict(type="str", default=DEFAULT_HOST),
        login_port=dict(type="int", default=DEFAULT_PORT),
        login_user=dict(type="str", default=DEFAULT_USER),
        login_password=dict(type="str", no_log=True),
        login_db=dict(type="str", aliases=["db"]),
        ssl_mode=dict(type="str", default=DEFAULT_SSL_MODE, choices=list(SSL_MODES)),
        ca_cert=dict(type="path"),
    )
    if connect_timeout:
        spec["connect_timeout"] = dict(type="int", default=DEFAULT_CONNECT_TIMEOUT)
    return spec


def connection_params(params, **extra):
    """psycopg2.connect() keywords from the module's parameters.

    Options that are unset (None) are left out, so libpq applies its own
    defaults (PG* environment variables, then its built-in ones); an empty
    `login_host` is left out too: libpq then uses its default Unix socket.
    `extra` adds libpq keywords of the module's own (e.g. application_name);
    None values among them are left out as well. The result holds the
    password: never log or return it.
    """
    kwargs = {}
    for option, keyword in _LIBPQ_KEYWORDS:
        value = params.get(option)
        if value is None or (option == "login_host" and value == ""):
            continue
        kwargs[keyword] = value
    kwargs.update((key, value) for key, value in extra.items() if value is not None)
    return kwargs


def describe_target(params):
    """`db on host:port as user`, for messages (never the password)."""
    host = params.get("login_host") or "(default socket)"
    return "database %s on %s:%s as %s" % (params.get("login_db") or "(default)", host,
                                           params.get("login_port"), params.get("login_user"))


def missing_library_message(library, reason=None):
    """Ansible's standard message for a Python library missing on the managed host.

    `library` is the import name (psycopg2, pglast); the message names the
    package to install.
    """
    from ansible.module_utils.basic import missing_required_lib

    package = PACKAGES.get(library, library)
    name = library if package == library else "%s, pip package %s" % (library, package)
    return missing_required_lib(name, reason=reason)
