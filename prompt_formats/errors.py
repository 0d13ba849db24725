"""The client mistakes a prompt format can find, as exceptions the server turns into HTTP 400.

Every error carries what an OpenAI-style error body needs (`message`, `param`, `code`), so the
server maps it without knowing which rule failed. The codes are snake_case and stable: clients
may branch on them. Every code this package raises, with its param:

- `empty_messages` (messages) — the message list is empty.
- `invalid_message` (messages) — a message is not an object, or its `role` is not a string.
- `unsupported_role` (messages) — a role other than system/developer/user/assistant (R5);
  the message quotes the role.
- `misplaced_system_message` (messages) — a system/developer message after the conversation
  began (R4).
- `invalid_content` (messages) — content missing, `null`, neither text nor a list of parts, an
  empty part list, or a text part without a string `text` (R7).
- `unsupported_content_type` (messages) — a content part other than `text`: image, audio,
  file (R7).
- `unsupported_tool_calls` (messages) — an assistant message carrying the legacy
  `function_call` (R5).
- `invalid_tool_calls` (messages) — an assistant message's `tool_calls` malformed, or arguments
  that are not a string of JSON.
- `unexpected_tool_message` (messages) — a `tool` message that answers no call of the assistant
  message before it.
- `invalid_tools` (tools) — a malformed tool or two tools of one name.
- `unsupported_tool_type` (tools) — a tool type other than `function`; the message quotes it.
- `invalid_tool_choice` (tool_choice) — neither none/auto/required nor a function.
- `unknown_tool` (tool_choice) — `tool_choice` names a function that is not among the tools.
- `missing_user_message` (messages) — nothing but system messages.
- `first_message_not_user` (messages) — after the system part, the conversation starts with
  the assistant (R6).
- `last_message_not_user` (messages) — it ends with the assistant while
  `continue_final_message` is off (R6).
- `nothing_to_continue` (messages) — `continue_final_message` is on but the last message is a
  user message.
- `invalid_documents` (documents) — the `documents` extension is malformed or holds a delimiter
  line.
- `invalid_stop` (stop) — a client stop entry that is not a string.
- `invalid_history` (history) — a history policy other than error/fit/last.
- `context_length_exceeded` (messages) — the prompt does not fit, even after the history
  policy (R11); `ContextLengthExceeded` carries the counts.
"""

from __future__ import annotations


class PromptFormatError(ValueError):
    """A request the prompt format cannot render: the client's fault, never the server's."""

    def __init__(self, message: str, *, param: str | None = "messages", code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, param={self.param!r}, code={self.code!r})"


class ContextLengthExceeded(PromptFormatError):
    """The prompt needs more tokens than the context leaves for it.

    The counts are kept apart from the text because only the server knows the whole budget
    (its `max_tokens` and `max_model_len`) and builds the OpenAI-style message from them; the
    default message here is for callers that have nothing better.
    """

    def __init__(self, *, prompt_tokens: int, max_prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.max_prompt_tokens = max_prompt_tokens
        super().__init__(
            f"The prompt is {prompt_tokens} tokens long, but at most {max_prompt_tokens} tokens "
            "are left for it in this model's context. Shorten the messages, lower max_tokens, "
            "or send history='fit' to drop the oldest exchanges.",
            param="messages",
            code="context_length_exceeded",
        )
