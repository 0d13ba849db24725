"""The inference engine: vLLM's AsyncLLM behind a small interface (`Engine`), the engine
arguments built once (`args`), sampling parameters from typed arguments (`sampling`), what the
server reads from the engine's outputs (`outputs`), the engine's own errors (`errors`), the
engine's child processes (`processes`) and the embedded default model (`default_model`)."""

from server.engine.engine import Engine, ModelInfo
from server.engine.errors import EngineDead, EngineError, EngineRejected, SchemaNotCompiled
from server.engine.outputs import EngineCompletion, EngineOutput, TokenCandidates, TokenLogprob
from server.engine.sampling import SamplingArgs

__all__ = [
    "Engine",
    "EngineCompletion",
    "EngineDead",
    "EngineError",
    "EngineOutput",
    "EngineRejected",
    "ModelInfo",
    "SamplingArgs",
    "SchemaNotCompiled",
    "TokenCandidates",
    "TokenLogprob",
]
