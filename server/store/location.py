"""`--responses-store`: where stored responses live, from its setting's value.

    sqlite                  the default: responses.sqlite3 under --data-dir
    sqlite:///relative.db   a file (SQLAlchemy's form: sqlite:////var/lib/x.db is absolute)
    postgresql://user@host/db  (postgres:// too) a database every replica shares
    none                    off
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SQLITE_FILE_NAME = "responses.sqlite3"


@dataclass(frozen=True)
class StoreLocation:
    kind: str  # "sqlite", "postgresql" or "none"
    path: Path | None = None  # sqlite: None means the default file under the data directory
    url: str | None = None  # postgresql

    def sqlite_path(self, data_dir: Path) -> Path:
        return self.path if self.path is not None else data_dir / SQLITE_FILE_NAME

    def describe(self, data_dir: Path) -> str:
        """For the log: a PostgreSQL password never appears."""
        if self.kind == "sqlite":
            return f"sqlite file {self.sqlite_path(data_dir)}"
        if self.kind == "postgresql" and self.url is not None:
            parts = urlsplit(self.url)
            host = parts.hostname or ""
            user = f"{parts.username}@" if parts.username else ""
            port = f":{parts.port}" if parts.port else ""
            return "postgresql " + urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))
        return "off"


def parse_store_location(value: str) -> StoreLocation:
    text = value.strip()
    if text.lower() == "none":
        return StoreLocation("none")
    if text.lower() == "sqlite":
        return StoreLocation("sqlite")
    if text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return StoreLocation("sqlite", path=Path(text[len("sqlite:///"):]).expanduser())
    if text.startswith(("postgresql://", "postgres://")):
        return StoreLocation("postgresql", url=text)
    raise ValueError(
        "responses store must be none, sqlite, sqlite:///PATH or postgresql://USER@HOST/DATABASE"
    )
