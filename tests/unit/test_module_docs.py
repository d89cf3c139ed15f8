"""Every module in library/ documents exactly the options it accepts.

The documentation is read the way users see it: `ansible-doc --json` with
the project's ansible.cfg, so doc fragments (doc_fragment_plugins =
doc_fragments) are merged by Ansible itself. The argument_spec comes from
the module's own `argument_spec()`. Names, aliases, types, elements,
defaults, choices, required and no_log must agree.
"""
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "library"
MODULES = sorted(p.stem for p in LIBRARY.glob("*.py") if not p.name.startswith("_"))
ANSIBLE_DOC = pathlib.Path(sys.executable).parent / "ansible-doc"
# The documentation says an option is no_log in its description.
NO_LOG_WORDS = re.compile(r"\bno_log\b")


@pytest.fixture(scope="module")
def docs():
    """`ansible-doc --json` of every module, as from the repository root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(ANSIBLE_DOC), "--json", "-M", str(LIBRARY), *MODULES],
                          cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def argument_spec(module_name):
    spec = importlib.util.spec_from_file_location("module_" + module_name,
                                                  str(LIBRARY / (module_name + ".py")))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.argument_spec()


def descriptions(doc):
    text = doc.get("description") or []
    return " ".join([text] if isinstance(text, str) else text)


def test_every_module_is_covered():
    assert MODULES == ["pg_dump_roles", "pg_health", "pg_migrate"]


@pytest.mark.parametrize("module_name", MODULES)
def test_documented_options_match_the_argument_spec(docs, module_name):
    documented = docs[module_name]["doc"]["options"]
    spec = argument_spec(module_name)
    assert sorted(documented) == sorted(spec)
    for name, option in spec.items():
        doc = documented[name]
        where = "%s: option %s" % (module_name, name)
        assert doc.get("type", "str") == option.get("type", "str"), where
        assert doc.get("elements") == option.get("elements"), where
        assert doc.get("default") == option.get("default"), where
        assert doc.get("choices") == option.get("choices"), where
        assert bool(doc.get("required")) == bool(option.get("required")), where
        assert sorted(doc.get("aliases") or []) == sorted(option.get("aliases") or []), where
        assert bool(NO_LOG_WORDS.search(descriptions(doc))) == bool(option.get("no_log")), where
        assert descriptions(doc).strip(), where


# Modules that log in to PostgreSQL (pg_dump_roles only runs pg_restore in a container).
@pytest.mark.parametrize("module_name", ["pg_health", "pg_migrate"])
def test_connection_options_come_from_the_shared_base(module_name):
    source = (LIBRARY / (module_name + ".py")).read_text()
    assert "extends_documentation_fragment:\n  - postgres_connection\n" in source
    assert "connection_argument_spec(" in source


@pytest.mark.parametrize("module_name", MODULES)
@pytest.mark.parametrize("section", ["examples", "return"])
def test_examples_and_return_blocks_render_and_are_yaml(docs, module_name, section):
    text = docs[module_name][section]
    assert text
    if isinstance(text, str):
        assert yaml.safe_load(text)


@pytest.mark.parametrize("module_name", MODULES)
def test_no_option_defaults_to_an_application_name(module_name):
    """Roles and databases of the app come from the inventory, never from a module."""
    for name, option in argument_spec(module_name).items():
        assert "social_selling" not in repr(option.get("default")), (module_name, name)
