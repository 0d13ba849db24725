"""`airoboros-server chat` driven in tmux as a person would, against the shared real server
(embedded SmolLM2 model, `default_server`).

What the client sent is judged on the server's side: its prompt-token counter grows by exactly
the tokens of the prompt `/v1/chat/render` makes of the request the test expects, and the
rendered prompt the client shows (`/prompt`) comes from the server. Answers are greedy and short
(`--max-new-tokens`) to keep the module fast on two cores.
"""

from __future__ import annotations

import json
import shlex

import httpx
import pytest

from tests.support.chat_terminal import answer_under_way, chat_terminal, last_answer, prompt_count, send_and_wait
from harness.load import metric_value, scrape, wait_for_metric

pytestmark = pytest.mark.engine

CHAT = "/v1/chat/completions"
ANSWER_TIMEOUT_S = 180.0  # a short greedy answer on a loaded 2-core machine
# Waits for what comes at once (the prompt after Ctrl-C or a command, a metric's update): long,
# because a CI machine busy generating has stalled this process for tens of seconds; a wait
# ends as soon as its condition holds, so a passing run never spends it.
PROMPT_TIMEOUT_S = 90.0
SHORT = ("--temperature", "0", "--max-new-tokens", "12")
BLUEBERRY_QUESTION = "What color are blueberries now? Cite your sources."
BLUEBERRY_BLOCK = (
    "BEGININPUT\nBEGINCONTEXT\ndate: 2021-01-01\nurl: https://web.site/123\nENDCONTEXT\n"
    "Blueberries are now green.\nENDINPUT\nBEGININSTRUCTION\n"
    f"{BLUEBERRY_QUESTION}\nENDINSTRUCTION"
)


def metric(server, name: str, **labels: str) -> float:
    return metric_value(scrape(server.base_url), name, **labels)


def render(server, model: str, messages: list[dict], **extensions) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": 12, "history": "fit", **extensions}
    response = httpx.post(server.base_url + "/v1/chat/render", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


class PromptTokens:
    """The server's prompt-token counter for chat: what one request's prompt held."""

    def __init__(self, server) -> None:
        self.server = server
        self.before = metric(server, "airoboros_prompt_tokens_total", route=CHAT)

    def of_next_request(self) -> float:
        # Counted when the request finishes, which may be a moment after the client's prompt.
        met, value, _ = wait_for_metric(
            self.server.base_url, "airoboros_prompt_tokens_total", lambda v: v > self.before, PROMPT_TIMEOUT_S, route=CHAT
        )
        assert met, "the server counted no prompt tokens for the question"
        return value - self.before


def save(terminal, path) -> list[dict]:
    screen = send_and_wait(terminal, f"/save {shlex.quote(str(path))}", PROMPT_TIMEOUT_S)
    assert "[chat] wrote " in screen, screen
    return json.loads(path.read_text())


def ask(terminal, question: str) -> str:
    screen = send_and_wait(terminal, question, ANSWER_TIMEOUT_S)
    answer = last_answer(screen)
    assert answer, f"no answer to {question!r}:\n{screen}"
    return answer


# --- a question and its streamed answer ----------------------------------------------------------


def test_a_question_gets_its_answer_streamed(default_server):
    with chat_terminal(default_server.base_url, "--temperature", "0", "--max-new-tokens", "24") as terminal:
        before = prompt_count(terminal.screen())
        terminal.submit("Write a short poem about the sea.")
        seen: list[str] = []

        def answered(screen: str) -> bool:
            if "ASSISTANT: " in screen.split("Write a short poem about the sea.")[-1]:
                seen.append(last_answer(screen))
            return prompt_count(screen) > before

        screen = terminal.wait_for(answered, ANSWER_TIMEOUT_S, "the answer")
    final = last_answer(screen)
    assert final, screen
    # The screen showed the answer growing: some earlier view held only a beginning of it.
    partial = [text for text in seen if text and len(text) < len(final) and final.startswith(text)]
    assert partial, f"never saw a partial answer; views: {seen!r}"
    assert "[chat] the answer stopped at the token limit (24)" in screen


# --- history ------------------------------------------------------------------------------------


def test_the_second_turn_carries_the_first(default_server, default_model_name, tmp_path):
    first, second = "My name is Ada. Say hello to me.", "What is my name?"
    with chat_terminal(default_server.base_url, *SHORT) as terminal:
        first_answer = ask(terminal, first)
        counter = PromptTokens(default_server)
        second_answer = ask(terminal, second)
        sent_tokens = counter.of_next_request()
        screen = send_and_wait(terminal, "/prompt And now?", 60)
        saved = save(terminal, tmp_path / "chat.json")
    assert [m["content"] for m in saved] == [first, first_answer, second, second_answer]
    carried = render(default_server, default_model_name, saved[:3])
    assert sent_tokens == carried["num_tokens"]
    assert sent_tokens > render(default_server, default_model_name, saved[2:3])["num_tokens"]
    # /prompt: the server's render of the next turn, with both exchanges before it.
    assert (
        f"USER: {first} ASSISTANT: {first_answer}</s>USER: {second} ASSISTANT: {second_answer}</s>"
        "USER: And now? ASSISTANT:"
    ) in screen


def test_no_history_sends_each_question_alone(default_server, default_model_name, tmp_path):
    first, second = "My name is Ada. Say hello to me.", "What is my name?"
    with chat_terminal(default_server.base_url, *SHORT, "--no-history") as terminal:
        ask(terminal, first)
        counter = PromptTokens(default_server)
        ask(terminal, second)
        sent_tokens = counter.of_next_request()
        saved = save(terminal, tmp_path / "chat.json")
    assert sent_tokens == render(default_server, default_model_name, [{"role": "user", "content": second}])["num_tokens"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]  # still all kept


# --- input ----------------------------------------------------------------------------------------


def test_a_pasted_block_and_a_hand_written_line_are_one_message(default_server, tmp_path):
    pasted = "Line one: apples.\nLine two: pears.\nLine three: plums."
    with chat_terminal(default_server.base_url, *SHORT) as terminal:
        requests_before = metric(default_server, "airoboros_requests_total", route=CHAT)
        terminal.paste(pasted)
        terminal.send_keys("Escape", "Enter")  # Alt+Enter: a new line by hand
        terminal.type("Which fruit comes last?")
        send_and_wait(terminal, None, ANSWER_TIMEOUT_S)
        saved = save(terminal, tmp_path / "chat.json")
        wait_for_metric(
            default_server.base_url, "airoboros_requests_total", lambda v: v > requests_before, PROMPT_TIMEOUT_S, route=CHAT
        )
        assert metric(default_server, "airoboros_requests_total", route=CHAT) - requests_before == 1
    assert saved[0] == {"role": "user", "content": pasted + "\nWhich fruit comes last?"}
    assert [m["role"] for m in saved] == ["user", "assistant"]


# --- Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_stops_the_answer_the_server_aborts_it_and_the_chat_goes_on(default_server):
    base = default_server.base_url
    # The card's 2,048 tokens: the greedy count runs to the limit (tens of seconds here), so no
    # stall of the test process can let the answer end before Ctrl-C reaches it; the server's
    # abort is what ends it early.
    with chat_terminal(base, "--temperature", "0", "--max-new-tokens", "2048") as terminal:
        aborted_before = metric(default_server, "airoboros_requests_aborted_total", reason="disconnect")
        prompts = prompt_count(terminal.screen())
        question = "Count from 1 to 500, separated by commas."
        terminal.submit(question)
        terminal.wait_for(answer_under_way(question, 4), ANSWER_TIMEOUT_S, "the answer's start")
        running, _, _ = wait_for_metric(base, "vllm:num_requests_running", lambda v: v >= 1, PROMPT_TIMEOUT_S)
        terminal.send_keys("C-c")
        screen = terminal.wait_for(lambda s: prompt_count(s) > prompts, PROMPT_TIMEOUT_S, "the prompt after Ctrl-C")
        assert running and "[stopped]" in screen, f"the answer ended before Ctrl-C reached it:\n{screen}"
        idle, value, waited = wait_for_metric(base, "vllm:num_requests_running", lambda v: v == 0, PROMPT_TIMEOUT_S)
        assert idle, f"vllm:num_requests_running still {value} {waited:.1f} s after Ctrl-C"
        assert metric(default_server, "airoboros_requests_aborted_total", reason="disconnect") == aborted_before + 1
        assert "Traceback" not in screen
        # The chat goes on: the next question gets its answer streamed. Its history holds the
        # stopped count, which the greedy answer may go on with for up to 2,048 tokens, so a
        # second Ctrl-C ends it if it is still going and brings the prompt back.
        prompts = prompt_count(screen)
        follow_up = "What is the capital of France?"
        terminal.submit(follow_up)
        screen = terminal.wait_for(answer_under_way(follow_up, 4), ANSWER_TIMEOUT_S, "the next answer's start")
        if prompt_count(screen) == prompts:
            terminal.send_keys("C-c")
        screen = terminal.wait_for(lambda s: prompt_count(s) > prompts, PROMPT_TIMEOUT_S, "the prompt after it")
        assert last_answer(screen)
        assert "Traceback" not in screen and "error:" not in screen.split(follow_up)[-1]


# --- documents and PLAINFORMAT --------------------------------------------------------------------


def test_doc_with_metadata_renders_the_input_block_byte_for_byte(default_server, default_model_name, tmp_path):
    document = tmp_path / "blueberries.txt"
    document.write_text("Blueberries are now green.\n")
    with chat_terminal(default_server.base_url, *SHORT) as terminal:
        add_document = f"/doc {shlex.quote(str(document))} date=2021-01-01 url=https://web.site/123"
        send_and_wait(terminal, add_document, PROMPT_TIMEOUT_S)
        screen = send_and_wait(terminal, "/docs", PROMPT_TIMEOUT_S)
        assert f"[chat] 1. {document} (27 characters) [date=2021-01-01, url=https://web.site/123]" in screen
        screen = send_and_wait(terminal, f"/prompt {BLUEBERRY_QUESTION}", 60)
        counter = PromptTokens(default_server)
        ask(terminal, BLUEBERRY_QUESTION)
        sent_tokens = counter.of_next_request()
        saved = save(terminal, tmp_path / "chat.json")
        after = send_and_wait(terminal, "/docs", PROMPT_TIMEOUT_S)
    assert f"USER: {BLUEBERRY_BLOCK} ASSISTANT:" in screen
    expected = render(
        default_server, default_model_name, [{"role": "user", "content": BLUEBERRY_QUESTION}],
        documents=[{"text": "Blueberries are now green.\n", "metadata": {"date": "2021-01-01", "url": "https://web.site/123"}}],
    )
    assert f"[chat] {expected['num_tokens']} tokens of 8192" in screen
    assert sent_tokens == expected["num_tokens"]
    assert saved[0] == {"role": "user", "content": BLUEBERRY_BLOCK}  # kept as the model saw it
    assert "[chat] no documents attached" in after  # used up by that question


def test_plain_toggles_plainformat(default_server, default_model_name, tmp_path):
    question = "Write a Python function that adds two numbers."
    with chat_terminal(default_server.base_url, *SHORT) as terminal:
        assert "[chat] PLAINFORMAT on" in send_and_wait(terminal, "/plain", PROMPT_TIMEOUT_S)
        screen = send_and_wait(terminal, f"/prompt {question}", 60)
        counter = PromptTokens(default_server)
        ask(terminal, question)
        sent_tokens = counter.of_next_request()
        saved = save(terminal, tmp_path / "chat.json")
        assert "[chat] PLAINFORMAT off" in send_and_wait(terminal, "/plain", PROMPT_TIMEOUT_S)
        off_screen = send_and_wait(terminal, f"/prompt {question}", 60)
    assert f"USER: {question} PLAINFORMAT ASSISTANT:" in screen
    assert f"USER: {question} ASSISTANT:" in off_screen.split("PLAINFORMAT off")[-1]
    user = {"role": "user", "content": question}
    assert sent_tokens == render(default_server, default_model_name, [user], plainformat=True)["num_tokens"]
    assert saved[0] == {"role": "user", "content": f"{question} PLAINFORMAT"}


# --- /save ----------------------------------------------------------------------------------------


def test_save_writes_the_conversation_as_openai_messages(default_server, default_model_name, tmp_path):
    system = "You answer in one short sentence."
    with chat_terminal(default_server.base_url, *SHORT, "--system", system) as terminal:
        answer = ask(terminal, "What is the capital of France?")
        saved = save(terminal, tmp_path / "chat.json")
        screen = send_and_wait(terminal, f"/save {tmp_path / 'missing' / 'chat.json'}", PROMPT_TIMEOUT_S)
    assert saved == [
        {"role": "system", "content": system},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": answer},
    ]
    # Valid messages for the server too: the saved chat plus a question renders.
    render(default_server, default_model_name, saved + [{"role": "user", "content": "And of Italy?"}])
    assert "error: cannot write" in screen and not (tmp_path / "missing").exists()


# --- long chats -----------------------------------------------------------------------------------


def test_a_long_chat_drops_older_turns_and_says_so(default_server):
    # 8192 - 8172 leaves 20 prompt tokens: the first question fits alone, not with its answer.
    with chat_terminal(default_server.base_url, "--temperature", "0", "--max-new-tokens", "8172", "--system", "") as terminal:
        for question in ("Count from 1 to 500.", "Go on."):
            prompts = prompt_count(terminal.screen())
            terminal.submit(question)
            # The greedy answer's length differs between CPU kinds (AVX2, AVX-512, AVX-512 BF16
            # kernels round differently): a long one is stopped with Ctrl-C, a short one ends by
            # itself. Either way the first exchange no longer fits beside the second question.
            screen = terminal.wait_for(
                lambda s, before=prompts, asked=question: prompt_count(s) > before or answer_under_way(asked, 30)(s),
                ANSWER_TIMEOUT_S, f"the answer to {question!r}",
            )
            if prompt_count(screen) == prompts:
                terminal.send_keys("C-c")
                screen = terminal.wait_for(
                    lambda s, before=prompts: prompt_count(s) > before, PROMPT_TIMEOUT_S, "the prompt after Ctrl-C"
                )
    notes = screen.split("Go on.")[-1]
    assert "[chat] 2 older messages no longer fit the context: this question goes without them" in notes


def test_max_new_tokens_beyond_the_context_answers_in_the_room_left(default_server, default_model_name):
    question = "Count from 1 to 500, separated by commas."
    with chat_terminal(default_server.base_url, "--temperature", "0", "--max-new-tokens", "9000") as terminal:
        prompts = prompt_count(terminal.screen())
        terminal.submit(question)
        screen = terminal.wait_for(
            lambda s: prompt_count(s) > prompts or answer_under_way(question, 6)(s),
            ANSWER_TIMEOUT_S, "the answer",
        )
        if prompt_count(screen) == prompts:  # no need to wait for thousands of tokens
            terminal.send_keys("C-c")
            screen = terminal.wait_for(lambda s: prompt_count(s) > prompts, PROMPT_TIMEOUT_S, "the prompt after Ctrl-C")
    alone = render(default_server, default_model_name, [{"role": "user", "content": question}])
    assert f"[chat] the question leaves room for only {8192 - alone['num_tokens']} answer tokens" in screen
    assert "error:" not in screen
