#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module pg_migrate: versioned SQL migrations shared with node-pg-migrate."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pg_migrate
short_description: Apply, roll back and report versioned SQL migrations, compatible with node-pg-migrate
description:
  - Runs the SQL migrations of a folder against a PostgreSQL database and records them in
    node-pg-migrate's table (C(public.pgmigrations)), so this module and node-pg-migrate
    share one history; what one applied the other sees as applied and can roll back.
  - Files are node-pg-migrate SQL migrations named C(<prefix>_<name>.sql) with a
    C(-- Up Migration) section and an optional C(-- Down Migration) section, ordered by
    numeric prefix (a 17-digit prefix is a UTC date C(YYYYMMDDhhmmssSSS)). The folder must
    hold nothing else, since node-pg-migrate runs every file that does not start with a dot.
  - Takes node-pg-migrate's session advisory lock (7241865325823964) for C(up), C(down) and
    C(redo), polling it for O(advisory_lock_wait) seconds, so concurrent runners of either
    tool never apply a migration twice.
  - Each migration runs in its own transaction together with its tracking row; a failure
    leaves nothing of that migration and names the file, the line and PostgreSQL's message.
  - >-
    A line C(-- pg-migrate: no-transaction) in a file runs that migration outside a
    transaction (needed for C(CREATE INDEX CONCURRENTLY)); node-pg-migrate cannot run such
    a file, and a failure part-way leaves the statements before it applied.
  - >-
    The SQL is read with PostgreSQL's own scanner (pglast). Before anything runs, the planned
    sections are checked: an unterminated comment, quote or dollar quote, and a statement that
    begins or ends a transaction (C(BEGIN), C(COMMIT), C(END), C(ROLLBACK), C(ABORT),
    C(START TRANSACTION), C(PREPARE TRANSACTION), C(COMMIT PREPARED)) in a transactional
    migration, fail naming the file and line. V(down) refuses a migration whose
    C(-- Down Migration) section holds no statement, unless the section has the line
    C(-- pg-migrate: down-noop).
  - Revokes write access to the tracking tables (and the id sequence) from every role but
    their owner, so the application role cannot rewrite migration history; SELECT stays.
  - Keeps the SHA-256 of each applied file in the side table C(public.pgmigrations_checksums)
    and reports applied files changed or deleted since (drift); C(up), C(down) and C(redo)
    stop on drift unless O(allow_drift=true). Migrations applied by node-pg-migrate have no
    checksum and are reported as RV(unverified).
  - In check mode nothing is locked, created or run; the module returns what would run.
    In diff mode it shows the SQL.
version_added: "1.0.0"
author:
  - Social Selling infrastructure team
extends_documentation_fragment:
  - postgres_connection
  - postgres_connection.connect_timeout
options:
  action:
    description:
      - V(up) applies pending migrations (all, O(count) of them, or up to and including O(to)).
      - V(down) rolls back applied migrations, latest first (one, O(count) of them, or every
        one applied after O(to), which stays applied). Going past the first migration is an error.
      - V(redo) rolls back like V(down), then re-applies exactly those migrations.
      - V(status) reports applied, pending, drift and order without changing anything, and never fails on them.
      - V(create) writes a new empty migration C(<13-digit ms timestamp>_<name>.sql) with both
        section markers into O(migrations_dir) (on the host the module runs on); never overwrites.
    type: str
    required: true
    choices: [up, down, redo, status, create]
  migrations_dir:
    description: Folder holding the migration files.
    type: path
    required: true
  count:
    description:
      - How many migrations V(up), V(down) or V(redo) handle, at least 1.
      - Defaults to all pending for V(up) and to one for V(down) and V(redo).
    type: int
  to:
    description:
      - Name of a migration (file name without C(.sql)) to stop at. V(up) applies up to and
        including it; V(down) and V(redo) roll back every migration applied after it.
      - Mutually exclusive with O(count).
    type: str
  name:
    description: Name part of the file V(create) writes (letters, digits, C(-) and C(_)).
    type: str
  allow_drift:
    description: Go on although applied files changed or disappeared since they were applied.
    type: bool
    default: false
  check_order:
    description:
      - Stop when a pending file sorts before an applied one, like node-pg-migrate's C(checkOrder).
    type: bool
    default: true
  lock_timeout:
    description:
      - PostgreSQL C(lock_timeout) for the migrating session (for example V(5s), V(500ms), V(0) for none),
        so a migration waiting on a busy table fails fast instead of stalling the application behind it.
    type: str
    default: 5s
  statement_timeout:
    description: PostgreSQL C(statement_timeout) for the migrating session; V(0) means no limit.
    type: str
    default: "0"
  advisory_lock_wait:
    description:
      - Seconds to keep polling for the migration advisory lock held by another runner before
        failing. V(0) fails at once, as node-pg-migrate does.
    type: int
    default: 60
  search_path:
    description: Schemas (comma separated) the migrations run with, like node-pg-migrate's C(--schema).
    type: str
    default: public
  migrations_schema:
    description: Schema of the tracking tables.
    type: str
    default: public
  migrations_table:
    description: Name of node-pg-migrate's tracking table; the checksums go to C(<migrations_table>_checksums).
    type: str
    default: pgmigrations
  login_user:
    description: Role the migrations run as (the schema owner).
  login_db:
    description: Database to migrate. Required for every action but V(create), which connects to nothing.
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
requirements:
  - pglast (PostgreSQL's own scanner, libpg_query, splits and checks the SQL)
notes:
  - The module runs on the host that reaches the database (the Docker host); the migrations
    folder must be on that host.
  - C(run_on) is written with C(NOW()) under the server's default TimeZone (C(PGTZ) is
    ignored), as node-pg-migrate writes it, so history stays ordered across both tools.
seealso:
  - name: node-pg-migrate
    description: The Node.js migration runner this module shares its table, lock and file format with.
    link: https://github.com/salsita/node-pg-migrate
"""

EXAMPLES = r"""
- name: Apply every pending migration as the schema owner
  pg_migrate:
    action: up
    migrations_dir: /srv/app/migrations
    login_host: 127.0.0.1
    login_user: social_selling_owner
    login_password: "{{ db_owner_password }}"
    login_db: social_selling
  no_log: true

- name: Roll back the two latest migrations
  pg_migrate:
    action: down
    count: 2
    migrations_dir: /srv/app/migrations
    login_user: social_selling_owner
    login_password: "{{ db_owner_password }}"
    login_db: social_selling
  no_log: true

- name: Roll back everything applied after the initial schema
  pg_migrate:
    action: down
    to: 1710000000001_initial-schema
    migrations_dir: /srv/app/migrations
    login_db: social_selling

- name: Report applied, pending and drifted migrations
  pg_migrate:
    action: status
    migrations_dir: /srv/app/migrations
    login_db: social_selling
  register: migrations_status

- name: Write a new empty migration on the control node
  pg_migrate:
    action: create
    name: add-orders-table
    migrations_dir: "{{ playbook_dir }}/../migrations"
  delegate_to: localhost
"""

RETURN = r"""
action:
  description: The action run.
  returned: always
  type: str
  sample: up
planned:
  description: Migrations the action runs (or would run in check mode), in order.
  returned: when action is up, down or redo
  type: list
  elements: dict
  sample: [{"name": "1710000000001_initial-schema", "direction": "up", "transaction": true}]
executed:
  description: Migrations actually run, in order, with their duration.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "1710000000001_initial-schema", "direction": "up", "duration_ms": 21.4}]
applied:
  description: Names recorded in pgmigrations after the action, in C(run_on, id) order.
  returned: when action is not create
  type: list
  elements: str
  sample: ["1710000000001_initial-schema"]
pending:
  description: Names of files not applied after the action, in file order.
  returned: when action is not create
  type: list
  elements: str
  sample: []
drift:
  description: Applied migrations whose file changed since (C(changed)) or is gone (C(missing)).
  returned: when action is not create
  type: dict
  sample: {"changed": [], "missing": []}
unverified:
  description: Applied migrations with no checksum recorded (applied by node-pg-migrate).
  returned: when action is not create
  type: list
  elements: str
  sample: []
out_of_order:
  description: node-pg-migrate's checkOrder message when a pending file sorts before an applied one, else null.
  returned: when action is not create
  type: str
  sample: null
summary:
  description: One line for humans.
  returned: when action is not create
  type: str
  sample: 1 applied; 0 pending
queries:
  description: SQL run (or that would run), each section followed by its tracking statement.
  returned: always
  type: list
  elements: str
revoked:
  description:
    - Write privileges the run took away from other roles on the tracking tables and the id
      sequence (default privileges hand them out); empty when there was nothing to revoke.
  returned: when action is up, down or redo, outside check mode
  type: list
  elements: str
  sample: ["INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.pgmigrations FROM social_selling_user"]
path:
  description: File written (or that would be written in check mode) by create.
  returned: when action is create
  type: str
  sample: /srv/app/migrations/1760000000000_add-orders-table.sql
"""

import os
import sys
import traceback

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils import pg_connection
    from ansible.module_utils import pg_migrate_core as core
except ImportError:
    # Only when this file is imported bare, outside Ansible (ansible-lint's
    # args rule, unit tests): Ansible ships module_utils/ with the module.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    os.pardir, 'module_utils'))
    import pg_connection  # noqa: E402
    import pg_migrate_core as core  # noqa: E402

try:
    import psycopg2
except ImportError:  # reported through HAS_PSYCOPG2
    psycopg2 = None

APPLICATION_NAME = "ansible-pg_migrate"


def argument_spec():
    """The connection options (module_utils/pg_connection.py) and the module's own."""
    spec = pg_connection.connection_argument_spec()
    spec.update(
        action=dict(type="str", required=True, choices=list(core.ACTIONS)),
        migrations_dir=dict(type="path", required=True),
        count=dict(type="int"),
        to=dict(type="str"),
        name=dict(type="str"),
        allow_drift=dict(type="bool", default=False),
        check_order=dict(type="bool", default=True),
        lock_timeout=dict(type="str", default="5s"),
        statement_timeout=dict(type="str", default="0"),
        advisory_lock_wait=dict(type="int", default=60),
        search_path=dict(type="str", default="public"),
        migrations_schema=dict(type="str", default="public"),
        migrations_table=dict(type="str", default="pgmigrations"),
    )
    return spec


class PgMigrate:
    """Turns module parameters into one run of the core and its result."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def validate(self):
        params = self.params
        # count, to, name and the timeouts are the core's to check (pg_migrate_core.run):
        # one place for every rule.
        if params["advisory_lock_wait"] < 0:
            self.module.fail_json(msg="advisory_lock_wait must be 0 or more seconds")

    def connection_params(self):
        return pg_connection.connection_params(self.params, application_name=APPLICATION_NAME)

    def connect(self):
        try:
            return core.connect(self.connection_params())
        except psycopg2.OperationalError as exc:
            raise core.MigrationError("cannot connect to %s: %s"
                                 % (pg_connection.describe_target(self.params), str(exc).strip()))

    def execute(self):
        params = self.params
        return core.run(
            self.connect, params["migrations_dir"], params["action"],
            count=params["count"], to=params["to"], name=params["name"],
            check_mode=self.module.check_mode, allow_drift=params["allow_drift"],
            check_order_enabled=params["check_order"],
            runner_options=dict(
                schema=params["migrations_schema"], table=params["migrations_table"],
                search_path=params["search_path"], lock_timeout=params["lock_timeout"],
                statement_timeout=params["statement_timeout"],
                advisory_lock_wait=params["advisory_lock_wait"]))


def diff_text(result):
    """The SQL an action runs, for diff mode."""
    if result["action"] == "create":
        return {"before": "", "after": result["content"],
                "before_header": "(absent)", "after_header": result["path"]}
    chunks = []
    queries = result.get("queries", [])
    for item, (section, tracking) in zip(result.get("planned", []), zip(queries[::2], queries[1::2])):
        chunks.append("-- %s (%s%s)\n%s\n%s\n" % (
            item["name"], item["direction"],
            "" if item["transaction"] else ", outside a transaction",
            section.strip(), tracking))
    return {"prepared": "\n".join(chunks) if chunks else "-- nothing to run\n"}


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=[
            ("action", "create", ("name",)),
            ("action", "up", ("login_db",)),
            ("action", "down", ("login_db",)),
            ("action", "redo", ("login_db",)),
            ("action", "status", ("login_db",)),
        ],
        supports_check_mode=True,
    )
    if not core.HAS_PSYCOPG2:
        module.fail_json(msg=pg_connection.missing_library_message("psycopg2"))
    if not core.HAS_PGLAST and module.params["action"] != "create":
        module.fail_json(msg=pg_connection.missing_library_message("pglast"))
    worker = PgMigrate(module)
    worker.validate()
    try:
        result = worker.execute()
    except core.MigrationFailed as exc:
        module.fail_json(msg=str(exc), file=exc.file_name, line=exc.line, pgcode=exc.pgcode,
                         pgmessage=exc.pgmessage, executed=exc.executed)
    except core.MigrationError as exc:
        module.fail_json(msg=str(exc))
    except psycopg2.Error as exc:
        module.fail_json(msg="PostgreSQL error: %s" % str(exc).strip(),
                         exception=traceback.format_exc())
    except Exception as exc:  # unexpected: report with the traceback
        module.fail_json(msg="unexpected error: %s" % exc, exception=traceback.format_exc())
    for warning in result.pop("warnings", []):
        module.warn(warning)
    if module._diff:
        result["diff"] = diff_text(result)
    result.pop("content", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
