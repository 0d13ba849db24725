"""The response store's backends, directly: writes whole, expiry, the byte bound, delete, on
SQLite and on a real PostgreSQL (a cluster of the module's own, tests/support/postgres.py); and
for SQLite, its file: WAL, owner-only, a second process reading it."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time

import psycopg
import pytest

from server.store import StoreLimits, StoredResponse, StoreUnavailable, parse_store_location
from server.store.base import StoreTotals
from server.store.postgres import postgres_store
from server.store.sql import EVENTS, TABLE, TOTALS
from server.store.sqlite import sqlite_store
from tests.support.postgres import postgres_cluster

DAY = 24 * 3600.0


def record(response_id: str, *, previous: str | None = None, text: str = "hello", created: float = 0.0):
    return StoredResponse(
        id=response_id, previous_id=previous, created_at=created, status="completed",
        response={"id": response_id, "output": [{"type": "message", "content": [{"text": text}]}]},
        input_items=[{"id": f"msg_{response_id}", "type": "message", "role": "user", "content": text}],
    )


LIMITS = StoreLimits(ttl_s=DAY, max_bytes=10_000)


@pytest.fixture(scope="module")
def postgres():
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        opened = sqlite_store(tmp_path / "data" / "responses.sqlite3", LIMITS)
    else:
        cluster = request.getfixturevalue("postgres")
        with psycopg.connect(cluster.url, autocommit=True) as connection:  # each test starts empty
            connection.execute(f"DROP TABLE IF EXISTS {TABLE}, {TOTALS}, {EVENTS}")
        opened = postgres_store(cluster.url, LIMITS)
    opened.open()
    yield opened
    opened.close()


@pytest.fixture
def sqlite(tmp_path):
    opened = sqlite_store(tmp_path / "data" / "responses.sqlite3", LIMITS)
    opened.open()
    yield opened
    opened.close()


def test_a_response_comes_back_as_it_was_written(store):
    written = record("resp_a", previous="resp_0", text="ünïcode ✓")
    store.put(written, now=100.0)
    assert store.get("resp_a", now=101.0) == written
    assert store.get("resp_unknown", now=101.0) is None


def test_the_file_is_wal_and_owner_only(sqlite, tmp_path):
    sqlite.put(record("resp_a"), now=1.0)
    path = tmp_path / "data" / "responses.sqlite3"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_response_expires_after_its_time_to_live(store):
    store.put(record("resp_old"), now=0.0)
    assert store.get("resp_old", now=DAY - 1) is not None
    assert store.get("resp_old", now=DAY) is None
    # The next write deletes it, and says so.
    result = store.put(record("resp_new"), now=DAY + 1)
    assert (result.expired, result.totals.responses) == (1, 1)
    assert store.delete("resp_old", now=DAY + 2)[0] is False


def test_the_oldest_are_evicted_to_fit_the_byte_bound(store):
    big = "x" * 1500  # about 3,100 bytes a record (in the output and the input): 3 fit
    for number in range(3):
        assert store.put(record(f"resp_{number}", text=big, created=number), now=float(number)).evicted == 0
    result = store.put(record("resp_3", text=big, created=3), now=3.0)
    assert result.evicted == 1 and result.totals.bytes <= 10_000 and result.totals.responses == 3
    assert store.get("resp_0", now=4.0) is None
    assert all(store.get(f"resp_{n}", now=4.0) is not None for n in (1, 2, 3))


def test_rewriting_an_id_replaces_it_and_keeps_the_totals_right(store):
    store.put(record("resp_a", text="short"), now=1.0)
    result = store.put(record("resp_a", text="a longer text"), now=2.0)
    assert result.totals.responses == 1
    assert store.get("resp_a", now=3.0).input_items[0]["content"] == "a longer text"
    assert store.totals() == result.totals


def test_delete_removes_it_and_its_bytes(store):
    store.put(record("resp_a"), now=1.0)
    existed, totals = store.delete("resp_a", now=2.0)
    assert existed and totals.responses == 0 and totals.bytes == 0
    assert store.get("resp_a", now=3.0) is None
    assert store.delete("resp_a", now=3.0)[0] is False


def frames(first: int, count: int, size: int = 10) -> list[tuple[int, str]]:
    return [(seq, f"event: response.output_text.delta\ndata: {'x' * size}\n\n") for seq in range(first, first + count)]


def test_a_streams_events_come_back_in_order_after_any_sequence_number(store):
    store.put(record("resp_s"), now=1.0)
    assert store.append_events("resp_s", frames(0, 3), now=1.0)
    assert store.append_events("resp_s", frames(3, 2), now=2.0)
    assert store.append_events("resp_s", frames(3, 2), now=2.0)  # a retried batch adds nothing
    status, after_one = store.events_after("resp_s", 1, now=3.0)
    assert status == "completed" and after_one == frames(2, 3)
    assert store.events_after("resp_s", 4, now=3.0) == ("completed", [])
    assert store.events_after("resp_unknown", -1, now=3.0) == (None, [])


def test_events_count_in_the_byte_bound_and_go_with_their_response(store):
    store.put(record("resp_s"), now=1.0)
    alone = store.totals().bytes
    store.append_events("resp_s", frames(0, 4, size=100), now=1.0)
    with_events = store.totals().bytes
    assert with_events - alone == sum(len(frame.encode()) for _, frame in frames(0, 4, size=100))
    # The final record replaces the running one: the events stay, and so do their bytes.
    store.put(record("resp_s", text="final"), now=2.0)
    assert store.events_after("resp_s", -1, now=2.0)[1] == frames(0, 4, size=100)
    assert store.totals().bytes - with_events == len("final") * 2 - len("hello") * 2
    existed, totals = store.delete("resp_s", now=3.0)
    assert existed and totals.bytes == 0 and totals.responses == 0
    assert store.append_events("resp_s", frames(4, 1), now=3.0) is False  # gone: nothing kept
    store.put(record("resp_t"), now=3.0)
    assert store.events_after("resp_t", -1, now=3.0) == ("completed", [])


def test_events_beyond_the_byte_bound_evict_the_oldest_responses(store):
    store.put(record("resp_old", created=0), now=0.0)
    store.put(record("resp_streamed", created=1), now=1.0)
    # About 10,400 bytes of events: past the 10,000-byte bound, so the older response goes (the
    # one being streamed stays, as a response larger than the bound does).
    assert store.append_events("resp_streamed", frames(0, 10, size=1000), now=1.0)
    assert store.get("resp_old", now=2.0) is None and store.get("resp_streamed", now=2.0) is not None
    assert store.totals().responses == 1


def test_another_process_reads_what_was_committed(sqlite, tmp_path):
    sqlite.put(record("resp_shared", text="from the first process"), now=1.0)
    script = (
        "import sys; from pathlib import Path; from server.store import StoreLimits;"
        "from server.store.sqlite import sqlite_store;"
        "s = sqlite_store(Path(sys.argv[1]), StoreLimits(ttl_s=1e9, max_bytes=10**6)); s.open();"
        "print(s.get('resp_shared', now=2.0).input_items[0]['content'])"
    )
    output = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data" / "responses.sqlite3")],
        capture_output=True, text=True, timeout=60, env={**os.environ}, check=True,
    ).stdout
    assert output.strip() == "from the first process"


@pytest.mark.parametrize(
    "value, kind, path",
    [
        ("sqlite", "sqlite", None),
        ("sqlite:///relative.db", "sqlite", "relative.db"),
        ("sqlite:////var/lib/x/responses.db", "sqlite", "/var/lib/x/responses.db"),
        ("postgresql://app@db:5432/responses", "postgresql", None),
        ("none", "none", None),
    ],
)
def test_store_locations_parse(value, kind, path):
    location = parse_store_location(value)
    assert location.kind == kind
    assert (str(location.path) if location.path else None) == path


def test_a_database_that_went_away_is_unavailable_then_used_again(postgres):
    store = postgres_store(postgres.url, LIMITS)
    store.put(record("resp_kept"), now=1.0)
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable):
            store.get("resp_kept", now=2.0)
    finally:
        postgres.start()
    assert store.get("resp_kept", now=3.0) is not None  # connected again, no restart
    store.close()


def test_a_postgres_password_never_reaches_the_log_line():
    location = parse_store_location("postgresql://app:s3cret@db:5432/responses?sslmode=require")
    described = location.describe(data_dir=None)
    assert "s3cret" not in described and "db:5432/responses" in described


@pytest.mark.parametrize("value", ["mysql://x", "sqlite:///", "redis://cache", ""])
def test_an_unknown_store_is_refused(value):
    with pytest.raises(ValueError, match="responses store must be"):
        parse_store_location(value)


WRITER = """
import sys, time
from pathlib import Path
from server.store import StoreLimits, StoredResponse
from server.store.sqlite import sqlite_store
store = sqlite_store(Path(sys.argv[1]), StoreLimits(ttl_s=1e9, max_bytes=200_000))
for number in range(100_000):
    rid = f"resp_{number}"
    store.put(StoredResponse(rid, None, time.time(), "completed", {"id": rid, "text": "y" * 2000}, []), time.time())
    print(rid, flush=True)  # committed
"""


def test_a_writer_killed_mid_write_loses_no_committed_response_and_keeps_its_totals(tmp_path):
    path = tmp_path / "responses.sqlite3"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        for line in writer.stdout:  # bounded: the writer is killed after 300 commits
            committed.append(line.strip())
            if len(committed) == 300:
                writer.kill()  # SIGKILL, most likely inside the next transaction
                break
    finally:
        writer.kill()
        writer.wait(timeout=60)
    assert len(committed) == 300, "the writer died before it committed 300 responses"
    reopened = sqlite_store(path, StoreLimits(ttl_s=1e9, max_bytes=200_000))
    reopened.open()
    # The byte bound evicts the oldest: every recent committed one is there, whole.
    recent = committed[-50:]
    assert all(reopened.get(rid, now=time.time()).response["id"] == rid for rid in recent)
    with sqlite3.connect(path) as check:
        count, size = check.execute(f"SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM {TABLE}").fetchone()
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert reopened.totals() == StoreTotals(count, size) and size <= 200_000 + 3000
    reopened.close()
