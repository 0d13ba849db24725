"""The chat loop: read a message, run the command or ask the model, show the answer as it streams.

Ctrl-C while an answer streams closes the stream (the server sees the client leave and aborts the
request, freeing its slot) and returns to the prompt. What was shown of the stopped answer stays
in the conversation, as it would in a chat window; a question stopped before any answer word is
dropped, so the next request never holds two user turns in a row.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable

from prompt_formats import get_format

from server.terminal.attachments import AttachmentError, load_document
from server.terminal.client import AnswerStream, ChatError, ServerClient, ServerInfo, StatusError
from server.terminal.commands import SYSTEM_RESET, Command, CommandError, Question, help_text, parse_line
from server.terminal.options import ChatOptions, chat_options
from server.terminal.reader import InputReader
from server.terminal.session import ChatRequest, Session
from server.terminal.spinner import Spinner

PROGRAM = "airoboros-server chat"
ANSWER_PREFIX = "ASSISTANT: "
STOPPED_MARK = "[stopped]"
NOTE_PREFIX = "[chat] "  # the client's own lines, never mistaken for the model's (markdown uses "* ")
NEEDS_AIROBOROS = "needs an airoboros server (this one's /v1/models has no prompt_format)"


def info(text: str) -> None:
    print(f"{NOTE_PREFIX}{text}", flush=True)


def error(text: str) -> None:
    print(f"error: {text}", file=sys.stderr, flush=True)


def local_format_name(info_: ServerInfo) -> str | None:
    """The server's prompt format when this client knows it too (the extensions need it)."""
    if info_.prompt_format is None:
        return None
    try:
        fmt = get_format(info_.prompt_format)
    except KeyError:
        return None
    return info_.prompt_format if hasattr(fmt, "conversation") else None


class ChatApp:
    def __init__(self, client: ServerClient, server: ServerInfo, session: Session, reader: InputReader) -> None:
        self.client = client
        self.server = server
        self.session = session
        self.reader = reader
        self.handlers: dict[str, Callable[[Command], bool]] = {
            "doc": self.attach, "docs": self.list_docs, "clear-docs": self.clear_docs,
            "plain": self.toggle_plain, "history": self.toggle_history, "system": self.set_system,
            "reset": self.reset, "save": self.save, "prompt": self.show_prompt,
            "help": self.show_help, "exit": lambda _: False,
        }

    def run(self) -> int:
        self.greet()
        while True:
            try:
                text = self.reader.read()
            except KeyboardInterrupt:  # Ctrl-C while reading from a pipe
                return 130
            if text is None:
                return 0
            try:
                if not self.handle(text):
                    return 0
            except KeyboardInterrupt:  # Ctrl-C during a command's wait (/prompt on a loading server)
                print(STOPPED_MARK, flush=True)

    def handle(self, text: str) -> bool:
        """Run one submitted input; False to leave."""
        try:
            action = parse_line(text)
        except CommandError as problem:
            error(str(problem))
            return True
        if isinstance(action, Question):
            self.ask(action.text)
            return True
        if isinstance(action, Command):
            return self.handlers[action.name](action)
        return True

    def greet(self) -> None:
        server, session = self.server, self.session
        context = f", context {server.max_model_len} tokens" if server.max_model_len else ""
        fmt = f"prompt format {server.prompt_format}" if server.prompt_format else "not an airoboros server"
        info(f"{self.client.url}: model {server.model} ({fmt}{context})")
        info(
            f"temperature {session.temperature}, max new tokens {session.max_new_tokens}, "
            f"history {'on' if session.history else 'off'}, PLAINFORMAT {'on' if session.plainformat else 'off'}"
        )
        if not session.extensions_supported:
            info(f"/doc, /plain and /prompt {NEEDS_AIROBOROS}")
        info("/help lists the commands; Alt+Enter starts a new line; Ctrl-D leaves")

    # --- asking -------------------------------------------------------------------------------

    def ask(self, question: str, max_tokens: int | None = None) -> None:
        request = self.session.request(question, max_tokens=max_tokens)
        shown: list[str] = []
        answer: AnswerStream | None = None
        try:
            with Spinner("waiting for the answer; Ctrl-C stops") as spinner:
                answer = self.client.open_answer(request, progress=spinner.update)
                pieces = self.client.read_answer(answer)
                first = next(pieces, None)
            if answer.dropped_messages:
                info(
                    f"{answer.dropped_messages} older messages no longer fit the context: this "
                    "question goes without them"
                )
            print(ANSWER_PREFIX, end="", flush=True)
            for piece in itertools.chain([] if first is None else [first], pieces):
                shown.append(piece)
                print(piece, end="", flush=True)
            print(flush=True)
        except KeyboardInterrupt:
            print(f"\n{STOPPED_MARK}" if shown else STOPPED_MARK, flush=True)
            if shown:
                self.session.record(request, "".join(shown).strip())
            return
        except ChatError as problem:
            if shown:
                print(flush=True)
            if not (isinstance(problem, StatusError) and self.answer_in_room_left(problem, question, max_tokens)):
                error(str(problem))
            return
        finally:
            if answer is not None:
                answer.close()  # the connection goes; the server aborts a request whose client left
        self.session.record(request, "".join(shown).strip())
        if not "".join(shown).strip():
            info("the model ended its turn without a word")
        if answer is not None and answer.finish_reason == "length":
            info(f"the answer stopped at the token limit ({request.arguments['max_tokens']})")

    def answer_in_room_left(self, problem: StatusError, question: str, max_tokens: int | None) -> bool:
        """When the question alone leaves less than --max-new-tokens, answer in the room left."""
        if problem.code != "context_length_exceeded" or max_tokens is not None:
            return False
        if not self.session.extensions_supported or not self.server.max_model_len:
            return False
        try:
            rendered = self.client.render(self.session.request(question, max_tokens=1))
        except ChatError:
            return False
        room = self.server.max_model_len - int(rendered["num_tokens"])
        if room < 1:
            return False
        info(f"the question leaves room for only {room} answer tokens in the context")
        self.ask(question, max_tokens=room)
        return True

    # --- commands (each returns False to leave) ------------------------------------------------

    def needs_airoboros(self, command: Command) -> bool:
        if self.session.extensions_supported:
            return False
        error(f"/{command.name} {NEEDS_AIROBOROS}")
        return True

    def attach(self, command: Command) -> bool:
        if self.needs_airoboros(command):
            return True
        try:
            attachment = load_document(command.text or "", command.metadata)
        except AttachmentError as problem:
            error(str(problem))
            return True
        self.session.attachments.append(attachment)
        info(f"attached to the next question: {attachment.describe()}")
        return True

    def list_docs(self, _: Command) -> bool:
        if not self.session.attachments:
            info("no documents attached")
        for number, attachment in enumerate(self.session.attachments, 1):
            info(f"{number}. {attachment.describe()}")
        return True

    def clear_docs(self, _: Command) -> bool:
        count = len(self.session.attachments)
        self.session.attachments.clear()
        info(f"dropped {count} document{'s' if count != 1 else ''}")
        return True

    def toggle_plain(self, command: Command) -> bool:
        if self.needs_airoboros(command):
            return True
        self.session.plainformat = not self.session.plainformat if command.switch is None else command.switch
        info(f"PLAINFORMAT {'on' if self.session.plainformat else 'off'}")
        return True

    def toggle_history(self, command: Command) -> bool:
        if command.switch is not None:
            self.session.history = command.switch
        state = "on: earlier turns go with each question" if self.session.history else "off: each question goes alone"
        info(f"history {state}")
        return True

    def set_system(self, command: Command) -> bool:
        if command.text == SYSTEM_RESET:
            self.session.system = None
        elif command.text is not None:
            self.session.system = command.text
        shown = "the server's default" if self.session.system is None else repr(self.session.system)
        info(f"system prompt: {shown}")
        return True

    def reset(self, _: Command) -> bool:
        self.session.reset()
        info("conversation and documents forgotten")
        return True

    def save(self, command: Command) -> bool:
        try:
            count = self.session.save(command.text or "")
        except OSError as problem:
            error(f"cannot write {command.text}: {problem.strerror or problem}")
            return True
        info(f"wrote {count} messages to {command.text}")
        return True

    def show_prompt(self, command: Command) -> bool:
        if self.needs_airoboros(command):
            return True
        request: ChatRequest = self.session.request(command.text or "")
        try:
            rendered = self.client.render(request)
        except ChatError as problem:
            error(str(problem))
            return True
        print("----- prompt -----", rendered["prompt"], "----- end of prompt -----", sep="\n", flush=True)
        info(
            f"{rendered['num_tokens']} tokens of {rendered['max_model_len']}; "
            f"{rendered['dropped_messages']} older messages dropped to fit"
        )
        return True

    def show_help(self, _: Command) -> bool:
        print(help_text(), flush=True)
        info("Enter sends; Alt+Enter (or Esc, Enter) starts a new line; a pasted block is one message")
        info("Ctrl-C stops an answer; Ctrl-C or Ctrl-D at an empty prompt leaves; // sends a leading /")
        return True


def main(arguments: dict) -> int:
    """`airoboros-server chat`, from its parsed flags."""
    return run(chat_options(arguments))


def run(options: ChatOptions) -> int:
    client = ServerClient(options.url, options.api_key)
    try:
        server = client.connect(options.model)
    except ChatError as problem:
        print(f"{PROGRAM}: {problem}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    session = Session(
        model=server.model,
        temperature=options.temperature,
        max_new_tokens=options.max_new_tokens,
        system=options.system,
        history=options.history,
        prompt_format=local_format_name(server),
    )
    session.plainformat = options.plain and session.extensions_supported
    return ChatApp(client, server, session, InputReader()).run()
