# -*- coding: utf-8 -*-
"""The recovery target of a point-in-time restore, checked before anything changes."""
from __future__ import absolute_import, division, print_function

import datetime
import re

__metaclass__ = type

DOCUMENTATION = r"""
name: pgbackrest_target_time
short_description: Parses the recovery target of a point-in-time restore
description:
  - Accepts C(latest), or a date and time with a time zone offset, as PostgreSQL prints C(now())
    (C(2026-11-27 15:01:59+00), C(2026-11-27 15:01:59.123456+01:00), C(2026-11-27T15:01:59Z)).
  - Returns a dict with C(error) (null when the input is valid), C(latest) (bool), C(epoch) (seconds, float)
    and C(text) (the instant in UTC, as pgBackRest's C(--target) takes it).
options:
  _input:
    description: The target as the operator wrote it.
    type: raw
    required: true
"""

_FORMAT = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(\.\d{1,6})?\s*(Z|[+-]\d{2}(?::?\d{2})?)$")
ALLOWED = ("'latest', or a date and time with its time zone offset such as "
           "'2026-11-27 15:01:59+00' or '2026-11-27T15:01:59.5+01:00'")


def target_time(value):
    """The target as a dict: error, latest, epoch, text (UTC, microseconds)."""
    text = str(value if value is not None else "").strip()
    if text == "latest":
        return {"error": None, "latest": True, "epoch": None, "text": "latest"}
    match = _FORMAT.match(text)
    if not match:
        return {"error": "restore_target_time %r is not %s" % (text, ALLOWED),
                "latest": False, "epoch": None, "text": None}
    date, clock, fraction, zone = match.groups()
    if zone == "Z":
        zone = "+00:00"
    elif len(zone) == 3:
        zone += ":00"
    elif ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    fraction = (fraction or ".0")[1:].ljust(6, "0")
    try:
        instant = datetime.datetime.fromisoformat("%sT%s.%s%s" % (date, clock, fraction, zone))
    except ValueError as error:
        return {"error": "restore_target_time %r is not a real date and time (%s); allowed: %s"
                         % (text, error, ALLOWED),
                "latest": False, "epoch": None, "text": None}
    utc = instant.astimezone(datetime.timezone.utc)
    return {"error": None, "latest": False, "epoch": utc.timestamp(),
            "text": utc.strftime("%Y-%m-%d %H:%M:%S.%f+00")}


class FilterModule(object):
    def filters(self):
        return {"pgbackrest_target_time": target_time}
