"""A start that fails ends the server, in process on a fake engine whose start raises what vLLM
raises for a checkpoint it cannot configure (tests/mpt/test_config.py shows vLLM raising it).

Liveness stays 200 while the model loads; when the load fails the server turns dead (probes 503,
generation refused), logs why, and asks for exit status 1, so an orchestrator restarts it and
its operator reads the reason. (Start-up probes of a start that succeeds: tests/ops/test_front_door.py.)
"""

from __future__ import annotations

import time

import httpx

from server.ops.state import Phase
from harness.fake_engine import FakeAsyncLLM
from tests.support.inprocess import FAKE_MODEL, serving_fake

REFUSAL = "MPT config attn_config.prefix_lm=True is not supported: prefix-LM attention"


def test_a_model_that_cannot_be_loaded_ends_the_server_naming_why():
    llm = FakeAsyncLLM(load_delay_s=0.5, load_error=ValueError(REFUSAL))
    with serving_fake(llm, wait_ready=False) as server:
        loading = httpx.get(server.base_url + "/health/live", timeout=5)
        deadline = time.monotonic() + 10
        while not server.exit_codes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.exit_codes == [1]
        assert server.state.phase is Phase.DEAD
        assert server.wait_stopped(15)
    assert loading.status_code == 200, "liveness answers while the model loads"
    assert f"the model could not be loaded: {REFUSAL}" in server.log_text()


def test_a_dead_start_refuses_probes_and_work():
    llm = FakeAsyncLLM(load_error=ValueError(REFUSAL))
    with serving_fake(llm, wait_ready=False, stop_on_exit_request=False) as server:
        deadline = time.monotonic() + 10
        while not server.exit_codes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.exit_codes == [1]
        # Held open after asking for its exit: every answer says it is dead.
        live = httpx.get(server.base_url + "/health/live", timeout=5)
        ready = httpx.get(server.base_url + "/health/ready", timeout=5)
        work = httpx.post(server.base_url + "/v1/completions", json={"model": FAKE_MODEL, "prompt": "Hi"}, timeout=5)
    assert (live.status_code, ready.status_code) == (503, 503)
    assert live.json() == {"status": "dead"}
    assert work.status_code == 503 and work.json()["error"]["code"] == "unavailable"
