"""Unit tests of module_utils/pg_health_core.py: no database needed.

The pool's wait and reap logic runs over a fake connection factory and, for
reaping, a fake clock; the arithmetic and the input validation are pure.
How the pool waits then refuses beyond max and closes idle connections is
checked here only: the module's deploy-time pool check no longer repeats it.
"""
import importlib.util
import pathlib
import threading
import time

import pytest

import pg_health_core as core

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE_PATH = ROOT / "library" / "pg_health.py"

VALID = dict(login_host="127.0.0.1", login_port=5432, connect_timeout_ms=2000,
             pool_min=2, pool_max=20, pool_idle_timeout_ms=30000,
             app_instances=2, application_name="pg_health",
             extensions=list(core.DEFAULT_EXTENSIONS))


# ---------------------------------------------------------------------------
# Fakes
# ---------------------------------------------------------------------------

class FakeConn(object):
    def __init__(self, number):
        self.number = number
        self.closed = False

    def close(self):
        self.closed = True


class FakeFactory(object):
    """Connection factory that counts what it opened; can be told to fail."""

    def __init__(self, fail=False):
        self.opened = []
        self.fail = fail

    def __call__(self, timeout):
        if self.fail:
            raise OSError("connection refused")
        conn = FakeConn(len(self.opened))
        self.opened.append(conn)
        return conn


class FakeClock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_pool(factory=None, min_size=2, max_size=4, idle_timeout=30.0,
              acquire_timeout=0.05, clock=None):
    kwargs = {"clock": clock} if clock is not None else {}
    return core.Pool(factory or FakeFactory(), min_size, max_size, idle_timeout,
                     acquire_timeout, **kwargs)


# ---------------------------------------------------------------------------
# Input validation: a clear error naming the value and the allowed range
# ---------------------------------------------------------------------------

def test_valid_options_give_no_error():
    assert core.validate_options(VALID) == []


@pytest.mark.parametrize("override, expected", [
    ({"pool_min": 25}, "pool_min=25 is above pool_max=20: allowed 0 to pool_max (20)"),
    ({"pool_max": 0}, "pool_max=0 is out of range: allowed 1 to 10000"),
    ({"pool_min": -1}, "pool_min=-1 is out of range: allowed 0 to 10000"),
    ({"connect_timeout_ms": -1}, "connect_timeout_ms=-1 is out of range: allowed 1 to 600000 ms"),
    ({"connect_timeout_ms": 0}, "connect_timeout_ms=0 is out of range: allowed 1 to 600000 ms"),
    ({"pool_idle_timeout_ms": -30000},
     "pool_idle_timeout_ms=-30000 is out of range: allowed 1 to 86400000 ms"),
    ({"app_instances": 0}, "app_instances=0 is out of range: allowed 1 to 1000"),
    ({"login_port": 0}, "login_port=0 is out of range: allowed 1 to 65535"),
    ({"login_port": 70000}, "login_port=70000 is out of range: allowed 1 to 65535"),
    ({"login_host": " "}, "login_host=' ' is empty"),
    ({"application_name": "x" * 51}, "allowed 1 to 50 printable ASCII characters"),
    ({"application_name": "sa\u00fade"}, "allowed 1 to 50 printable ASCII characters"),
    ({"extensions": ["pgcrypto", ""]}, "extensions contains '': every entry must be a non-empty name"),
])
def test_bad_option_is_refused_with_a_message_naming_the_value_and_range(override, expected):
    errors = core.validate_options(dict(VALID, **override))
    assert len(errors) == 1 and expected in errors[0], errors


@pytest.mark.parametrize("host", ["", "/var/run/postgresql", "db.example", "::1"])
def test_empty_host_socket_directory_and_names_are_accepted(host):
    assert core.validate_options(dict(VALID, login_host=host)) == []


def test_every_bad_option_is_reported_not_only_the_first():
    errors = core.validate_options(dict(VALID, pool_max=0, connect_timeout_ms=-1, app_instances=0))
    assert len(errors) == 3


# ---------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("values, pct, expected", [
    ([5], 50, 5),
    ([5], 95, 5),
    ([1, 2, 3, 4], 50, 2),
    ([4, 3, 2, 1], 50, 2),
    (list(range(1, 21)), 95, 19),
    (list(range(1, 21)), 100, 20),
    (list(range(1, 101)), 95, 95),
])
def test_percentile_is_nearest_rank(values, pct, expected):
    assert core.percentile(values, pct) == expected


@pytest.mark.parametrize("values, pct", [([], 50), ([1], 0), ([1], 101)])
def test_percentile_refuses_empty_lists_and_bad_ranks(values, pct):
    with pytest.raises(ValueError):
        core.percentile(values, pct)


def test_latency_summary_gives_count_p50_p95_max():
    assert core.latency_summary([3.0, 1.0, 2.0, 10.0]) == {
        "count": 4, "p50": 2.0, "p95": 10.0, "max": 10.0}


def test_latency_summary_of_nothing_is_empty():
    assert core.latency_summary([]) == {"count": 0, "p50": None, "p95": None, "max": None}


PG15_SETTINGS = {"max_connections": "100", "superuser_reserved_connections": "3"}


def headroom(settings=PG15_SETTINGS, role_limit=-1, db_limit=-1, pool_max=20, instances=2):
    return core.compute_headroom(settings, "app", role_limit, "db", db_limit, pool_max * instances,
                                 "%d app instance(s) x pool max %d" % (instances, pool_max))


@pytest.mark.parametrize("required, role_limit, short_by", [(45, 45, 0), (46, 45, 1), (7, 5, 2)])
def test_headroom_compares_the_limits_with_the_required_number_it_is_given_and_adds_nothing(
        required, role_limit, short_by):
    result = core.compute_headroom(PG15_SETTINGS, "app", role_limit, "db", -1, required)
    assert result["required"] == required
    assert result["limits"]["role"]["short_by"] == short_by
    assert result["limits"]["server"]["spare"] == 97 - required
    if short_by:
        assert result["short"][0]["message"] == (
            "role limit %d is short by %d for %d required connection(s)"
            % (role_limit, short_by, required))


@pytest.mark.parametrize("required", [-1, 2.5, "40", True, None])
def test_headroom_refuses_a_required_number_that_is_no_count(required):
    with pytest.raises(ValueError, match="required="):
        core.compute_headroom(PG15_SETTINGS, "app", -1, "db", -1, required)


def test_run_checks_requires_every_app_pool_at_max_and_names_the_basis(monkeypatch):
    def probe(params, connect_timeout_ms, extensions, application_name, clock):
        assert params["user"] == "app" and "login_user" not in params
        return {"is_available": True, "role": "app", "database": "db", "extensions_missing": [],
                "_limits": {"settings": PG15_SETTINGS, "role_conn_limit": 50,
                            "db_conn_limit": -1}}

    monkeypatch.setattr(core, "probe_health", probe)
    result = core.run_checks(dict(VALID, login_user="app", login_db="db", pool_max=20,
                                  app_instances=3, pool_check=False))
    headroom = result["headroom"]
    assert (headroom["required"], headroom["pool_max"], headroom["app_instances"]) == (60, 20, 3)
    assert result["problems"] == ["role limit 50 is short by 10 for 3 app instance(s) x pool max 20 = 60"]
    assert result["pool"] == {"skipped": True}


def test_headroom_on_pg15_counts_superuser_reserved_and_tolerates_no_reserved_connections():
    result = headroom()
    assert result["ok"] and result["required"] == 40
    assert result["limits"]["server"]["limit"] == 97
    assert "reserved_connections: not on this server" in result["limits"]["server"]["source"]


def test_headroom_on_pg16_also_subtracts_reserved_connections():
    settings = dict(PG15_SETTINGS, reserved_connections="5")
    assert headroom(settings)["limits"]["server"]["limit"] == 92


@pytest.mark.parametrize("role_limit, pool_max, instances, short_by", [
    (30, 20, 2, 10),
    (3, 5, 1, 2),
    (39, 20, 2, 1),
])
def test_role_limit_below_pool_max_times_instances_is_short_by_the_difference(
        role_limit, pool_max, instances, short_by):
    result = headroom(role_limit=role_limit, pool_max=pool_max, instances=instances)
    assert not result["ok"]
    assert [(s["limit"], s["short_by"]) for s in result["short"]] == [("role", short_by)]


def test_server_limit_below_requirement_is_named_with_its_shortfall():
    result = headroom({"max_connections": "30", "superuser_reserved_connections": "3"})
    assert [(s["limit"], s["short_by"]) for s in result["short"]] == [("server", 13)]
    assert "server limit 27 is short by 13" in result["short"][0]["message"]


def test_database_limit_is_checked_too():
    result = headroom(db_limit=10)
    assert [(s["limit"], s["short_by"]) for s in result["short"]] == [("database", 30)]


@pytest.mark.parametrize("role_limit", [-1, None])
def test_unlimited_role_is_never_short(role_limit):
    result = headroom(role_limit=role_limit)
    assert result["limits"]["role"]["unlimited"] and result["limits"]["role"]["short_by"] == 0


def test_exact_fit_is_not_short():
    assert headroom(role_limit=40)["ok"]


@pytest.mark.parametrize("log_statement, duration, all_logged, some_logged", [
    ("all", "-1", True, True),
    ("none", "0", True, True),
    ("none", "-1", False, False),
    ("none", "500", False, True),
    ("mod", "-1", False, True),
    ("ddl", "-1", False, True),
])
def test_query_logging_counts_as_enabled_only_when_every_statement_is_logged(
        log_statement, duration, all_logged, some_logged):
    state = core.query_logging_state(log_statement, duration)
    assert (state["all_statements_logged"], state["some_statements_logged"]) == (all_logged,
                                                                                  some_logged)


# ---------------------------------------------------------------------------
# Pool: min at start, growth to max, wait-with-timeout, reaping
# ---------------------------------------------------------------------------

def test_pool_opens_its_minimum_at_start():
    factory = FakeFactory()
    pool = make_pool(factory, min_size=2).open()
    assert len(factory.opened) == 2 and pool.stats()["idle"] == 2


def test_pool_grows_to_max_with_all_connections_held():
    factory = FakeFactory()
    pool = make_pool(factory, min_size=2, max_size=4).open()
    held = [pool.getconn() for _ in range(4)]
    assert len({id(c) for c in held}) == 4 and len(factory.opened) == 4
    assert pool.stats() == {"size": 4, "idle": 0, "in_use": 4, "opened": 4, "reaped": 0}


def test_exhausted_pool_waits_then_raises_pool_timeout_without_opening_more():
    factory = FakeFactory()
    pool = make_pool(factory, max_size=2).open()
    held = [pool.getconn(), pool.getconn()]
    with pytest.raises(core.PoolTimeout, match="all 2 in use"):
        pool.getconn(timeout=0.02)
    assert len(factory.opened) == 2 and len(held) == 2


# Was the pool check's 'waits then refuses beyond max' step, run on every deploy.
@pytest.mark.parametrize("timeout", [None, 0.2], ids=["acquire timeout", "explicit timeout"])
def test_request_beyond_max_waits_its_whole_timeout_then_is_refused(timeout):
    factory = FakeFactory()
    pool = make_pool(factory, min_size=2, max_size=3, acquire_timeout=0.2).open()
    held = [pool.getconn() for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(core.PoolTimeout, match="no connection free within 200 ms: all 3 in use"):
        pool.getconn(timeout=timeout)
    waited = time.monotonic() - started
    # A pool that refuses at once, or waits only a part of the timeout, fails here;
    # one that waits forever never gets here (the upper bound catches a long wait).
    assert 0.2 <= waited < 0.2 + 1.0, waited
    assert len(factory.opened) == 3 and pool.stats()["in_use"] == len(held)


# Was the pool check's 'closes idle connections' step, run on every deploy.
def test_pool_grown_to_max_and_released_is_reaped_back_to_min_after_the_idle_timeout():
    factory = FakeFactory()
    idle_timeout = 0.1
    pool = make_pool(factory, min_size=2, max_size=6, idle_timeout=idle_timeout,
                     acquire_timeout=1.0).open()
    held = [pool.getconn() for _ in range(6)]
    pool.start_reaper()
    try:
        for conn in held:
            pool.putconn(conn)
        released = time.monotonic()
        assert pool.stats()["size"] == 6
        bound = idle_timeout + 2 * core.reaper_interval(idle_timeout) + 1.0
        assert pool.wait_until_size(2, timeout=bound)
        reaped_after = time.monotonic() - released
        assert reaped_after >= idle_timeout - 0.01, reaped_after  # not before the idle timeout
        assert pool.stats() == {"size": 2, "idle": 2, "in_use": 0, "opened": 6, "reaped": 4}
        assert sum(c.closed for c in factory.opened) == 4
    finally:
        pool.close()


def test_waiting_request_gets_the_connection_another_caller_returns():
    pool = make_pool(max_size=1, min_size=0, acquire_timeout=5.0)
    first = pool.getconn()
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn()))
    waiter.start()
    pool.putconn(first)
    waiter.join(5.0)
    assert got == [first]


def test_failed_connect_frees_its_slot():
    factory = FakeFactory(fail=True)
    pool = make_pool(factory, min_size=0, max_size=1)
    with pytest.raises(OSError):
        pool.getconn()
    factory.fail = False
    assert pool.getconn() is factory.opened[0]
    assert pool.stats()["size"] == 1


def test_pool_hands_out_the_most_recently_returned_connection_first():
    pool = make_pool(min_size=0, max_size=3)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    assert pool.getconn() is b


def test_returning_a_foreign_connection_is_refused():
    pool = make_pool()
    with pytest.raises(ValueError):
        pool.putconn(FakeConn(99))


def test_discarded_connection_is_closed_and_frees_its_slot():
    pool = make_pool(min_size=0, max_size=1)
    conn = pool.getconn()
    pool.putconn(conn, discard=True)
    assert conn.closed and pool.stats()["size"] == 0


def grown_and_released(clock, min_size=2, max_size=5, idle_timeout=1.0):
    factory = FakeFactory()
    pool = make_pool(factory, min_size, max_size, idle_timeout, clock=clock).open()
    held = [pool.getconn() for _ in range(max_size)]
    for conn in held:
        pool.putconn(conn)
    return pool, factory


def test_connections_idle_longer_than_the_idle_timeout_are_closed_down_to_min():
    clock = FakeClock()
    pool, factory = grown_and_released(clock)
    clock.now += 1.0
    assert pool.reap_idle() == 3
    assert pool.stats()["size"] == 2
    assert sum(c.closed for c in factory.opened) == 3


def test_connections_idle_shorter_than_the_idle_timeout_stay_open():
    clock = FakeClock()
    pool, factory = grown_and_released(clock)
    clock.now += 0.999
    assert pool.reap_idle() == 0 and pool.stats()["size"] == 5


def test_reaping_closes_the_longest_idle_first():
    clock = FakeClock()
    pool = make_pool(min_size=0, max_size=2, idle_timeout=1.0, clock=clock)
    old, new = pool.getconn(), pool.getconn()
    pool.putconn(old)
    clock.now += 0.5
    pool.putconn(new)
    clock.now += 0.6
    assert pool.reap_idle() == 1 and old.closed and not new.closed


def test_reaping_never_touches_borrowed_connections():
    clock = FakeClock()
    pool = make_pool(min_size=0, max_size=2, idle_timeout=1.0, clock=clock)
    borrowed = pool.getconn()
    clock.now += 10
    assert pool.reap_idle() == 0 and not borrowed.closed


def test_min_zero_pool_reaps_everything_idle():
    clock = FakeClock()
    pool, _ = grown_and_released(clock, min_size=0, max_size=3)
    clock.now += 1.0
    assert pool.reap_idle() == 3 and pool.stats()["size"] == 0


def test_background_reaper_closes_idle_connections_by_itself():
    pool = make_pool(min_size=1, max_size=3, idle_timeout=0.02, acquire_timeout=1.0).open()
    held = [pool.getconn() for _ in range(3)]
    for conn in held:
        pool.putconn(conn)
    pool.start_reaper()
    try:
        assert pool.wait_until_size(1, timeout=5.0)
    finally:
        pool.close()


def test_reaped_slot_lets_a_waiting_request_open_a_new_connection():
    clock = FakeClock()
    factory = FakeFactory()
    pool = make_pool(factory, min_size=0, max_size=1, idle_timeout=1.0, clock=clock)
    pool.putconn(pool.getconn())
    clock.now += 1.0
    pool.reap_idle()
    assert pool.getconn() is factory.opened[1]


def test_closing_the_pool_closes_idle_and_borrowed_connections():
    factory = FakeFactory()
    pool = make_pool(factory, min_size=2, max_size=3).open()
    pool.getconn()
    pool.close()
    assert all(c.closed for c in factory.opened)
    with pytest.raises(core.PoolClosed):
        pool.getconn()


@pytest.mark.parametrize("min_size, max_size, idle, acquire", [
    (3, 2, 1.0, 1.0), (0, 0, 1.0, 1.0), (-1, 2, 1.0, 1.0), (0, 2, 0, 1.0), (0, 2, 1.0, -1),
])
def test_pool_refuses_impossible_settings(min_size, max_size, idle, acquire):
    with pytest.raises(ValueError):
        core.Pool(FakeFactory(), min_size, max_size, idle, acquire)


@pytest.mark.parametrize("idle_timeout, interval", [(30.0, 1.0), (0.25, 0.0625), (0.01, 0.01)])
def test_reaper_looks_a_quarter_of_the_idle_timeout_between_10_ms_and_1_s(idle_timeout, interval):
    assert core.reaper_interval(idle_timeout) == pytest.approx(interval)


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "/var/run/postgresql"])
def test_addresses_and_socket_directories_need_no_lookup(host):
    assert core.resolve_host(host, 5432, deadline=0) is None


def test_application_name_is_tagged_per_run_and_fits_postgres_limit():
    name = core.tagged_application_name("x" * core.APPLICATION_NAME_MAX)
    assert len(name) <= 63 and name != core.tagged_application_name("x")


def test_connection_parameters_never_leak_options_libpq_does_not_know():
    params = core.connection_params(dict(VALID, login_db="db", login_user="u",
                                         login_password="p", ssl_mode="prefer"))
    assert set(params) == {"host", "port", "dbname", "user", "password", "sslmode"}


# ---------------------------------------------------------------------------
# The Ansible wrapper's defaults (its documentation: tests/unit/test_module_docs.py)
# ---------------------------------------------------------------------------

def _module_argument_spec():
    spec = importlib.util.spec_from_file_location("pg_health_module", str(MODULE_PATH))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.argument_spec()


def test_module_defaults_pass_validation():
    spec = _module_argument_spec()
    defaults = dict((name, option.get("default")) for name, option in spec.items())
    assert core.validate_options(defaults) == []


@pytest.mark.parametrize("option", ["login_user", "login_db", "login_password"])
def test_module_has_no_default_role_database_or_password(option):
    spec = _module_argument_spec()[option]
    assert spec.get("required") is True and spec.get("default") is None


@pytest.mark.parametrize("host, shown", [("", "(default socket)"),
                                         ("/nonexistent-socket-dir", "/nonexistent-socket-dir")])
def test_socket_host_that_nothing_listens_on_is_reported_down_naming_it(host, shown):
    result = core.run_checks(dict(VALID, login_host=host, login_port=1, login_user="u",
                                  login_db="d", login_password="p", connect_timeout_ms=500))
    assert result["is_available"] is False and result["health"] == core.HEALTH_DOWN
    assert result["reason"].startswith("connection to %s port 1 as u failed: " % shown)


# --- WAL archiving (archiver_state) -------------------------------------------------

ARCHIVING_ON = {"archive_mode": "on", "archive_timeout": "60", "wal_segment_size": str(16 * 1024 * 1024)}


def _archiver_row(**changes):
    row = {"archived_count": 5, "last_archived_wal": "000000010000000000000005",
           "last_archived_time": "2026-12-01T17:00:00+00:00", "failed_count": 0,
           "last_failed_wal": None, "last_failed_time": None, "age_s": 10.0,
           "failed_after_archived": False, "current_lsn": "0/6000000"}
    row.update(changes)
    return row


def test_archiving_off_reports_only_that():
    from pg_health_core import archiver_state
    assert archiver_state(_archiver_row(), {"archive_mode": "off"}) == {"enabled": False, "warnings": []}


def test_a_recent_archive_gives_no_warning_and_no_pending_wal():
    from pg_health_core import archiver_state
    state = archiver_state(_archiver_row(), ARCHIVING_ON)
    assert state["warnings"] == []
    assert state["unarchived_bytes"] == 0
    assert state["last_archived_age_s"] == 10.0


def test_an_idle_server_with_an_old_archive_and_nothing_pending_is_not_warned_about():
    from pg_health_core import archiver_state
    assert archiver_state(_archiver_row(age_s=900.0), ARCHIVING_ON)["warnings"] == []


def test_wal_waiting_longer_than_twice_archive_timeout_is_warned_about():
    from pg_health_core import archiver_state
    state = archiver_state(_archiver_row(age_s=121.0, current_lsn="0/6000100"), ARCHIVING_ON)
    assert state["unarchived_bytes"] == 0x100
    assert len(state["warnings"]) == 1
    assert "more than twice archive_timeout (60 s)" in state["warnings"][0]
    # Exactly twice is still within the promise.
    assert archiver_state(_archiver_row(age_s=120.0, current_lsn="0/6000100"), ARCHIVING_ON)["warnings"] == []


def test_segments_across_a_log_id_boundary_are_counted():
    from pg_health_core import archiver_state
    state = archiver_state(_archiver_row(last_archived_wal="0000000100000000000000FF",
                                         current_lsn="1/2000000"), ARCHIVING_ON)
    assert state["unarchived_bytes"] == 0x2000000


def test_a_failure_after_the_last_success_is_warned_about_naming_the_wal():
    from pg_health_core import archiver_state
    state = archiver_state(_archiver_row(failed_count=3, last_failed_wal="000000010000000000000006",
                                         last_failed_time="2026-12-01T17:01:00+00:00",
                                         failed_after_archived=True), ARCHIVING_ON)
    assert len(state["warnings"]) == 1
    assert "3 failed attempt(s)" in state["warnings"][0]
    assert "000000010000000000000006" in state["warnings"][0]


# ---------------------------------------------------------------------------
# A pooler (PgBouncer) in front of the server (issue 14)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ({"pooler": "pgpool"}, "pooler='pgpool' is not one of: none, pgbouncer"),
    ({"pooler": "pgbouncer"}, "pooler=pgbouncer needs pooler_server_connections"),
    ({"pooler": "pgbouncer", "pooler_server_connections": 0},
     "pooler_server_connections=0 is out of range: allowed 1 to 10000"),
])
def test_a_bad_pooler_option_is_refused_naming_the_value(override, expected):
    errors = core.validate_options(dict(VALID, **override))
    assert any(expected in error for error in errors), errors


def test_with_pgbouncer_the_headroom_is_its_pool_not_every_instance(monkeypatch):
    def probe(params, connect_timeout_ms, extensions, application_name, clock):
        return {"is_available": True, "role": "app", "database": "db", "extensions_missing": [],
                "_limits": {"settings": PG15_SETTINGS, "role_conn_limit": 30, "db_conn_limit": -1}}

    monkeypatch.setattr(core, "probe_health", probe)
    opts = dict(VALID, login_user="app", login_db="db", pool_max=20, app_instances=10, pool_check=False)
    assert core.run_checks(dict(opts, pooler="pgbouncer", pooler_server_connections=25))["problems"] == []
    assert core.run_checks(dict(opts, pooler="pgbouncer", pooler_server_connections=31))["problems"] == [
        "role limit 30 is short by 1 for PgBouncer's pool + reserve for app = 31"]
    assert "role limit 30 is short by 170 for 10 app instance(s) x pool max 20 = 200" \
        in core.run_checks(opts)["problems"]


POOLS = [
    {"database": "pgbouncer", "user": "pgbouncer", "cl_active": 1, "cl_waiting": 0, "sv_active": 0,
     "sv_idle": 0, "sv_used": 0, "sv_tested": 0, "sv_login": 0, "maxwait": 0, "maxwait_us": 0,
     "pool_mode": "statement"},
    {"database": "db", "user": "auth", "cl_active": 0, "cl_waiting": 0, "sv_active": 0,
     "sv_idle": 1, "sv_used": 0, "sv_tested": 0, "sv_login": 0, "maxwait": 0, "maxwait_us": 0,
     "pool_mode": "transaction"},
    {"database": "db", "user": "app", "cl_active": 480, "cl_waiting": 20, "sv_active": 25,
     "sv_idle": 0, "sv_used": 0, "sv_tested": 0, "sv_login": 0, "maxwait": 1, "maxwait_us": 250000,
     "pool_mode": "transaction"},
]
STATS = [
    {"database": "db", "total_xact_count": 1000, "total_query_count": 1200, "avg_xact_time": 1500,
     "avg_query_time": 900, "avg_wait_time": 2500},
    {"database": "pgbouncer", "total_xact_count": 3},
]


def test_summarize_pooler_counts_the_database_pools_only_and_gives_the_longest_wait():
    view = core.summarize_pooler(POOLS, STATS, "db")
    assert (view["clients_active"], view["clients_waiting"], view["server_connections"],
            view["server_active"], view["max_wait_ms"]) == (480, 20, 26, 25, 1250.0)
    assert view["users"]["app"]["pool_mode"] == "transaction"
    assert set(view["users"]) == {"auth", "app"}
    assert view["stats"] == {"total_xact_count": 1000, "total_query_count": 1200, "avg_xact_time_ms": 1.5,
                             "avg_query_time_ms": 0.9, "avg_wait_time_ms": 2.5}


def test_summarize_pooler_of_an_unknown_database_is_all_zero():
    view = core.summarize_pooler(POOLS, STATS, "other")
    assert (view["clients_active"], view["server_connections"], view["max_wait_ms"], view["users"]) == (0, 0, 0.0, {})


def test_probe_pooler_reports_a_refused_console_without_raising():
    def refuse(**kwargs):
        raise core.psycopg2.OperationalError("FATAL:  SASL authentication failed")

    result = core.probe_pooler({"host": "127.0.0.1", "port": 5432, "user": "stats", "password": "x",
                                "dbname": "pgbouncer"}, "db", 2000, connect=refuse)
    assert result == {"is_available": False, "reason": "PgBouncer's admin console at 127.0.0.1 port 5432 as stats: "
                                                        "FATAL: SASL authentication failed"}
