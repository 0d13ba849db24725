"""Replay vLLM's CUDA attention path on this CPU machine, for the engine arguments our server builds.

vLLM's CPU wheel ships the same Python as its CUDA build. Here the platform is replaced by a
CUDA platform of a chosen compute capability (`FakeCudaPlatform`: only the hardware answers are
supplied) and the compiled parts are stubbed: `vllm._C_stable_libtorch`, the FlashAttention
extension modules (all three FA builds are "present", as in vLLM's CUDA wheel; each version's own
capability rule decides), and the FA C ops, which record what they are called with. Everything
else is vLLM's real code: engine-config creation, our MPT plugin building its layers (with its
load-time check), the attention selector, the FA version logic, the metadata builder and the FA
interface's argument guards, run for a prefill batch, a decode batch and a full-CUDA-graph decode
batch. TRITON_ATTN's kernel cannot run here (vLLM's CPU build turns Triton off); its forward is
followed up to the kernel call, whose ALiBi arithmetic bench/triton_alibi.py checks.

    python -m tests.support.cuda_replay CASES.json      (a list of cases; prints a JSON list)

A case: {"capability": [9, 0], "model": DIR, "arguments": "server" | "vllm-default",
"attention_backend": "auto"}. One process replays them all: per capability the modules that fix
capability-dependent state at import (flash_attn.py) are imported again, as a fresh worker would.
"""

from __future__ import annotations

import importlib
import json
import socket
import sys
import traceback
import types
from typing import Any

import torch

CAPTURE_TOKENS = 8  # a decode batch small enough to replay a captured full CUDA graph


def install_stubs() -> None:
    # The ops this machine has compiled (vLLM's CPU kernels), so layers that look an op up at
    # import find it; CUDA's own extension modules are empty stand-ins.
    from vllm.platforms.cpu import CpuPlatform

    CpuPlatform.import_kernels()
    for name in ("vllm._C_stable_libtorch", "vllm.vllm_flash_attn._vllm_fa2_C", "vllm.vllm_flash_attn._vllm_fa3_C"):
        sys.modules.setdefault(name, types.ModuleType(name))


class Recorder:
    """Stands in for FlashAttention's C ops; keeps each call's version and arguments."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def varlen_fwd(self, q, k, v, out, *args):  # noqa: ANN001 - the C op's signature
        alibi = args[5]
        self.calls.append({"op": "fa2", "alibi": None if alibi is None else alibi.tolist()})
        return out, torch.empty(0)

    def fa3_fwd(self, *args):  # noqa: ANN002
        self.calls.append({"op": "fa3"})
        return args[6], torch.empty(0), None, None

    @staticmethod
    def scheduler_metadata(batch_size, *args):  # noqa: ANN001, ANN002
        return torch.zeros(1 + 4 * ((batch_size + 3) // 4 * 4), dtype=torch.int32)

    def unified_attention(self, **kwargs):  # noqa: ANN003 - TRITON_ATTN's kernel entry
        alibi = kwargs.get("alibi_slopes")
        self.calls.append({"op": "triton", "alibi": None if alibi is None else alibi.tolist()})


class CudaOnlyOps:
    """`torch.ops._C` with vLLM's CUDA-only ops answered by a stand-in (they probe kernels at
    import: "does CUTLASS support block fp8 here?"); the names asked are kept for the report."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.stubbed: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        try:
            return getattr(self._real, name)
        except AttributeError:
            if not name.startswith("cutlass_"):  # only capability probes; hasattr() stays honest
                raise
            self.stubbed.add(name)
            return lambda *args, **kwargs: False


def install_platform(capability: tuple[int, int], recorder: Recorder) -> None:
    import vllm.platforms
    from vllm.platforms.cuda import NonNvmlCudaPlatform
    from vllm.platforms.interface import DeviceCapability

    class FakeCudaPlatform(NonNvmlCudaPlatform):
        @classmethod
        def get_device_capability(cls, device_id: int = 0) -> DeviceCapability:
            return DeviceCapability(*capability)

        @classmethod
        def get_device_name(cls, device_id: int = 0) -> str:
            return f"replayed sm{capability[0]}{capability[1]}"

        @classmethod
        def get_device_total_memory(cls, device_id: int = 0) -> int:
            return 80 * 2**30

        @classmethod
        def device_count(cls) -> int:
            return 1

    vllm.platforms.current_platform = FakeCudaPlatform()
    if not isinstance(torch.ops._C, CudaOnlyOps):
        import vllm._custom_ops  # noqa: F401 - registers its fakes against the real namespace first

        torch.ops._C = CudaOnlyOps(torch.ops._C)
    torch.ops._vllm_fa2_C = types.SimpleNamespace(varlen_fwd=recorder.varlen_fwd)
    torch.ops._vllm_fa3_C = types.SimpleNamespace(
        fwd=recorder.fa3_fwd, get_scheduler_metadata=recorder.scheduler_metadata
    )
    from vllm.vllm_flash_attn import flash_attn_interface

    flash_attn_interface.FA4_AVAILABLE = True  # vLLM's CUDA wheel ships FA4's Python (cute)
    # Capability-dependent state fixed at import: import these again, as a new worker would.
    for name in ("vllm.v1.attention.backends.fa_utils", "vllm.v1.attention.backends.flash_attn",
                 "vllm.v1.attention.backends.triton_attn"):
        sys.modules.pop(name, None)
    from vllm.v1.attention.selector import _cached_get_attn_backend

    _cached_get_attn_backend.cache_clear()


def engine_config(case: dict[str, Any]):
    from vllm.engine.arg_utils import EngineArgs

    from server.engine.platform import current_target
    from server.mpt.attention import attention_engine_arguments

    arguments = {}
    if case["arguments"] == "server":
        # What the server builds, on the platform this replay mocks.
        arguments = attention_engine_arguments(
            case.get("attention_backend", "auto"), case["model"], "auto", current_target()
        )
    args = EngineArgs(model=case["model"], skip_tokenizer_init=True, dtype="bfloat16", **arguments)
    return args.create_engine_config(), arguments


def init_one_rank() -> None:
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import model_parallel_is_initialized

    if model_parallel_is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port}", 0, backend="gloo")
    initialize_model_parallel(1, 1)


# name → (query lengths, sequence lengths, built as for CUDA-graph capture)
BATCHES = {
    "prefill": ([37, 9], [37, 60], False),  # a whole prompt, and a chunk after earlier context
    "decode": ([1, 1, 1], [70, 33, 129], False),
    "full_cudagraph_decode": ([1] * CAPTURE_TOKENS, [5 + 7 * i for i in range(CAPTURE_TOKENS)], True),
}


def common_metadata(query_lens: list[int], seq_lens: list[int], block_size: int):
    from vllm.v1.attention.backend import CommonAttentionMetadata

    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    blocks = max((s + block_size - 1) // block_size for s in seq_lens)
    table = torch.arange(len(seq_lens) * blocks, dtype=torch.int32).view(len(seq_lens), blocks)
    tokens = sum(query_lens)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return CommonAttentionMetadata(
        query_start_loc=starts, query_start_loc_cpu=starts.clone(), seq_lens=lens,
        num_reqs=len(seq_lens), num_actual_tokens=tokens, max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), block_table_tensor=table,
        slot_mapping=torch.arange(tokens, dtype=torch.int64), seq_lens_cpu_upper_bound=lens.clone(),
    ), table.numel()


def replay(case: dict[str, Any], recorder: Recorder) -> dict[str, Any]:
    from vllm.config import CompilationMode, set_current_vllm_config
    from vllm.v1.attention.backends.fa_utils import get_flash_attn_version

    config, arguments = engine_config(case)
    result: dict[str, Any] = {"case": case, "engine_arguments": arguments}
    with set_current_vllm_config(config):
        init_one_rank()
        from server.models.mpt import MptForCausalLM

        from server.mpt.attention import AttentionRefused
        from vllm.utils.torch_utils import set_default_torch_dtype

        import server.models.mpt
        from server.models.attention_guard import refuse_alibi_unsafe_layer

        # The canary turns the plugin's load-time check off, to see what vLLM alone would run.
        server.models.mpt.refuse_alibi_unsafe_layer = (
            refuse_alibi_unsafe_layer if case.get("load_check", True) else lambda layer: None
        )
        # The model's torch.compile wrapper is left out (its compiler passes look up CUDA
        # kernels at import); CUDA-graph settings stay in the config for the builder.
        compile_mode, config.compilation_config.mode = config.compilation_config.mode, CompilationMode.NONE
        try:
            with set_default_torch_dtype(config.model_config.dtype), torch.device("cpu"):
                model = MptForCausalLM(vllm_config=config)
        except AttentionRefused as refused:  # the plugin's load-time check
            result["load_refused"] = str(refused)
            return result
        finally:
            config.compilation_config.mode = compile_mode
        layer = model.transformer.blocks[0].attn.attn
        backend = layer.attn_backend
        spec = layer.get_kv_cache_spec(config)
        result.update(
            backend=backend.get_name(),
            head_size=layer.head_size,
            alibi=layer.impl.alibi_slopes.tolist(),
            invalid_reasons=backend.validate_configuration(
                head_size=layer.head_size, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=None,
                use_mla=False, has_sink=False, use_sparse=False, use_mm_prefix=False,
                use_per_head_quant_scales=False, attn_type="decoder",
                device_capability=_capability(),
            ),
            layer_fa_version=getattr(layer.impl, "vllm_flash_attn_version", None),
            planner_fa_version=get_flash_attn_version() if backend.get_name() == "FLASH_ATTN" else None,
            cudagraph_support=backend.get_builder_cls()._cudagraph_support.name,
            cudagraph_mode=str(config.compilation_config.cudagraph_mode),
        )
        builder = backend.get_builder_cls()(spec, [layer.layer_name], config, torch.device("cpu"))
        result["aot_schedule"] = getattr(builder, "aot_schedule", None)
        result["batches"] = {}
        for name, (query_lens, seq_lens, capture) in BATCHES.items():
            result["batches"][name] = run_batch(layer, builder, spec, query_lens, seq_lens, capture, recorder)
    return result


def _capability():
    from vllm.platforms import current_platform

    return current_platform.get_device_capability()


def run_batch(layer, builder, spec, query_lens, seq_lens, capture, recorder) -> dict[str, Any]:  # noqa: ANN001
    common, blocks = common_metadata(query_lens, seq_lens, spec.block_size)
    metadata = builder.build_for_cudagraph_capture(common) if capture else builder.build(0, common)
    tokens, heads, head = common.num_actual_tokens, layer.num_heads, layer.head_size
    q, k, v = (torch.randn(tokens, heads, head, dtype=torch.bfloat16) for _ in range(3))
    kv_cache = torch.zeros(blocks, layer.num_kv_heads, spec.block_size, 2 * head, dtype=torch.bfloat16)
    output = torch.empty(tokens, heads, head, dtype=torch.bfloat16)
    outcome: dict[str, Any] = {
        "scheduler_metadata": getattr(metadata, "scheduler_metadata", None) is not None,
        "max_num_splits": getattr(metadata, "max_num_splits", None),
    }
    recorder.calls.clear()
    try:
        layer.impl.forward(layer, q, k, v, kv_cache, metadata, output)
        outcome["error"] = None
    except NotImplementedError as error:  # FlashAttention's argument guards
        outcome["error"] = str(error)
    outcome["kernel_calls"] = list(recorder.calls)
    return outcome


def main(argv: list[str]) -> int:
    cases = json.loads(open(argv[0]).read())
    install_stubs()
    recorder = Recorder()
    import server.models

    server.models.register()
    results = []
    for case in cases:
        install_platform(tuple(case["capability"]), recorder)
        import vllm.v1.attention.backends.triton_attn as triton_attn

        triton_attn.unified_attention = recorder.unified_attention
        try:
            results.append(replay(case, recorder))
        except Exception:  # noqa: BLE001 - reported, the test shows it
            results.append({"case": case, "crash": traceback.format_exc()})
    for result in results:
        result["stubbed_cuda_ops"] = sorted(torch.ops._C.stubbed)
    print("REPLAY-RESULTS " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
