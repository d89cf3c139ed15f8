"""The recovery target parser of point-in-time restores (filter_plugins/pgbackrest_target.py)."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "filter_plugins"))
from pgbackrest_target import target_time  # noqa: E402


@pytest.mark.parametrize("given, utc_text, epoch", [
    ("2026-11-27 15:01:59+00", "2026-11-27 15:01:59.000000+00", 1795791719.0),
    ("2026-11-27 16:01:59+01", "2026-11-27 15:01:59.000000+00", 1795791719.0),
    ("2026-11-27T10:31:59.25-04:30", "2026-11-27 15:01:59.250000+00", 1795791719.25),
    ("2026-11-27 15:01:59.123456Z", "2026-11-27 15:01:59.123456+00", 1795791719.123456),
    ("2026-11-27 15:01:59+0000", "2026-11-27 15:01:59.000000+00", 1795791719.0),
])
def test_a_time_with_its_offset_becomes_the_same_instant_in_utc(given, utc_text, epoch):
    parsed = target_time(given)
    assert parsed["error"] is None
    assert parsed["text"] == utc_text
    assert parsed["epoch"] == pytest.approx(epoch)
    assert parsed["latest"] is False


def test_latest_means_everything_archived():
    assert target_time("latest") == {"error": None, "latest": True, "epoch": None, "text": "latest"}


@pytest.mark.parametrize("given", [
    "2026-11-27 15:01:59",          # no time zone: ambiguous
    "yesterday",
    "2026-11-27",
    "",
    None,
    "2026-11-27 15:01:59+00; rm -rf /",
    "27/11/2026 15:01:59+00",
])
def test_malformed_targets_are_refused_naming_the_value_and_the_form(given):
    parsed = target_time(given)
    assert parsed["text"] is None
    assert repr(str(given if given is not None else "")) in parsed["error"]
    assert "'latest'" in parsed["error"]


def test_an_impossible_date_is_refused():
    parsed = target_time("2026-02-30 10:00:00+00")
    assert parsed["text"] is None and "not a real date" in parsed["error"]
