# -*- coding: utf-8 -*-
"""Command line of the migrations engine: ``bin/pg-migrate``.

The same core as the ``pg_migrate`` Ansible module (``pg_migrate_core.run``),
driven the way node-pg-migrate is::

    DATABASE_URL=postgres://user:password@host:5432/db pg-migrate up [N]
    pg-migrate down [N] | redo [N] | status | create <name words>

node-pg-migrate's flags where they exist (``-m/--migrations-dir``,
``-t/--migrations-table``, ``--migrations-schema``, ``-s/--schema``,
``-d/--database-url-var``, ``--check-order/--no-check-order``, ``-j sql``),
plus ``--count``, ``--to``, ``--dry-run``, ``--allow-drift``,
``--lock-timeout``, ``--statement-timeout``, ``--advisory-lock-wait`` and
``--json``. Exit status 0 on success, 1 on any error (message on stderr).
Passwords are never printed: URLs in messages have their password masked.

Start-up matters (a run with nothing pending should take well under 0.3 s):
nothing heavy is imported at module level. The core (and with it psycopg2)
is imported when an action runs, pglast only when SQL must be split, and
Ansible never.
"""
from __future__ import absolute_import, division, print_function

import argparse
import json
import os
import re
import sys

__metaclass__ = type

PROG = "pg-migrate"
DEFAULT_URL_VAR = "DATABASE_URL"
APPLICATION_NAME = "pg-migrate-cli"
COUNTED_ACTIONS = ("up", "down", "redo")

_URL_RE = re.compile(r"postgres(?:ql)?://[^\s'\"<>]*", re.IGNORECASE)
_KEYWORD_PASSWORD_RE = re.compile(
    r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]+)", re.IGNORECASE)
MASK = "****"


class UsageError(Exception):
    """Bad command line or environment; the message is for the user."""


# --------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------

def mask_url(url):
    """The URL with the password of its user info replaced by ****.

    ``postgres://user:secret@host/db`` -> ``postgres://user:****@host/db``.
    Reads up to the last '@' of the text, so a password holding an
    unencoded '@' or '/' is masked whole (masking too much is harmless).
    """
    scheme_end = url.find("://") + 3
    at = url.rfind("@")
    if scheme_end < 3 or at < scheme_end:
        return url
    colon = url.find(":", scheme_end, at)
    if colon < 0:
        return url
    return url[:colon + 1] + MASK + url[at:]


def mask_text(text, secrets=()):
    """text with every URL's and ``password=`` value's password masked, and
    every given secret (raw or URL-encoded) replaced by ****."""
    text = _URL_RE.sub(lambda match: mask_url(match.group(0)), text)
    text = _KEYWORD_PASSWORD_RE.sub(lambda match: match.group(1) + MASK, text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
            encoded = _percent_encode(secret)
            if encoded != secret:
                text = text.replace(encoded, MASK)
    return text


def _percent_encode(text):
    try:
        from urllib.parse import quote
    except ImportError:  # pragma: no cover - Python 2
        from urllib import quote
    return quote(text, safe="")


def _url_password(url):
    """The password of a postgres:// URL, decoded (None when there is none)."""
    scheme_end = url.find("://") + 3
    at = url.rfind("@")
    if scheme_end < 3 or at < scheme_end:
        return None
    userinfo = url[scheme_end:at]
    if ":" not in userinfo:
        return None
    try:
        from urllib.parse import unquote
    except ImportError:  # pragma: no cover - Python 2
        from urllib import unquote
    return unquote(userinfo.split(":", 1)[1])


# --------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with errors raised (exit status 1, not argparse's 2)."""

    def error(self, message):
        raise UsageError("%s\n%s" % (message, self.format_usage().rstrip()))


def _add_common(parser, suppress):
    """Options accepted before and after the subcommand (node-pg-migrate style).

    The subcommands' copies default to SUPPRESS, so an option given before
    the subcommand is not overwritten by the subcommand's default.
    """
    def default(value):
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("migrations")
    group.add_argument("-m", "--migrations-dir", default=default("migrations"), metavar="DIR",
                       help="folder of the SQL migrations (default: migrations)")
    group.add_argument("-t", "--migrations-table", default=default("pgmigrations"),
                       metavar="TABLE", help="tracking table (default: pgmigrations)")
    group.add_argument("--migrations-schema", default=default(None), metavar="SCHEMA",
                       help="schema of the tracking table (default: the first of --schema)")
    group.add_argument("-s", "--schema", default=default("public"), metavar="SCHEMAS",
                       help="search_path the migrations run with, comma separated "
                            "(default: public)")
    group.add_argument("--check-order", dest="check_order", action="store_true",
                       default=default(True),
                       help="stop when a pending file sorts before an applied one (default)")
    group.add_argument("--no-check-order", dest="check_order", action="store_false",
                       default=default(True), help="do not check the order")
    group.add_argument("--allow-drift", action="store_true", default=default(False),
                       help="go on although applied files changed or disappeared")
    group.add_argument("--dry-run", action="store_true", default=default(False),
                       help="print what would run; lock, create and run nothing")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print the result as JSON (the Ansible module's return values)")
    conn = parser.add_argument_group("connection")
    conn.add_argument("-d", "--database-url-var", default=default(DEFAULT_URL_VAR), metavar="NAME",
                      help="environment variable holding the libpq URL of the database "
                           "(default: DATABASE_URL; else PGHOST, PGUSER and PGDATABASE)")
    conn.add_argument("--lock-timeout", default=default("5s"), metavar="DURATION",
                      help="PostgreSQL lock_timeout of the session (default: 5s; 0: none)")
    conn.add_argument("--statement-timeout", default=default("0"), metavar="DURATION",
                      help="PostgreSQL statement_timeout of the session (default: 0, none)")
    conn.add_argument("--advisory-lock-wait", type=_non_negative_int, default=default(60),
                      metavar="SECONDS",
                      help="seconds to wait for another runner's migration lock "
                           "(default: 60; 0 fails at once, as node-pg-migrate does)")
    conn.add_argument("--connect-timeout", type=_non_negative_int, default=default(10),
                      metavar="SECONDS", help="seconds to wait for the connection (default: 10)")


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number of seconds, got %r" % text)
    if value < 0:
        raise argparse.ArgumentTypeError("expected 0 or more seconds, got %d" % value)
    return value


def _count(text):
    if not re.match(r"\A[0-9]+\Z", text) or int(text) < 1:
        raise argparse.ArgumentTypeError("expected a whole number of at least 1, got %r" % text)
    return int(text)


def build_parser():
    parser = _Parser(
        prog=PROG,
        description="Versioned SQL migrations compatible with node-pg-migrate (same table, "
                    "lock and file format), over the engine of the pg_migrate Ansible module.",
        epilog="Connection: the libpq URL in $DATABASE_URL (or the variable named by "
               "--database-url-var), e.g. postgres://user:password@127.0.0.1:5432/db. "
               "Exit status: 0 on success, 1 on any error.")
    _add_common(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="action", metavar="ACTION")
    subparsers.required = True
    helps = {
        "up": "apply pending migrations (all, N, or up to and including --to)",
        "down": "roll back applied migrations, latest first (one, N, or all after --to)",
        "redo": "roll back like down, then apply the same migrations again",
        "status": "report applied, pending, drift and order; changes nothing",
        "create": "write a new empty SQL migration <ms timestamp>_<name>.sql",
    }
    for action in ("up", "down", "redo", "status", "create"):
        sub = subparsers.add_parser(action, help=helps[action], description=helps[action])
        if action in COUNTED_ACTIONS:
            sub.add_argument("n", nargs="?", metavar="N",
                             help="how many (as node-pg-migrate's `%s N`); default: %s"
                                  % (action, "all pending" if action == "up" else "1"))
            sub.add_argument("--count", type=_count, default=None, metavar="N",
                             help="same as the positional N")
            sub.add_argument("--to", default=None, metavar="MIGRATION",
                             help="file name without .sql: up applies through it; down and "
                                  "redo roll back everything applied after it")
        if action == "create":
            sub.add_argument("name", nargs="+", metavar="NAME",
                             help="name of the migration; words are joined with '-'")
            sub.add_argument("-j", "--migration-file-language", choices=["sql"], default="sql",
                             help="only sql (the format the engine and node-pg-migrate share)")
        _add_common(sub, suppress=True)
    return parser


def parse_args(argv, environ=None):
    """The options of one command line (a Namespace); UsageError when invalid.

    Resolves the positional count, the create name, the tracking schema, and
    the connection (``options.dsn``: the URL, or "" to let libpq read PG*
    variables; None for create).
    """
    environ = os.environ if environ is None else environ
    options = build_parser().parse_args(argv)
    if options.action in COUNTED_ACTIONS:
        if options.n is not None:
            if not re.match(r"\A[0-9]+\Z", options.n):
                raise UsageError(
                    "%s %s: the positional argument is a count. To stop at a migration use "
                    "--to %s (node-pg-migrate's `%s <name>`, which runs that one file only, "
                    "is not supported)" % (options.action, options.n, options.n, options.action))
            if options.count is not None and options.count != int(options.n):
                raise UsageError("%s: give the count once (positional %s or --count %d)"
                                 % (options.action, options.n, options.count))
            options.count = _count_or_usage(options.n)
        if options.count is not None and options.to is not None:
            raise UsageError("%s: --count and --to exclude each other" % options.action)
    else:
        options.count = options.to = None
    if options.action == "create":
        options.name = "-".join(options.name)
    else:
        options.name = None
    if options.migrations_schema is None:
        schemas = [s.strip() for s in options.schema.split(",") if s.strip()]
        options.migrations_schema = schemas[0] if schemas else "public"
    options.dsn = None if options.action == "create" else database_dsn(
        options.database_url_var, environ)
    return options


def _count_or_usage(text):
    try:
        return _count(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(str(exc))


def database_dsn(var_name, environ):
    """The libpq connection string: $var_name, else "" when PGHOST, PGUSER and
    PGDATABASE are all set (libpq reads them), as node-pg-migrate does."""
    value = environ.get(var_name, "").strip()
    if value:
        return value
    if all(environ.get(name) for name in ("PGHOST", "PGUSER", "PGDATABASE")):
        return ""
    raise UsageError(
        "$%s is not set (nor PGHOST, PGUSER and PGDATABASE): export %s="
        "postgres://USER:PASSWORD@HOST:5432/DATABASE, or name another variable with "
        "--database-url-var" % (var_name, var_name))


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

def connection_params(options):
    params = {"dsn": options.dsn, "application_name": APPLICATION_NAME,
              "connect_timeout": options.connect_timeout}
    return params


def describe_target(dsn):
    """"database D on H:P as U" from a URL or conninfo string, never its password."""
    if not dsn:
        return "the database of PGHOST/PGPORT/PGUSER/PGDATABASE"
    try:
        from psycopg2.extensions import parse_dsn
        parts = parse_dsn(dsn)
    except Exception:  # an invalid string: show it masked
        return mask_text(dsn, [_url_password(dsn)])
    return "database %s on %s:%s as %s" % (
        parts.get("dbname", "(default)"), parts.get("host", "(socket)"),
        parts.get("port", "5432"), parts.get("user", "(default)"))


def run(options):
    """One action through the core; returns its result dict.

    Raises the core's MigrationError (also for a failed connection, with the
    target described without its password).
    """
    import pg_migrate_core as core

    if options.action != "create" and not core.HAS_PSYCOPG2:
        raise ImportError("the Python package psycopg2 is needed to reach the database")

    def connect():
        try:
            return core.connect(connection_params(options))
        except core.psycopg2.Error as exc:
            raise core.MigrationError("cannot connect to %s: %s" % (
                describe_target(options.dsn), str(exc).strip()))

    return core.run(
        connect, options.migrations_dir, options.action,
        count=options.count, to=options.to, name=options.name,
        check_mode=options.dry_run, allow_drift=options.allow_drift,
        check_order_enabled=options.check_order,
        runner_options=dict(
            schema=options.migrations_schema, table=options.migrations_table,
            search_path=options.schema, lock_timeout=options.lock_timeout,
            statement_timeout=options.statement_timeout,
            advisory_lock_wait=options.advisory_lock_wait))


_OPTION_NAMES = (("set allow_drift", "pass --allow-drift"),
                 ("(advisory_lock_wait)", "(--advisory-lock-wait)"))


def cli_message(message):
    """A core message with the module's option names given as the CLI's flags."""
    for module_name, flag in _OPTION_NAMES:
        message = message.replace(module_name, flag)
    return message


def render(result, options):
    """Lines for stdout, for humans."""
    action = result["action"]
    if action == "create":
        return ["%s %s" % ("Would create" if options.dry_run else "Created", result["path"])]
    lines = []
    if action == "status":
        lines.append("Applied: %d%s" % (
            len(result["applied"]),
            " (latest: %s)" % result["applied"][-1] if result["applied"] else ""))
        lines.append("Pending: %d" % len(result["pending"]))
        lines.extend("  %s" % name for name in result["pending"])
        drift = result["drift"]
        for label, names in (("Changed since applied", drift["changed"]),
                             ("Applied but missing from the folder", drift["missing"])):
            if names:
                lines.append("%s: %s" % (label, ", ".join(names)))
        if result["unverified"]:
            lines.append("Applied without a checksum (by node-pg-migrate): %d"
                         % len(result["unverified"]))
        if result["out_of_order"]:
            lines.append("Out of order: %s" % result["out_of_order"])
        return lines
    planned = result.get("planned", [])
    if not planned:
        lines.append("No migrations to run!")
    elif options.dry_run:
        lines.append("Would run (dry run, nothing was run):")
        lines.extend("  %s %s%s" % (item["direction"].upper(), item["name"],
                                    "" if item["transaction"] else " (outside a transaction)")
                     for item in planned)
    else:
        lines.extend("%s %s (%.1f ms)" % ("Applied" if item["direction"] == "up" else "Rolled back",
                                          item["name"], item["duration_ms"])
                     for item in result["executed"])
    for revoked in result.get("revoked", []):
        lines.append("Revoked %s" % revoked)
    lines.append("Now: %s" % result["summary"])
    return lines


def _json_default(value):
    return str(value)


def main(argv=None, environ=None, stdout=None, stderr=None):
    """Run one command line; returns the exit status (0 or 1)."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    options = None
    try:
        options = parse_args(argv, environ)
        result = run(options)
    except SystemExit as exc:  # --help
        return 0 if not exc.code else 1
    except KeyboardInterrupt:
        stderr.write("%s: interrupted: migrations that completed stay applied; the one running "
                     "was rolled back, unless it runs outside a transaction (check with "
                     "`%s status`)\n" % (PROG, PROG))
        return 1
    except ImportError as exc:
        stderr.write("%s: error: %s (run it with the project's venv: .venv/bin/pg-migrate, "
                     "installed by `make up`)\n" % (PROG, exc))
        return 1
    except Exception as exc:
        text = str(exc) if isinstance(exc, UsageError) else _error_text(exc)
        stderr.write("%s: error: %s\n" % (PROG, mask_text(text, _secrets(options, environ))))
        return 1
    warnings = result.pop("warnings", [])
    if warnings:
        secrets = _secrets(options, environ)
        for warning in warnings:
            stderr.write("%s: warning: %s\n" % (PROG, mask_text(warning, secrets)))
    result.pop("content", None)
    if options.json:
        stdout.write(json.dumps(result, indent=2, default=_json_default) + "\n")
    else:
        stdout.write("".join(line + "\n" for line in render(result, options)))
    return 0


def _secrets(options, environ):
    """Passwords that must not appear in a message: the connection's, PGPASSWORD."""
    secrets = [environ.get("PGPASSWORD")]
    dsn = getattr(options, "dsn", None) if options is not None else None
    if dsn is None:  # the command line did not parse: mask what the variable holds
        dsn = environ.get(getattr(options, "database_url_var", DEFAULT_URL_VAR)
                          or DEFAULT_URL_VAR, "")
    if dsn:
        secrets.append(dsn_password(dsn))
    return [secret for secret in secrets if secret]


def dsn_password(dsn):
    """The password in a libpq URL or key=value string, or None."""
    if "://" in dsn:
        return _url_password(dsn)
    try:
        from psycopg2.extensions import parse_dsn
        return parse_dsn(dsn).get("password")
    except Exception:
        match = _KEYWORD_PASSWORD_RE.search(dsn)
        return match.group(2).strip("'") if match else None


def _error_text(exc):
    """The message for an exception out of the core."""
    module = sys.modules.get("pg_migrate_core")
    if module is not None and isinstance(exc, module.MigrationError):
        return cli_message(str(exc))
    psycopg2 = sys.modules.get("psycopg2")
    if psycopg2 is not None and isinstance(exc, psycopg2.Error):
        return "PostgreSQL error: %s" % str(exc).strip()
    return "unexpected error: %s: %s" % (type(exc).__name__, exc)
