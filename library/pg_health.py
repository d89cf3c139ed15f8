#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible wrapper of module_utils/pg_health_core.py (the logic lives there)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_health
short_description: Verify, as the application role, that PostgreSQL can serve the app's pool
description:
  - >-
    Connects as the application role within O(connect_timeout_ms), runs C(SELECT 1) and
    returns the seed's health answer C({"status": "ok", "database": "up"}), or
    C({"status": "error", "database": "down"}) with the reason when the server is down or
    refuses the role. The down answer comes within the connect timeout, never a hang.
  - >-
    Also returns the server version, round-trip latency, whether each required extension is
    installed, whether every statement is being logged, and the connection headroom: the
    server's C(max_connections) minus reserved connections, the role's and the database's
    connection limits, against O(pool_max) times O(app_instances).
  - >-
    With O(pool_check=true), runs a real pool configured as the app's (min, max, idle
    timeout, connect timeout): opens min, grows to max with all connections held at once,
    reads C(pg_stat_activity) to see them under the role and the C(application_name) the
    module sets, and runs C(SELECT 1) on each. It reports connect and query latency
    (p50, p95, max).
  - >-
    How the module's pool class waits then refuses a request beyond max, and closes idle
    connections down to min, does not depend on the server: its unit tests check that, so a
    deploy does not spend the idle timeout on it.
  - >-
    Like M(community.postgresql.postgresql_ping), the module never fails because the
    database is down; it reports and the playbook decides (C(failed_when)), unless
    O(fail_on_down=true). It is read-only and runs in check mode too.
version_added: "1.0.0"
extends_documentation_fragment:
  - postgres_connection
options:
  login_user:
    description:
      - Application role the app's pool logs in as; no default, so the check never runs as
        another role by mistake.
    required: true
    default: null
  login_password:
    description: Password of O(login_user), as the app logs in with it. Never printed (C(no_log)).
    required: true
  login_db:
    description: Database the application uses; no default.
    required: true
  connect_timeout_ms:
    description:
      - >-
        The app's C(connectionTimeoutMillis), 1 to 600000. Bounds every connect (and every
        query) the module makes, in milliseconds, and a pool request's wait.
    type: int
    default: 2000
  extensions:
    description: Extensions that must be installed in O(login_db).
    type: list
    elements: str
    default: [uuid-ossp, pgcrypto, pg_trgm, pg_stat_statements]
  pool_check:
    description:
      - >-
        Run the pool verification. With V(false), only the health probe and the headroom
        arithmetic run (a few milliseconds, one connection).
    type: bool
    default: true
  pool_min:
    description: The app's pool minimum, 0 to O(pool_max).
    type: int
    default: 2
  pool_max:
    description: The app's pool maximum, 1 to 10000.
    type: int
    default: 20
  pool_idle_timeout_ms:
    description:
      - >-
        The app's C(idleTimeoutMillis), 1 to 86400000. The pool check's pool is configured with
        it and reports it (RV(pool.idle_timeout_ms)); reaping itself is checked by unit tests.
    type: int
    default: 30000
  app_instances:
    description: How many app instances, each with its own pool, share the server; 1 to 1000.
    type: int
    default: 2
  application_name:
    description:
      - >-
        Prefix of the C(application_name) of the module's connections (1 to 50 printable
        ASCII characters); the module appends C(:<8 hex>) per run to find its own
        connections in C(pg_stat_activity).
    type: str
    default: pg_health
  pooler:
    description:
      - >-
        What serves the endpoint: V(none), the server itself, or V(pgbouncer) in transaction
        pooling. With V(pgbouncer) the headroom is checked against O(pooler_server_connections),
        the pool check counts client connections (an idle client holds no server connection),
        and PgBouncer's own view is read when O(pooler_stats_user) is set.
    type: str
    choices: [none, pgbouncer]
    default: none
  pooler_server_connections:
    description: Server connections PgBouncer may open for the role (pool + reserve), 1 to 10000.
    type: int
  pooler_stats_user:
    description: A user of PgBouncer's C(stats_users), for C(SHOW POOLS) and C(SHOW STATS).
    type: str
  pooler_stats_password:
    description: Its password. Never printed (C(no_log)).
    type: str
  fail_on_down:
    description: Fail the task when the database is down, instead of only reporting it.
    type: bool
    default: false
notes:
  - >-
    The pool check holds O(pool_max) connections of the role for a fraction of a second;
    on a server already near its limits, run it with O(pool_check=false).
attributes:
  check_mode:
    support: full
    details: Read-only; runs the same checks in check mode.
author:
  - Social Selling platform team
'''

EXAMPLES = r'''
- name: Verify that the database can serve the app's pool
  pg_health:
    login_host: 127.0.0.1
    login_port: 5432
    login_db: social_selling
    login_user: social_selling_user
    login_password: "{{ db_app_password }}"
    connect_timeout_ms: 2000
    pool_min: 2
    pool_max: 20
    pool_idle_timeout_ms: 30000
    app_instances: 2
  register: health_result
  failed_when: health_result.health.status != 'ok'

- name: Only probe health (one connection), failing directly when down
  pg_health:
    login_db: social_selling
    login_user: social_selling_user
    login_password: "{{ db_app_password }}"
    pool_check: false
    fail_on_down: true
'''

RETURN = r'''
is_available:
  description: Whether the role could connect and C(SELECT 1) answered.
  returned: always
  type: bool
  sample: true
health:
  description: The seed's health answer.
  returned: always
  type: dict
  sample: {"status": "ok", "database": "up"}
reason:
  description: Why the database is down (connection or authentication error); empty when up.
  returned: always
  type: str
  sample: 'connection to 127.0.0.1 port 5432 as social_selling_user failed: Connection refused'
latency_ms:
  description: Health probe timings in ms (connect, C(SELECT 1) round trip, whole probe).
  returned: always
  type: dict
  sample: {"connect": 9.4, "query": 0.4, "total": 14.1}
application_name:
  description: C(application_name) of this run's connections.
  returned: always
  type: str
  sample: pg_health:1f2e3d4c
server_version:
  description: Server version.
  returned: when up
  type: dict
  sample: {"major": 15, "minor": 10, "full": "15.10", "raw": "PostgreSQL 15.10 on x86_64-pc-linux-gnu ..."}
role:
  description: Role the module connected as (C(current_user)).
  returned: when up
  type: str
  sample: social_selling_user
database:
  description: Database the module connected to.
  returned: when up
  type: str
  sample: social_selling
extensions:
  description: For each required extension, whether it is installed in the database, and its version.
  returned: when up
  type: dict
  sample: {"pgcrypto": {"installed": true, "version": "1.3"}}
extensions_missing:
  description: Required extensions that are not installed.
  returned: when up
  type: list
  elements: str
  sample: []
query_logging:
  description:
    - >-
      Statement logging as the app role sees it. C(all_statements_logged) is true when
      C(log_statement=all) or C(log_min_duration_statement=0); compare it with the environment
      (development logs every statement, production does not).
  returned: when up
  type: dict
  sample: {"log_statement": "all", "log_min_duration_statement_ms": -1,
           "all_statements_logged": true, "some_statements_logged": true}
headroom:
  description:
    - >-
      Connection limits against C(required) = O(pool_max) x O(app_instances), every app pool at
      its maximum with no margin added (sizing margins for other clients is the deployment's
      job). C(limits.server)
      is C(max_connections) minus C(superuser_reserved_connections) and C(reserved_connections)
      (absent before PostgreSQL 16); C(limits.role) is C(pg_roles.rolconnlimit),
      C(limits.database) is C(pg_database.datconnlimit) (null limit = unlimited).
    - C(short) lists each limit that is short and by how much.
  returned: when up
  type: dict
  sample: {"required": 40, "ok": false, "pool_max": 20, "app_instances": 2,
           "limits": {"role": {"limit": 30, "short_by": 10, "spare": 0, "unlimited": false,
                               "source": "pg_roles.rolconnlimit of social_selling_user"}},
           "short": [{"limit": "role", "short_by": 10,
                      "message": "role limit 30 is short by 10 for 2 app instance(s) x pool max 20 = 40"}]}
pool:
  description:
    - >-
      Result of the pool check (C({"skipped": true}) with O(pool_check=false)). C(checks) holds one
      boolean per property (opens min at start, grows to max, opens within connect timeout);
      C(ok) is true when all hold and C(errors) is empty.
    - >-
      C(server_*) counts come from C(pg_stat_activity); C(idle_timeout_ms) is O(pool_idle_timeout_ms),
      the pool's configured idle timeout (reaping is not observed at deploy time).
    - C(latency_ms.connect) and C(latency_ms.query) give count, p50, p95 and max in ms.
  returned: when up
  type: dict
  sample: {"ok": true, "min": 2, "max": 20, "opened_at_start": 2, "server_connections_at_start": 2,
           "reached": 20, "server_connections_at_peak": 20,
           "server_roles_at_peak": {"social_selling_user": 20}, "idle_timeout_ms": 30000,
           "all_opened_within_connect_timeout": true, "errors": [],
           "checks": {"opens min at start": true, "grows to max": true,
                      "opens within connect timeout": true},
           "latency_ms": {"connect": {"count": 20, "p50": 7.5, "p95": 10.7, "max": 11.9},
                          "query": {"count": 20, "p50": 0.25, "p95": 0.33, "max": 1.4}},
           "duration_ms": 151.5}
archiver:
  description:
    - The server's WAL archiving (C(pg_stat_archiver)). C(enabled) is false when C(archive_mode) is off, and
      then nothing else is given.
    - C(last_archived_age_s) is the age of the last archived WAL; C(unarchived_bytes) the WAL written after
      the end of that segment (null when unknown, e.g. on a standby).
    - C(warnings) when the latest attempt failed, or when WAL has waited more than twice C(archive_timeout);
      each is also emitted as an Ansible warning.
  returned: when up
  type: dict
  sample: {"enabled": true, "archived_count": 12, "last_archived_wal": "00000001000000000000000C",
           "last_archived_time": "2026-12-01T17:08:40.1+00:00", "last_archived_age_s": 21.4,
           "failed_count": 0, "last_failed_wal": null, "last_failed_time": null,
           "archive_timeout_s": 60, "unarchived_bytes": 0, "warnings": []}
pooler:
  description:
    - >-
      PgBouncer's view of the database (O(pooler=pgbouncer) with O(pooler_stats_user)):
      clients active and waiting, server connections, the longest current wait, totals
      from C(SHOW STATS), and one entry per role; C(is_available) false with C(reason)
      when the admin console does not answer.
  returned: when O(pooler=pgbouncer) and O(pooler_stats_user) is set
  type: dict
  sample: {"is_available": true, "reason": "", "clients_active": 1, "clients_waiting": 0,
           "server_connections": 2, "server_active": 1, "max_wait_ms": 0.0,
           "stats": {"total_xact_count": 120, "total_query_count": 130, "avg_xact_time_ms": 0.4,
                     "avg_query_time_ms": 0.3, "avg_wait_time_ms": 0.0},
           "users": {"social_selling_user": {"clients_active": 1, "clients_waiting": 0,
                                             "server_active": 1, "server_idle": 1,
                                             "server_login": 0, "max_wait_ms": 0.0,
                                             "pool_mode": "transaction"}}}
problems:
  description: What would stop the database serving the app pool, in words (missing extensions,
    short limits, failed pool checks); empty when all is well or when down.
  returned: always
  type: list
  elements: str
  sample: []
duration_ms:
  description: How long the whole check took, in ms.
  returned: always
  type: float
  sample: 567.7
'''

import os
import sys
import traceback

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils import pg_connection
    from ansible.module_utils import pg_health_core as core
except ImportError:
    # Only when this file is imported bare, outside Ansible (ansible-lint's
    # args rule, unit tests): Ansible ships module_utils/ with the module.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    os.pardir, 'module_utils'))
    import pg_connection  # noqa: E402
    import pg_health_core as core  # noqa: E402


def argument_spec():
    """The connection options (module_utils/pg_connection.py) and the module's own.

    The connect timeout is the module's own O(connect_timeout_ms): it bounds
    every connect, query and pool wait in milliseconds, which libpq's
    whole-second C(connect_timeout) cannot. The role, its password and the
    database have no default: the playbook names the app's.
    Ranges are checked by `core.validate_options`.
    """
    spec = pg_connection.connection_argument_spec(connect_timeout=False)
    spec['login_user'] = dict(type='str', required=True)
    spec['login_password'] = dict(type='str', required=True, no_log=True)
    spec['login_db'] = dict(spec['login_db'], required=True)
    spec.update(
        connect_timeout_ms=dict(type='int', default=2000),
        extensions=dict(type='list', elements='str', default=list(core.DEFAULT_EXTENSIONS)),
        pool_check=dict(type='bool', default=True),
        pool_min=dict(type='int', default=2),
        pool_max=dict(type='int', default=20),
        pool_idle_timeout_ms=dict(type='int', default=30000),
        app_instances=dict(type='int', default=2),
        application_name=dict(type='str', default='pg_health'),
        pooler=dict(type='str', default='none', choices=['none', 'pgbouncer']),
        pooler_server_connections=dict(type='int'),
        pooler_stats_user=dict(type='str'),
        pooler_stats_password=dict(type='str', no_log=True),
        fail_on_down=dict(type='bool', default=False),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not core.HAS_PSYCOPG2:
        module.fail_json(msg=pg_connection.missing_library_message('psycopg2'),
                         exception=core.PSYCOPG2_IMPORT_ERROR)

    errors = core.validate_options(module.params)
    if errors:
        module.fail_json(msg='Invalid options: ' + '; '.join(errors))

    try:
        result = core.run_checks(module.params)
    except Exception as exc:  # an unexpected error, not a down database
        module.fail_json(msg='pg_health failed unexpectedly: %s' % exc,
                         exception=traceback.format_exc())

    for warning in result.get('archiver', {}).get('warnings', []):
        module.warn(warning)
    if module.params['fail_on_down'] and not result['is_available']:
        module.fail_json(msg='Database is down: %s' % result['reason'], changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
