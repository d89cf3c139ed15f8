"""The README's acceptance table names tests that exist.

Each row of "Acceptance criteria of INFRA-003" names test files
(`tests/.../test_x.py`, optionally `::test_name`) and test functions
(`test_...`, belonging to the file named before them in the same cell). The
files must exist and the functions be defined in them (collected with ast, so
nothing is imported or run). A row that proves its criterion with something
other than the seed's own command must say so ("stand-in").
"""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def acceptance_rows(text=None):
    """[(number, criterion, proved_by)] from the table under the acceptance heading."""
    text = README.read_text() if text is None else text
    section = text.split("## Acceptance criteria of INFRA-003", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], cells[2]))
    return rows


def named_tests(cell):
    """[(file, test name or None)] in the order the cell names them."""
    named, current = [], None
    for token in re.findall(r"`([^`]+)`", cell):
        match = re.fullmatch(r"(tests/[\w/]+\.py)(?:::(\w+))?", token)
        if match:
            current = match.group(1)
            named.append((current, match.group(2)))
        elif re.fullmatch(r"test_\w+", token):
            named.append((current, token))
    return named


def defined_tests(path):
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


ROWS = acceptance_rows()


def test_the_table_has_the_seeds_thirteen_criteria():
    assert [number for number, _, _ in ROWS] == list(range(1, 14))


@pytest.mark.parametrize("number, criterion, proved_by", ROWS, ids=[str(row[0]) for row in ROWS])
def test_every_named_test_exists(number, criterion, proved_by):
    named = named_tests(proved_by)
    assert any(path for path, _ in named), f"row {number} names no test file"
    for path, name in named:
        assert path is not None, f"row {number}: `{name}` follows no test file"
        assert (ROOT / path).is_file(), f"row {number}: {path} does not exist"
        if name:
            assert name in defined_tests(path), f"row {number}: {path} defines no {name}"


@pytest.mark.parametrize("number, criterion, proved_by", ROWS, ids=[str(row[0]) for row in ROWS])
def test_a_row_proved_without_the_seeds_own_command_says_stand_in(number, criterion, proved_by):
    """Criteria naming an `npm run` script are proved by our playbooks, which stand in for it."""
    if "npm run" in criterion or "endpoint" in criterion:
        assert "stand-in" in proved_by, f"row {number} does not say what stands in for the seed's command"


def test_the_parser_catches_a_wrong_name():
    text = ("## Acceptance criteria of INFRA-003\n\n| # | c | p |\n|---|---|---|\n"
            "| 2 | x | `tests/integration/test_bootstrap.py::test_seed_step_2_query_as_the_app_role_lists_the_extensions`, "
            "`test_pg_stat_statements_returns_rows` |\n")
    [(number, _, cell)] = acceptance_rows(text)
    missing = [name for path, name in named_tests(cell) if name and name not in defined_tests(path)]
    assert (number, missing) == (2, ["test_pg_stat_statements_returns_rows"])
