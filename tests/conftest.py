"""Fixtures shared by the test modules: where ../shared lives, and the real servers.

The shared default server's engine start is most of a minute on two cores, so when any selected
test needs it, it starts as soon as the tests are collected, and the modules that need no live
server (in process, pure) run first while it starts (`pytest_collection_modifyitems`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.server import REPO_ROOT

SHARED_DIR = Path(os.environ.get("AIROBOROS_SHARED_DIR", REPO_ROOT.parent / "shared"))
NEOX_TOKENIZER = Path(
    os.environ.get("AIROBOROS_NEOX_TOKENIZER", SHARED_DIR / "data" / "gpt-neox-20b-tokenizer.json")
)
OPENAI_OPENAPI = Path(
    os.environ.get("AIROBOROS_OPENAI_OPENAPI", SHARED_DIR / "data" / "openai-openapi.yaml")
)


# An alias the shared server accepts for its model (the `model_aliases` setting).
DEFAULT_MODEL_ALIAS = "airoboros-default-alias"


def _require_shared_file(path: Path, variable: str) -> Path:
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: these tests need ../shared/data beside the checkout "
            f"(or {variable} pointing at the file).",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def neox_tokenizer_file() -> Path:
    return _require_shared_file(NEOX_TOKENIZER, "AIROBOROS_NEOX_TOKENIZER")


@pytest.fixture(scope="session")
def openai_openapi_file() -> Path:
    return _require_shared_file(OPENAI_OPENAPI, "AIROBOROS_OPENAI_OPENAPI")


DEFAULT_SERVER_ENV = {"AIROBOROS_MODEL_ALIASES": DEFAULT_MODEL_ALIAS}
_started_early: list = []  # the default server, launched once the tests are known to need it


def _needs_a_live_server(item: pytest.Item) -> bool:
    return "default_server" in getattr(item, "fixturenames", ()) or item.get_closest_marker("engine") is not None


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: only what will run counts
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules that need no live server first (a stable sort: modules stay whole and in order),
    with the default server starting meanwhile when a selected test needs it."""
    live = {item.nodeid.split("::")[0] for item in items if _needs_a_live_server(item)}
    items.sort(key=lambda item: item.nodeid.split("::")[0] in live)
    if config.option.collectonly or not any("default_server" in getattr(i, "fixturenames", ()) for i in items):
        return
    from harness.server import launch_server

    _started_early.append(launch_server(env=DEFAULT_SERVER_ENV, wait_ready=False))


def pytest_sessionfinish(session: pytest.Session) -> None:
    from harness.server import stop_server

    while _started_early:  # never used (the tests that needed it did not run)
        stop_server(_started_early.pop())


@pytest.fixture(scope="session")
def default_server():
    """One server on the embedded default model (SmolLM2-135M) for every test that can share it."""
    from harness.server import launch_server, stop_server, wait_until_ready

    server = _started_early.pop() if _started_early else launch_server(env=DEFAULT_SERVER_ENV, wait_ready=False)
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def default_model_name(default_server) -> str:
    return default_server.model


@pytest.fixture(scope="session")
def client(default_server):
    """The openai SDK on the default server (a module may bring its own `client` for its server)."""
    import openai

    return openai.OpenAI(base_url=default_server.openai_base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def schemas(openai_openapi_file):
    """OpenAI's published response schemas (tests/support/openai_schema.py)."""
    from tests.support.openai_schema import OpenAISchemas

    return OpenAISchemas(openai_openapi_file)
