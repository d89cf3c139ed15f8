# -*- coding: utf-8 -*-
"""Pure-Python core of the `pg_health` module: can the database serve the app?

Everything here is plain Python over psycopg2 (no import from `ansible`), so
it is unit-tested directly and reused by the benchmark:

* `Pool`: a small connection pool with the semantics of the app's pg-promise
  pool (min/max, wait-with-timeout when exhausted, idle reaping down to min),
  over any connection factory. psycopg2's own pools have neither an idle
  timeout nor a wait, so this thin layer adds both.
* `pg_connect` / `run_query`: psycopg2 in asynchronous mode, polled against a
  deadline in milliseconds. libpq's own `connect_timeout` counts whole seconds
  with a floor of 2 s; the deadline here is what makes "down within the
  connect timeout" hold for any timeout, and bounds every query too.
* `probe_health`: the seed's `isHealthy()` (`SELECT 1`) plus version,
  extensions, query logging settings and the connection limits.
* `compute_headroom`, `latency_summary`, `query_logging_state`: arithmetic.
* `check_pool`: the pool verification against the real server (what only
  the server can answer: min opened, growth to max under the role, connect
  times). How the `Pool` class itself waits, refuses and reaps is the same
  on every server: unit tests check it, not each deploy.
* `probe_pooler` / `summarize_pooler`: PgBouncer's own view (`SHOW POOLS`,
  `SHOW STATS` on its admin console as a stats user) when a pooler serves
  the app's endpoint: clients active and waiting, server connections, max wait.
* `run_checks`: everything above, as the module returns it.

Connection options become libpq keywords through the shared
`pg_connection.connection_params` (module_utils/pg_connection.py).

Probes report; they never raise for an expected failure (database down,
role refused, limit short): the caller decides what fails.
"""
from __future__ import absolute_import, division, print_function

import collections
import ipaddress
import math
import re
import select
import socket
import threading
import time
import traceback
import uuid

try:
    from ansible.module_utils.pg_connection import connection_params
except ImportError:  # imported bare (unit tests, bench): module_utils/ is on sys.path
    from pg_connection import connection_params

try:
    import psycopg2
    import psycopg2.extensions
    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the host
    psycopg2 = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = traceback.format_exc()

# The seed's `/health` answers (Phase 5 / Testing Procedure step 6).
HEALTH_UP = {"status": "ok", "database": "up"}
HEALTH_DOWN = {"status": "error", "database": "down"}

DEFAULT_EXTENSIONS = ("uuid-ossp", "pgcrypto", "pg_trgm", "pg_stat_statements")

# PostgreSQL truncates application_name at 63 bytes (NAMEDATALEN - 1); the
# module appends ":<8 hex>" to tell its own connections apart.
APPLICATION_NAME_MAX = 50
_APPLICATION_NAME_RE = re.compile(r"^[\x20-\x7e]+$")

# Allowed ranges, inclusive. `None` as the upper bound means "see the rule".
RANGES = {
    "login_port": (1, 65535),
    "connect_timeout_ms": (1, 600000),
    "pool_min": (0, None),  # up to pool_max
    "pool_max": (1, 10000),
    "pool_idle_timeout_ms": (1, 86400000),
    "app_instances": (1, 1000),
    "pooler_server_connections": (1, 10000),
}

POOLERS = ("none", "pgbouncer")


class PgHealthError(Exception):
    """Base class of the errors this core raises."""


class DeadlineExceeded(PgHealthError):
    """A connect, resolve or query did not finish before its deadline."""


class PoolTimeout(PgHealthError):
    """No connection became free (and no slot to open one) within the wait."""


class PoolClosed(PgHealthError):
    """The pool was closed."""


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------

def _range_error(name, value, low, high, unit=""):
    return "%s=%r is out of range: allowed %s to %s%s" % (name, value, low, high, unit)


def validate_options(opts):
    """Return a list of messages, one per bad value; empty when all is well.

    `opts` holds the module's options (missing keys are skipped). Every
    message names the option, the bad value and the allowed range.
    """
    errors = []

    def check(name, unit="", high=None):
        value = opts.get(name)
        if value is None:
            return
        low, default_high = RANGES[name]
        high = default_high if high is None else high
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append("%s=%r is not an integer" % (name, value))
        elif value < low or value > high:
            errors.append(_range_error(name, value, low, high, unit))

    host = opts.get("login_host")
    # "" leaves the host to libpq (its default socket); blanks are a typo.
    if host and not str(host).strip():
        errors.append("login_host=%r is empty: give a host name, an address, a socket "
                      "directory, or \"\" for libpq's default socket" % (host,))
    check("login_port")
    check("connect_timeout_ms", " ms")
    check("pool_max")
    check("app_instances")
    check("pool_idle_timeout_ms", " ms")
    check("pooler_server_connections")
    pooler = opts.get("pooler")
    if pooler is not None and pooler not in POOLERS:
        errors.append("pooler=%r is not one of: %s" % (pooler, ", ".join(POOLERS)))
    elif pooler == "pgbouncer" and opts.get("pooler_server_connections") is None:
        errors.append("pooler=pgbouncer needs pooler_server_connections (PgBouncer's pool + "
                      "reserve for the role): the server's limits are checked against it")

    pool_max = opts.get("pool_max")
    pool_min = opts.get("pool_min")
    if pool_min is not None:
        if isinstance(pool_max, int) and pool_max >= 1 and isinstance(pool_min, int) \
                and pool_min > pool_max:
            errors.append("pool_min=%r is above pool_max=%r: allowed 0 to pool_max (%r)"
                          % (pool_min, pool_max, pool_max))
        else:
            check("pool_min", high=RANGES["pool_max"][1])

    name = opts.get("application_name")
    if name is not None and (not _APPLICATION_NAME_RE.match(name)
                             or len(name) > APPLICATION_NAME_MAX):
        errors.append("application_name=%r is invalid: allowed 1 to %d printable ASCII "
                      "characters" % (name, APPLICATION_NAME_MAX))

    for ext in opts.get("extensions") or []:
        if not isinstance(ext, str) or not ext.strip():
            errors.append("extensions contains %r: every entry must be a non-empty name" % (ext,))
    return errors


# ---------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------

def percentile(values, pct):
    """Nearest-rank percentile: the smallest value with `pct` % at or below it."""
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0 < pct <= 100:
        raise ValueError("pct=%r is out of range: allowed above 0 to 100" % (pct,))
    ordered = sorted(values)
    rank = int(math.ceil(pct / 100.0 * len(ordered)))
    return ordered[max(rank, 1) - 1]


def latency_summary(values_ms):
    """`{count, p50, p95, max}` in milliseconds (rounded to 0.01), None when empty."""
    if not values_ms:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    return {
        "count": len(values_ms),
        "p50": round(percentile(values_ms, 50), 2),
        "p95": round(percentile(values_ms, 95), 2),
        "max": round(max(values_ms), 2),
    }


def _as_int(value):
    return None if value is None else int(value)


def compute_headroom(settings, role_name, role_conn_limit, db_name, db_conn_limit,
                     required, basis=None):
    """Do the server's, role's and database's connection limits cover `required`?

    `required` is the number of connections to fit, given by the caller (the
    module: every app pool at its maximum); this function only compares it
    with the limits and adds no margin of its own. `basis` says in words where
    `required` comes from, for the messages.
    `settings` maps setting names to values as pg_settings gives them:
    `max_connections`, `superuser_reserved_connections` and, from PostgreSQL 16
    on, `reserved_connections` (absent on 15: counted as 0). Limits of -1
    (`rolconnlimit`, `datconnlimit`) mean unlimited.
    Returns `{required, ok, limits: {server, role, database}, short: [...]}`;
    each entry of `short` names the limit and by how much it is short.
    """
    if isinstance(required, bool) or not isinstance(required, int) or required < 0:
        raise ValueError("required=%r: need a whole number of connections, 0 or more"
                         % (required,))
    basis = "%d required connection(s)" % required if basis is None \
        else "%s = %d" % (basis, required)
    max_conn = _as_int(settings["max_connections"])
    su_reserved = _as_int(settings.get("superuser_reserved_connections")) or 0
    reserved = _as_int(settings.get("reserved_connections"))
    server_limit = max_conn - su_reserved - (reserved or 0)
    source = "max_connections %d - superuser_reserved_connections %d" % (max_conn, su_reserved)
    source += (" - reserved_connections %d" % reserved) if reserved is not None \
        else " (reserved_connections: not on this server)"

    def entry(limit, src):
        if limit is None or limit < 0:
            return {"limit": None, "unlimited": True, "spare": None, "short_by": 0, "source": src}
        return {"limit": limit, "unlimited": False, "spare": max(limit - required, 0),
                "short_by": max(required - limit, 0), "source": src}

    limits = collections.OrderedDict()
    limits["server"] = entry(server_limit, source)
    limits["role"] = entry(_as_int(role_conn_limit),
                           "pg_roles.rolconnlimit of %s" % role_name)
    limits["database"] = entry(_as_int(db_conn_limit),
                               "pg_database.datconnlimit of %s" % db_name)
    short = []
    for name, item in limits.items():
        if item["short_by"] > 0:
            short.append({
                "limit": name,
                "short_by": item["short_by"],
                "message": "%s limit %d is short by %d for %s"
                           % (name, item["limit"], item["short_by"], basis),
            })
    return {
        "required": required,
        "ok": not short,
        "limits": dict(limits),
        "short": short,
    }


def query_logging_state(log_statement, log_min_duration_statement_ms):
    """Are all statements logged? (seed: "Query logging enabled in development mode").

    True when `log_statement = all` or `log_min_duration_statement = 0`;
    `mod`/`ddl` or a positive duration threshold log only some statements.
    """
    duration = _as_int(log_min_duration_statement_ms)
    return {
        "log_statement": log_statement,
        "log_min_duration_statement_ms": duration,
        "all_statements_logged": log_statement == "all" or duration == 0,
        "some_statements_logged": (log_statement not in (None, "none"))
        or (duration is not None and duration >= 0),
    }


def first_line(exc):
    """An exception as one readable line (psycopg2 messages span lines)."""
    text = " ".join(str(exc).split())
    return text or exc.__class__.__name__


# ---------------------------------------------------------------------------
# Pool
# ---------------------------------------------------------------------------

def _close_quietly(conn):
    try:
        conn.close()
    except Exception:  # closing a broken connection must not mask the result
        pass


def reaper_interval(idle_timeout):
    """How often the reaper looks: a quarter of the idle timeout, 10 ms to 1 s."""
    return min(max(idle_timeout / 4.0, 0.01), 1.0)


class Pool(object):
    """Min/max connection pool with wait-with-timeout and idle reaping.

    `connect(timeout_s)` opens one connection within `timeout_s` or raises.
    Semantics follow the app's pg-promise pool (node-postgres pg-pool):
    `open()` opens `min_size`; `getconn()` hands out an idle connection (most
    recently used first), else opens one while fewer than `max_size` exist,
    else waits until one is returned, for at most `acquire_timeout` seconds
    in total (pg-pool's connectionTimeoutMillis), then raises `PoolTimeout`.
    `reap_idle()` closes connections idle for `idle_timeout` seconds or more,
    oldest first, never going below `min_size`; `start_reaper()` runs it in a
    background thread as a pool's timer does.
    """

    def __init__(self, connect, min_size, max_size, idle_timeout, acquire_timeout,
                 close=_close_quietly, clock=time.monotonic):
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ValueError("pool sizes min=%r max=%r: need 0 <= min <= max and max >= 1"
                             % (min_size, max_size))
        if idle_timeout <= 0 or acquire_timeout <= 0:
            raise ValueError("idle_timeout=%r acquire_timeout=%r: both must be above 0"
                             % (idle_timeout, acquire_timeout))
        self._connect = connect
        self._close = close
        self._clock = clock
        self.min_size = min_size
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.acquire_timeout = acquire_timeout
        self._cond = threading.Condition()
        self._idle = collections.deque()  # (conn, released_at); oldest at the left
        self._in_use = {}
        self._size = 0  # open connections plus slots being opened
        self._closed = False
        self._stop = threading.Event()
        self._reaper = None
        self.opened = 0
        self.reaped = 0

    # -- opening --------------------------------------------------------
    def open(self):
        """Open `min_size` connections (each within `acquire_timeout`)."""
        for _ in range(self.min_size):
            with self._cond:
                self._size += 1
            conn = self._open_slot(self.acquire_timeout)
            with self._cond:
                self._idle.append((conn, self._clock()))
                self._cond.notify()
        return self

    def _open_slot(self, timeout):
        """Open a connection for a slot already counted in `_size`."""
        try:
            conn = self._connect(timeout)
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise
        with self._cond:
            self.opened += 1
        return conn

    # -- borrowing ------------------------------------------------------
    def getconn(self, timeout=None):
        """Borrow a connection, waiting at most `timeout` s (default: acquire_timeout)."""
        timeout = self.acquire_timeout if timeout is None else timeout
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise PoolClosed("the pool is closed")
                if self._idle:
                    conn, _ = self._idle.pop()
                    self._in_use[id(conn)] = conn
                    return conn
                if self._size < self.max_size:
                    self._size += 1
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise PoolTimeout("no connection free within %d ms: all %d in use"
                                      % (round(timeout * 1000), self.max_size))
                self._cond.wait(remaining)
        conn = self._open_slot(max(deadline - self._clock(), 0.0))
        with self._cond:
            self._in_use[id(conn)] = conn
        return conn

    def putconn(self, conn, discard=False):
        """Return a borrowed connection; `discard=True` closes it instead."""
        with self._cond:
            if self._in_use.pop(id(conn), None) is None:
                raise ValueError("connection was not borrowed from this pool")
            if discard or self._closed:
                self._size -= 1
            else:
                self._idle.append((conn, self._clock()))
                conn = None
            self._cond.notify()
        if conn is not None:
            self._close(conn)

    # -- reaping --------------------------------------------------------
    def reap_idle(self):
        """Close connections idle for `idle_timeout` or more, down to `min_size`."""
        victims = []
        with self._cond:
            now = self._clock()
            while (self._idle and self._size > self.min_size
                   and now - self._idle[0][1] >= self.idle_timeout):
                victims.append(self._idle.popleft()[0])
                self._size -= 1
            self.reaped += len(victims)
            if victims:
                self._cond.notify_all()
        for conn in victims:
            self._close(conn)
        return len(victims)

    def start_reaper(self, interval=None):
        """Run `reap_idle()` every `interval` s in a daemon thread until `close()`."""
        if self._reaper is None:
            interval = reaper_interval(self.idle_timeout) if interval is None else interval
            self._reaper = threading.Thread(target=self._reap_loop, args=(interval,),
                                            name="pg_health-reaper")
            self._reaper.daemon = True
            self._reaper.start()
        return self

    def _reap_loop(self, interval):
        while not self._stop.wait(interval):
            self.reap_idle()

    def wait_until_size(self, size, timeout):
        """Block until the pool holds at most `size` connections; False on timeout."""
        deadline = self._clock() + timeout
        with self._cond:
            while self._size > size:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    # -- state and shutdown -----------------------------------------------
    def stats(self):
        with self._cond:
            return {"size": self._size, "idle": len(self._idle), "in_use": len(self._in_use),
                    "opened": self.opened, "reaped": self.reaped}

    def close(self):
        """Stop the reaper and close every connection, borrowed ones included."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join()
        with self._cond:
            self._closed = True
            conns = [c for c, _ in self._idle] + list(self._in_use.values())
            self._idle.clear()
            self._in_use.clear()
            self._size = 0
            self._cond.notify_all()
        for conn in conns:
            self._close(conn)


# ---------------------------------------------------------------------------
# psycopg2 with deadlines
# ---------------------------------------------------------------------------

def _wait_fd(fd, for_write, timeout):
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLOUT if for_write else select.POLLIN)
        poller.poll(max(int(math.ceil(timeout * 1000)), 0))
    else:  # pragma: no cover - non-Linux
        select.select([], [fd], [], timeout) if for_write else select.select([fd], [], [], timeout)


def wait_ready(conn, deadline, what, clock=time.monotonic):
    """Poll an asynchronous psycopg2 connection until ready or `deadline`."""
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - clock()
        if remaining <= 0:
            raise DeadlineExceeded(what)
        if state == psycopg2.extensions.POLL_READ:
            _wait_fd(conn.fileno(), False, remaining)
        elif state == psycopg2.extensions.POLL_WRITE:
            _wait_fd(conn.fileno(), True, remaining)
        else:  # pragma: no cover - psycopg2 documents only the three states
            raise psycopg2.OperationalError("unexpected poll state %r" % (state,))


def _is_address(host):
    if host.startswith("/"):
        return True  # Unix socket directory
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def resolve_host(host, port, deadline, clock=time.monotonic):
    """Resolve a host name within the deadline (libpq would block on DNS).

    Returns an address for libpq's `hostaddr`, or None for an address or a
    socket directory that needs no lookup.
    """
    if _is_address(host):
        return None
    box = {}

    def lookup():
        try:
            box["addr"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][4][0]
        except Exception as exc:  # reported to the caller below
            box["error"] = exc

    worker = threading.Thread(target=lookup, name="pg_health-resolve")
    worker.daemon = True
    worker.start()
    worker.join(max(deadline - clock(), 0.0))
    if worker.is_alive():
        raise DeadlineExceeded("resolving %s took longer than the connect timeout" % host)
    if "error" in box:
        raise psycopg2.OperationalError("could not resolve host %s: %s"
                                        % (host, first_line(box["error"])))
    return box["addr"]


def pg_connect(params, timeout, application_name=None, clock=time.monotonic):
    """Open a connection within `timeout` seconds or raise.

    `params`: libpq keywords (host, port, dbname, user, password, sslmode).
    The connection is asynchronous (always autocommit); use `run_query`.
    Raises psycopg2.Error (refused, authentication, ...) or DeadlineExceeded.
    """
    deadline = clock() + timeout
    kwargs = dict((k, v) for k, v in params.items() if v is not None)
    host = kwargs.get("host")
    if host and "hostaddr" not in kwargs:
        addr = resolve_host(host, kwargs.get("port", 5432), deadline, clock)
        if addr:
            kwargs["hostaddr"] = addr
    if application_name:
        kwargs["application_name"] = application_name
    conn = psycopg2.connect(async_=True, **kwargs)
    try:
        wait_ready(conn, deadline, "no answer from %s:%s within the connect timeout of %d ms"
                   % (host, kwargs.get("port"), round(timeout * 1000)), clock)
    except BaseException:
        _close_quietly(conn)
        raise
    return conn


def run_query(conn, sql, args=None, deadline=None, timeout=5.0, clock=time.monotonic):
    """Run one statement on an asynchronous connection; rows, or None if none."""
    deadline = clock() + timeout if deadline is None else deadline
    cur = conn.cursor()
    try:
        cur.execute(sql, args)
        wait_ready(conn, deadline, "query did not finish in time: %s" % sql.split()[0], clock)
        return cur.fetchall() if cur.description is not None else None
    finally:
        cur.close()


# ---------------------------------------------------------------------------
# Health probe
# ---------------------------------------------------------------------------

_INFO_SQL = """
SELECT current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       version() AS raw,
       current_user AS role_name,
       current_database() AS db_name,
       (SELECT json_object_agg(name, setting) FROM pg_settings
         WHERE name IN ('max_connections', 'superuser_reserved_connections',
                        'reserved_connections', 'log_statement',
                        'log_min_duration_statement', 'archive_mode',
                        'archive_timeout', 'wal_segment_size')) AS settings,
       (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user) AS role_conn_limit,
       (SELECT datconnlimit FROM pg_database WHERE datname = current_database())
           AS db_conn_limit,
       (SELECT json_object_agg(extname, extversion) FROM pg_extension) AS extensions,
       (SELECT json_build_object(
                 'archived_count', archived_count, 'last_archived_wal', last_archived_wal,
                 'last_archived_time', last_archived_time, 'failed_count', failed_count,
                 'last_failed_wal', last_failed_wal, 'last_failed_time', last_failed_time,
                 'age_s', extract(epoch FROM now() - last_archived_time),
                 'failed_after_archived', last_failed_time > coalesce(last_archived_time, '-infinity'),
                 'current_lsn', CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END)
          FROM pg_stat_archiver) AS archiver
"""


def _strip_prefix(message):
    """Drop libpq's own 'connection to server at ... failed:' (we add ours)."""
    return re.sub(r'^connection to server at .*? failed: ', '', message)


def _ms(seconds):
    return round(seconds * 1000.0, 2)


def probe_health(params, connect_timeout_ms, extensions=DEFAULT_EXTENSIONS,
                 application_name="pg_health", clock=time.perf_counter):
    """Connect, `SELECT 1`, and read what the app depends on.

    Returns a dict with `is_available`, `health` (the seed's answer), `reason`
    (why down; empty when up) and `latency_ms`; when up also `server_version`,
    `extensions`, `extensions_missing`, `query_logging`, `role`, `database`
    and `_limits` (raw inputs for `compute_headroom`). Never raises for a
    database that is down or refuses the role, and answers within the
    connect timeout (plus the query time when it connected).
    """
    timeout = connect_timeout_ms / 1000.0
    started = clock()
    result = {"is_available": False, "health": dict(HEALTH_DOWN), "reason": "",
              "latency_ms": {"connect": None, "query": None, "total": None}}
    conn = None
    try:
        try:
            conn = pg_connect(params, timeout, application_name, clock=clock)
        except (DeadlineExceeded, psycopg2.Error, OSError) as exc:
            # Async libpq messages lack the address: say where it failed.
            raise PgHealthError("connection to %s port %s as %s failed: %s"
                                % (params.get("host") or "(default socket)", params.get("port"),
                                   params.get("user"),
                                   _strip_prefix(first_line(exc))))
        connected = clock()
        result["latency_ms"]["connect"] = _ms(connected - started)
        # Queries get the same budget as the connect: a server that accepts
        # but never answers is down too, not a hang.
        rows = run_query(conn, "SELECT 1 AS result", timeout=timeout, clock=clock)
        queried = clock()
        result["latency_ms"]["query"] = _ms(queried - connected)
        if rows != [(1,)]:
            raise psycopg2.DatabaseError("SELECT 1 returned %r" % (rows,))
        info = run_query(conn, _INFO_SQL, timeout=timeout, clock=clock)[0]
    except (PgHealthError, psycopg2.Error, OSError) as exc:
        result["reason"] = first_line(exc)
        result["latency_ms"]["total"] = _ms(clock() - started)
        return result
    finally:
        if conn is not None:
            _close_quietly(conn)

    (version, version_num, raw, role_name, db_name, settings, role_limit, db_limit,
     installed, archiver) = info
    settings = settings or {}
    installed = installed or {}
    result.update({
        "is_available": True,
        "health": dict(HEALTH_UP),
        "server_version": {
            "major": version_num // 10000,
            "minor": version_num % 10000,
            "full": version.split()[0],
            "raw": raw,
        },
        "role": role_name,
        "database": db_name,
        "extensions": dict((name, {"installed": name in installed,
                                   "version": installed.get(name)})
                           for name in extensions),
        "extensions_missing": [name for name in extensions if name not in installed],
        "query_logging": query_logging_state(settings.get("log_statement"),
                                             settings.get("log_min_duration_statement")),
        "archiver": archiver_state(archiver or {}, settings),
        "_limits": {"settings": settings, "role_conn_limit": role_limit,
                    "db_conn_limit": db_limit},
    })
    result["latency_ms"]["total"] = _ms(clock() - started)
    return result


# ---------------------------------------------------------------------------
# WAL archiving
# ---------------------------------------------------------------------------

def _lsn(text):
    """`X/Y` (pg_lsn as text) as an integer."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _segment_end(wal_name, segment_size):
    """The LSN just past the end of WAL segment `wal_name` (24 hex digits)."""
    per_xlogid = 0x100000000 // segment_size
    log, seg = int(wal_name[8:16], 16), int(wal_name[16:24], 16)
    return (log * per_xlogid + seg + 1) * segment_size


def archiver_state(row, settings):
    """pg_stat_archiver in words: counts, the last archived WAL and its age, and warnings.

    `row` has pg_stat_archiver's columns plus `age_s` (seconds since the last
    archive), `failed_after_archived` and `current_lsn`; `settings` holds
    archive_mode, archive_timeout (s) and wal_segment_size (bytes). Warns when
    the latest attempt failed, or when WAL written after the last archived
    segment has waited more than twice archive_timeout (an idle server that
    writes nothing is not warned about).
    """
    enabled = settings.get("archive_mode") in ("on", "always")
    state = {"enabled": enabled, "warnings": []}
    if not enabled:
        return state
    timeout = int(settings.get("archive_timeout") or 0)
    segment_size = int(settings.get("wal_segment_size") or 16 * 1024 * 1024)
    last_wal = row.get("last_archived_wal")
    age = row.get("age_s")
    pending = None
    if row.get("current_lsn") and last_wal and len(last_wal) == 24:
        pending = max(0, _lsn(row["current_lsn"]) - _segment_end(last_wal, segment_size))
    state.update({
        "archived_count": row.get("archived_count"),
        "last_archived_wal": last_wal,
        "last_archived_time": row.get("last_archived_time"),
        "last_archived_age_s": None if age is None else round(float(age), 1),
        "failed_count": row.get("failed_count"),
        "last_failed_wal": row.get("last_failed_wal"),
        "last_failed_time": row.get("last_failed_time"),
        "archive_timeout_s": timeout,
        "unarchived_bytes": pending,
    })
    if row.get("failed_after_archived"):
        state["warnings"].append(
            "WAL archiving is failing: %s failed attempt(s), the latest for %s at %s, after the last "
            "success (%s); see the server log and `pgbackrest check`"
            % (row.get("failed_count"), row.get("last_failed_wal"), row.get("last_failed_time"),
               row.get("last_archived_time") or "never"))
    if timeout > 0 and age is not None and float(age) > 2 * timeout and pending:
        state["warnings"].append(
            "the last WAL archived (%s) is %.0f s old, more than twice archive_timeout (%d s), while "
            "%d bytes of WAL wait to be archived" % (last_wal, float(age), timeout, pending))
    return state


# ---------------------------------------------------------------------------
# Pool verification
# ---------------------------------------------------------------------------

_ACTIVITY_SQL = """
SELECT usename, count(*)::int FROM pg_stat_activity
 WHERE application_name = %s AND backend_type = 'client backend'
 GROUP BY usename
"""


def _server_view(conn, application_name, timeout):
    """{role: count} of the backends carrying `application_name`."""
    rows = run_query(conn, _ACTIVITY_SQL, (application_name,), timeout=timeout)
    return dict(rows)


def check_pool(params, pool_min, pool_max, idle_timeout_ms, connect_timeout_ms,
               application_name, connect=pg_connect, clock=time.perf_counter, pooled=False):
    """Run a real pool configured as the app's and report what the server saw.

    Steps: open min and read pg_stat_activity; borrow up to max, all held at
    once (each new connection opened within the connect timeout); read
    pg_stat_activity from a pooled connection (backends under the role and
    this run's application_name); `SELECT 1` on every held connection; close
    the pool. Only what depends on the server is checked here: that the pool
    waits then refuses beyond max and closes idle connections is how `Pool`
    itself behaves, covered by the unit tests. With `pooled` (a transaction
    pooler serves the endpoint) an idle client holds no server connection:
    the checks count the client connections, and the server's counts are
    only reported. Never raises for a
    database-side failure: the first one is in `errors` and `ok` is false.
    """
    timeout = connect_timeout_ms / 1000.0
    started = clock()
    connect_ms = []
    query_ms = []
    errors = []

    def factory(remaining):
        t0 = clock()
        conn = connect(params, min(remaining, timeout), application_name)
        connect_ms.append((clock() - t0) * 1000.0)
        return conn

    result = {
        "ok": False,
        "application_name": application_name,
        "role": params.get("user"),
        "min": pool_min,
        "max": pool_max,
        "connect_timeout_ms": connect_timeout_ms,
        "idle_timeout_ms": idle_timeout_ms,
        "opened_at_start": None,
        "server_connections_at_start": None,
        "reached": 0,
        "server_connections_at_peak": None,
        "server_roles_at_peak": {},
        "all_opened_within_connect_timeout": None,
        "errors": errors,
    }

    pool = Pool(factory, pool_min, pool_max, idle_timeout_ms / 1000.0, timeout)
    held = []
    try:
        try:
            pool.open()
            result["opened_at_start"] = pool.stats()["size"]
            while len(held) < pool_max:
                held.append(pool.getconn())
                if len(held) == 1 and pool_min >= 1:
                    # Borrowed from the idle ones: the server still shows min.
                    result["server_connections_at_start"] = sum(
                        _server_view(held[0], application_name, timeout).values())
        except (PgHealthError, psycopg2.Error, OSError) as exc:
            errors.append("growing to max stopped at %d of %d: %s"
                          % (pool.stats()["size"], pool_max, first_line(exc)))
        result["reached"] = len(held)
        if connect_ms:
            result["all_opened_within_connect_timeout"] = max(connect_ms) <= connect_timeout_ms

        if held:
            try:
                view = _server_view(held[0], application_name, timeout)
                result["server_roles_at_peak"] = view
                result["server_connections_at_peak"] = sum(view.values())
                for conn in held:
                    t0 = clock()
                    run_query(conn, "SELECT 1", timeout=timeout)
                    query_ms.append((clock() - t0) * 1000.0)
            except (PgHealthError, psycopg2.Error, OSError) as exc:
                errors.append("query on a pooled connection failed: %s" % first_line(exc))
    finally:
        for conn in held:
            pool.putconn(conn, discard=True)
        pool.close()

    role = params.get("user")
    checks = {
        "opens min at start": result["opened_at_start"] == pool_min and (
            pooled or pool_min == 0 or result["server_connections_at_start"] == pool_min),
        "grows to max": result["reached"] == pool_max and (
            pooled or (result["server_connections_at_peak"] == pool_max
                       and set(result["server_roles_at_peak"]) == {role})),
        "opens within connect timeout": result["all_opened_within_connect_timeout"] is True,
    }
    result["checks"] = checks
    result["ok"] = all(checks.values()) and not errors
    result["latency_ms"] = {"connect": latency_summary(connect_ms),
                            "query": latency_summary(query_ms)}
    result["duration_ms"] = _ms(clock() - started)
    return result


# ---------------------------------------------------------------------------
# The pooler's own view (PgBouncer's admin console)
# ---------------------------------------------------------------------------

def _int(row, key):
    try:
        return int(row.get(key) or 0)
    except (TypeError, ValueError):
        return 0


def summarize_pooler(pools, stats, database):
    """PgBouncer's view of `database` from `SHOW POOLS` and `SHOW STATS` rows.

    `pools` and `stats` are lists of dicts keyed by the column names PgBouncer
    gives (1.18: cl_active, cl_waiting, sv_active, sv_idle, sv_used,
    sv_tested, sv_login, maxwait, maxwait_us; total_xact_count,
    total_query_count, avg_xact_time, avg_query_time, avg_wait_time, in
    microseconds). Pools of other databases (the auth_query role's pool is
    counted with its database) are left out. Returns the totals and one
    entry per role.
    """
    mine = [row for row in pools if row.get("database") == database]
    users = collections.OrderedDict()
    for row in mine:
        users[row.get("user")] = {
            "clients_active": _int(row, "cl_active"),
            "clients_waiting": _int(row, "cl_waiting"),
            "server_active": _int(row, "sv_active"),
            "server_idle": _int(row, "sv_idle") + _int(row, "sv_used") + _int(row, "sv_tested"),
            "server_login": _int(row, "sv_login"),
            "max_wait_ms": round(_int(row, "maxwait") * 1000.0 + _int(row, "maxwait_us") / 1000.0, 3),
            "pool_mode": row.get("pool_mode"),
        }
    total = {
        "clients_active": sum(u["clients_active"] for u in users.values()),
        "clients_waiting": sum(u["clients_waiting"] for u in users.values()),
        "server_connections": sum(u["server_active"] + u["server_idle"] + u["server_login"]
                                  for u in users.values()),
        "server_active": sum(u["server_active"] for u in users.values()),
        "max_wait_ms": max([u["max_wait_ms"] for u in users.values()] or [0.0]),
    }
    stat = next((row for row in stats if row.get("database") == database), {})
    total["stats"] = {
        "total_xact_count": _int(stat, "total_xact_count"),
        "total_query_count": _int(stat, "total_query_count"),
        "avg_xact_time_ms": round(_int(stat, "avg_xact_time") / 1000.0, 3),
        "avg_query_time_ms": round(_int(stat, "avg_query_time") / 1000.0, 3),
        "avg_wait_time_ms": round(_int(stat, "avg_wait_time") / 1000.0, 3),
    }
    total["users"] = dict(users)
    return total


def _show(conn, what):
    with conn.cursor() as cur:
        cur.execute("SHOW " + what)
        names = [col[0] for col in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def probe_pooler(params, database, connect_timeout_ms, connect=None):
    """Read `SHOW POOLS` and `SHOW STATS` on PgBouncer's admin console.

    `params` are libpq keywords of the stats user on the admin database
    (`pgbouncer`). The console speaks the simple query protocol only and no
    transactions, hence a plain autocommit connection. Never raises for an
    expected failure: `is_available` false and `reason` say it.
    """
    result = {"is_available": False, "reason": ""}
    conn = None
    try:
        # libpq counts whole seconds, at least 2.
        timeout = max(2, int(math.ceil(connect_timeout_ms / 1000.0)))
        conn = (connect or psycopg2.connect)(connect_timeout=timeout, **params)
        conn.autocommit = True
        result.update(summarize_pooler(_show(conn, "POOLS"), _show(conn, "STATS"), database))
        result["is_available"] = True
    except (psycopg2.Error, OSError) as exc:
        result["reason"] = "PgBouncer's admin console at %s port %s as %s: %s" % (
            params.get("host"), params.get("port"), params.get("user"),
            _strip_prefix(first_line(exc)))
    finally:
        if conn is not None:
            _close_quietly(conn)
    return result


# ---------------------------------------------------------------------------
# Everything, as the module returns it
# ---------------------------------------------------------------------------

def tagged_application_name(base):
    """`base:<8 hex>`: tells this run's backends apart in pg_stat_activity."""
    return "%s:%s" % (base, uuid.uuid4().hex[:8])


def run_checks(opts, clock=time.perf_counter):
    """Health, headroom, query logging and (optionally) the pool check.

    `opts` holds the module's options, already validated. The result never
    contains the password. `problems` lists, in words, what would stop this
    database from serving the app pool (empty when all is well or when the
    database is down: then `health` and `reason` say it).
    """
    started = clock()
    params = connection_params(opts)
    app_name = tagged_application_name(opts.get("application_name") or "pg_health")
    extensions = opts.get("extensions")
    extensions = DEFAULT_EXTENSIONS if extensions is None else extensions
    pool_max = opts.get("pool_max", 20)
    app_instances = opts.get("app_instances", 2)
    idle_ms = opts.get("pool_idle_timeout_ms", 30000)

    result = probe_health(params, opts.get("connect_timeout_ms", 2000), extensions,
                          app_name, clock=clock)
    limits = result.pop("_limits", None)
    problems = []
    result["application_name"] = app_name
    pooled = opts.get("pooler") == "pgbouncer"
    if result["is_available"]:
        # What the app needs: every instance's pool at its maximum, or with a
        # pooler the server connections it may open for the role. Margins for
        # other clients are the deployment's to size, not this check's.
        if pooled:
            required = opts["pooler_server_connections"]
            basis = "PgBouncer's pool + reserve for %s" % result["role"]
        else:
            required = pool_max * app_instances
            basis = "%d app instance(s) x pool max %d" % (app_instances, pool_max)
        headroom = compute_headroom(
            limits["settings"], result["role"], limits["role_conn_limit"],
            result["database"], limits["db_conn_limit"], required, basis)
        headroom.update(pool_max=pool_max, app_instances=app_instances)
        result["headroom"] = headroom
        problems.extend("extension %s is not installed" % name
                        for name in result["extensions_missing"])
        problems.extend(item["message"] for item in result["headroom"]["short"])
        if opts.get("pool_check", True):
            pool = check_pool(params, opts.get("pool_min", 2), pool_max, idle_ms,
                              opts.get("connect_timeout_ms", 2000), app_name, clock=clock,
                              pooled=pooled)
            result["pool"] = pool
            problems.extend("pool check: %s failed" % name
                            for name, ok in pool["checks"].items() if not ok)
            problems.extend("pool check: %s" % err for err in pool["errors"])
        else:
            result["pool"] = {"skipped": True}
    if pooled and opts.get("pooler_stats_user"):
        stats_params = dict(host=params.get("host"), port=params.get("port"),
                            user=opts["pooler_stats_user"],
                            password=opts.get("pooler_stats_password"), dbname="pgbouncer")
        result["pooler"] = probe_pooler(stats_params, params.get("dbname"),
                                        opts.get("connect_timeout_ms", 2000))
        if result["is_available"] and not result["pooler"]["is_available"]:
            problems.append("pooler: %s" % result["pooler"]["reason"])
    result["problems"] = problems
    result["duration_ms"] = _ms(clock() - started)
    return result
