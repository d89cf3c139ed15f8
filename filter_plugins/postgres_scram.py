# -*- coding: utf-8 -*-
"""SCRAM-SHA-256 verifiers computed on the control node.

PostgreSQL stores a password given in the ``SCRAM-SHA-256$<iterations>:<salt>$
<StoredKey>:<ServerKey>`` form as it is (``password_encryption`` does not
apply), so the cleartext never has to reach the server, its statement log or
pg_stat_statements. The verifier is computed here, on the control node, as
PostgreSQL's own ``pg_be_scram_build_secret`` does (RFC 5802/7677, SASLprep).

To stay idempotent, a verifier that already matches the password is kept as
it is (same salt); only a new password gets a new random salt.
"""
from __future__ import absolute_import, division, print_function

import base64
import hashlib
import hmac
import os
import re

__metaclass__ = type

DOCUMENTATION = r"""
name: postgres_scram_verifier
short_description: SCRAM-SHA-256 verifier of a password, for PostgreSQL's rolpassword
description:
  - Returns C(current) when it is a SCRAM-SHA-256 verifier of the password, else a new verifier with a random salt.
options:
  _input:
    description: The password in clear.
    type: string
    required: true
  current:
    description: The role's stored verifier (pg_authid.rolpassword), or nothing.
    type: string
"""

VERIFIER_RE = re.compile(
    r"^SCRAM-SHA-256\$(?P<iterations>\d+):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored_key>[A-Za-z0-9+/=]+):(?P<server_key>[A-Za-z0-9+/=]+)$")
#: PostgreSQL's SCRAM_DEFAULT_ITERATIONS and SCRAM_DEFAULT_SALT_LEN.
ITERATIONS = 4096
SALT_LENGTH = 16


def _normalize(password):
    """SASLprep as PostgreSQL applies it: the raw bytes when the password is not valid for it."""
    try:
        from ansible_collections.community.postgresql.plugins.module_utils.saslprep import saslprep
        return saslprep(password).encode("utf-8")
    except Exception:  # prohibited characters, or the collection is absent: PostgreSQL also falls back
        return password.encode("utf-8")


def _salted_keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", _normalize(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def build_verifier(password, salt=None, iterations=ITERATIONS):
    """The rolpassword PostgreSQL would store for ``password``."""
    if salt is None:
        salt = os.urandom(SALT_LENGTH)
    stored_key, server_key = _salted_keys(password, salt, iterations)
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, b64(salt), b64(stored_key), b64(server_key))


def verifier_matches(password, verifier):
    """True when ``verifier`` is a SCRAM-SHA-256 verifier of ``password``."""
    match = VERIFIER_RE.match(verifier or "")
    if not match:
        return False
    salt = base64.b64decode(match.group("salt"))
    stored_key, server_key = _salted_keys(password, salt, int(match.group("iterations")))
    return (hmac.compare_digest(stored_key, base64.b64decode(match.group("stored_key")))
            and hmac.compare_digest(server_key, base64.b64decode(match.group("server_key"))))


def scram_verifier(password, current=None):
    """Filter: ``current`` when it already verifies ``password``, else a new verifier."""
    if not isinstance(password, str) or not password:
        raise ValueError("postgres_scram_verifier needs a non-empty password")
    if current and verifier_matches(password, current):
        return current
    return build_verifier(password)


class FilterModule(object):
    def filters(self):
        return {"postgres_scram_verifier": scram_verifier}
