# -*- coding: utf-8 -*-
"""Documentation of the connection options of module_utils/pg_connection.py.

Modules in library/ use it with `extends_documentation_fragment:
postgres_connection` (ansible.cfg's `doc_fragment_plugins` points Ansible
here, no collection needed). A module that takes libpq's `connect_timeout`
adds `postgres_connection.connect_timeout`. A module may tighten an option
in its own `options:` (for example `required: true`); Ansible merges its
keys over the fragment's.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r'''
options:
  login_host:
    description:
      - Host of the PostgreSQL server, as the host that runs the module reaches it (a name,
        an address, or a Unix socket directory starting with C(/)).
      - The default is the loopback address, where the project publishes the container's port;
        an address needs no name lookup, whereas C(localhost) may resolve to C(::1) first.
      - An empty string leaves the host to libpq, which then uses its default Unix socket.
    type: str
    default: 127.0.0.1
  login_port:
    description: Port of the PostgreSQL server (libpq's default).
    type: int
    default: 5432
  login_user:
    description:
      - Role to log in as. The default is PostgreSQL's bootstrap superuser name, libpq's
        convention, never an application role; the roles pass the role each task needs.
    type: str
    default: postgres
  login_password:
    description:
      - Password of O(login_user); unset lets libpq look further (C(PGPASSWORD), C(~/.pgpass)).
      - Never printed (C(no_log)).
    type: str
  login_db:
    description: Database to connect to. Unset, libpq connects to the database named like O(login_user).
    type: str
    aliases: [db]
  ssl_mode:
    description:
      - libpq C(sslmode) of the connection; C(prefer), libpq's default, uses TLS when the server
        offers it without checking the certificate.
      - See U(https://www.postgresql.org/docs/15/libpq-ssl.html#LIBPQ-SSL-PROTECTION) for what each mode protects against.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - File of the CA certificate(s) the server's certificate must be signed by (libpq
        C(sslrootcert)), read on the host that runs the module. Checked with O(ssl_mode=verify-ca)
        or O(ssl_mode=verify-full).
    type: path
requirements:
  - psycopg2 (pip package psycopg2-binary, pinned in requirements.txt) on the host that runs the module
'''

    # Only for modules whose connects are bounded by libpq's own timeout.
    CONNECT_TIMEOUT = r'''
options:
  connect_timeout:
    description:
      - Seconds libpq waits for the connection (libpq C(connect_timeout)); V(0) waits indefinitely.
        libpq counts whole seconds and never less than 2.
    type: int
    default: 10
'''
