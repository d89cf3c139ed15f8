#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible wrapper of module_utils/pg_dump_roles_core.py (the parsing lives there)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_dump_roles
short_description: List the roles a pg_dump archive grants to or makes owners
description:
  - >-
    A dump of one database holds grants to roles and objects owned by roles, but not the
    roles: they belong to the whole server. This module reads the archive's schema with
    C(pg_restore --schema-only) inside a container and returns every role the SQL names
    (grantees, owners, C(AUTHORIZATION), C(FOR ROLE), policies), as PostgreSQL's own parser
    (pglast) reads it.
  - >-
    Archives encrypted with age are decrypted on the fly with O(identity), which reaches
    C(age) through a pipe, never a file or a command line. Nothing decrypted is written to
    disk.
  - It is read-only and runs in check mode too.
version_added: "1.1.0"
options:
  path:
    description: The pg_dump archive (custom format), plain or encrypted with age.
    type: path
    required: true
  container:
    description: The running container whose C(pg_restore) reads the archive.
    type: str
    required: true
  identity:
    description: The age identity that decrypts an encrypted archive. Never printed (C(no_log)).
    type: str
    default: ''
requirements:
  - pglast
  - age, for an encrypted archive
  - docker
author:
  - Social Selling platform team
'''

EXAMPLES = r'''
- name: Read the roles the dump refers to
  pg_dump_roles:
    path: /var/backups/social-selling-postgres/social_selling-20261201T120000Z-manual.dump
    container: social_selling_postgres
    identity: "{{ backup_age_identity }}"
  register: dump_roles
'''

RETURN = r'''
roles:
  description: The names of the roles the archive's SQL names, sorted; PUBLIC and CURRENT_USER left out.
  returned: always
  type: list
  elements: str
  sample: [pgbouncer_auth, social_selling_app, social_selling_owner]
'''

import os
import subprocess
import sys

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils import pg_dump_roles_core as core
except ImportError:
    # Only when this file is imported bare, outside Ansible (unit tests).
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    os.pardir, 'module_utils'))
    import pg_dump_roles_core as core  # noqa: E402

AGE_HEADER = b"age-encryption.org/v1"


def argument_spec():
    return dict(
        path=dict(type="path", required=True),
        container=dict(type="str", required=True),
        identity=dict(type="str", default="", no_log=True),
    )


def schema_sql(path, container, identity):
    """pg_restore's script of the archive's schema, decrypted through a pipe when needed."""
    # pg_restore stops reading once it has the schema: the rest of the stream is
    # drained, or the decryption would die of SIGPIPE.
    restore = ["docker", "exec", "-i", container, "sh", "-c", "pg_restore --schema-only --file=- && cat > /dev/null"]
    with open(path, "rb") as archive:
        encrypted = archive.read(len(AGE_HEADER)) == AGE_HEADER
    if not encrypted:
        with open(path, "rb") as archive:
            done = subprocess.run(restore, stdin=archive, capture_output=True, check=False)
        return done.returncode, done.stdout, done.stderr
    if not identity:
        return 1, b"", b"it is encrypted and no age identity was given"
    key_read, key_write = os.pipe()
    os.write(key_write, identity.encode() + b"\n")
    os.close(key_write)
    try:
        decrypt = subprocess.Popen(["age", "--decrypt", "--identity", "/dev/fd/%d" % key_read, path],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(key_read,))
    finally:
        os.close(key_read)
    done = subprocess.run(restore, stdin=decrypt.stdout, capture_output=True, check=False)
    decrypt.stdout.close()
    age_error = decrypt.stderr.read()
    if decrypt.wait() != 0:
        return decrypt.returncode, b"", b"it could not be decrypted with the age identity given: " + age_error
    return done.returncode, done.stdout, done.stderr


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if core.parse_sql is None:
        module.fail_json(msg="The Python library pglast is missing where this module runs: pip install pglast")
    params = module.params
    rc, out, err = schema_sql(params["path"], params["container"], params["identity"])
    if rc != 0:
        module.fail_json(msg="The schema of %s could not be read (pg_restore in the container %s): %s. "
                             "Nothing was changed." % (params["path"], params["container"],
                                                       err.decode("utf-8", "replace").strip()))
    try:
        roles = core.referenced_roles(out.decode("utf-8"))
    except core.ParseError as error:
        module.fail_json(msg="PostgreSQL's parser (pglast) did not read the schema of %s: %s" % (params["path"], error))
    module.exit_json(changed=False, roles=roles)


if __name__ == "__main__":
    main()
