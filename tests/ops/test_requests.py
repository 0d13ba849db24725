"""One request's life as operations see it, on the shared default server (the real engine): its
engine request aborted when its client leaves, its access-log line carrying the engine's token
counts, counted in /metrics beside vLLM's own series. And the server's SIGUSR1 stack dump, for a
start-up or request that seems stuck. Request ids, body limits and keep-alive, which never reach
the engine, are checked in process: tests/api/test_middleware.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import httpx
import pytest

from harness.load import metric_families, metric_value, parse_sse_line, scrape, wait_for_metric

engine = pytest.mark.engine

# Completions, not chat: no format stop string (USER:) can end these generations early.
LONG = {"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": True}


def _chat(model: str, content: str = "Tell me a long story.", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def _aborted(base_url: str) -> float:
    return metric_value(scrape(base_url), "airoboros_requests_aborted_total", reason="disconnect")


def _wait_running(base_url: str, timeout: float = 60) -> None:
    met, value, _ = wait_for_metric(base_url, "vllm:num_requests_running", lambda v: v >= 1, timeout=timeout)
    assert met, "the request never started running in the engine"


# "At once" (http-api.md): the LONG generation runs for over a minute here, so an engine idle
# within this bound was aborted, not left to finish; the bound leaves room for CI's stalls.
ABORT_BOUND_S = 10.0


def _assert_engine_idle_at_once(base_url: str) -> None:
    met, value, waited = wait_for_metric(
        base_url, "vllm:num_requests_running", lambda v: v == 0, timeout=ABORT_BOUND_S
    )
    assert met, f"{value} engine requests still running {waited:.2f} s after the client left"


def _assert_abort_counted(base_url: str, before: float) -> None:
    met, value, _ = wait_for_metric(
        base_url, "airoboros_requests_aborted_total", lambda v: v == before + 1, timeout=ABORT_BOUND_S, reason="disconnect"
    )
    assert met, f"aborted{{reason=disconnect}} went from {before} to {value}"


# --- client disconnect ------------------------------------------------------------------------


@engine
def test_closing_a_stream_aborts_its_engine_request(default_server, default_model_name):
    base = default_server.base_url
    before = _aborted(base)
    body = {"model": default_model_name, "stream": True, **LONG}
    with httpx.stream("POST", base + "/v1/completions", json=body,
                      headers={"X-Request-Id": "ops-leave-stream"}, timeout=60) as response:
        assert response.status_code == 200, response.read()
        # Keep the line iterator referenced: a dropped one would close the connection now.
        lines = response.iter_lines()
        seen: list[str] = []
        for line in lines:
            event = parse_sse_line(line)
            if event is None:
                continue
            seen.append(event.data if event.data is not None else f":{event.comment}")
            if event.content:
                break  # a generated token: the engine is running the request now
        else:
            pytest.fail(f"the stream ended before its first token; its last events: {seen[-5:]}")
    # Leaving the block closed the connection mid-stream, minutes before the 3,000 tokens; the
    # abort counter and the access log tell an aborted request from one that ran to its end.
    entry = default_server.access_log_entry("ops-leave-stream")
    assert entry["aborted"] == "disconnect", entry
    _assert_engine_idle_at_once(base)
    _assert_abort_counted(base, before)


@engine
def test_dropping_a_non_streaming_request_aborts_its_engine_request(default_server, default_model_name):
    base = default_server.base_url
    before = _aborted(base)

    async def leave_while_generating() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            request = asyncio.create_task(
                client.post("/v1/completions", json={"model": default_model_name, **LONG},
                            headers={"X-Request-Id": "ops-leave-plain"})
            )
            await asyncio.to_thread(_wait_running, base)
            request.cancel()  # httpx drops the connection of a cancelled request
            with contextlib.suppress(asyncio.CancelledError):
                await request

    asyncio.run(leave_while_generating())
    _assert_engine_idle_at_once(base)
    _assert_abort_counted(base, before)
    line = default_server.access_log_entry("ops-leave-plain")
    assert (line["status"], line["aborted"]) == (499, "disconnect")


# --- the access log (request ids, body limits: tests/api/test_middleware.py, in process) ----------------


@engine
def test_the_access_log_has_one_json_line_per_request_without_prompt_or_output(default_server, default_model_name):
    marker = "walrus-kettle-42"
    response = httpx.post(default_server.base_url + "/v1/chat/completions",
                          json=_chat(default_model_name, f"Repeat {marker}", max_tokens=6, temperature=0),
                          headers={"X-Request-Id": "ops-access-log"}, timeout=60)
    entry = default_server.access_log_entry("ops-access-log")  # waits for the line
    default_server.access_log_barrier()  # a second line for it, were there one, is in the log by now
    assert len(default_server.access_log_lines("ops-access-log")) == 1
    assert entry["status"] == 200 and entry["path"] == "/v1/chat/completions"
    assert entry["completion_tokens"] == response.json()["usage"]["completion_tokens"]
    assert entry["prompt_tokens"] == response.json()["usage"]["prompt_tokens"]
    assert entry["finish_reasons"] and entry["latency_s"] > 0 and entry["ttft_s"] is not None
    assert "prompt" not in entry and "output" not in entry
    assert marker not in default_server.log_text()


# --- metrics ----------------------------------------------------------------------------------

CONTRACT_FAMILIES = {
    "airoboros_requests_total",  # by route and status
    "airoboros_finish_reasons_total",  # by route and finish reason
    "airoboros_stop_reasons_total",  # eos, </s>, USER:, client stop, length
    "airoboros_request_latency_seconds",
    "airoboros_time_to_first_token_seconds",
    "airoboros_time_per_output_token_seconds",
    "airoboros_prompt_tokens_total",
    "airoboros_completion_tokens_total",
    "airoboros_requests_in_flight",
    "airoboros_requests_rejected_total",
    "airoboros_requests_aborted_total",
    "airoboros_history_messages_dropped_total",
}
VLLM_SERIES = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}


@engine
def test_metrics_show_the_contract_beside_vllm_series(default_server, default_model_name):
    base = default_server.base_url
    # ignore_eos: a sampled answer to "Hi" could otherwise end within its 3 tokens.
    body = _chat(default_model_name, "Hi", max_tokens=3, ignore_eos=True)
    response = httpx.post(base + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    text = scrape(base)
    assert CONTRACT_FAMILIES <= metric_families(text), CONTRACT_FAMILIES - metric_families(text)
    assert VLLM_SERIES <= metric_families(text), VLLM_SERIES - metric_families(text)
    route = "/v1/chat/completions"
    assert metric_value(text, "airoboros_requests_total", route=route, status="200") >= 1
    assert metric_value(text, "airoboros_finish_reasons_total", route=route, finish_reason="length") >= 1
    assert metric_value(text, "airoboros_stop_reasons_total", reason="length") >= 1
    assert metric_value(text, "airoboros_request_latency_seconds_count", route=route) >= 1
    assert metric_value(text, "airoboros_time_to_first_token_seconds_count", route=route) >= 1
    assert metric_value(text, "airoboros_completion_tokens_total", route=route) >= 3


# --- HTTP keep-alive --------------------------------------------------------------------------


def test_keep_alive_timeout_defaults_above_load_balancer_idle_timeouts():
    from server.ops.runner import FLUSH_GRACE_S, uvicorn_config
    from server.settings import Settings

    settings = Settings()
    config = uvicorn_config(settings, app=None)
    assert settings.keep_alive_timeout == 75
    assert config.timeout_keep_alive == 75  # AWS ALB and GCP default idle: 60 s; nginx upstream: 60 s
    assert config.timeout_graceful_shutdown == settings.drain_timeout + FLUSH_GRACE_S


@engine
def test_sigusr1_writes_every_threads_stack_to_the_log_and_serving_goes_on(default_server, default_model_name):
    logged_before = len(default_server.log_text())
    os.kill(default_server.process.pid, signal.SIGUSR1)
    # The dump is written at once; the wait ends when it is there, bounded for CI's stalls.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "server/serve.py" not in default_server.log_text()[logged_before:]:
        time.sleep(0.1)
    dump = default_server.log_text()[logged_before:]
    # The event loop's thread (in the runner) and the others, e.g. the engine loader's pool.
    assert "server/serve.py" in dump, dump[-3000:]
    assert dump.count("(most recent call first)") >= 2, dump[-3000:]
    after = httpx.post(
        default_server.openai_base_url + "/chat/completions",
        json=_chat(default_model_name, "Hi", max_tokens=4),
        timeout=60,
    )
    assert after.status_code == 200, after.text
    assert default_server.process.poll() is None
