"""Unit tests of the pg-migrate command line: arguments, environment, masking.

No database: everything here stops before a connection (or replaces run()).
"""
import io
import os
import pathlib
import subprocess
import sys

import pytest

import pg_migrate_cli as cli

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
URL = "postgres://owner:s3cr%40t@db.example:6543/app"
ENV = {"DATABASE_URL": URL}


def parse(*argv, environ=None):
    return cli.parse_args(list(argv), ENV if environ is None else environ)


def main(*argv, environ=None):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), ENV if environ is None else environ, out, err)
    return code, out.getvalue(), err.getvalue()


# -- defaults -----------------------------------------------------------------

def test_defaults_match_node_pg_migrate():
    options = parse("up")
    assert options.action == "up"
    assert options.migrations_dir == "migrations"
    assert options.migrations_table == "pgmigrations"
    assert options.migrations_schema == "public"
    assert options.schema == "public"
    assert options.check_order is True
    assert options.dry_run is False
    assert options.allow_drift is False
    assert options.count is None and options.to is None and options.name is None
    assert options.lock_timeout == "5s"
    assert options.dsn == URL


@pytest.mark.parametrize("argv", [
    ["-m", "db/migrations", "up"],
    ["up", "-m", "db/migrations"],
    ["--migrations-dir", "db/migrations", "up"],
    ["up", "--migrations-dir=db/migrations"],
])
def test_options_before_or_after_the_subcommand(argv):
    assert parse(*argv).migrations_dir == "db/migrations"


def test_option_before_subcommand_not_reset_by_subcommand_defaults():
    options = parse("--no-check-order", "-t", "history", "--lock-timeout", "1s", "down")
    assert options.check_order is False
    assert options.migrations_table == "history"
    assert options.lock_timeout == "1s"


# -- counts and targets ---------------------------------------------------------

@pytest.mark.parametrize("argv,count", [
    (["up"], None), (["up", "2"], 2), (["up", "--count", "3"], 3),
    (["down"], None), (["down", "4"], 4), (["redo", "--count=2"], 2),
    (["up", "2", "--count", "2"], 2),
])
def test_positional_count_and_count_flag(argv, count):
    assert parse(*argv).count == count


@pytest.mark.parametrize("argv,message", [
    (["up", "0"], "at least 1"),
    (["down", "--count", "0"], "at least 1"),
    (["up", "--count", "x"], "at least 1"),
    (["up", "1", "--count", "2"], "give the count once"),
    (["up", "2", "--to", "1710000000001_a"], "exclude each other"),
    (["up", "1710000000001_a"], "--to 1710000000001_a"),
    (["status", "--count", "1"], "unrecognized arguments"),
    (["create"], "required"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
    (["create", "x", "-j", "ts"], "invalid choice"),
    (["up", "--advisory-lock-wait", "-1"], "0 or more"),
])
def test_invalid_command_lines_are_usage_errors(argv, message):
    with pytest.raises(cli.UsageError, match=message.replace("(", r"\(")):
        parse(*argv)


def test_to():
    options = parse("down", "--to", "1710000000001_initial-schema")
    assert options.to == "1710000000001_initial-schema" and options.count is None


def test_create_joins_words_like_node_pg_migrate_and_needs_no_database():
    options = parse("create", "add", "orders", "table", "-j", "sql", environ={})
    assert options.name == "add-orders-table"
    assert options.dsn is None


def test_migrations_schema_defaults_to_first_schema_as_node_pg_migrate():
    assert parse("up", "-s", "app, public").migrations_schema == "app"
    assert parse("up", "-s", "app", "--migrations-schema", "meta").migrations_schema == "meta"


# -- environment --------------------------------------------------------------

def test_database_url_var():
    environ = {"MY_DB": "postgres://a@h/d"}
    assert parse("up", "--database-url-var", "MY_DB", environ=environ).dsn == "postgres://a@h/d"
    assert parse("-d", "MY_DB", "status", environ=environ).dsn == "postgres://a@h/d"


def test_missing_url_names_the_variable():
    with pytest.raises(cli.UsageError, match=r"\$MY_DB is not set"):
        parse("up", "-d", "MY_DB", environ={})


def test_libpq_variables_when_url_is_unset():
    environ = {"PGHOST": "h", "PGUSER": "u", "PGDATABASE": "d"}
    assert parse("status", environ=environ).dsn == ""
    with pytest.raises(cli.UsageError):
        parse("status", environ={"PGHOST": "h", "PGUSER": "u"})


def test_connection_params_carry_the_url_and_no_separate_password():
    params = cli.connection_params(parse("up"))
    assert params == {"dsn": URL, "application_name": "pg-migrate-cli", "connect_timeout": 10}


# -- masking -------------------------------------------------------------------

@pytest.mark.parametrize("url,masked", [
    ("postgres://u:pw@h:5432/d", "postgres://u:****@h:5432/d"),
    ("postgresql://u:p%40w@h/d?sslmode=require", "postgresql://u:****@h/d?sslmode=require"),
    ("postgres://u:p@w/x@h/d", "postgres://u:****@h/d"),
    ("postgres://u@h/d", "postgres://u@h/d"),
    ("postgres://h/d", "postgres://h/d"),
])
def test_mask_url(url, masked):
    assert cli.mask_url(url) == masked


def test_mask_text_urls_keywords_and_secrets():
    text = ("failed for postgres://u:pw1@h/d and host=h password='a b' user=u, "
            "also password=xyz; the secret p@ss! and its encoding p%40ss%21")
    masked = cli.mask_text(text, ["p@ss!"])
    for secret in ("pw1", "a b", "xyz", "p@ss!", "p%40ss%21"):
        assert secret not in masked
    assert "postgres://u:****@h/d" in masked


def test_dsn_password():
    assert cli.dsn_password("postgres://u:p%40w@h/d") == "p@w"
    assert cli.dsn_password("host=h password=k2 user=u") == "k2"
    assert cli.dsn_password("postgres://u@h/d") is None


def test_describe_target_never_shows_the_password():
    text = cli.describe_target(URL)
    assert text == "database app on db.example:6543 as owner"
    assert "s3cr" not in cli.describe_target("postgres://u:s3cr@h:notaport/d")


# -- main ----------------------------------------------------------------------

def test_usage_error_exit_1_on_stderr():
    code, out, err = main("up", "0")
    assert code == 1 and out == ""
    assert err.startswith("pg-migrate: error: ")


def test_help_exit_0(capsys):
    code, _, _ = main("--help")
    assert code == 0
    assert "up" in capsys.readouterr().out


def test_error_message_masks_the_password(monkeypatch):
    def failing_run(options):
        raise RuntimeError("boom at %s (password s3cr@t)" % options.dsn)
    monkeypatch.setattr(cli, "run", failing_run)
    code, out, err = main("up")
    assert code == 1 and out == ""
    assert "s3cr" not in err and "****" in err


def test_connection_failure_masked_and_described():
    environ = {"DATABASE_URL": "postgres://u:hunter2@127.0.0.1:1/d"}
    code, out, err = main("status", "--connect-timeout", "2", environ=environ)
    assert code == 1 and out == ""
    assert "cannot connect to database d on 127.0.0.1:1 as u" in err
    assert "hunter2" not in err


def test_core_messages_name_cli_flags():
    assert cli.cli_message("drift ...; set allow_drift to go on anyway") == \
        "drift ...; pass --allow-drift to go on anyway"


def test_render_results():
    options = parse("up")
    lines = cli.render({"action": "up", "planned": [], "executed": [], "summary": "1 applied; 0 pending"},
                       options)
    assert lines == ["No migrations to run!", "Now: 1 applied; 0 pending"]
    dry = parse("up", "--dry-run")
    lines = cli.render({"action": "up", "executed": [], "summary": "0 applied; 1 pending",
                        "planned": [{"name": "1_a", "direction": "up", "transaction": False}]}, dry)
    assert lines[1] == "  UP 1_a (outside a transaction)"


def test_create_in_process(tmp_path):
    folder = tmp_path / "migrations"
    code, out, err = main("create", "add", "orders", "-m", str(folder), environ={})
    assert code == 0, err
    files = list(folder.iterdir())
    assert len(files) == 1 and files[0].name.endswith("_add-orders.sql")
    assert out == "Created %s\n" % files[0]
    assert "-- Up Migration" in files[0].read_text()


# -- start-up ------------------------------------------------------------------

def test_bin_script_imports_nothing_heavy_before_connecting(tmp_path):
    """--help and argument errors load neither the core, psycopg2, pglast nor ansible."""
    probe = ("import runpy, sys\n"
             "sys.argv = ['pg-migrate', '--help']\n"
             "try:\n"
             "    runpy.run_path(%r, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "heavy = [m for m in ('pg_migrate_core', 'psycopg2', 'pglast', 'ansible') if m in sys.modules]\n"
             "sys.stderr.write('HEAVY=%%s' %% heavy)\n" % str(ROOT / "bin" / "pg-migrate"))
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=dict(os.environ), check=False)
    assert "HEAVY=[]" in proc.stderr, proc.stderr


def test_core_import_does_not_load_pglast_or_ansible():
    probe = ("import sys; sys.path.insert(0, %r); import pg_migrate_core; "
             "print([m for m in ('pglast', 'ansible') if m in sys.modules])"
             % str(ROOT / "module_utils"))
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
