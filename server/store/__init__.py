"""Stored responses of the Responses API: one small interface (`base.ResponseStore`), a SQL
implementation with SQLite and PostgreSQL dialects, and the event loop's side (`archive`).

`open_archive(setting, limits, data_dir, metrics)` builds what `--responses-store` names, or None
when it is off. It takes the settings' values, not `Settings`, so the store stays below them.
Contents (prompts and answers) are never logged.
"""

from __future__ import annotations

from pathlib import Path

from server.metrics import Metrics
from server.store.archive import StoreArchive
from server.store.base import Chain, ResponseStore, StoredResponse, StoreLimits, StoreUnavailable
from server.store.location import StoreLocation, parse_store_location

__all__ = [
    "Chain", "ResponseStore", "StoreArchive", "StoreLimits", "StoreLocation", "StoreUnavailable",
    "StoredResponse", "open_archive", "parse_store_location",
]


def open_archive(setting: str, limits: StoreLimits, data_dir: Path, metrics: Metrics) -> StoreArchive | None:
    """The store `setting` (`--responses-store`) names, not yet connected (`StoreArchive.open`
    does that), or None when it is off."""
    location = parse_store_location(setting)
    store: ResponseStore
    if location.kind == "none":
        return None
    if location.kind == "sqlite":
        from server.store.sqlite import sqlite_store

        store = sqlite_store(location.sqlite_path(data_dir), limits)
    else:
        from server.store.postgres import postgres_store

        store = postgres_store(location.url or "", limits)
    return StoreArchive(store, metrics, location.describe(data_dir))
