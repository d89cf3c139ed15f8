"""pg_hba.conf client networks are checked before they are written."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "filter_plugins"))
import postgres_cidr  # noqa: E402


@pytest.mark.parametrize("network", ["10.20.0.0/16", "192.0.2.7/32", "0.0.0.0/0", "fd00::/8", "::1/128"])
def test_a_network_in_cidr_form_is_accepted(network):
    assert postgres_cidr.invalid_cidrs([network]) == []


@pytest.mark.parametrize("network", [
    "10.20.0.1/16",     # host bits beyond the prefix
    "10.20.0.0",        # no prefix length
    "10.20.0.0/33",     # prefix too long
    "300.1.1.1/32",     # not an address
    "samenet",          # a pg_hba keyword, not a network
    "example.org/24",
    "",
])
def test_anything_else_is_reported_as_given(network):
    assert postgres_cidr.invalid_cidrs(["10.0.0.0/8", network]) == [network]
