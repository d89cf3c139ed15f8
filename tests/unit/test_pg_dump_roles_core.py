"""Unit tests of pg_dump_roles_core: the roles that a dump's SQL names."""
import pytest

import pg_dump_roles_core as core


def test_grantees_owners_and_every_other_place_a_role_is_named():
    sql = """
GRANT SELECT ON TABLE public.t TO "Mixed Case", bob;
GRANT ALL ON FUNCTION pgbouncer.user_lookup(text) TO pgbouncer_auth;
ALTER TABLE public.t OWNER TO alice;
ALTER FUNCTION public.f(text) OWNER TO gina;
ALTER DEFAULT PRIVILEGES FOR ROLE carol IN SCHEMA public GRANT SELECT ON TABLES TO dave;
CREATE SCHEMA x AUTHORIZATION erin;
CREATE POLICY p ON public.t TO frank USING (true);
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO CURRENT_USER;
"""
    assert core.referenced_roles(sql) == ["Mixed Case", "alice", "bob", "carol", "dave", "erin", "frank",
                                          "gina", "pgbouncer_auth"]


def test_pg_restore_meta_commands_are_skipped_and_names_inside_bodies_are_not_roles():
    sql = """\\restrict AbCdEf123
SET statement_timeout = 0;
CREATE FUNCTION public.g() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE 'GRANT SELECT ON t TO not_a_dump_role';
END $$;
ALTER FUNCTION public.g() OWNER TO app_owner;
\\unrestrict AbCdEf123
"""
    assert core.referenced_roles(sql) == ["app_owner"]


def test_a_dump_with_no_role_names_none():
    assert core.referenced_roles("CREATE TABLE t (id int);") == []


def test_sql_the_parser_refuses_raises_its_error():
    with pytest.raises(core.ParseError):
        core.referenced_roles("GRANT SELECT ON TO;")
