"""Fixtures shared by the test modules: where ../shared lives, and the real servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.server import REPO_ROOT

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


@pytest.fixture(scope="session")
def default_server():
    """One server on the embedded default model (SmolLM2-135M) for every test that can share it."""
    from tests.support.server import running_server

    with running_server(env={"AIROBOROS_MODEL_ALIASES": DEFAULT_MODEL_ALIAS}) as server:
        yield server


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
