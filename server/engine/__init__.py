"""The inference engine: vLLM's AsyncLLM behind a small interface (`Engine`), the engine
arguments built once (`args`), sampling parameters (`sampling`), the engine's child processes
(`processes`) and the embedded default model (`default_model`)."""

from server.engine.engine import Engine, EngineDead, EngineRejected, ModelInfo

__all__ = ["Engine", "EngineDead", "EngineRejected", "ModelInfo"]
