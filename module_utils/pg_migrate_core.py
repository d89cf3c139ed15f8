# -*- coding: utf-8 -*-
"""Versioned SQL migrations that share a database with node-pg-migrate.

Pure-Python core of the ``pg_migrate`` Ansible module (no import from
``ansible``): it reads a migrations folder, orders it, plans ``up``/``down``/
``redo``, reports ``status`` and drift, writes new files for ``create``, and
runs the plan through a psycopg2 connection.

Compatibility with node-pg-migrate (read from its source, v6.2.2 to v9.0.0):

* Tracking table ``"public"."pgmigrations" (id SERIAL PRIMARY KEY,
  name varchar(255) NOT NULL, run_on timestamp NOT NULL)``; ``name`` is the
  file name without its extension; applied rows are read
  ``ORDER BY run_on, id``; a row is inserted with ``NOW()`` (under the
  server's default TimeZone) in the migration's own transaction and deleted
  by name on the way down.
* Lock: the session-level advisory lock 7241865325823964, taken with
  ``pg_try_advisory_lock``. We poll it instead of blocking, so a waiting
  runner holds no transaction open that a ``CREATE INDEX CONCURRENTLY`` in the
  running one would have to wait for.
* Files: every entry of the folder that is a file (or symlink) and does not
  start with a dot. Ordered by numeric prefix (v7+); a 17-digit prefix is a
  UTC date ``YYYYMMDDhhmmssSSS`` read as milliseconds since the epoch.
* SQL sections: ``^\\s*--[\\s-]*up\\s+migration`` and the same for ``down``,
  case-insensitive, multi-line, JavaScript's ``\\s``. The up section runs from
  its marker to the down marker (or the end), and the other way round.
  No down marker: the file cannot be rolled back.
* checkOrder: the applied names must be a prefix of the ordered file names.

Added here, beyond node-pg-migrate:

* each migration in its own transaction with its tracking row; the file
  marker ``-- pg-migrate: no-transaction`` runs one migration outside a
  transaction (for ``CREATE INDEX CONCURRENTLY``);
* statements run one by one, so a failure names the file and the line;
* ``lock_timeout`` and ``statement_timeout`` for the migrating session;
* SHA-256 checksums of applied files in the side table
  ``public.pgmigrations_checksums`` (keyed by the ``pgmigrations.id`` they
  belong to, so a row node-pg-migrate re-inserted is never matched against an
  old checksum), and drift reports (changed or missing applied files);
* stricter input: only ``<digits>_<name>.sql`` files, one file per prefix
  value, valid UTF-8, an up marker in every file.
"""
from __future__ import absolute_import, division, print_function

import bisect
import datetime
import hashlib
import os
import re
import time

try:
    import psycopg2
    from psycopg2 import sql as pgsql
    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - reported by the Ansible module
    psycopg2 = None
    pgsql = None
    HAS_PSYCOPG2 = False

__metaclass__ = type

#: node-pg-migrate's PG_MIGRATE_LOCK_ID: "random but well-known identifier
#: shared by all instances of node-pg-migrate".
LOCK_ID = 7241865325823964
MIGRATIONS_SCHEMA = "public"
MIGRATIONS_TABLE = "pgmigrations"
CHECKSUMS_SUFFIX = "_checksums"
NAME_MAX_LENGTH = 255
ACTIONS = ("up", "down", "redo", "status", "create")
NO_TRANSACTION_MARKER = "-- pg-migrate: no-transaction"

# JavaScript's \s (ECMAScript WhiteSpace + LineTerminator), spelled out so
# the markers match exactly what node-pg-migrate's RegExp matches.
_JS_WS = (u"[\t\n\x0b\x0c\r \u00a0\u1680\u2000-\u200a\u2028\u2029"
          u"\u202f\u205f\u3000\ufeff]")
# JavaScript's ^ with the m flag: start of input or after a line terminator.
_JS_LINE_START = u"(?:\\A|(?<=[\n\r\u2028\u2029]))"


def _marker_regex(direction):
    return re.compile(
        _JS_LINE_START + _JS_WS + u"*--(?:" + _JS_WS + u"|-)*" + direction
        + _JS_WS + u"+migration",
        re.IGNORECASE | re.ASCII)


UP_MARKER = _marker_regex("up")
DOWN_MARKER = _marker_regex("down")
NO_TRANSACTION_RE = re.compile(
    r"^[ \t]*--[ \t]*pg-migrate:[ \t]*no-transaction[ \t]*$",
    re.IGNORECASE | re.MULTILINE)
FILE_NAME_RE = re.compile(r"\A([0-9]+)_(.*)\.sql\Z", re.DOTALL)
CREATE_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]*\Z")
DURATION_RE = re.compile(r"\A[0-9]+(?:us|ms|s|min|h|d)?\Z")
_DOUBLE_MAX_EXACT = 2 ** 53


class MigrationError(Exception):
    """An expected failure: bad input, drift, a failing migration.

    The message is meant for the user as it is; nothing was changed unless
    the message says otherwise.
    """


class MigrationFailed(MigrationError):
    """A migration failed in PostgreSQL; carries where and why."""

    def __init__(self, message, file_name=None, line=None, pgcode=None,
                 pgmessage=None, executed=None):
        super(MigrationFailed, self).__init__(message)
        self.file_name = file_name
        self.line = line
        self.pgcode = pgcode
        self.pgmessage = pgmessage
        self.executed = executed or []


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

def prefix_sort_key(prefix):
    """The number node-pg-migrate orders a file by, from its digit prefix.

    13 digits (``Date.now()``) and any other length are JavaScript's
    ``Number(prefix)`` (a double, hence the rounding past 2**53); 17 digits
    are a UTC date ``YYYYMMDDhhmmssSSS`` in milliseconds since the epoch.
    Raises ValueError for a 17-digit prefix that is no valid date.
    """
    if not prefix or not prefix.isdigit() or not prefix.isascii():
        raise ValueError("not a numeric prefix: %r" % (prefix,))
    if len(prefix) == 17:
        moment = datetime.datetime(
            int(prefix[0:4]), int(prefix[4:6]), int(prefix[6:8]),
            int(prefix[8:10]), int(prefix[10:12]), int(prefix[12:14]),
            int(prefix[14:17]) * 1000, tzinfo=datetime.timezone.utc)
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        delta = moment - epoch
        return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000
    value = int(prefix)
    if value > _DOUBLE_MAX_EXACT:
        value = int(float(value))
    return value


class Migration:
    """One migration file, parsed."""

    def __init__(self, file_name, path, content, checksum):
        match = FILE_NAME_RE.match(file_name)
        if not match:
            raise MigrationError(
                "%s: not a migration file name: expected <digits>_<name>.sql "
                "(node-pg-migrate runs every file in the folder that does not "
                "start with a dot, so keep nothing else there)" % file_name)
        self.file_name = file_name
        self.path = path
        self.name = file_name[:-len(".sql")]
        self.prefix = match.group(1)
        if len(self.name) > NAME_MAX_LENGTH:
            raise MigrationError(
                "%s: the name is %d characters long; pgmigrations.name holds at "
                "most %d" % (file_name, len(self.name), NAME_MAX_LENGTH))
        try:
            self.sort_key = prefix_sort_key(self.prefix)
        except ValueError as exc:
            raise MigrationError(
                "%s: the 17-digit prefix %s is not a valid UTC date "
                "YYYYMMDDhhmmssSSS (%s)" % (file_name, self.prefix, exc))
        self.content = content
        self.checksum = checksum
        up_match = UP_MARKER.search(content)
        down_match = DOWN_MARKER.search(content)
        if up_match is None:
            raise MigrationError(
                "%s: no '-- Up Migration' marker; every SQL migration needs one "
                "(and '-- Down Migration' to be reversible)" % file_name)
        up_start = up_match.start()
        down_start = down_match.start() if down_match else -1
        # Same slicing as node-pg-migrate's getActions().
        self.up_span = (up_start, down_start if down_start > up_start else len(content))
        self.down_span = None
        if down_start >= 0:
            self.down_span = (down_start, up_start if up_start > down_start else len(content))
        self.transaction = NO_TRANSACTION_RE.search(content) is None
        self.warnings = []
        if down_start > up_start > 0:
            self.warnings.append(
                "%s: text before the '-- Up Migration' marker; node-pg-migrate "
                "6.x would then run part of the down section on the way up "
                "(it slices with substr): start the file with the marker"
                % file_name)
        self._lines = None

    @property
    def reversible(self):
        return self.down_span is not None

    def section(self, direction):
        span = self.up_span if direction == "up" else self.down_span
        if span is None:
            return None
        return self.content[span[0]:span[1]]

    def statements(self, direction):
        """(offset in file, SQL) of each statement of a section."""
        span = self.up_span if direction == "up" else self.down_span
        if span is None:
            return []
        return split_statements(self.content, span[0], span[1])

    def line_of(self, offset):
        """1-based line number of a character offset in the file."""
        if self._lines is None:
            self._lines = [m.start() for m in re.finditer("\n", self.content)]
        return bisect.bisect_left(self._lines, offset) + 1


def parse_migration(file_name, data, path=None):
    """Parse one file's bytes into a Migration (MigrationError if invalid)."""
    checksum = hashlib.sha256(data).hexdigest()
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError(
            "%s:%d: not valid UTF-8 (byte %d: %s); save the file as UTF-8"
            % (file_name, data.count(b"\n", 0, exc.start) + 1, exc.start, exc.reason))
    if content.startswith(u"\ufeff"):
        content = content[1:]
    return Migration(file_name, path or file_name, content, checksum)


def list_migration_files(directory):
    """The entries node-pg-migrate would load: files and symlinks, no dotfiles."""
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise MigrationError("cannot read the migrations folder %s: %s"
                             % (directory, exc.strerror or exc))
    names = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() or entry.is_file(follow_symlinks=False):
            names.append(entry.name)
    return names


def order_migrations(migrations):
    """Sort as node-pg-migrate 7+ does; reject two files with one prefix value."""
    ordered = sorted(migrations, key=lambda m: m.sort_key)
    for previous, current in zip(ordered, ordered[1:]):
        if previous.sort_key == current.sort_key:
            raise MigrationError(
                "%s and %s have the same prefix value, so their order is "
                "ambiguous: give one of them a later prefix"
                % (previous.file_name, current.file_name))
    return ordered


def order_warnings(migrations):
    """Warn where node-pg-migrate 6.x (plain string sort) would order differently."""
    by_key = [m.file_name for m in migrations]
    if by_key != sorted(by_key):
        return ["the file prefixes mix lengths: node-pg-migrate 7+ and this "
                "module order by prefix value, node-pg-migrate 6.x by plain "
                "string order, and the two orders differ for this folder"]
    return []


def load_migrations(directory):
    """Read, parse, validate and order every migration file of a folder.

    Returns (migrations, warnings). Raises MigrationError naming the file on
    the first bad one; nothing has touched the database at that point.
    """
    migrations = []
    warnings = []
    for file_name in list_migration_files(directory):
        path = os.path.join(directory, file_name)
        if not file_name.endswith(".sql"):
            raise MigrationError(
                "%s: only .sql migrations are supported, and node-pg-migrate "
                "would try to run this file as a migration; move it out of %s"
                % (file_name, directory))
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise MigrationError("%s: cannot read the file: %s"
                                 % (file_name, exc.strerror or exc))
        migration = parse_migration(file_name, data, path)
        warnings.extend(migration.warnings)
        migrations.append(migration)
    ordered = order_migrations(migrations)
    warnings.extend(order_warnings(ordered))
    return ordered, warnings


def split_statements(text, start=0, end=None):
    """Split SQL into statements: [(offset of the statement's first token, sql)].

    Understands what psql does for splitting: '...' (E'' with backslashes),
    "...", $tag$...$tag$, -- and nested /* */ comments, and BEGIN ATOMIC ...
    END bodies. Each statement starts at its first token (leading comments
    and whitespace dropped); fragments with no token at all are dropped.
    """
    end = len(text) if end is None else end
    result = []
    i = start
    code_start = None
    atomic_depth = 0
    previous_word = None
    while i < end:
        char = text[i]
        if char == "-" and text.startswith("--", i):
            newline = text.find("\n", i, end)
            i = end if newline < 0 else newline + 1
            continue
        if char == "/" and text.startswith("/*", i):
            depth = 1
            i += 2
            while i < end and depth:
                if text.startswith("/*", i):
                    depth += 1
                    i += 2
                elif text.startswith("*/", i):
                    depth -= 1
                    i += 2
                else:
                    i += 1
            continue
        if char.isspace():
            i += 1
            continue
        if code_start is None:
            code_start = i
        if char == "'":
            escapes = i > start and text[i - 1] in "eE" and (
                i - 1 == start or not _is_ident_char(text[i - 2]))
            i = _skip_quoted(text, i, end, "'", escapes)
            previous_word = None
            continue
        if char == '"':
            i = _skip_quoted(text, i, end, '"', False)
            previous_word = None
            continue
        if char == "$" and (i == start or not _is_ident_char(text[i - 1])):
            tag_end = _dollar_tag_end(text, i, end)
            if tag_end:
                tag = text[i:tag_end]
                close = text.find(tag, tag_end, end)
                i = end if close < 0 else close + len(tag)
                previous_word = None
                continue
        if char.isalpha() or char == "_":
            j = i + 1
            while j < end and _is_ident_char(text[j]):
                j += 1
            word = text[i:j].upper()
            if previous_word == "BEGIN" and word == "ATOMIC":
                atomic_depth += 1
            elif atomic_depth and word == "CASE":
                atomic_depth += 1
            elif atomic_depth and word == "END":
                atomic_depth -= 1
            previous_word = word
            i = j
            continue
        if char == ";" and not atomic_depth:
            if code_start is not None and code_start < i:
                result.append((code_start, text[code_start:i + 1]))
            code_start = None
            previous_word = None
            i += 1
            continue
        previous_word = None
        i += 1
    if code_start is not None:
        result.append((code_start, text[code_start:end]))
    return result


def _dollar_tag_end(text, i, end):
    """End of a dollar-quote opening tag ($$ or $tag$) at i, or 0 if none.

    A tag is a letter, _ or non-ASCII character, then those or digits.
    """
    j = i + 1
    while j < end:
        char = text[j]
        if char == "$":
            return j + 1
        if not (char == "_" or ("a" <= char.lower() <= "z") or char >= "\x80"
                or (j > i + 1 and "0" <= char <= "9")):
            return 0
        j += 1
    return 0


def _is_ident_char(char):
    return char.isalnum() or char in "_$"


def _skip_quoted(text, i, end, quote, backslash_escapes):
    i += 1
    while i < end:
        char = text[i]
        if backslash_escapes and char == "\\":
            i += 2
            continue
        if char == quote:
            if i + 1 < end and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return end


# --------------------------------------------------------------------------
# Planning (pure)
# --------------------------------------------------------------------------

class AppliedRow:
    """A row of pgmigrations."""

    def __init__(self, row_id, name, run_on=None):
        self.id = row_id
        self.name = name
        self.run_on = run_on


def check_order(applied_names, migrations):
    """node-pg-migrate's checkOrder: None, or the message it would stop with."""
    for applied_name, migration in zip(applied_names, migrations):
        if applied_name != migration.name:
            return ("Not run migration %s is preceding already run migration %s "
                    "(the applied migrations must be the first files in order; "
                    "give the new file a later prefix)"
                    % (migration.name, applied_name))
    return None


def inspect(migrations, applied_rows, checksums):
    """Compare the folder with the database.

    migrations: ordered Migration list; applied_rows: AppliedRow list in
    ``run_on, id`` order; checksums: {pgmigrations id: sha256 hex}.
    """
    by_name = dict((m.name, m) for m in migrations)
    applied_names = [row.name for row in applied_rows]
    applied_set = set(applied_names)
    changed, missing, unverified = [], [], []
    for row in applied_rows:
        migration = by_name.get(row.name)
        if migration is None:
            missing.append(row.name)
        elif row.id not in checksums:
            unverified.append(row.name)
        elif checksums[row.id] != migration.checksum:
            changed.append(row.name)
    pending = [m.name for m in migrations if m.name not in applied_set]
    present = [name for name in applied_names if name in by_name]
    return {
        "applied": applied_names,
        "pending": pending,
        "changed": changed,
        "missing": missing,
        "unverified": unverified,
        "order_error": check_order(applied_names, migrations),
        "order_error_ignoring_missing": check_order(present, migrations),
    }


def _validate_count(count):
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise MigrationError("count must be a whole number of at least 1, got %r" % (count,))


def plan_up(migrations, applied_names, count=None, to=None):
    """The pending migrations to apply, in order."""
    _validate_count(count)
    applied = set(applied_names)
    pending = [m for m in migrations if m.name not in applied]
    if to is not None:
        names = [m.name for m in migrations]
        if to not in names:
            raise MigrationError("up to %s: no such migration file (known: %s)"
                                 % (to, _short_list(names)))
        if to in applied:
            return []
        position = names.index(to)
        return [m for m in pending if names.index(m.name) <= position]
    if count is not None:
        return pending[:count]
    return pending


def plan_down(migrations, applied_names, count=None, to=None):
    """The applied migrations to roll back, latest first."""
    _validate_count(count)
    if to is not None:
        if to not in applied_names:
            raise MigrationError(
                "down to %s: it is not applied, so there is nothing to roll back "
                "to (applied: %s)" % (to, _short_list(applied_names)))
        names = applied_names[applied_names.index(to) + 1:]
    else:
        wanted = 1 if count is None else count
        if wanted > len(applied_names):
            raise MigrationError(
                "cannot roll back %d migration(s): only %d applied; that would "
                "go past the first migration" % (wanted, len(applied_names)))
        names = applied_names[len(applied_names) - wanted:]
    by_name = dict((m.name, m) for m in migrations)
    deleted = [name for name in names if name not in by_name]
    if deleted:
        raise MigrationError(
            "cannot roll back %s: the file(s) are no longer in the migrations "
            "folder" % ", ".join(deleted))
    plan = [by_name[name] for name in reversed(names)]
    irreversible = [m.file_name for m in plan if not m.reversible]
    if irreversible:
        raise MigrationError(
            "cannot roll back %s: no '-- Down Migration' section"
            % ", ".join(irreversible))
    return plan


def plan_action(action, migrations, applied_names, count=None, to=None):
    """[(Migration, 'up'|'down')] for up, down or redo."""
    if action == "up":
        return [(m, "up") for m in plan_up(migrations, applied_names, count, to)]
    if action == "down":
        return [(m, "down") for m in plan_down(migrations, applied_names, count, to)]
    if action == "redo":
        down = plan_down(migrations, applied_names, count, to)
        return [(m, "down") for m in down] + [(m, "up") for m in reversed(down)]
    raise MigrationError("unknown action %r: expected one of %s"
                         % (action, ", ".join(ACTIONS)))


def drift_error(report, allow_drift):
    """The message up/down/redo stop with, or None."""
    if allow_drift:
        return None
    problems = []
    if report["changed"]:
        problems.append("changed since applied: %s" % ", ".join(report["changed"]))
    if report["missing"]:
        problems.append("applied but missing from the folder: %s"
                        % ", ".join(report["missing"]))
    if not problems:
        return None
    return ("migration drift: %s. Restore the files as they were applied (or "
            "write a new migration instead of editing an applied one); set "
            "allow_drift to go on anyway" % "; ".join(problems))


def _short_list(names, limit=10):
    if not names:
        return "none"
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + ", ... (%d in all)" % len(names)


# --------------------------------------------------------------------------
# create
# --------------------------------------------------------------------------

TEMPLATE = u"-- Up Migration\n\n-- Down Migration\n"


def new_migration_file_name(name, existing, now_ms=None):
    """The file name ``create`` writes: a prefix later than every existing one.

    Continues the folder's prefix style: 17-digit UTC when the latest file
    uses it, else 13-digit milliseconds (node-pg-migrate's default).
    """
    if not name or not CREATE_NAME_RE.match(name):
        raise MigrationError(
            "invalid migration name %r: use letters, digits, '-' and '_', "
            "starting with a letter or digit" % (name,))
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    latest = max(existing, key=lambda m: m.sort_key) if existing else None
    key = now_ms
    if latest is not None and latest.sort_key >= key:
        key = latest.sort_key + 1
    if latest is not None and len(latest.prefix) == 17:
        moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) \
            + datetime.timedelta(milliseconds=key)
        prefix = moment.strftime("%Y%m%d%H%M%S") + "%03d" % (moment.microsecond // 1000)
    else:
        prefix = "%013d" % key
    file_name = "%s_%s.sql" % (prefix, name)
    if len(file_name) - len(".sql") > NAME_MAX_LENGTH:
        raise MigrationError("migration name too long: %s" % file_name)
    return file_name


def create_migration(directory, name, now_ms=None, write=True):
    """Write a new migration file with both markers; never overwrite.

    Returns (path, content). With write=False only computes them.
    """
    existing = []
    if os.path.isdir(directory):
        existing, _ = load_migrations(directory)
    file_name = new_migration_file_name(name, existing, now_ms)
    path = os.path.join(directory, file_name)
    if write:
        try:
            os.makedirs(directory, exist_ok=True)
            with open(path, "x", encoding="utf-8") as handle:
                handle.write(TEMPLATE)
        except FileExistsError:
            raise MigrationError("%s already exists; not overwriting it" % path)
        except OSError as exc:
            raise MigrationError("cannot write %s: %s" % (path, exc.strerror or exc))
    return path, TEMPLATE


# --------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------

def validate_duration(option, value):
    """'5s', '500ms', '0'... as PostgreSQL's lock_timeout/statement_timeout take."""
    text = str(value).strip()
    if not DURATION_RE.match(text):
        raise MigrationError(
            "%s must be a PostgreSQL duration such as 5s, 500ms, 2min or 0 "
            "(no limit), got %r" % (option, value))
    return text


def connect(params):
    """psycopg2 connection for migrating, with no client TimeZone override.

    libpq sends PGTZ as a session setting; run_on must be NOW() under the
    server's default TimeZone, as node-pg-migrate writes it, or mixed runners
    reorder history. So PGTZ is ignored here.
    """
    os.environ.pop("PGTZ", None)
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    return conn


class Runner:
    """Runs plans on one psycopg2 connection (autocommit; explicit BEGIN/COMMIT)."""

    def __init__(self, conn, schema=MIGRATIONS_SCHEMA, table=MIGRATIONS_TABLE,
                 search_path="public", lock_timeout="5s", statement_timeout="0",
                 advisory_lock_wait=60.0, poll_interval=0.2, lock_id=LOCK_ID):
        self.conn = conn
        self.schema = schema
        self.table = table
        self.checksum_table = table + CHECKSUMS_SUFFIX
        self.search_path = search_path
        self.lock_timeout = validate_duration("lock_timeout", lock_timeout)
        self.statement_timeout = validate_duration("statement_timeout", statement_timeout)
        self.advisory_lock_wait = float(advisory_lock_wait)
        self.poll_interval = poll_interval
        self.lock_id = lock_id
        self.locked = False
        self._table_sql = pgsql.SQL("{}.{}").format(
            pgsql.Identifier(schema), pgsql.Identifier(table))
        self._checksum_sql = pgsql.SQL("{}.{}").format(
            pgsql.Identifier(schema), pgsql.Identifier(self.checksum_table))

    # -- session ------------------------------------------------------------
    def configure_session(self):
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT set_config('lock_timeout', %s, false), "
                "set_config('statement_timeout', %s, false), "
                "set_config('search_path', %s, false)",
                (self.lock_timeout, self.statement_timeout, self._search_path_text()))

    def _search_path_text(self):
        schemas = [s.strip() for s in self.search_path.split(",") if s.strip()]
        return ", ".join(pgsql.Identifier(s).as_string(self.conn) for s in schemas)

    def acquire_lock(self):
        """Poll pg_try_advisory_lock until it is ours or advisory_lock_wait passes."""
        deadline = time.monotonic() + self.advisory_lock_wait
        with self.conn.cursor() as cur:
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_id,))
                if cur.fetchone()[0]:
                    self.locked = True
                    return
                if time.monotonic() >= deadline:
                    raise MigrationError(
                        "another migration run (this module or node-pg-migrate) "
                        "holds the advisory lock %d; gave up after %gs "
                        "(advisory_lock_wait)" % (self.lock_id, self.advisory_lock_wait))
                time.sleep(self.poll_interval)

    def release_lock(self):
        if self.locked and not self.conn.closed:
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (self.lock_id,))
            self.locked = False

    # -- state --------------------------------------------------------------
    def tables_exist(self):
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL, "
                "to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
                (self.schema, self.table, self.schema, self.checksum_table))
            return cur.fetchone()

    def read_state(self):
        """(applied rows in run_on, id order, {id: checksum}); one query each."""
        has_table, has_checksums = self.tables_exist()
        rows, checksums = [], {}
        with self.conn.cursor() as cur:
            if has_table:
                cur.execute(pgsql.SQL("SELECT id, name, run_on FROM {} ORDER BY run_on, id")
                            .format(self._table_sql))
                rows = [AppliedRow(*row) for row in cur.fetchall()]
            if has_checksums:
                cur.execute(pgsql.SQL("SELECT migration_id, checksum FROM {}")
                            .format(self._checksum_sql))
                checksums = dict(cur.fetchall())
        return rows, checksums

    def ensure_tables(self):
        """Create node-pg-migrate's table (its exact DDL) and our side table."""
        has_table, has_checksums = self.tables_exist()
        if has_table and has_checksums:
            return False
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                if not has_table:
                    cur.execute(pgsql.SQL(
                        "CREATE TABLE {} (id SERIAL PRIMARY KEY, name varchar(255) "
                        "NOT NULL, run_on timestamp NOT NULL)").format(self._table_sql))
                if not has_checksums:
                    cur.execute(pgsql.SQL(
                        "CREATE TABLE {} (migration_id integer PRIMARY KEY, "
                        "name varchar(255) NOT NULL, checksum char(64) NOT NULL, "
                        "recorded_at timestamptz NOT NULL DEFAULT now())"
                    ).format(self._checksum_sql))
                    cur.execute(pgsql.SQL("COMMENT ON TABLE {} IS %s").format(self._checksum_sql), (
                        "SHA-256 of each applied migration file, keyed by %s.id; written by "
                        "the pg_migrate Ansible module, ignored by node-pg-migrate" % self.table,))
                cur.execute("COMMIT")
            except BaseException:
                self._rollback_quietly(cur)
                raise
        return True

    # -- execution ----------------------------------------------------------
    def tracking_sql(self, migration, direction):
        """The tracking statements as text, for check mode and diff output."""
        table = '"%s"."%s"' % (self.schema, self.table)
        literal = "'%s'" % migration.name.replace("'", "''")
        if direction == "up":
            return "INSERT INTO %s (name, run_on) VALUES (%s, NOW());" % (table, literal)
        return "DELETE FROM %s WHERE name = %s;" % (table, literal)

    def apply(self, migration, direction, durable=True):
        """Run one section and write/delete its tracking row.

        In a transaction by default (all or nothing), statement by statement
        so a failure has a line. BEGIN travels with the first statement and
        the tracking row plus COMMIT with the last: one round trip for a
        one-statement migration. durable=False commits with
        synchronous_commit off: used for all but the last migration of a run,
        whose synchronous commit then flushes the WAL of those before it (a
        crash can only lose a suffix of whole migrations, never half of one).
        """
        statements = migration.statements(direction)
        tracking = self.tracking_query(migration, direction)
        commit = tracking + ";\nCOMMIT"
        with self.conn.cursor() as cur:
            if not migration.transaction:
                for done, (offset, statement) in enumerate(statements):
                    self._execute(cur, migration, direction, offset, statement, done=done)
                self._execute(cur, migration, direction, None, "", lead="BEGIN;\n",
                              tail=commit, done=len(statements))
                return
            begin = "BEGIN;\n" if durable else "BEGIN; SET LOCAL synchronous_commit TO off;\n"
            try:
                if not statements:
                    self._execute(cur, migration, direction, None, "", lead=begin,
                                  tail=commit, in_transaction=True)
                last = len(statements) - 1
                for index, (offset, statement) in enumerate(statements):
                    tail = ""
                    if index == last:
                        tail = ("\n" if statement.endswith(";") else "\n;\n") + commit
                    self._execute(cur, migration, direction, offset, statement,
                                  lead=begin if index == 0 else "", tail=tail,
                                  in_transaction=True, done=index, tracking=tracking)
            except BaseException:
                self._rollback_quietly(cur)
                raise

    def tracking_query(self, migration, direction):
        """The tracking statement with its values quoted by psycopg2 (sql.Literal)."""
        if direction == "up":
            query = pgsql.SQL(
                "WITH m AS (INSERT INTO {} (name, run_on) VALUES ({}, NOW()) RETURNING id) "
                "INSERT INTO {} (migration_id, name, checksum) SELECT id, {}, {} FROM m"
            ).format(self._table_sql, pgsql.Literal(migration.name), self._checksum_sql,
                     pgsql.Literal(migration.name), pgsql.Literal(migration.checksum))
        else:
            query = pgsql.SQL(
                "WITH m AS (DELETE FROM {} WHERE name = {} RETURNING id) "
                "DELETE FROM {} c USING m WHERE c.migration_id = m.id"
            ).format(self._table_sql, pgsql.Literal(migration.name), self._checksum_sql)
        return query.as_string(self.conn)

    def _execute(self, cur, migration, direction, offset, statement, lead="", tail="",
                 in_transaction=False, done=0, tracking=None):
        """Send lead + statement + tail; on error raise MigrationFailed saying where."""
        try:
            cur.execute(lead + statement + tail)
            return
        except psycopg2.Error as exc:
            error = exc
        if offset is not None and tracking is not None:
            # The last statement travelled with the tracking row: which failed?
            position = error.diag.statement_position
            if position and position.isdigit() and int(position) > len(lead) + len(statement):
                offset = None
            elif not position:
                self._rollback_quietly(cur)
                try:
                    cur.execute("BEGIN;\n" + tracking + ";\nROLLBACK")
                except psycopg2.Error as probe_error:
                    self._rollback_quietly(cur)
                    error, offset = probe_error, None
        raise self._failure(error, migration, direction, offset, statement, lead,
                            in_transaction, done)

    def _rollback_quietly(self, cur):
        """ROLLBACK after a failure without hiding the failure itself."""
        if self.conn.closed:
            return
        try:
            cur.execute("ROLLBACK")
        except psycopg2.Error:
            pass

    def flush(self):
        """Make earlier synchronous_commit=off commits durable now.

        A transaction holding an xid commits synchronously and flushes the WAL
        up to its commit record, which covers every commit before it.
        """
        with self.conn.cursor() as cur:
            cur.execute("BEGIN; SELECT txid_current(); COMMIT")

    def _failure(self, exc, migration, direction, offset, statement, lead,
                 in_transaction, done):
        diag = exc.diag
        if offset is None:
            # The tracking row or the COMMIT (deferred constraints) failed.
            span = migration.up_span if direction == "up" else migration.down_span
            error_offset = span[0]
            where = "while recording it in %s.%s or committing" % (self.schema, self.table)
        else:
            error_offset = offset
            where = "at this statement"
            position = diag.statement_position
            if position:
                try:
                    # 1-based character position in the string sent (lead + statement)
                    inside = int(position) - 1 - len(lead)
                    if 0 <= inside < len(statement):
                        error_offset = offset + inside
                except ValueError:
                    pass
        line = migration.line_of(error_offset)
        pgmessage = diag.message_primary or str(exc).strip()
        if self.conn.closed or isinstance(exc, psycopg2.OperationalError) and not diag.sqlstate:
            # The server went away (stopped, killed): its last words are no diagnosis.
            pgmessage = "the connection to the server was lost (%s)" % (str(exc).strip() or "closed")
        detail = "".join(
            "\n%s: %s" % (label, text) for label, text in
            (("DETAIL", diag.message_detail), ("HINT", diag.message_hint),
             ("CONTEXT", diag.context)) if text)
        if in_transaction:
            outcome = ("rolled back: nothing of %s was applied and it is not "
                       "recorded as %s" % (migration.name,
                                           "applied" if direction == "up" else "rolled back"))
        else:
            outcome = ("%s runs outside a transaction (%s): %d statement(s) before "
                       "this one took effect and the tracking row was not written; "
                       "fix the file and run again (make its statements idempotent)"
                       % (migration.name, NO_TRANSACTION_MARKER, done))
        message = "%s:%d: migration %s (%s) failed %s: %s: %s%s\n%s" % (
            migration.path, line, migration.name, direction, where,
            diag.severity or "ERROR", pgmessage, detail, outcome)
        return MigrationFailed(message, file_name=migration.file_name, line=line,
                               pgcode=exc.pgcode, pgmessage=pgmessage)


def report_after(report, migrations, plan):
    """inspect()'s report once a plan has run, without reading the table again."""
    applied = list(report["applied"])
    touched = set()
    for migration, direction in plan:
        touched.add(migration.name)
        if direction == "up":
            applied.append(migration.name)
        else:
            applied.remove(migration.name)
    applied_set = set(applied)
    return {
        "applied": applied,
        "pending": [m.name for m in migrations if m.name not in applied_set],
        "changed": [n for n in report["changed"] if n in applied_set and n not in touched],
        "missing": [n for n in report["missing"] if n in applied_set],
        "unverified": [n for n in report["unverified"] if n in applied_set and n not in touched],
        "order_error": check_order(applied, migrations),
        "order_error_ignoring_missing": None,
    }


def status_summary(report):
    """A short human summary of inspect()'s report."""
    parts = ["%d applied" % len(report["applied"]), "%d pending" % len(report["pending"])]
    if report["changed"]:
        parts.append("changed since applied: " + ", ".join(report["changed"]))
    if report["missing"]:
        parts.append("missing files: " + ", ".join(report["missing"]))
    if report["unverified"]:
        parts.append("%d applied without a checksum (by node-pg-migrate)" % len(report["unverified"]))
    if report["order_error"]:
        parts.append("out of order: " + report["order_error"])
    return "; ".join(parts)


def run(conn_factory, directory, action, count=None, to=None, name=None,
        check_mode=False, allow_drift=False, check_order_enabled=True,
        runner_options=None, now_ms=None):
    """Do one action end to end; returns a result dict (see the module's RETURN).

    conn_factory: a callable returning a psycopg2 connection (not called for
    ``create``). Raises MigrationError for every expected failure, with
    nothing changed unless the message says what was.
    """
    if action not in ACTIONS:
        raise MigrationError("unknown action %r: expected one of %s"
                             % (action, ", ".join(ACTIONS)))
    _validate_count(count)
    if count is not None and to is not None:
        raise MigrationError("count and to are mutually exclusive")
    if action in ("status", "create") and (count is not None or to is not None):
        raise MigrationError("count and to apply to up, down and redo, not %s" % action)
    result = {"changed": False, "action": action, "executed": [], "queries": [],
              "warnings": []}

    if action == "create":
        if name is None:
            raise MigrationError("create needs a name")
        path, content = create_migration(directory, name, now_ms=now_ms, write=not check_mode)
        result.update(changed=True, path=path, content=content)
        return result

    runner_options = dict(runner_options or {})
    for option in ("lock_timeout", "statement_timeout"):
        if option in runner_options:
            runner_options[option] = validate_duration(option, runner_options[option])
    migrations, warnings = load_migrations(directory)
    result["warnings"].extend(warnings)
    conn = conn_factory()
    try:
        runner = Runner(conn, **runner_options)
    except BaseException:
        conn.close()
        raise
    try:
        runner.configure_session()
        if action != "status" and not check_mode:
            runner.acquire_lock()
        rows, checksums = runner.read_state()
        report = inspect(migrations, rows, checksums)
        applied_names = report["applied"]

        def fill(current_report):
            result.update(
                applied=current_report["applied"], pending=current_report["pending"],
                drift={"changed": current_report["changed"],
                       "missing": current_report["missing"]},
                unverified=current_report["unverified"],
                out_of_order=current_report["order_error"])
            result["summary"] = status_summary(current_report)

        fill(report)
        if action == "status":
            return result

        message = drift_error(report, allow_drift)
        if message:
            raise MigrationError(message)
        order_error = report["order_error_ignoring_missing"] if allow_drift else report["order_error"]
        if check_order_enabled and order_error:
            raise MigrationError(order_error)

        plan = plan_action(action, migrations, applied_names, count, to)
        for migration, direction in plan:
            result["queries"].append(migration.section(direction))
            result["queries"].append(runner.tracking_sql(migration, direction))
        result["planned"] = [{"name": m.name, "direction": d, "transaction": m.transaction}
                             for m, d in plan]
        if check_mode or not plan:
            result["changed"] = bool(plan)
            return result

        runner.ensure_tables()
        for index, (migration, direction) in enumerate(plan):
            started = time.monotonic()
            try:
                runner.apply(migration, direction, durable=index == len(plan) - 1)
            except MigrationFailed as exc:
                exc.executed = list(result["executed"])
                if result["executed"]:
                    try:
                        runner.flush()
                    except psycopg2.Error:
                        pass  # the WAL writer flushes them within wal_writer_delay anyway
                raise
            result["executed"].append({
                "name": migration.name, "direction": direction,
                "duration_ms": round((time.monotonic() - started) * 1000, 1)})
        result["changed"] = True
        fill(report_after(report, migrations, plan))
        return result
    finally:
        try:
            runner.release_lock()
        finally:
            conn.close()
