"""The README documents every setting and every endpoint the app really has."""

from __future__ import annotations

from fastapi.routing import APIRoute

from server.cli import ENVIRONMENT_ONLY
from server.settings import Settings
from tests.support.app import build_app
from tests.support.server import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_every_setting_flag_is_documented():
    missing = [
        "--" + name.replace("_", "-")
        for name in Settings.model_fields
        if name not in ENVIRONMENT_ONLY and f"`--{name.replace('_', '-')}`" not in README
    ]
    assert not missing, f"README lacks these flags: {missing}"


def test_every_route_is_documented():
    routes = [route for route in build_app().routes if isinstance(route, APIRoute)]
    paths = {route.path_format.replace("{model_id}", "{id}") for route in routes}
    missing = [path for path in sorted(paths) if f" {path}`" not in README]
    assert not missing, f"README lacks these endpoints: {missing}"


def test_readme_shows_the_two_setup_commands():
    assert "make serve" in README and "make test" in README
