"""`airoboros-server chat` when the server cannot answer: one plain line, a non-zero exit, no
traceback; and a loading server (503) waited out with a visible spinner.

Driven in tmux as a person would run it. The 401, unknown-model and 503 cases meet the real app
in its loading phase (`tests/support/loading_server.py`: no engine, starts in a second)."""

from __future__ import annotations

import re
import time

import pytest

from server.terminal.app import NEEDS_AIROBOROS, ChatApp
from server.terminal.client import ServerInfo
from server.terminal.commands import parse_line
from server.terminal.session import Session
from tests.support.chat_terminal import chat_terminal, prompt_count
from tests.support.loading_server import loading_server
from harness.server import free_port

KEY = "sk-chat-test-0123456789"
EXIT_TIMEOUT_S = 60.0
# Waits for what comes within seconds (a retry, the spinner, the prompt after Ctrl-C), bounded
# for a CI machine that stalls for tens of seconds; each ends as soon as its condition holds.
WAIT_S = 60.0


@pytest.fixture(scope="module")
def loading():
    with loading_server(api_keys=[KEY]) as server:
        yield server


def assert_one_error_line(screen: str, fragment: str) -> None:
    lines = [line for line in screen.splitlines() if line.startswith("airoboros-server chat: ")]
    assert len(lines) == 1 and fragment in lines[0], screen
    assert "Traceback" not in screen, screen


def test_an_unreachable_server_is_one_line_and_exit_1():
    url = f"http://127.0.0.1:{free_port()}"
    with chat_terminal(url, expect_prompt=False) as terminal:
        assert terminal.wait_for_exit(EXIT_TIMEOUT_S) == 1
        screen = terminal.screen()
    assert_one_error_line(screen, f"cannot reach the server at {url}: ")
    assert "Connection refused" in screen


def test_a_wrong_api_key_is_one_line_and_exit_1(loading):
    with chat_terminal(loading.base_url, api_key="sk-wrong", expect_prompt=False) as terminal:
        assert terminal.wait_for_exit(EXIT_TIMEOUT_S) == 1
        screen = terminal.screen()
    assert_one_error_line(screen, "the server refused the API key (401: ")
    assert "check --api-key or $OPENAI_API_KEY" in screen


def test_a_missing_api_key_says_how_to_give_one(loading):
    with chat_terminal(loading.base_url, expect_prompt=False) as terminal:
        assert terminal.wait_for_exit(EXIT_TIMEOUT_S) == 1
        screen = terminal.screen()
    assert_one_error_line(screen, "give one with --api-key or $OPENAI_API_KEY")


def test_an_unknown_model_names_the_served_ones(loading):
    with chat_terminal(loading.base_url, "--model", "gpt-nope", api_key=KEY, expect_prompt=False) as terminal:
        assert terminal.wait_for_exit(EXIT_TIMEOUT_S) == 1
        screen = terminal.screen()
    assert_one_error_line(screen, "model 'gpt-nope' is not served there; it serves: smollm2-135m-instruct")


def test_a_loading_server_is_waited_out_with_a_spinner_until_ctrl_c(loading):
    route = "/v1/chat/completions"
    before = loading.requests_answered(route, 503)
    with chat_terminal(loading.base_url, api_key=KEY) as terminal:
        terminal.submit("Hello?")
        terminal.wait_for_text("the server is unavailable (503: The model is still loading", 30)
        # The client retries at the server's Retry-After (5 s), the spinner counting the wait.
        deadline = time.monotonic() + WAIT_S
        while loading.requests_answered(route, 503) - before < 2:
            assert time.monotonic() < deadline, f"no retry in {WAIT_S:.0f} s:\n{terminal.screen()}"
            time.sleep(0.1)
        terminal.wait_for(lambda s: re.search(r"retrying every 5 s, (?:[5-9]|[1-9]\d+) s so far", s) is not None, WAIT_S, "the wait's time")
        prompts = prompt_count(terminal.screen())
        terminal.send_keys("C-c")
        screen = terminal.wait_for(lambda s: prompt_count(s) > prompts, WAIT_S, "the prompt after Ctrl-C")
        assert "[stopped]" in screen and "Traceback" not in screen
        # A command's wait (/prompt renders on the server) stops the same way.
        prompts = prompt_count(screen)
        terminal.submit("/prompt Hello?")
        terminal.wait_for(lambda s: "the server is unavailable (503" in s.split("/prompt Hello?")[-1], 30, "the /prompt wait")
        terminal.send_keys("C-c")
        screen = terminal.wait_for(lambda s: prompt_count(s) > prompts, WAIT_S, "the prompt after Ctrl-C")
        assert screen.count("[stopped]") == 2 and "Traceback" not in screen
        terminal.send_keys("C-d")
        assert terminal.wait_for_exit(EXIT_TIMEOUT_S) == 0


def test_a_server_that_is_not_airoboros_says_which_commands_need_one(capsys):
    server = ServerInfo(model="gpt-x", models=("gpt-x",), prompt_format=None, max_model_len=None)
    session = Session(model="gpt-x", temperature=0.5, max_new_tokens=2048, prompt_format=None)
    app = ChatApp(client=None, server=server, session=session, reader=None)  # type: ignore[arg-type]
    for line in ("/doc notes.txt", "/plain", "/prompt Hi"):
        assert app.handlers[parse_line(line).name](parse_line(line)) is True
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"error: /{name} {NEEDS_AIROBOROS}" for name in ("doc", "plain", "prompt")]
    assert session.request("Hi").extensions == {}
