"""Every door the README and its manual (docs/) show exists: each ``flask`` command, ``make``
target, endpoint and linked page.

The commands are run for real in ``test_cli.py``, ``test_retention.py`` and by the stacks of
the end-to-end tests (``make run`` is ``scripts/local.py``); here the README itself is read, so
that a door it names and the code does not have fails the suite.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from werkzeug.exceptions import MethodNotAllowed, NotFound

from app.emulator import create_app as create_emulator

ROOT = Path(__file__).resolve().parent.parent
FRONT = (ROOT / "README.md").read_text()
README = "\n".join([FRONT, *(page.read_text() for page in sorted((ROOT / "docs").glob("*.md")))])

COMMANDS = sorted(set(re.findall(r"flask --app wsgi ([a-z][a-z-]*)", README)))
TARGETS = sorted(set(re.findall(r"`?make ([a-z]+)`?", README)) - {"it"})
NOT_IMITATED = {"/calls"}  # named in the README as what the emulator does not imitate


def _endpoints() -> list[tuple[str, str]]:
    found = []
    for methods, path in re.findall(r"`((?:GET|POST|DELETE|PUT)(?:`, `(?:GET|POST))?) "
                                    r"(/[^`\s]*)", README):
        path = re.sub(r"\[.*?\]|\?.*$", "", path)
        if path in NOT_IMITATED:
            continue
        for method in re.findall(r"GET|POST|DELETE|PUT", methods):
            found.append((method, path))
    return sorted(set(found))


ENDPOINTS = _endpoints()


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_every_page_it_links_exists(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        assert (page.parent / target).exists(), f"{page.name} links {target}"


def test_the_front_page_is_a_front_page() -> None:
    assert len(FRONT.splitlines()) <= 220
    assert FRONT.index("## Quick start") < FRONT.index("## Layout") < FRONT.index(
        "## Configuration")


def test_the_readme_names_doors_at_all() -> None:
    assert {"migrate", "create-conference", "purge"} <= set(COMMANDS)
    assert {"run", "test"} <= set(TARGETS)
    assert len(ENDPOINTS) > 20


@pytest.mark.parametrize("command", COMMANDS)
def test_each_flask_command_it_names_exists(runner: FlaskCliRunner, command: str) -> None:
    result = runner.invoke(args=[command, "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("target", TARGETS)
def test_each_make_target_it_names_exists(target: str) -> None:
    dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert dry.returncode == 0, dry.stderr


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_each_endpoint_it_names_is_served(app: Flask, method: str, path: str) -> None:
    concrete = re.sub(r"\{[^}]*\}", "1", path)  # "1" fits an int converter too
    if concrete.startswith(("/_emulator", "/v1/users")):
        target = create_emulator()
    else:
        target = app
        if not concrete.startswith(("/api/", "/healthz", "/readyz", "/metrics", "/admin")):
            concrete = "/api/v1" + concrete  # the REST API's table is relative to it
    adapter = target.url_map.bind("localhost")
    try:
        adapter.match(concrete, method)
    except (NotFound, MethodNotAllowed) as exc:
        pytest.fail(f"{method} {path} ({concrete}): {type(exc).__name__}")
