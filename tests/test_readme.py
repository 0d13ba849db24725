"""The docs promise what the server really has: each table against the code it describes,
wherever the table lives (README.md for the newcomer, docs/ for the reference).

- Settings (docs/settings.md): one row per flag of `airoboros-server serve` (every `Settings`
  field but the environment-only ones), no row for a flag that does not exist, and each default
  the table states is the default the code applies.
- Endpoints (README.md): one row per route the app serves, with its method, and no row for a
  route it lacks.
- Request fields (docs/api.md): each documented field is a field of the request model of each
  route it is ticked for, and every request-model field is documented.
- Errors (docs/api.md): each error code the table names is one the server sends.
- Set-up (README.md): the two commands its quick start gives are targets of the Makefile.
- The README stays a short front door: at most about 450 lines, a contents list whose links reach
  its headings, and links into docs/ that resolve (files and anchors), as do the links of docs/
  and of every other README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from server.api.protocol.requests import ChatCompletionRequest, CompletionRequest
from server.cli import ENVIRONMENT_ONLY
from server.engine.args import DEFAULT_CPU_KV_CACHE_GIB
from server.settings import Settings
from tests.support.app import build_app
from tests.support.docs import anchors, broken_links, headings, markdown_docs, read, relative_links, section, slug, table
from harness.server import REPO_ROOT

README = "README.md"
SETTINGS_DOC = "docs/settings.md"
API_DOC = "docs/api.md"
SETTINGS_HEADING = "Settings: every flag of `airoboros-server serve`"


def ticks(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# --- settings -------------------------------------------------------------------------------


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def settings_rows() -> dict[str, str]:
    """flag → default cell, for every flag the settings table names (`--host`, `--port` share a row)."""
    rows = {}
    for cells in table(section(SETTINGS_DOC, SETTINGS_HEADING)):
        for name in ticks(cells[0]):
            rows[name] = cells[1]
    return rows


def test_the_settings_table_has_a_row_for_every_flag_and_no_other():
    flags = {flag(name) for name in Settings.model_fields if name not in ENVIRONMENT_ONLY}
    documented = set(settings_rows())
    assert not flags - documented, f"{SETTINGS_DOC} lacks these flags: {sorted(flags - documented)}"
    assert not documented - flags, f"{SETTINGS_DOC} documents flags that do not exist: {sorted(documented - flags)}"


def _stated(cell: str) -> str:
    return cell.strip("`").split(" (")[0].strip()


def expected_default(name: str) -> str | None:
    """How the table should state `name`'s default, or None where it is described in words."""
    default = Settings.model_fields[name].default
    if name == "cpu_kv_cache_gib":
        return str(DEFAULT_CPU_KV_CACHE_GIB)  # unset: the engine's environment default applies
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, (int, float, str)):
        return str(default)
    if isinstance(default, Path):
        return str(default)
    return None  # None / lists: "none", "the checkpoint's", "vLLM's"


@pytest.mark.parametrize("name", [n for n in Settings.model_fields if n not in ENVIRONMENT_ONLY])
def test_each_stated_default_is_the_codes(name):
    rows = settings_rows()
    cell = rows[flag(name)]
    expected = expected_default(name)
    if name in ("host", "port"):  # one row: "127.0.0.1, 8000"
        assert [_stated(part) for part in cell.split(",")] == [str(Settings().host), str(Settings().port)]
    elif expected is None:
        assert not re.fullmatch(r"[0-9.]+|on|off", _stated(cell)), f"{flag(name)}: {SETTINGS_DOC} states {cell!r}, the code has none"
    else:
        assert _stated(cell) == expected, f"{flag(name)}: {SETTINGS_DOC} says {cell!r}, the code {expected!r}"


def test_every_setting_has_the_environment_variable_the_docs_name():
    for doc, heading in ((SETTINGS_DOC, SETTINGS_HEADING), (README, "Settings")):
        text = section(doc, heading)
        assert "environment variable `AIROBOROS_<NAME>`" in text, doc
        assert "`AIROBOROS_API_KEYS`" in text, doc
    assert Settings.model_config["env_prefix"] == "AIROBOROS_"
    assert "api_keys" in ENVIRONMENT_ONLY


# --- endpoints ------------------------------------------------------------------------------


def _any_parameter(path: str) -> str:
    """A path with every parameter named alike: the README may name one for the reader."""
    return re.sub(r"\{(\w+)(:\w+)?\}", "{id}", path)


def served_routes() -> set[tuple[str, str]]:
    app = build_app()
    routes = set()
    for route in app.routes:
        methods = getattr(route, "methods", None) or set()
        path = route.path_format if isinstance(route, APIRoute) else getattr(route, "path", "")
        path = _any_parameter(path)
        if path.startswith("/docs/oauth2") or path == "/redoc":
            continue  # FastAPI's own helpers, not part of the API
        routes |= {(method, path) for method in methods if method != "HEAD"}
    return routes


def test_the_endpoint_table_has_a_row_for_every_route_and_no_other():
    documented = set()
    for cells in table(section(README, "Endpoints")):
        for entry in ticks(cells[0]):
            method, path = entry.split(" ", 1)
            documented.add((method, _any_parameter(path)))
    served = served_routes()
    assert not served - documented, f"README lacks these endpoints: {sorted(served - documented)}"
    assert not documented - served, f"README documents endpoints the app lacks: {sorted(documented - served)}"


# --- request fields ---------------------------------------------------------------------------


def test_the_request_field_table_matches_the_request_models():
    models = {"chat": ChatCompletionRequest, "completions": CompletionRequest}
    documented: dict[str, set[str]] = {"chat": set(), "completions": set()}
    for cells in table(section(API_DOC, "Chat and completions request fields")):
        names = [name.split(".")[0] for name in ticks(cells[0])]
        for route, cell in zip(("chat", "completions"), cells[1:3]):
            if not cell:
                continue
            # "✓", or the name of the one field of the row that this route takes.
            taken = ticks(cell) or names
            for name in taken:
                assert name in models[route].model_fields, f"{API_DOC}: `{name}` for {route}, not a field of it"
                documented[route].add(name)
    for route, model in models.items():
        missing = set(model.model_fields) - documented[route]
        assert not missing, f"{API_DOC}'s field table lacks {route} fields {sorted(missing)}"


# --- errors and set-up ------------------------------------------------------------------------


def test_every_error_code_the_table_names_is_sent_by_the_server():
    sources = "\n".join(path.read_text() for path in [*(REPO_ROOT / "server").rglob("*.py"), *(REPO_ROOT / "prompt_formats").rglob("*.py")])
    codes = set()
    for cells in table(section(API_DOC, "Errors")):
        kinds = cells[2].split("/", 1)
        codes |= {code for code in ticks(kinds[1] if len(kinds) > 1 else "")}
    assert {"invalid_api_key", "request_too_large", "server_busy", "timeout", "unavailable"} <= codes
    unsent = [code for code in sorted(codes) if f'"{code}"' not in sources]
    assert not unsent, f"{API_DOC} names error codes the server never sends: {unsent}"


def test_the_two_setup_commands_are_makefile_targets():
    quick_start = section(README, "Quick start")
    assert re.search(r"^make serve +#", quick_start, re.MULTILINE) and re.search(r"^make test +#", quick_start, re.MULTILINE)
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in ("serve", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"the Makefile has no `{target}` target"


# --- the README as a front door -------------------------------------------------------------

README_MOST_LINES = 450


def test_the_readme_stays_short():
    lines = len(read(README).splitlines())
    assert lines <= README_MOST_LINES, f"README.md has {lines} lines: move reference text to docs/"


def test_the_contents_list_reaches_every_section_of_the_readme():
    text = read(README)
    contents = section(README, "Contents")
    listed = [target[1:] for target in relative_links(contents) if target.startswith("#")]
    assert listed, "the contents list links no section"
    unknown = sorted(set(listed) - anchors(text))
    assert not unknown, f"contents links that reach no heading: {unknown}"
    sections = {slug(title) for _, level, title in headings(text) if level == 2}
    unlisted = sorted(sections - set(listed) - {"contents"})
    assert not unlisted, f"README sections the contents list leaves out: {unlisted}"


def test_every_docs_file_is_linked_from_the_readme():
    linked = {target.partition("#")[0] for target in relative_links(read(README))}
    docs = {f"docs/{path.name}" for path in (REPO_ROOT / "docs").glob("*.md")}
    assert docs, "no docs/"
    assert not docs - linked, f"docs the README does not link: {sorted(docs - linked)}"


@pytest.mark.parametrize("doc", markdown_docs())
def test_every_relative_link_resolves(doc):
    assert broken_links(doc) == [], f"{doc}: links to files or anchors that do not exist"
