# -*- coding: utf-8 -*-
"""Client networks for pg_hba.conf, checked before the file is written."""
from __future__ import absolute_import, division, print_function

import ipaddress

__metaclass__ = type

DOCUMENTATION = r"""
name: postgres_invalid_cidrs
short_description: The entries of a list that are not networks in CIDR form
description:
  - Returns the entries that are not an IPv4 or IPv6 network written as C(address/prefix) with no host bits
    set beyond the prefix (what pg_hba.conf's ADDRESS field should hold), as they were given.
options:
  _input:
    description: The networks.
    type: list
    elements: raw
    required: true
"""


def invalid_cidrs(networks):
    """The entries of ``networks`` that are not ``address/prefix`` networks without host bits."""
    bad = []
    for network in networks or []:
        text = str(network)
        try:
            if "/" not in text:
                raise ValueError("no prefix length")
            ipaddress.ip_network(text, strict=True)
        except ValueError:
            bad.append(text)
    return bad


class FilterModule(object):
    def filters(self):
        return {"postgres_invalid_cidrs": invalid_cidrs}
