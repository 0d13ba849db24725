"""The project's own vLLM models, registered through the `vllm.general_plugins` entry point.

vLLM calls `register()` in every process it starts (front end, engine core, workers) before it
parses a model's config, so the registration below is in place wherever it matters. vLLM 0.32
dropped MPT (its registry says "supported until v0.28.0"); this brings it back out of tree.
"""

from __future__ import annotations

MPT_ARCHITECTURES = ("MPTForCausalLM", "MptForCausalLM")  # MosaicML's name, transformers' name
MPT_MODEL_CLASS = "server.models.mpt:MptForCausalLM"


def register() -> None:
    """Register MPT with vLLM. Idempotent and cheap: the model module is imported lazily.

    Also the one hook this server has in every engine process vLLM spawns: there it makes the
    process die with its parent and stop only when the server lets it (see
    `server.engine.processes`); elsewhere that call does nothing.
    """
    from server.engine.processes import prepare_engine_process

    prepare_engine_process()
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from server.mpt.config import MptCheckpointConfig

    # Replaces transformers' strict MptConfig for model_type "mpt" in this process, so that
    # MosaicML's remote-code config.json parses without trust_remote_code (see server/mpt/config.py).
    AutoConfig.register("mpt", MptCheckpointConfig, exist_ok=True)
    supported = ModelRegistry.get_supported_archs()
    for arch in MPT_ARCHITECTURES:
        if arch not in supported:
            ModelRegistry.register_model(arch, MPT_MODEL_CLASS)
