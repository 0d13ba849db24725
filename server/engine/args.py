"""vLLM's engine arguments and the environment its processes read, built in one place.

The server (`Engine.start`) and the benchmark's in-process contestant (`bench/direct.py`) both
build their engine from `engine_args`, so what is measured is what is served. The environment
is written once, at start-up, before any engine process exists (`apply_engine_environment`):
vLLM's engine core and workers inherit it.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from server.settings import Settings

# KV cache on CPU hosts when no size is given: SmolLM2 holds about 180k tokens in it. Without a
# size, vLLM's CPU backend reserves --gpu-memory-utilization (90%) of all RAM and refuses to
# start when that much is not free: a laptop with a browser open fails.
DEFAULT_CPU_KV_CACHE_GIB = 4


def engine_environment(settings: Settings) -> dict[str, str]:
    """What the engine's processes must see: variables the settings decide."""
    environment = {
        # A fresh interpreter per engine process, as vLLM already forces on CPU and when CUDA is
        # initialised: only then does the model plugin's entry point run there (a forked child
        # inherits "plugins loaded"), which makes it die with the server and stop only when the
        # server lets it (server.engine.processes). vLLM would otherwise fork on a GPU host, from
        # a process with running threads.
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    }
    if settings.cpu_kv_cache_gib is not None:
        # Read only by vLLM's CPU platform; harmless on a GPU host.
        environment["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kv_cache_gib)
    environment.update(model_runner_environment(settings))
    return environment


def engine_environment_defaults() -> dict[str, str]:
    """Variables set only where the operator's environment says nothing."""
    defaults = {
        # Nothing this server runs may reach a model hub (transformers, vLLM, the converter).
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(DEFAULT_CPU_KV_CACHE_GIB),
    }
    if _vllm_cpu_build():
        defaults.update(_cpu_compile_cache_defaults())
    return defaults


def _vllm_cpu_build() -> bool:
    """Whether vLLM will run on its CPU platform: the test vLLM's platform detection makes
    (vllm/platforms/__init__.py, `cpu_platform_plugin`), without importing vLLM."""
    if os.environ.get("VLLM_TARGET_DEVICE") == "cpu":
        return True
    try:
        return "cpu" in version("vllm")
    except PackageNotFoundError:
        try:
            version("vllm-cpu")
        except PackageNotFoundError:
            return False
        return True


def _cpu_compile_cache_defaults() -> dict[str, str]:
    """A torch.compile cache that a restart loads, on vLLM's CPU platform.

    vLLM 0.32 with torch >= 2.10 defaults to AOT compile (`VLLM_USE_AOT_COMPILE`): it saves
    the compiled model under VLLM_CACHE_ROOT/torch_compile_cache/torch_aot_compile/ and loads
    it on the next start. On CPU that load always fails: the CPU platform compiles with torch's
    plain "inductor" backend (mode DYNAMO_TRACE_ONCE, vllm/platforms/cpu.py), which torch wraps
    in its own `BundledAOTAutogradSerializableCallable`, and vLLM's loader calls
    `finalize_loading`, a method only vLLM's own `VllmSerializableFunction` has
    (vllm/compilation/decorators.py:315). Every start logged "Compiling model again due to a
    load failure ... 'function' object has no attribute 'finalize_loading'" and compiled again.
    Without AOT compile, torch's Inductor FX-graph and AOTAutograd caches serve a restart
    instead (Dynamo still traces, Inductor does not compile). Nothing sets their directory on
    this path, so torch would use /tmp/torchinductor_<user>: keep it under VLLM_CACHE_ROOT,
    so that one directory (one volume) holds everything compiled. GPUs (vLLM's own backend,
    whose artifacts have `finalize_loading`) keep vLLM's defaults.
    """
    vllm_cache_root = os.environ.get("VLLM_CACHE_ROOT") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "vllm"
    )
    return {
        "VLLM_USE_AOT_COMPILE": "0",
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(os.path.expanduser(vllm_cache_root), "torchinductor"),
    }


def apply_engine_environment(settings: Settings) -> None:
    """Write the engine's environment; called once at start-up, before the engine starts."""
    for name, value in engine_environment_defaults().items():
        os.environ.setdefault(name, value)
    os.environ.update(engine_environment(settings))


def resolved_enforce_eager(settings: Settings) -> bool:
    """The setting, or by default eager on vLLM's CPU build and compiled on GPUs.

    Measured on 2 CPU cores with the embedded model (bench, 64-token streams): eager is ready in
    27 s and compiled in 104 s cold (40 s from the compile cache), while compiled decodes 1.22x
    faster at 1 stream (33 against 27 tokens/s) and 1.19x at 16 (249 against 210). A first answer
    within three minutes of `make serve`, install included, only eager gives; on a GPU, CUDA
    graphs decide decode speed and compiled is the default.
    """
    if settings.enforce_eager is not None:
        return settings.enforce_eager
    return _vllm_cpu_build()


# --- the host-RAM tier of the KV cache ------------------------------------------------------
# vLLM 0.32 turns `kv_offloading_size` (GiB) and `kv_offloading_backend` into a
# `kv_transfer_config` itself (`VllmConfig._post_init_kv_transfer_config`, vllm/config/vllm.py:1099).
# "native" is CacheConfig's default and the one its docstring calls "vLLM native CPU offloading"
# (vllm/config/cache.py:272): the engine's own OffloadingConnector with
# `cpu_bytes_to_use = kv_offloading_size × 2^30`, the total over all tensor-parallel ranks
# (vllm/v1/kv_offload/cpu/spec.py:102-119). The other value, "lmcache", hands the capacity to a
# separate LMCache server process that this image does not have and ignores the size
# (vllm/config/vllm.py:1124). Named here rather than left to the default, so a vLLM upgrade that
# changed the default would not change what `--kv-offload-gib` means.
# What the native backend does on a CUDA host, read in vLLM 0.32: it maps the whole buffer as one
# file, /dev/shm/vllm_offload_<engine>.mmap, touched in full at start and pinned
# (vllm/v1/kv_offload/cpu/shared_offload_region.py:110-137; it refuses to start when /dev/shm
# has not that much free), so a container's /dev/shm and memory limit must hold it (the GPU
# overlays size both). It stores prompt blocks only (`offload_prompt_only`, default true,
# vllm/v1/kv_offload/base.py:620): a conversation that comes back reloads its last prompt from
# host RAM and prefills the last reply and the new message.
KV_OFFLOAD_BACKEND = "native"


class KvOffloadRefused(ValueError):
    """`--kv-offload-gib` on a vLLM build that cannot offload; the message says what to do."""


def kv_offload_problem(settings: Settings) -> str | None:
    """Why this host's vLLM cannot have the host-RAM KV tier, in one line; None when it can (or
    none was asked for). vLLM's offloading worker refuses every platform but CUDA-alike GPUs and
    XPUs (`CPUOffloadingSpec.get_worker`, vllm/v1/kv_offload/cpu/spec.py:197-203), and only once
    the engine's workers are up, minutes into a start: the CPU build is known here, at once,
    without importing vLLM."""
    if settings.kv_offload_gib is None or not _vllm_cpu_build():
        return None
    return (
        f"--kv-offload-gib {settings.kv_offload_gib:g}: vLLM's CPU build cannot offload the KV "
        "cache to host RAM (vLLM offloads from CUDA and XPU GPUs only); on a CPU host the KV cache "
        "is in RAM already: leave --kv-offload-gib (AIROBOROS_KV_OFFLOAD_GIB) unset and size the "
        "cache with --cpu-kv-cache-gib"
    )


def kv_offload_engine_arguments(settings: Settings) -> dict[str, Any]:
    """The `AsyncEngineArgs` fields of `--kv-offload-gib`: none when it is off."""
    if settings.kv_offload_gib is None:
        return {}
    if (problem := kv_offload_problem(settings)) is not None:
        raise KvOffloadRefused(problem)
    # vLLM computes block hashes whenever a KV connector is set (vllm/v1/engine/core.py:232), and
    # keeps its GPU prefix caching on by default for a causal model: both left to vLLM.
    return {"kv_offloading_size": settings.kv_offload_gib, "kv_offloading_backend": KV_OFFLOAD_BACKEND}


# --- prefix blocks a router can follow --------------------------------------------------------
# vLLM 0.32 publishes a `BlockStored` event per batch of full prompt blocks it caches, and a
# `BlockRemoved` when it evicts them (vllm/distributed/kv_events.py), on a ZMQ PUB socket
# (`KVEventsConfig`, vllm/config/kv_events.py). Each block's hash is
# `H((parent hash, tuple(block token ids), None))`, H the `prefix_caching_hash_algo`, the first
# block's parent `H(PYTHONHASHSEED or "vllm-none-hash")` (vllm/v1/core/kv_cache_utils.py:131-172,
# 695-725); the event carries its low 64 bits as an integer (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`,
# default on). With sha256_cbor every replica, and a router in any language, computes the same
# hashes from the same token ids (the xxhash ones draw a random seed per process unless
# PYTHONHASHSEED is set).


def kv_events_engine_arguments(settings: Settings) -> dict[str, Any]:
    """The `AsyncEngineArgs` fields of the KV-cache events and the block hash: the hash always
    (named, so a vLLM default change cannot change it), the events when an endpoint is set."""
    arguments: dict[str, Any] = {"prefix_caching_hash_algo": settings.prefix_caching_hash_algo}
    if settings.kv_events_endpoint is not None:
        from vllm.config.kv_events import KVEventsConfig

        arguments["kv_events_config"] = KVEventsConfig(
            enable_kv_cache_events=True, publisher="zmq",
            endpoint=settings.kv_events_endpoint, topic=settings.kv_events_topic or "",
        )
    return arguments


# --- the model runner -----------------------------------------------------------------------
# vLLM 0.32 has two GPU model runners and one switch, the environment variable
# VLLM_USE_V2_MODEL_RUNNER (vllm/envs.py: "1" or "0"; unset, "use config defaults"). Its only
# reader is `VllmConfig.use_v2_model_runner` (vllm/config/vllm.py:703), evaluated when the engine
# config is built in this process and again in every engine process, which inherit the variable:
# set, it decides; unset, V2 whenever Triton imports (`HAS_TRITON`) and the configuration uses no
# feature V2 lacks (`_get_v2_model_runner_unsupported_features`: some speculative methods,
# pipeline parallelism under torchrun, dual batch overlap), else V1 with a warning. What V2 needs
# of the MPT plugin, and the replay that shows it has it: server/models/README.md.
MODEL_RUNNER_SWITCH = "VLLM_USE_V2_MODEL_RUNNER"
_MODEL_RUNNER_SWITCH_VALUES = {"v1": "0", "v2": "1"}


class ModelRunnerRefused(ValueError):
    """`--model-runner v2` on a vLLM build that has no V2 runner; the message says what to do."""


def model_runner_environment(settings: Settings) -> dict[str, str]:
    """vLLM's switch for `--model-runner`: nothing for `auto`, which leaves the choice to vLLM
    (and to an operator who sets VLLM_USE_V2_MODEL_RUNNER in the server's environment)."""
    value = _MODEL_RUNNER_SWITCH_VALUES.get(settings.model_runner)
    return {} if value is None else {MODEL_RUNNER_SWITCH: value}


def model_runner_problem(settings: Settings) -> str | None:
    """Why this host's vLLM cannot run `--model-runner v2`, in one line; None when it can. On the
    CPU build Triton has no backend (`HAS_TRITON` is false), so vLLM refuses the forced V2 runner
    ("Model Runner V2 requires Triton", `VllmConfig._validate_v2_model_runner`) only once the
    engine's config is built, behind a traceback: the CPU build is known here, at once."""
    if settings.model_runner != "v2" or not _vllm_cpu_build():
        return None
    return (
        "--model-runner v2: vLLM's CPU build has no Model Runner V2 (it needs Triton, which has no "
        "CPU backend there); leave --model-runner (AIROBOROS_MODEL_RUNNER) at auto or choose v1"
    )


def engine_args(settings: Settings, model_dir: Path, served_name: str) -> Any:
    """vLLM's `AsyncEngineArgs` for `model_dir` under `settings`."""
    offload = kv_offload_engine_arguments(settings)  # refused on vLLM's CPU build, before vLLM loads
    if (problem := model_runner_problem(settings)) is not None:  # for whoever builds them directly
        raise ModelRunnerRefused(problem)
    # Deferred: `--help` and settings errors answer without importing vLLM.
    from vllm.engine.arg_utils import AsyncEngineArgs

    from server.engine.platform import current_target
    from server.mpt.attention import attention_engine_arguments

    return AsyncEngineArgs(
        model=str(model_dir),
        tokenizer=str(settings.tokenizer) if settings.tokenizer else None,
        served_model_name=served_name,
        tensor_parallel_size=settings.tensor_parallel_size,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        enforce_eager=resolved_enforce_eager(settings),
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_num_seqs=settings.max_num_seqs,
        # None leaves vLLM's platform default (16 on GPUs, 128 on its CPU build).
        block_size=settings.block_size,
        # vLLM's own Prometheus series (vllm:*) come from its stat loggers.
        disable_log_stats=False,
        trust_remote_code=False,
        # The host-RAM KV tier (--kv-offload-gib; nothing when it is off).
        **offload,
        # Prefix-block hashes and the KV-cache events a router follows.
        **kv_events_engine_arguments(settings),
        # MPT's ALiBi needs a backend that applies it (server/mpt/attention.py).
        **attention_engine_arguments(settings.attention_backend, model_dir, settings.dtype, current_target()),
    )
