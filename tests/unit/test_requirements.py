"""requirements.yml pins the collections at the versions the PyPI bundle carries."""
import json
import pathlib
import re

import pytest
import yaml
from ansible_collections import community  # noqa: F401  (the bundle from requirements.txt)

ROOT = pathlib.Path(__file__).resolve().parents[2]
COLLECTIONS = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]


def installed_version(name):
    namespace, collection = name.split(".")
    manifest = pathlib.Path(community.__path__[0]).parent / namespace / collection / "MANIFEST.json"
    return json.loads(manifest.read_text())["collection_info"]["version"]


def test_requirements_txt_pins_the_bundle_that_carries_them():
    assert re.search(r"^ansible==\d+\.\d+\.\d+$", (ROOT / "requirements.txt").read_text(), re.M)


@pytest.mark.parametrize("entry", COLLECTIONS, ids=[c["name"] for c in COLLECTIONS])
def test_each_collection_is_pinned_to_the_bundled_version(entry):
    assert entry["version"] == installed_version(entry["name"])


def test_every_collection_the_code_calls_is_listed():
    used = set()
    for path in list(ROOT.glob("roles/**/*.yml")) + list(ROOT.glob("playbooks/**/*.yml")):
        used |= set(re.findall(r"\b(community\.[a-z_]+|ansible\.(?!builtin)[a-z_]+)\.[a-z_]+:", path.read_text()))
    assert used <= {c["name"] for c in COLLECTIONS}, used
