"""The typed seam between the HTTP layer and the engine: no `Any` on the route → generation →
engine path, engine outputs read through protocols vLLM's classes satisfy, sampling built from
typed arguments, and engine errors that are the engine's own (api/ makes them OpenAI errors)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from harness.server import REPO_ROOT

# The path a generating request travels: its route, the serving glue, the services that build
# the prepared generation (and the sampling arguments), the encoders that read engine outputs,
# the generation package, and the engine's request-time modules. (Start-up code such as
# engine/args.py, the SSE transport's ASGI plumbing and the protocol models' JSON fields are
# not engine values and are not on it.)
SEAM_PATH = (
    "server/api/routes/generation.py",
    "server/api/serving.py",
    "server/api/tool_calls.py",
    "server/api/services/chat.py",
    "server/api/services/completions.py",
    "server/api/services/responses.py",
    "server/api/services/background.py",
    "server/api/services/sampling.py",
    "server/api/encoders/chat.py",
    "server/api/encoders/completions.py",
    "server/api/encoders/responses.py",
    "server/api/encoders/frames.py",
    "server/api/encoders/logprobs.py",
    "server/generation/driver.py",
    "server/generation/loop.py",
    "server/generation/outcome.py",
    "server/generation/prepared.py",
    "server/engine/engine.py",
    "server/engine/errors.py",
    "server/engine/outputs.py",
    "server/engine/sampling.py",
)
JSON_OBJECT_TYPES = {"dict", "Mapping"}


def _annotations(tree: ast.Module) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]
            found.extend(arg.annotation for arg in every if arg is not None and arg.annotation is not None)
            if node.returns is not None:
                found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return found


def _json_values(annotation: ast.expr) -> set[int]:
    """The `Any` nodes that are the values of a JSON object (`dict[str, Any]`, `Mapping[str, Any]`):
    the client's arbitrary JSON, not an engine value."""
    allowed = set()
    for node in ast.walk(annotation):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in JSON_OBJECT_TYPES
            and isinstance(node.slice, ast.Tuple)
            and len(node.slice.elts) == 2
            and isinstance(node.slice.elts[0], ast.Name)
            and node.slice.elts[0].id == "str"
            and isinstance(node.slice.elts[1], ast.Name)
            and node.slice.elts[1].id == "Any"
        ):
            allowed.add(id(node.slice.elts[1]))
    return allowed


def untyped_annotations(path: Path) -> list[str]:
    """`file:line: annotation` for every `Any` in an annotation that is not a JSON object's value."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for annotation in _annotations(tree):
        allowed = _json_values(annotation)
        for node in ast.walk(annotation):
            if isinstance(node, ast.Name) and node.id == "Any" and id(node) not in allowed:
                found.append(f"{path.relative_to(REPO_ROOT).as_posix()}:{node.lineno}: {ast.unparse(annotation)}")
    return found


def test_no_any_on_the_route_to_engine_path() -> None:
    missing = [name for name in SEAM_PATH if not (REPO_ROOT / name).is_file()]
    assert not missing, f"the seam path names files that do not exist: {missing}"
    found = [line for name in SEAM_PATH for line in untyped_annotations(REPO_ROOT / name)]
    assert found == [], "untyped values on the route → generation → engine path:\n" + "\n".join(found)


def test_the_counter_finds_an_any_that_is_not_json(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import Any\n"
        "def f(output: Any, body: dict[str, Any]) -> list[Any]: ...\n"
        "x: Mapping[str, Any]\n"
    )
    # untyped_annotations names paths relative to the checkout: put the sample there in spirit.
    tree = ast.parse(sample.read_text())
    counted = [
        node
        for annotation in _annotations(tree)
        for node in ast.walk(annotation)
        if isinstance(node, ast.Name) and node.id == "Any" and id(node) not in _json_values(annotation)
    ]
    assert len(counted) == 2  # `output: Any` and `list[Any]`; the JSON objects' values are allowed


def _protocol_fields(protocol: type) -> set[str]:
    return {name for name, value in vars(protocol).items() if isinstance(value, property)}


def test_vllm_outputs_have_every_field_the_protocols_read() -> None:
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    from server.engine import EngineCompletion, EngineOutput, TokenLogprob

    request_fields = set(inspect.signature(RequestOutput.__init__).parameters)
    assert _protocol_fields(EngineOutput) <= request_fields
    assert _protocol_fields(EngineCompletion) <= {field.name for field in dataclasses.fields(CompletionOutput)}
    assert _protocol_fields(TokenLogprob) <= {field.name for field in dataclasses.fields(Logprob)}


def test_sampling_params_come_from_typed_arguments() -> None:
    from harness.fake_engine import fake_engine
    from server.engine import SamplingArgs
    from server.engine.sampling import build_sampling_params

    info = fake_engine().info
    args = SamplingArgs(max_tokens=7, stream=True, n=2, temperature=0.5, stops=("END",), logit_bias={3: 1.5}, seed=4)
    params = build_sampling_params(args, info)
    assert (params.max_tokens, params.n, params.temperature, params.stop, params.seed) == (7, 2, 0.5, ["END"], 4)
    assert params.logit_bias == {3: 1.5}
    assert params.temperature == 0.5 and params.top_p == 1.0  # unset knobs: OpenAI's defaults


def test_the_engine_rejects_in_its_own_terms_not_http() -> None:
    from harness.fake_engine import fake_engine
    from server.engine import EngineError, EngineRejected, SamplingArgs
    from server.engine.sampling import build_sampling_params
    from server.errors import APIError

    info = fake_engine().info
    with pytest.raises(EngineRejected) as outside:
        build_sampling_params(SamplingArgs(max_tokens=4, stream=False, logit_bias={info.vocab_size: 1.0}), info)
    assert outside.value.param == "logit_bias" and not isinstance(outside.value, APIError)
    with pytest.raises(EngineRejected) as vllm_check:  # vLLM's own check, translated
        build_sampling_params(SamplingArgs(max_tokens=4, stream=False, min_tokens=9), info)
    assert isinstance(vllm_check.value, EngineError) and "min_tokens" in vllm_check.value.message


def test_the_api_maps_engine_errors_to_openai_errors() -> None:
    from server.api.encoders.frames import api_error_for
    from server.engine import EngineDead, EngineRejected

    rejected = api_error_for(EngineRejected("no such token", param="logit_bias"))
    assert (rejected.status, rejected.type, rejected.param) == (400, "invalid_request_error", "logit_bias")
    assert api_error_for(EngineDead("gone")).status == 503


def test_the_engine_package_speaks_no_http() -> None:
    for path in sorted((REPO_ROOT / "server" / "engine").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        http = sorted(name for name in imported if name in {"server.errors", "fastapi", "starlette"} or name.startswith("server.api"))
        assert http == [], f"{path.name} imports {http}"


def test_the_served_model_name_is_held_once() -> None:
    from server.engine import ModelInfo
    from server.ops.state import ServerState

    assert "served_name" not in {field.name for field in dataclasses.fields(ModelInfo)}
    assert "served_name" in {field.name for field in dataclasses.fields(ServerState)}
