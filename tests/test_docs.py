"""Everything a user or a contributor can reach is documented, where they would look.

Modelled on datasette's tests/test_docs.py: the things are read from the code
itself (the package's files, the click commands, the settings model, the app's
routes), so one added later and not documented fails here, saying what is missing
and where it belongs:

* module (every file in mailer/): README.md, the module map under "## How it fits
  together", by path (``mailer/web/routes.py``); a package by its folder
  (``mailer/collect/``) as well as by its modules.
* CLI command: README.md, under "## Command line", in full (``mailer digest send``).
* config key (every key the loader accepts, mailer.config.Settings):
  docs/configuration.md, as the dotted key in backticks (``smtp.retry_for``; items
  of a list as ``sources[].url``).
* route (every path the app serves): public addresses in README.md's table under
  "## Web"; admin addresses in docs/web.md under "## Admin", API addresses there under
  "## API". In backticks, with each parameter as ``{name}`` or ``<words>``
  (``/admin/digests/{id}``, ``/releases/<id>-<slug>``).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import click
import pytest
from pydantic import BaseModel
from starlette.routing import BaseRoute, Mount, Route

from mailer.cli import main
from mailer.config import Settings
from mailer.web.routes import all_routes

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mailer"


@cache
def section(document: str, heading: str) -> str:
    """The text under ``## heading`` in ``document``, up to the next ``## `` heading."""
    text = (ROOT / document).read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{document} has no '## {heading}' section"
    return match.group(1)


def undocumented(message: str) -> None:
    pytest.fail(message, pytrace=False)


# --- modules --------------------------------------------------------------------------------


def module_paths() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # the package the map is of
        relative = path.relative_to(ROOT).as_posix()
        found.append(relative[: -len("__init__.py")] if path.name == "__init__.py" else relative)
    return found


@pytest.mark.parametrize("module", module_paths())
def test_module_is_in_the_readme_module_map(module: str) -> None:
    if not re.search(
        rf"(?<![\w/.]){re.escape(module)}(?![\w.])", section("README.md", "How it fits together")
    ):
        undocumented(
            f"{module} is not in README.md, the module map under '## How it fits together': "
            f"add a line `{module}  <what it is for>` in its folder's block."
        )


# --- CLI commands ---------------------------------------------------------------------------


def commands(group: click.Group = main, prefix: str = "mailer") -> Iterator[str]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, f"`{prefix} {name}` is listed but cannot be loaded"
        if command.hidden:
            continue
        yield f"{prefix} {name}"
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix} {name}")


@pytest.mark.parametrize("command", list(commands()))
def test_cli_command_is_in_the_readme(command: str) -> None:
    if not re.search(rf"{re.escape(command)}(?![\w-])", section("README.md", "Command line")):
        undocumented(
            f"`{command}` is not in README.md under '## Command line': add it, in full, to "
            "the table there (`mailer COMMAND --help` covers the options)."
        )


# --- configuration keys ---------------------------------------------------------------------


def _models_in(annotation: object) -> Iterator[tuple[type[BaseModel], bool]]:
    """The settings models inside a field's type, and whether each is a list's item."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False
        return
    origin = typing.get_origin(annotation)
    for argument in typing.get_args(annotation):
        for model, in_list in _models_in(argument):
            yield model, in_list or origin is list


def config_keys(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        if field.exclude:
            # Set by the loader (Settings.config_path), never read from the file.
            continue
        key = prefix + (field.alias or name)
        nested = list(_models_in(field.annotation))
        if not nested:
            yield key
        for inner, in_list in nested:
            yield from config_keys(inner, f"{key}[]." if in_list else f"{key}.")


@pytest.mark.parametrize("key", list(dict.fromkeys(config_keys())))
def test_config_key_is_in_docs_configuration(key: str) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    top = key.split(".", 1)[0].removesuffix("[]")
    if f"`{key}`" not in text:
        undocumented(
            f"config key `{key}` (accepted by mailer/config.py) is not in "
            f"docs/configuration.md: add a row for `{key}` (default and meaning) to the "
            f"table under '## {top}', and a commented line to config.yaml."
        )


# --- routes ---------------------------------------------------------------------------------


def routes(found: list[BaseRoute], prefix: str = "") -> Iterator[str]:
    for route in found:
        if isinstance(route, Mount):
            if route.path == "/static":
                continue  # the stylesheet and scripts, not addresses anyone visits
            yield from routes(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path


def _documented_as(path: str) -> re.Pattern[str]:
    """``/admin/digests/{id:int}`` -> matches `/admin/digests/{id}` or `/admin/digests/<id>`."""
    parts = re.split(r"\{[^}]+\}", path)
    # `<id>-<slug>` may stand for one parameter; nothing else may follow it.
    parameter = r"[<{][^/`<>{}]+[>}](?:-[<{][^/`<>{}]+[>}])*"
    return re.compile("`" + parameter.join(re.escape(p) for p in parts) + "`")


def route_home(path: str) -> tuple[str, str]:
    if path == "/admin" or path.startswith("/admin/"):
        return "docs/web.md", "Admin"
    if path.startswith("/api/"):
        return "docs/web.md", "API"
    return "README.md", "Web"


@pytest.mark.parametrize("path", list(dict.fromkeys(routes(all_routes()))))
def test_route_is_documented(path: str) -> None:
    document, heading = route_home(path)
    shown = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", path)
    if not _documented_as(path).search(section(document, heading)):
        undocumented(
            f"{shown} (served by mailer/web/routes.py) is not in {document} under "
            f"'## {heading}': add a row with `{shown}` and what it is for."
        )


def test_the_walks_find_what_they_should() -> None:
    """Each check above reads the real things, not an empty list that passes."""
    assert "mailer/web/routes.py" in module_paths()
    assert "mailer/collect/" in module_paths()
    assert {"mailer db status", "mailer digest send"} <= set(commands())
    assert {"smtp.retry_for", "sources[].url", "sender.from", "bounces.imap.host"} <= set(
        config_keys()
    )
    assert {"/admin/digests/{id:int}", "/api/openapi.json", "/releases/{ref}"} <= set(
        routes(all_routes())
    )
    pattern = _documented_as("/releases/{ref}")
    assert pattern.search("`/releases/<id>-<slug>`")
    assert not pattern.search("`/releases/new`")
    assert not _documented_as("/topics/{slug}").search("`/topics/<topic>.atom`")
