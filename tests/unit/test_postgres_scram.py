"""SCRAM-SHA-256 verifiers computed on the control node match PostgreSQL's own."""
import base64
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "filter_plugins"))
import postgres_scram  # noqa: E402

# Made by PostgreSQL 15 (CREATE ROLE ... PASSWORD '<password>'; SELECT rolpassword FROM pg_authid).
SERVER_VERIFIERS = {
    "correct horse battery staple":
        "SCRAM-SHA-256$4096:AGwt6fEShEd4nPLGyVFCYQ==$SviojA/E0CDP4xMJ0ORTv0v2y/93o7YqHwa/fUrP3FQ=:"
        "zv+5r+cWMpJDd5SbRz74gy4m8T6vvhNgPABPPt66xS8=",
    # Non-ASCII: SASLprep maps the circled digit to a plain 1 first.
    "pässwörd \u2460":
        "SCRAM-SHA-256$4096:gcIqAYnz9hAjDCQw2T/QPQ==$xDXH6JbPkG8gN4oEI4uMZ2gGbkV64SKE6k94nrh5NTg=:"
        "NJYTh7/oAbQChtwbpO3lvxSFFEFdPv+g3JP8M5sX2DY=",
}


@pytest.mark.parametrize("password, verifier", SERVER_VERIFIERS.items(), ids=["ascii", "saslprep"])
def test_the_same_salt_gives_the_servers_verifier(password, verifier):
    salt = base64.b64decode(verifier.split("$")[1].split(":")[1])
    assert postgres_scram.build_verifier(password, salt=salt) == verifier


@pytest.mark.parametrize("password, verifier", SERVER_VERIFIERS.items(), ids=["ascii", "saslprep"])
def test_a_matching_verifier_is_kept_as_it_is(password, verifier):
    assert postgres_scram.scram_verifier(password, verifier) == verifier


@pytest.mark.parametrize("current", [
    SERVER_VERIFIERS["correct horse battery staple"],  # another password's verifier
    "md5" + "0" * 32,                                  # an old md5 hash
    "",                                                 # no password yet
    None,
], ids=["other password", "md5", "empty", "none"])
def test_a_new_password_gets_a_new_verifier_with_a_random_salt(current):
    first = postgres_scram.scram_verifier("a new password", current)
    second = postgres_scram.scram_verifier("a new password", current)
    assert first != current and first.startswith("SCRAM-SHA-256$4096:")
    assert postgres_scram.verifier_matches("a new password", first)
    assert first != second  # fresh salt each time


def test_the_cleartext_is_not_in_the_verifier():
    assert "a new password" not in postgres_scram.build_verifier("a new password")


def test_an_empty_password_is_refused():
    with pytest.raises(ValueError, match="non-empty password"):
        postgres_scram.scram_verifier("", None)
