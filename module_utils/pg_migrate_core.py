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

* each migration in its own transaction with its tracking row, sent as ONE
  simple query (``BEGIN; <the section as written>; <tracking row>; COMMIT``:
  one round trip, the server splits the statements, as node-pg-migrate's
  ``pgm.sql(section)`` does). A failure names the file and the line: from
  the error's position when PostgreSQL gives one, else from the number of
  statements that completed before it (libpq returns one result per
  statement; read through psycopg2's ``pgconn_ptr``), never by running
  anything again; without libpq access, a positionless error in a
  multi-statement section names the section's first line and says so;
* the file marker ``-- pg-migrate: no-transaction`` (a ``--`` comment on a
  line of its own, in either section, any line ending) runs one migration
  outside a transaction, statement by statement (for ``CREATE INDEX
  CONCURRENTLY``, which a multi-statement string would wrap in an implicit
  transaction);
* SQL is read with PostgreSQL's own scanner (libpg_query, through pglast),
  never a hand-written lexer: the sections are cut exactly as node-pg-migrate
  cuts them (the marker regexes below), then the scanner splits each planned
  section into statements. Before anything runs, every planned section is
  checked: an unterminated ``/*`` comment, quoted string, quoted identifier
  or dollar quote, and, in a transactional migration, a statement that
  begins or ends a transaction (``BEGIN``, ``START TRANSACTION``, ``COMMIT``,
  ``END``, ``ROLLBACK``, ``ABORT``, ``PREPARE TRANSACTION``, ``COMMIT`` /
  ``ROLLBACK PREPARED``; ``SAVEPOINT``, ``RELEASE`` and ``ROLLBACK TO`` are
  fine) are errors naming the file and line. Lines end with LF, CRLF or CR;
* ``down`` refuses (naming the file, before anything runs) a migration whose
  down section holds no statement, as node-pg-migrate refuses a migration it
  cannot reverse; a down section that is meant to do nothing says so with
  the comment line ``-- pg-migrate: down-noop`` (then only the tracking row
  is deleted);
* the tracking tables are written by their owner only: whenever it runs
  ``up``/``down``/``redo`` the engine revokes INSERT, UPDATE, DELETE,
  TRUNCATE, REFERENCES and TRIGGER on both tables (and USAGE, UPDATE on the
  id sequence) from PUBLIC and every other role, which default privileges
  (ALTER DEFAULT PRIVILEGES FOR ROLE <owner>) would otherwise hand to the
  application role; SELECT stays; nothing is issued when nothing is to
  revoke;
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
import types

try:
    import ctypes
except ImportError:  # pragma: no cover - a Python without ctypes
    ctypes = None

try:
    import psycopg2
    from psycopg2 import sql as pgsql
    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - reported by the Ansible module
    psycopg2 = None
    pgsql = None
    HAS_PSYCOPG2 = False

# pglast is imported on first use (splitting SQL), not here: it costs 15-40 ms
# of start-up that a run with nothing pending (or create) never needs.
try:
    from importlib.util import find_spec as _find_spec
    HAS_PGLAST = _find_spec("pglast") is not None
except (ImportError, ValueError):  # pragma: no cover
    HAS_PGLAST = False


class _LazyPgParser:
    """Stands for ``pglast.parser`` until first used, then replaces itself."""

    def __getattr__(self, attribute):
        global pgparser
        from pglast import parser
        pgparser = parser
        return getattr(parser, attribute)


pgparser = _LazyPgParser() if HAS_PGLAST else None

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
DOWN_NOOP_MARKER = "-- pg-migrate: down-noop"

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
_LINE_BREAK_RE = re.compile(u"\r\n|\r|\n")
_LINE_BREAK_BYTES_RE = re.compile(b"\r\n|\r|\n")
_NEAR_RE = re.compile(r' at or near "(.*)"\Z', re.DOTALL)
_ATOMIC_RE = re.compile(r"atomic", re.IGNORECASE)
_MARKER_HINT_RE = re.compile(r"pg-migrate", re.IGNORECASE)
_TRANSACTION_CANDIDATE_RE = re.compile(
    r"(?:begin|start|commit|end|rollback|abort|prepare)(?![\w$])", re.IGNORECASE)
_COMMENT_TOKENS = ("SQL_COMMENT", "C_COMMENT")
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
        self.warnings = []
        if down_start > up_start > 0:
            self.warnings.append(
                "%s: text before the '-- Up Migration' marker; node-pg-migrate "
                "6.x would then run part of the down section on the way up "
                "(it slices with substr): start the file with the marker"
                % file_name)
        self._line_starts = None
        self._statements = {}
        self._markers = {}
        self._transaction = None
        self._validated = set()

    @property
    def reversible(self):
        """Has a '-- Down Migration' section (see down_problem for its content)."""
        return self.down_span is not None

    @property
    def transaction(self):
        """False when a section holds the comment ``-- pg-migrate: no-transaction``."""
        if self._transaction is None:
            self._transaction = not (self.has_marker("up", NO_TRANSACTION_MARKER)
                                     or self.has_marker("down", NO_TRANSACTION_MARKER))
        return self._transaction

    def span(self, direction):
        return self.up_span if direction == "up" else self.down_span

    def section(self, direction):
        span = self.span(direction)
        if span is None:
            return None
        return self.content[span[0]:span[1]]

    def statements(self, direction):
        """(offset in file, SQL without its ';') of each statement of a section.

        Split by PostgreSQL's own scanner (pglast); an unterminated comment,
        quoted string, quoted identifier or dollar quote is a MigrationError
        naming the file and line.
        """
        if direction not in self._statements:
            span = self.span(direction)
            if span is None:
                return []
            try:
                self._statements[direction] = split_statements(self.content, span[0], span[1])
            except SqlScanError as exc:
                raise MigrationError(
                    "%s:%d: %s (in the %s section): the rest of the section cannot be "
                    "split into statements; close it. Nothing was run"
                    % (self.path, self.line_of(exc.offset), exc.message, direction))
        return self._statements[direction]

    def has_marker(self, direction, marker):
        """Whether the section holds the comment `marker` on a line of its own.

        Only a real ``--`` comment token counts (not text inside a string, a
        dollar quote or a /* */ comment), with any line ending.
        """
        key = (direction, marker)
        if key not in self._markers:
            span = self.span(direction)
            found = False
            if span is not None and _MARKER_HINT_RE.search(self.content, span[0], span[1]):
                self.statements(direction)  # scan errors named with file and line first
                found = any(
                    _marker_comment_matches(marker, text)
                    for text in _own_line_comments(self.content, span[0], span[1]))
            self._markers[key] = found
        return self._markers[key]

    def validate(self, direction):
        """Raise MigrationError (file:line) if this section must not run; nothing runs before.

        Checks that the section can be split, and that a transactional
        migration holds no statement that begins or ends a transaction.
        """
        if direction in self._validated:
            return
        statements = self.statements(direction)
        if not self.transaction:
            self._validated.add(direction)
            return
        for offset, statement in statements:
            words = transaction_control(statement)
            if words:
                raise MigrationError(
                    "%s:%d: %s ends or starts a transaction, but each migration runs in "
                    "its own transaction with its tracking row (%s section); remove it "
                    "(or mark the file '%s' to run it outside a transaction). Nothing "
                    "was run" % (self.path, self.line_of(offset), words, direction,
                                 NO_TRANSACTION_MARKER))
        self._validated.add(direction)

    def down_problem(self):
        """Why `down` must refuse this migration, or None."""
        if self.down_span is None:
            return "no '-- Down Migration' section"
        if not self.statements("down") and not self.has_marker("down", DOWN_NOOP_MARKER):
            return ("its '-- Down Migration' section (line %d) holds no statement; write the "
                    "SQL that undoes the up section, or put the line '%s' in that section "
                    "to roll it back as an intentional no-op"
                    % (self.line_of(self.down_span[0]), DOWN_NOOP_MARKER))
        return None

    def line_of(self, offset):
        """1-based line number of a character offset (LF, CRLF and CR end lines)."""
        if self._line_starts is None:
            self._line_starts = [m.end() for m in _LINE_BREAK_RE.finditer(self.content)]
        return bisect.bisect_right(self._line_starts, offset) + 1


def parse_migration(file_name, data, path=None):
    """Parse one file's bytes into a Migration (MigrationError if invalid)."""
    checksum = hashlib.sha256(data).hexdigest()
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError(
            "%s:%d: not valid UTF-8 (byte %d: %s); save the file as UTF-8"
            % (file_name, len(_LINE_BREAK_BYTES_RE.findall(data, 0, exc.start)) + 1,
               exc.start, exc.reason))
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


class SqlScanError(Exception):
    """PostgreSQL's scanner rejected the text (unterminated comment, quote...)."""

    def __init__(self, message, offset):
        super(SqlScanError, self).__init__(message)
        self.message = message
        self.offset = offset


def _require_pglast():
    if not HAS_PGLAST or pgparser is None:
        raise MigrationError(
            "the Python package pglast is needed to read SQL migrations (pip install "
            "pglast, see requirements.txt)")


def _scan_error(text, exc):
    """SqlScanError from pglast's ParseError, with a character offset into text.

    pglast's reported index is off for text with non-ASCII characters, so the
    offset comes from the "at or near" remainder when it is the end of text.
    """
    message = exc.args[0] if exc.args else str(exc)
    offset = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
    near = _NEAR_RE.search(message)
    if near and near.group(1) and text.endswith(near.group(1)):
        offset = len(text) - len(near.group(1))
        message = message[:near.start()].rstrip()
    return SqlScanError(message, max(0, min(offset, len(text))))


def split_statements(text, start=0, end=None):
    """Split SQL into statements: [(offset of the statement's first token, sql)].

    PostgreSQL's scanner (libpg_query through pglast) does the lexing, so
    quotes, E'' strings, dollar quotes, nested comments and any line ending
    are read as the server reads them. Each statement runs from its first
    token (leading comments dropped) to its last, without the ';'.
    ``BEGIN ATOMIC ... END`` bodies of CREATE FUNCTION/PROCEDURE stay whole,
    with psql's rule. Raises SqlScanError (offset into text) on an
    unterminated comment, quote or dollar quote.
    """
    _require_pglast()
    end = len(text) if end is None else end
    section = text[start:end]
    try:
        if _ATOMIC_RE.search(section):
            spans = _split_tokens(section)
        else:
            spans = _split_scanner(section)
    except pgparser.ParseError as exc:
        error = _scan_error(section, exc)
        error.offset += start
        raise error
    return [(start + first, section[first:stop]) for first, stop in spans]


def _split_scanner(section):
    """libpg_query's scanner split (C, fast), trimmed to the first token."""
    spans = []
    for piece in pgparser.split(section, with_parser=False, only_slices=True):
        first, stop = piece.start, piece.stop
        if section[first] in "-/":  # leading comment(s): the scanner finds the first token
            for token in pgparser.scan(section[first:stop]):
                if token.name not in _COMMENT_TOKENS:
                    first += token.start
                    break
            else:
                continue
        spans.append((first, stop))
    return spans


def _split_tokens(section):
    """Split on ';' tokens, keeping BEGIN ATOMIC bodies whole as psql does.

    psql's heuristic (psqlscan.l): in a statement that starts CREATE [OR
    REPLACE] FUNCTION|PROCEDURE, outside parentheses, BEGIN opens a block,
    CASE inside a block opens one too, END closes one; ';' ends the
    statement only outside any block.
    """
    spans = []
    first = last = None
    words = []
    paren = depth = 0
    for token in pgparser.scan(section):
        name = token.name
        if name in _COMMENT_TOKENS:
            continue
        if name == "ASCII_59" and depth == 0:
            if first is not None:
                spans.append((first, last))
            first = None
            words = []
            paren = 0
            continue
        if first is None:
            first = token.start
        last = token.end + 1
        if name == "ASCII_40":
            paren += 1
        elif name == "ASCII_41":
            paren = max(0, paren - 1)
        elif token.kind != "NO_KEYWORD" or name == "IDENT":
            word = section[token.start:last].lower()
            if len(words) < 4:
                words.append(word)
            if paren == 0 and _is_routine(words):
                if word == "begin":
                    depth += 1
                elif word == "case" and depth:
                    depth += 1
                elif word == "end" and depth:
                    depth -= 1
    if first is not None:
        spans.append((first, last))
    return spans


def _is_routine(words):
    if len(words) < 2 or words[0] != "create":
        return False
    if words[1] in ("function", "procedure"):
        return True
    return words[1:3] == ["or", "replace"] and len(words) > 3 and words[3] in ("function", "procedure")


def transaction_control(statement):
    """The statement's leading words if it begins or ends a transaction, else None.

    BEGIN, START TRANSACTION, COMMIT (also AND CHAIN, COMMIT PREPARED), END,
    ROLLBACK and ABORT (not ROLLBACK TO SAVEPOINT), ROLLBACK PREPARED,
    PREPARE TRANSACTION. SAVEPOINT and RELEASE stay inside the transaction.
    Read from PostgreSQL's scanner tokens; the regex only skips the others fast.
    """
    if not _TRANSACTION_CANDIDATE_RE.match(statement):
        return None
    _require_pglast()
    try:
        tokens = pgparser.scan(statement)
    except pgparser.ParseError:
        return None
    words = [statement[t.start:t.end + 1].upper() for t in tokens
             if t.name not in _COMMENT_TOKENS][:4]
    first, rest = words[0], words[1:]
    if first in ("BEGIN", "COMMIT", "END", "ABORT"):
        return " ".join(words[:2] if rest[:1] == ["PREPARED"] else words[:1])
    if first == "START" and rest[:1] == ["TRANSACTION"]:
        return "START TRANSACTION"
    if first == "ROLLBACK":
        if "TO" in rest[:2]:
            return None
        return "ROLLBACK PREPARED" if rest[:1] == ["PREPARED"] else "ROLLBACK"
    if first == "PREPARE" and rest[:1] == ["TRANSACTION"]:
        return "PREPARE TRANSACTION"
    return None


def _own_line_comments(text, start, end):
    """Text of each -- comment token of text[start:end] that is alone on its line."""
    section = text[start:end]
    for token in pgparser.scan(section):
        if token.name != "SQL_COMMENT":
            continue
        line_start = max(section.rfind("\n", 0, token.start), section.rfind("\r", 0, token.start)) + 1
        if section[line_start:token.start].strip(" \t\f\v") == "":
            yield section[token.start:token.end + 1]


def _marker_comment_matches(marker, comment):
    """'-- pg-migrate: x' with any case and spaces or tabs around the parts."""
    expected = marker[2:].split(":")
    parts = comment[2:].split(":")
    return len(parts) == 2 and all(
        p.strip(" \t").lower() == e.strip() for p, e in zip(parts, expected))


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
    problems = [(m.file_name, m.down_problem()) for m in plan]
    problems = ["%s: %s" % (file_name, problem) for file_name, problem in problems if problem]
    if problems:
        raise MigrationError(
            "cannot roll back %s. Nothing was run" % "; ".join(problems))
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
        self.lost = False
        self._tracking_templates = None
        self._table_sql = pgsql.SQL("{}.{}").format(
            pgsql.Identifier(schema), pgsql.Identifier(table))
        self._checksum_sql = pgsql.SQL("{}.{}").format(
            pgsql.Identifier(schema), pgsql.Identifier(self.checksum_table))

    @property
    def _codec(self):
        """Python codec of the connection's client_encoding."""
        return psycopg2.extensions.encodings.get(self.conn.encoding, "utf-8")

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
        if self.locked and not self.conn.closed and not self.lost:
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

    def protect_tables(self):
        """Leave write access to the tracking tables to their owner alone.

        Default privileges (the bootstrap's ALTER DEFAULT PRIVILEGES FOR ROLE
        <owner>) hand the application role INSERT, UPDATE, DELETE... on every
        table the owner creates, these included, which would let it rewrite
        migration history. Revokes INSERT, UPDATE, DELETE, TRUNCATE,
        REFERENCES and TRIGGER on both tables, and USAGE and UPDATE on the id
        sequence, from PUBLIC and every role but the owner; SELECT stays.
        Idempotent: one catalog query, and no statement when nothing is to
        revoke. Returns (revoked: ["<privileges> ON <object> FROM <roles>"],
        warnings).
        """
        with self.conn.cursor() as cur:
            cur.execute(_EXCESS_PRIVILEGES_SQL, self._privilege_args())
            excess = cur.fetchall()
        if not excess:
            return [], []
        statements, revoked = [], []
        for kind, schema, name, grantees in excess:
            privileges = _SEQUENCE_WRITES if kind == "S" else _TABLE_WRITES
            roles = [pgsql.SQL("PUBLIC") if grantee is None else pgsql.Identifier(grantee)
                     for grantee in grantees]
            target = pgsql.SQL("{}.{}").format(pgsql.Identifier(schema), pgsql.Identifier(name))
            statements.append(pgsql.SQL("REVOKE {} ON {} {} FROM {}").format(
                pgsql.SQL(privileges), pgsql.SQL("SEQUENCE" if kind == "S" else "TABLE"),
                target, pgsql.SQL(", ").join(roles)).as_string(self.conn))
            revoked.append("%s ON %s.%s FROM %s" % (
                privileges, schema, name, ", ".join(g or "PUBLIC" for g in grantees)))
        with self.conn.cursor() as cur:
            try:
                cur.execute("BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT")
            except psycopg2.Error as exc:
                self._rollback_quietly()
                return [], ["could not revoke write access to %s.%s from other roles (%s); "
                            "run as the tables' owner: %s"
                            % (self.schema, self.table, str(exc).strip(), "; ".join(revoked))]
            cur.execute(_EXCESS_PRIVILEGES_SQL, self._privilege_args())
            left = cur.fetchall()
        warnings = []
        if left:
            warnings.append(
                "other roles can still write to the migration tables (privileges granted by "
                "another grantor?): %s" % "; ".join(
                    "%s.%s: %s" % (schema, name, ", ".join(g or "PUBLIC" for g in grantees))
                    for _, schema, name, grantees in left))
        return revoked, warnings

    def _privilege_args(self):
        return (self.schema, self.table, self.schema, self.checksum_table,
                self.schema, self.table)

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

        Transactional (the default): one simple query, one round trip:
        ``BEGIN; <the section as written>; <tracking row>; COMMIT``, all or
        nothing. The server splits and runs the statements; a failure is
        located from the error's position, or else from how many statements
        completed before it (see _send), never by running anything again.
        durable=False commits with synchronous_commit off: used for all but
        the last migration of a run, whose synchronous commit then flushes
        the WAL of those before it (a crash can only lose a suffix of whole
        migrations, never half of one).

        no-transaction: statement by statement (CREATE INDEX CONCURRENTLY
        cannot run in a multi-statement string, which is an implicit
        transaction), then the tracking row in its own transaction.
        """
        migration.validate(direction)
        statements = migration.statements(direction)
        tracking = self.tracking_query(migration, direction)
        if not migration.transaction:
            for done, (offset, statement) in enumerate(statements):
                error, _ = self._send(statement)
                if error is not None:
                    raise self._failure(error, migration, direction, offset, False, done)
            error, _ = self._send("BEGIN;\n" + tracking + ";\nCOMMIT")
            if error is not None:
                self._rollback_quietly()
                raise self._failure(error, migration, direction, None, False, len(statements))
            return
        if durable:
            lead, lead_results = "BEGIN;\n", 1
        else:
            lead, lead_results = "BEGIN; SET LOCAL synchronous_commit TO off;\n", 2
        start, end = migration.span(direction)
        section = migration.content[start:end]
        error, index = self._send(lead + section + "\n;\n" + tracking + ";\nCOMMIT")
        if error is None:
            return
        self._rollback_quietly()
        offset, exact = None, True
        position = error.position
        if position is not None:
            inside = position - 1 - len(lead)
            if 0 <= inside < len(section):
                offset = start + inside
        elif index is not None:
            inside = index - lead_results
            if 0 <= inside < len(statements):
                offset = statements[inside][0]
        elif len(statements) == 1:
            offset = statements[0][0]
        else:
            offset, exact = start, False
        if offset is None and (position is not None and position - 1 < len(lead)
                               or index is not None and index < lead_results):
            offset, exact = start, False
        raise self._failure(error, migration, direction, offset, True, 0, exact)

    def tracking_query(self, migration, direction):
        """The tracking statement with its values quoted by psycopg2 (sql.Literal)."""
        if self._tracking_templates is None:
            tables = {"table": self._table_sql.as_string(self.conn),
                      "checksums": self._checksum_sql.as_string(self.conn)}
            self._tracking_templates = {
                # NUL cannot occur in an identifier: safe placeholders for the values
                "up": ("WITH m AS (INSERT INTO %(table)s (name, run_on) VALUES (\0N\0, NOW()) "
                       "RETURNING id) INSERT INTO %(checksums)s (migration_id, name, checksum) "
                       "SELECT id, \0N\0, \0C\0 FROM m" % tables),
                "down": ("WITH m AS (DELETE FROM %(table)s WHERE name = \0N\0 RETURNING id) "
                         "DELETE FROM %(checksums)s c USING m WHERE c.migration_id = m.id"
                         % tables),
            }
        return self._tracking_templates[direction].replace(
            "\0N\0", pgsql.Literal(migration.name).as_string(self.conn)).replace(
            "\0C\0", pgsql.Literal(migration.checksum).as_string(self.conn))

    def _send(self, text):
        """Run text (one or more statements) as one simple query.

        Returns (None, None) on success, else (ServerError, index): index is
        the 0-based number of the statement in text that failed, counted from
        the results the server sent before the error (each statement of a
        multi-statement query ends with its own CommandComplete), or None
        when that count is not available.
        """
        libpq = _libpq()
        if libpq is None or self.lost:
            try:
                with self.conn.cursor() as cur:
                    cur.execute(text)
                return None, None
            except psycopg2.Error as exc:
                return ServerError.from_psycopg2(exc, self.conn), None
        pgconn = self.conn.pgconn_ptr
        data = text.encode(self._codec)
        if not libpq.PQsendQuery(pgconn, data):
            return self._libpq_error(libpq, pgconn, None), None
        error = index = None
        count = 0
        while True:
            result = libpq.PQgetResult(pgconn)
            if not result:
                break
            status = libpq.PQresultStatus(result)
            if status == _PGRES_COPY_IN:
                libpq.PQputCopyEnd(pgconn, b"COPY FROM STDIN is not supported in a migration")
            elif status == _PGRES_COPY_OUT:
                buffer = ctypes.c_void_p()
                while libpq.PQgetCopyData(pgconn, ctypes.byref(buffer), 0) > 0:
                    libpq.PQfreemem(buffer)
            elif status in (_PGRES_BAD_RESPONSE, _PGRES_FATAL_ERROR):
                if error is None:
                    error, index = self._libpq_error(libpq, pgconn, result), count
                count += 1
            else:
                count += 1
            libpq.PQclear(result)
        return error, index

    def _libpq_error(self, libpq, pgconn, result):
        def field(code):
            value = libpq.PQresultErrorField(result, ord(code)) if result else None
            return value.decode(self._codec, "replace") if value is not None else None
        text = libpq.PQresultErrorMessage(result) if result else libpq.PQerrorMessage(pgconn)
        lost = libpq.PQstatus(pgconn) != 0  # CONNECTION_OK
        self.lost = self.lost or lost
        return ServerError(
            sqlstate=field("C"), severity=field("V") or field("S"), message=field("M"),
            detail=field("D"), hint=field("H"), context=field("W"), position=field("P"),
            text=(text or b"").decode(self._codec, "replace"), lost=lost)

    def _rollback_quietly(self, cur=None):
        """ROLLBACK after a failure without hiding the failure itself."""
        if self.conn.closed or self.lost:
            return
        try:
            with self.conn.cursor() as own:
                own.execute("ROLLBACK")
        except psycopg2.Error:
            pass

    def flush(self):
        """Make earlier synchronous_commit=off commits durable now.

        A transaction holding an xid commits synchronously and flushes the WAL
        up to its commit record, which covers every commit before it.
        """
        with self.conn.cursor() as cur:
            cur.execute("BEGIN; SELECT txid_current(); COMMIT")

    def _failure(self, error, migration, direction, offset, in_transaction, done, exact=True):
        if offset is None:
            # The tracking row or the COMMIT (deferred constraints) failed.
            error_offset = migration.span(direction)[0]
            where = "while recording it in %s.%s or committing" % (self.schema, self.table)
        elif not exact:
            error_offset = offset
            where = ("at a statement of its %s section that PostgreSQL did not identify (the "
                     "error has no position; line %d is the section's start)"
                     % (direction, migration.line_of(offset)))
        else:
            error_offset = offset
            where = "at this statement"
        line = migration.line_of(error_offset)
        pgmessage = error.message or error.text.strip()
        if error.lost or self.conn.closed:
            # The server went away (stopped, killed): its last words are no diagnosis.
            pgmessage = "the connection to the server was lost (%s)" % (
                error.text.strip() or "closed")
        detail = "".join(
            "\n%s: %s" % (label, text) for label, text in
            (("DETAIL", error.detail), ("HINT", error.hint),
             ("CONTEXT", error.context)) if text)
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
            error.severity or "ERROR", pgmessage, detail, outcome)
        return MigrationFailed(message, file_name=migration.file_name, line=line,
                               pgcode=error.sqlstate, pgmessage=pgmessage)


class ServerError:
    """What the server said about a failed query (from libpq or psycopg2)."""

    def __init__(self, sqlstate=None, severity=None, message=None, detail=None, hint=None,
                 context=None, position=None, text="", lost=False):
        self.sqlstate = sqlstate
        self.severity = severity
        self.message = message
        self.detail = detail
        self.hint = hint
        self.context = context
        self.position = int(position) if position and str(position).isdigit() else None
        self.text = text or ""
        self.lost = lost

    @classmethod
    def from_psycopg2(cls, exc, conn):
        diag = exc.diag
        lost = bool(conn.closed) or (isinstance(exc, psycopg2.OperationalError)
                                     and not diag.sqlstate)
        return cls(sqlstate=exc.pgcode, severity=diag.severity, message=diag.message_primary,
                   detail=diag.message_detail, hint=diag.message_hint, context=diag.context,
                   position=diag.statement_position, text=str(exc), lost=lost)


_TABLE_WRITES = "INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"
_SEQUENCE_WRITES = "USAGE, UPDATE"
#: The engine's tables and pgmigrations' id sequence, each with the roles
#: (NULL: PUBLIC) other than its owner that hold a write privilege on it.
_EXCESS_PRIVILEGES_SQL = """
WITH objects AS (
    SELECT c.oid, c.relkind, c.relowner, c.relacl, n.nspname, c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = to_regclass(format('%%I.%%I', %s::text, %s::text))
       OR c.oid = to_regclass(format('%%I.%%I', %s::text, %s::text))
       OR c.oid = (SELECT d.objid FROM pg_depend d
                   JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                   WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                     AND d.refobjid = to_regclass(format('%%I.%%I', %s::text, %s::text))
                     AND a.attname = 'id' AND d.deptype IN ('a', 'i') LIMIT 1)
)
SELECT o.relkind, o.nspname, o.relname,
       array_agg(DISTINCT r.rolname) AS grantees
FROM objects o
CROSS JOIN LATERAL aclexplode(o.relacl) acl
LEFT JOIN pg_roles r ON r.oid = acl.grantee
WHERE acl.grantee <> o.relowner
  AND acl.privilege_type = ANY (CASE WHEN o.relkind = 'S' THEN ARRAY['USAGE', 'UPDATE']
                                ELSE ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                           'REFERENCES', 'TRIGGER'] END)
GROUP BY o.relkind, o.nspname, o.relname
ORDER BY o.relname
"""

# libpq's ExecStatusType values used by Runner._send.
_PGRES_COPY_OUT, _PGRES_COPY_IN, _PGRES_BAD_RESPONSE, _PGRES_FATAL_ERROR = 3, 4, 5, 7
_LIBPQ = []


def _libpq():
    """libpq's functions, from the library psycopg2 itself is linked with; None if unusable.

    psycopg2 documents ``connection.pgconn_ptr`` for passing its PGconn to
    libpq through ctypes. The functions are looked up through psycopg2's own
    extension module, so they are the very libpq that made the connection
    (psycopg2-binary bundles its own copy). Used only to read, per
    statement, the results of a multi-statement query, which psycopg2 drops.
    """
    if not _LIBPQ:
        _LIBPQ.append(_load_libpq())
    return _LIBPQ[0]


def _load_libpq():
    if ctypes is None or not HAS_PSYCOPG2 or os.environ.get("PG_MIGRATE_NO_LIBPQ"):
        return None
    try:
        from psycopg2 import _psycopg
        # Calls that may wait for the server release the GIL (CDLL); the
        # others only read memory and keep it (PyDLL: no release overhead).
        lib = ctypes.CDLL(_psycopg.__file__)
        fast = ctypes.PyDLL(_psycopg.__file__)
        pointer, text, integer = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        signatures = {
            "PQsendQuery": ([pointer, text], integer),
            "PQgetResult": ([pointer], pointer),
            "PQresultStatus": ([pointer], integer),
            "PQresultErrorField": ([pointer, integer], text),
            "PQresultErrorMessage": ([pointer], text),
            "PQerrorMessage": ([pointer], text),
            "PQstatus": ([pointer], integer),
            "PQclear": ([pointer], None),
            "PQputCopyEnd": ([pointer, text], integer),
            "PQgetCopyData": ([pointer, ctypes.POINTER(pointer), integer], integer),
            "PQfreemem": ([pointer], None),
        }
        blocking = ("PQsendQuery", "PQgetResult", "PQputCopyEnd", "PQgetCopyData")
        functions = types.SimpleNamespace()
        for name, (argtypes, restype) in signatures.items():
            function = getattr(lib if name in blocking else fast, name)
            function.argtypes = argtypes
            function.restype = restype
            setattr(functions, name, function)
        return functions
    except (ImportError, OSError, AttributeError):
        return None


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
    if action != "create" and name is not None:
        raise MigrationError("name applies to create only, not %s" % action)
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
            migration.validate(direction)  # every planned section, before anything runs
        for migration, direction in plan:
            result["queries"].append(migration.section(direction))
            result["queries"].append(runner.tracking_sql(migration, direction))
        result["planned"] = [{"name": m.name, "direction": d, "transaction": m.transaction}
                             for m, d in plan]
        if check_mode:
            result["changed"] = bool(plan)
            return result

        if plan:
            runner.ensure_tables()
        result["revoked"], revoke_warnings = runner.protect_tables()
        result["warnings"].extend(revoke_warnings)
        if not plan:
            result["changed"] = bool(result["revoked"])
            return result
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
