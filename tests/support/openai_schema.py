"""Validate our responses against OpenAI's published OpenAPI schemas (../shared/data).

The description says OpenAPI 3.1 but still marks many fields with 3.0's `nullable: true`,
which JSON Schema ignores; those are rewritten to allow null before validating.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT_URI = "urn:openai-openapi"

# The schema of each Responses API stream event type, in the order a stream sends them.
RESPONSE_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
}


def _allow_null(node: Any) -> Any:
    if isinstance(node, dict):
        node = {key: _allow_null(value) for key, value in node.items()}
        if node.pop("nullable", False):
            if "type" in node:
                types = node["type"] if isinstance(node["type"], list) else [node["type"]]
                node["type"] = [*types, "null"] if "null" not in types else types
                if "enum" in node and None not in node["enum"]:
                    node["enum"] = [*node["enum"], None]
            else:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_allow_null(item) for item in node]
    return node


@functools.lru_cache(maxsize=2)
def _registry(path: str) -> Registry:
    document = _allow_null(yaml.load(Path(path).read_text(), Loader=yaml.CSafeLoader))
    return Registry().with_resource(DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT202012))


class OpenAISchemas:
    def __init__(self, path: Path) -> None:
        self.registry = _registry(str(path))

    def validator(self, name: str) -> Draft202012Validator:
        schema = {"$ref": f"{DOCUMENT_URI}#/components/schemas/{name}"}
        return Draft202012Validator(schema, registry=self.registry)

    def errors(self, name: str, instance: Any) -> list[str]:
        return [
            f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
            for error in self.validator(name).iter_errors(instance)
        ]

    def assert_valid(self, name: str, instance: Any) -> None:
        problems = self.errors(name, instance)
        assert not problems, f"response breaks OpenAI's {name} schema:\n" + "\n".join(problems[:10])
