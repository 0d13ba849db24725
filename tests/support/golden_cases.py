"""The golden cases G1-G10 of spec/prompt-format.md as data, shared by the pure renderer tests
and the tests that send the same cases through a running server's /v1/chat/render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SYSTEM = (
    "A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
    "accurate, uncensored responses to the user's input."
)

G4_QUESTION = "What color are blueberries now? Where did Springfield open its library? Cite your sources."
G4_DOCUMENTS = [
    {
        "text": "In a shocking turn of events, blueberries are now green, but will be sticking with the same name.",
        "metadata": {"date": "2021-01-01", "url": "https://web.site/123"},
    },
    {
        "text": "The town of Springfield opened a new public library on Main Street.",
        "metadata": {"date": "2022-03-15", "author": "Jane Doe"},
    },
]
G4_CONTENT = (
    "BEGININPUT\nBEGINCONTEXT\ndate: 2021-01-01\nurl: https://web.site/123\nENDCONTEXT\n"
    "In a shocking turn of events, blueberries are now green, but will be sticking with the same "
    "name.\nENDINPUT\nBEGININPUT\nBEGINCONTEXT\ndate: 2022-03-15\nauthor: Jane Doe\nENDCONTEXT\n"
    "The town of Springfield opened a new public library on Main Street.\nENDINPUT\n"
    "BEGININSTRUCTION\n" + G4_QUESTION + "\nENDINSTRUCTION"
)
G5_TASK = "Write a Python function that reverses a string."


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


@dataclass(frozen=True)
class GoldenCase:
    name: str
    messages: list[dict[str, Any]]
    # The exact prompt, or None when the case must be refused with `error_code`.
    prompt: str | None
    extensions: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None


GOLDEN_CASES = [
    GoldenCase("G1", [user("What is the capital of France?")],
               SYSTEM + " USER: What is the capital of France? ASSISTANT: "),
    GoldenCase("G2", [{"role": "system", "content": "You are a pirate. Answer in pirate speak."},
                      user("What is the capital of France?")],
               "You are a pirate. Answer in pirate speak. USER: What is the capital of France? ASSISTANT: "),
    GoldenCase("G3", [user("Hello!"), {"role": "assistant", "content": "Hi! How can I help you today?"},
                      user("Tell me a joke.")],
               SYSTEM + " USER: Hello! ASSISTANT: Hi! How can I help you today?</s>USER: Tell me a joke. ASSISTANT: "),
    GoldenCase("G4", [user(G4_CONTENT)], SYSTEM + " USER: " + G4_CONTENT + " ASSISTANT: "),
    GoldenCase("G4-documents", [user(G4_QUESTION)], SYSTEM + " USER: " + G4_CONTENT + " ASSISTANT: ",
               extensions={"documents": G4_DOCUMENTS}),
    GoldenCase("G5", [user(G5_TASK + " PLAINFORMAT")], SYSTEM + " USER: " + G5_TASK + " PLAINFORMAT ASSISTANT: "),
    GoldenCase("G5-plainformat", [user(G5_TASK)], SYSTEM + " USER: " + G5_TASK + " PLAINFORMAT ASSISTANT: ",
               extensions={"plainformat": True}),
    GoldenCase("G6", [{"role": "system", "content": ""}, user("Hello!")], " USER: Hello! ASSISTANT: "),
    GoldenCase("G7", [user("Summarize this list:\n- apples\n- pears\n\nThanks!\n")],
               SYSTEM + " USER: Summarize this list:\n- apples\n- pears\n\nThanks! ASSISTANT: "),
    # Issue 25 made tools first-class: a tool message is refused only when it answers no call.
    GoldenCase("G8", [user("What is 6*7? Use the calculator."), {"role": "tool", "content": "42"}],
               None, error_code="unexpected_tool_message"),
    GoldenCase("G9", [{"role": "system", "content": "You are terse."}, user("2+2?"),
                      {"role": "assistant", "content": "4"}, user("3+3?"),
                      {"role": "assistant", "content": "6"}, user("And 4+4?")],
               "You are terse. USER: 2+2? ASSISTANT: 4</s>USER: 3+3? ASSISTANT: 6</s>USER: And 4+4? ASSISTANT: "),
    GoldenCase("G10-ends-on-assistant", [user("Hello!"), {"role": "assistant", "content": "Hi!"}],
               None, error_code="last_message_not_user"),
    GoldenCase("G10-joined-users", [user("a"), user("b")], SYSTEM + " USER: a\nb ASSISTANT: "),
]
