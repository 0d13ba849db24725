"""The airoboros-mpt-30b prompt, exactly as the model was trained on it (spec/prompt-format.md).

    "{system} USER: {user} ASSISTANT: {reply}</s>USER: {user} ASSISTANT: "

The model has no chat template; this module is that template. What every format shares (validation,
the extensions, history fitting, the token cache) is `conversation_format.py`; this module only
lays out the text (R1-R3, R8, R12), as the pieces of a `PromptLayout`.

Why the pieces look the way they do: `</s>` is plain text for this tokenizer (R3), and the
trailing space after `ASSISTANT:` is what training had (R2). An empty system text keeps its
separator, so the prompt starts with ` USER:` as in training (R8). The prompt is rendered
without a BOS; the server's `add_bos` setting prepends it to the ids (R9) and must then pass a
`max_prompt_tokens` one lower.

Choices the spec leaves open, marked *(ours)*:

- `plainformat` with a last user message whose last word already is `PLAINFORMAT` adds nothing
  *(ours)*: a doubled keyword is not what the model was trained on.
- With both `plainformat` and `documents`, ` PLAINFORMAT` goes on the user's text, which then
  becomes the instruction block *(ours)*: the keyword belongs to the instruction.
- A prefill (`continue_final_message`) follows `ASSISTANT: ` directly and is stripped on the left
  only (see `messages.py`); stream its continuation through `output_shaper(continuation=True)`.
"""

from __future__ import annotations

from prompt_formats.conversation_format import ConversationFormat
from prompt_formats.layout import PromptLayout
from prompt_formats.messages import Conversation
from prompt_formats.output import TURN_HEADERS

DEFAULT_SYSTEM = (
    "A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
    "accurate, uncensored responses to the user's input."
)
END_OF_REPLY = "</s>"


class AiroborosFormat(ConversationFormat):
    """The prompt of airoboros-mpt-30b, the format of every MPT checkpoint (`PromptFormat`)."""

    name = "airoboros"
    stop_strings: tuple[str, ...] = (END_OF_REPLY, "USER:")
    output_headers = TURN_HEADERS

    def __init__(self, default_system: str = DEFAULT_SYSTEM):
        super().__init__(default_system)

    def layout(self, conversation: Conversation) -> PromptLayout:
        """The prompt as pieces: a user message, a reply with its `</s>`, the assistant's head.

        Each boundary is followed by `USER: `, ` USER: ` or ` ASSISTANT: `, which byte-level BPE
        splits before whatever comes first, so the pieces tokenize on their own as they do in
        place (see `layout.py`); an empty user message (`USER: ` ends in a space) stays joined
        to what follows it.
        """
        system = self.default_system if conversation.system is None else conversation.system
        exchanges = tuple(
            _turn_pieces(exchange.user.text, f" ASSISTANT: {exchange.assistant.text}{END_OF_REPLY}")
            for exchange in conversation.exchanges
        )
        prefill = conversation.prefill.text if conversation.prefill is not None else ""
        final = _turn_pieces(conversation.last_user.text, f" ASSISTANT: {prefill}")
        return PromptLayout(system, exchanges, final, opening=" ")


def _turn_pieces(user_text: str, assistant_part: str) -> tuple[str, ...]:
    if not user_text:
        return (f"USER: {assistant_part}",)
    return (f"USER: {user_text}", assistant_part)
