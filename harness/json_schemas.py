"""Hypothesis strategies for the JSON Schemas tool parameters use: objects with enums, required
keys, nesting, arrays and numeric bounds, closed by `additionalProperties: false`.

Strings carry a `maxLength`: an unbounded string is valid at any length, so a random model may
write one until the token limit cuts the call, which says nothing about the constraint.
"""

from __future__ import annotations

from hypothesis import strategies as st

NAMES = ["city", "unit", "count", "when", "tags", "limit", "query", "deep", "flag", "score"]


def _bounded_integer(low: int, width: int) -> dict:
    return {"type": "integer", "minimum": low, "maximum": low + width}


def _bounded_number(low: int, width: int) -> dict:
    return {"type": "number", "minimum": low, "maximum": low + width}


leaves = st.one_of(
    st.lists(st.sampled_from(["red", "green", "a b", "Zürich", 1, 2.5, True, None]), min_size=1, max_size=4, unique=True)
    .map(lambda values: {"enum": values}),
    st.builds(_bounded_integer, st.integers(-100, 100), st.integers(0, 50)),
    st.builds(_bounded_number, st.integers(-10, 10), st.integers(1, 20)),
    st.just({"type": "boolean"}),
    st.integers(1, 12).map(lambda length: {"type": "string", "maxLength": length}),
)


@st.composite
def objects(draw, children) -> dict:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    properties = {name: draw(children) for name in names}
    required = draw(st.lists(st.sampled_from(names), unique=True))
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


@st.composite
def arrays(draw, children) -> dict:
    low = draw(st.integers(0, 2))
    return {"type": "array", "items": draw(children), "minItems": low, "maxItems": low + draw(st.integers(0, 2))}


def nested(children):
    return st.one_of(objects(children), arrays(children))


# Tool parameters: an object at the top, values nested up to a few levels.
parameters = objects(st.recursive(leaves, nested, max_leaves=5))
