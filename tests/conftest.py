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
