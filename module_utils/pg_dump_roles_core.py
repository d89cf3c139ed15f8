# -*- coding: utf-8 -*-
"""Which roles the SQL of a pg_dump archive refers to, read with PostgreSQL's
own parser (pglast, libpg_query).

A dump of one database holds grants to roles and objects owned by roles,
never the roles themselves: they belong to the whole server. Restored into a
server where one of them is missing (after a reset, or on another machine),
the dump fails. The restore creates those roles first; this finds them.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

try:
    from pglast import parse_sql
    from pglast.enums import RoleSpecType
    from pglast.parser import ParseError  # noqa: F401 (the module catches it as core.ParseError)
    from pglast.visitors import Visitor
except ImportError:  # reported by the module
    parse_sql = None
    Visitor = object

# pg_restore's script brackets the SQL with psql meta-commands (\restrict and
# \unrestrict since 15.14; \connect with --create): psql runs them, the parser
# does not know them. pg_restore writes them on lines of their own.
META_COMMAND = re.compile(r"^\\[a-z]+\b.*$", re.MULTILINE)


class RoleNames(Visitor):
    """Every role named in the grammar is a RoleSpec: GRANT and REVOKE
    grantees, OWNER TO, AUTHORIZATION, FOR ROLE, policies, user mappings."""

    def __init__(self):
        super(RoleNames, self).__init__()
        self.names = set()

    def visit_RoleSpec(self, ancestors, node):
        if node.roletype == RoleSpecType.ROLESPEC_CSTRING:
            self.names.add(node.rolename)


def referenced_roles(sql):
    """The sorted names of the roles the SQL names. PUBLIC, CURRENT_USER and
    the like are no role to create and are left out. Raises ParseError."""
    visitor = RoleNames()
    visitor(parse_sql(META_COMMAND.sub("", sql)))
    return sorted(visitor.names)
