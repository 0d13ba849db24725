"""ChatML, the format of the embedded stand-in model (SmolLM2-135M-Instruct's own chat template).

    "<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n"
    "<|im_start|>assistant\\n{reply}<|im_end|>\\n ... <|im_start|>assistant\\n"

The stand-in was trained on this template and ends its turn with `<|im_end|>`, its EOS token, so
the engine stops it there (R10's EOS stop). Under the airoboros prompt it never ends a turn: a
first answer would run to `max_tokens`. MPT checkpoints keep the airoboros format; the server
chooses by model (`Settings.prompt_format`, `auto`).

The text equals what SmolLM2's Jinja template (in its GGUF file) renders for the same validated
messages; a test compares the two. Everything else (validation, documents, PLAINFORMAT, history
fitting) is `conversation_format.py`'s, as for airoboros.

Choices, marked *(ours)*:

- Messages are validated and stripped as for airoboros (R4-R7); the template itself would keep
  outer whitespace. A system message replaces the default system text, as the template does.
- A prefill (`continue_final_message`) follows `<|im_start|>assistant\\n` directly.
- The turn markers are special tokens that the engine never writes into text, so there are no
  stop strings and no header fragments to drop: the output is only stripped.
"""

from __future__ import annotations

from prompt_formats.conversation_format import ConversationFormat
from prompt_formats.layout import PromptLayout
from prompt_formats.messages import Conversation

# SmolLM2-135M-Instruct's default system text, from its chat template.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
START, END = "<|im_start|>", "<|im_end|>"


class ChatMLFormat(ConversationFormat):
    """`<|im_start|>role\\ncontent<|im_end|>` turns (`PromptFormat`)."""

    name = "chatml"
    stop_strings: tuple[str, ...] = ()

    def __init__(self, default_system: str = SMOLLM2_SYSTEM):
        super().__init__(default_system)

    def layout(self, conversation: Conversation) -> PromptLayout:
        """Pieces that end on `<|im_end|>` and start with the newline before `<|im_start|>`.

        A tokenizer splits its special tokens out before anything else, so a boundary next to
        one tokenizes the same in place as apart, and no piece but the last ends in whitespace
        (`layout.py`).
        """
        system = self.default_system if conversation.system is None else conversation.system
        exchanges = tuple(
            (_turn("user", exchange.user.text), _turn("assistant", exchange.assistant.text))
            for exchange in conversation.exchanges
        )
        prefill = conversation.prefill.text if conversation.prefill is not None else ""
        final = (_turn("user", conversation.last_user.text), f"\n{START}assistant\n{prefill}")
        return PromptLayout(f"{START}system\n{system}{END}", exchanges, final)


def _turn(role: str, text: str) -> str:
    return f"\n{START}{role}\n{text}{END}"
