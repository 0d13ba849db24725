"""Replay vLLM's Model Runner V2 for our MPT plugin on this CPU machine, as CUDA GPUs would run it.

vLLM 0.32's CUDA wheel uses Model Runner V2 (vllm/v1/worker/gpu/) whenever Triton imports; its
CPU build never does. This child process makes vLLM's CPU wheel answer as the CUDA wheel would,
with only the hardware mocked (tests/support/cuda_replay.py: a CUDA platform of a chosen compute
capability, stubbed C extensions; here also the attention kernels' entry points, which record
their arguments) and Triton real but interpreted (`TRITON_INTERPRET=1`, set by the caller before
anything imports Triton: vLLM's `HAS_TRITON` is then true, as on a GPU host). Everything else is
vLLM's own code:

- the runner decision (`VllmConfig.use_v2_model_runner`) on the engine config built from what the
  server passes (`--model-runner` through `server.engine.args`, the attention arguments per GPU),
  with Triton present and absent (the CPU build);
- per GPU kind (H100: TRITON_ATTN; A100: FLASH_ATTN pinned to FlashAttention 2), what the V2
  runner checks of the model once loaded: its model state (`init_model_state`), the tasks it
  offers (`get_supported_generation_tasks`: "generate" only for a vLLM text-generation model), the
  piecewise-CUDA-graph precondition (`ModelCudaGraphManager.capture` refuses a model with no
  active `@support_torch_compile` submodule), each also for a model that lacks it;
- one V2 step of a mixed batch (a new prompt, a prefill chunk after earlier context, a decode),
  its requests in shuffled state slots: V2's attention groups and KV cache (`init_attn_backend`,
  `init_kv_cache`), its Triton input kernels (`prepare_prefill_inputs`, `prepare_pos_seq_lens`,
  interpreted), its attention metadata (`DefaultModelState.prepare_attn`), the model called as V2
  calls it (keywords `input_ids`, `positions`, `inputs_embeds`, `intermediate_tensors` under
  `set_forward_context`), the KV write and the attention kernel's arguments; the same step through
  `inputs_embeds` (V2's prompt-embeds path calls `embed_input_ids`), and `compute_logits`;
- the forward V2 captures in a FULL CUDA graph: its dummy decode batch (`InputBatch.make_dummy`)
  and capture-time metadata (`prepare_attn(..., for_capture=True)`), run without the graph.

    python -m tests.support.runner_v2_replay MODEL_DIR      (prints one JSON object)
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from types import SimpleNamespace
from typing import Any

import torch

# GPU kinds and the backend the server gives each (server/mpt/attention.py).
GPUS = {"sm90": (9, 0), "sm80": (8, 0)}  # H100/H200: TRITON_ATTN; A100: FLASH_ATTN (FA2)
DECISION_GPU = "sm90"
CAPTURE_REQS = 3  # a FULL-graph decode capture size
_capability = GPUS[DECISION_GPU]
BLOCK_SIZE = 16
# A mixed step: (tokens already computed, tokens scheduled now, prompt length) per request.
STEP = [(0, 5, 5), (16, 4, 24), (30, 1, 12)]
STATE_SLOTS = [2, 0, 1]  # where each request's state lives in V2's persistent buffers
MAX_REQS = 4


def import_triton_as_on_a_gpu() -> bool:
    """vLLM's `HAS_TRITON`, decided at import: its CPU wheel disables Triton when Triton has no CPU
    backend. With the interpreter on, that check is skipped for the one import (CUDA's wheel never
    makes it: it matches the "cpu" version tag only)."""
    import vllm.platforms

    real = vllm.platforms.vllm_version_matches_substr
    vllm.platforms.vllm_version_matches_substr = lambda tag: tag != "cpu" and real(tag)
    try:
        from vllm.triton_utils import HAS_TRITON
    finally:
        vllm.platforms.vllm_version_matches_substr = real
    return HAS_TRITON


class KernelRecorder:
    """The attention kernels' entry points, TRITON_ATTN's `unified_attention` and FlashAttention
    2's C op: each keeps the arguments MPT depends on and writes zeros (the kernels' ALiBi
    arithmetic is tests/bench/test_gpu_kernels.py's business)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def _record(self, op: str, cu_seqlens_q, seqused_k, max_seqlen_q, max_seqlen_k, block_table, alibi, causal) -> None:  # noqa: ANN001, PLR0913
        self.calls.append({
            "op": op,
            "cu_seqlens_q": cu_seqlens_q.tolist(),
            "seqused_k": seqused_k.tolist(),
            "max_seqlen_q": int(max_seqlen_q),
            "max_seqlen_k": int(max_seqlen_k),
            "block_table_rows": block_table.shape[0],
            "alibi": None if alibi is None else alibi.tolist(),
            "causal": bool(causal),
        })

    def unified_attention(self, **kwargs: Any) -> None:
        kwargs["out"].zero_()
        self._record("triton", kwargs["cu_seqlens_q"], kwargs["seqused_k"], kwargs["max_seqlen_q"],
                     kwargs["max_seqlen_k"], kwargs["block_table"], kwargs["alibi_slopes"], kwargs["causal"])

    def varlen_fwd(self, q, k, v, out, *args):  # noqa: ANN001 - the C op's positional signature
        out.zero_()
        self._record("fa2", args[0], args[2], args[6], args[7], args[4], args[5], args[11])
        return out, torch.empty(0)


def import_compiler_with_cuda_fusion_tables() -> None:
    """`@support_torch_compile` builds vLLM's compiler at model construction, and its fusion
    passes list CUDA-only fused ops at import (torch.ops._C.rms_norm_static_fp8_quant, ...), which
    vLLM's CPU build lacks: for that one import each missing op is a named stand-in (nothing here
    compiles: the step runs with `skip_compiled`, as V2 runs an uncompiled step)."""
    real = torch.ops._C

    class CudaOnlyOp:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getattr__(self, overload: str) -> str:  # .default, .out: an entry in a table
            return f"cuda-only {self.name}.{overload}"

    class Tables:
        def __getattr__(self, name: str) -> Any:
            try:
                return getattr(real, name)
            except AttributeError:
                return CudaOnlyOp(name)

    torch.ops._C = Tables()
    try:
        import vllm.compilation.backends  # noqa: F401
    finally:
        torch.ops._C = real


def runner_decision(model: str, model_runner: str, has_triton: bool) -> dict[str, Any]:
    """vLLM's choice for the engine config the server builds under `--model-runner`."""
    import vllm.config.vllm as vllm_config_module
    from vllm.engine.arg_utils import EngineArgs

    from server.engine.args import MODEL_RUNNER_SWITCH, model_runner_environment
    from server.engine.platform import current_target
    from server.mpt.attention import attention_engine_arguments
    from server.settings import Settings

    os.environ.pop(MODEL_RUNNER_SWITCH, None)
    switch = model_runner_environment(Settings(model_runner=model_runner))
    os.environ.update(switch)
    vllm_config_module.HAS_TRITON = has_triton
    arguments = attention_engine_arguments("auto", model, "auto", current_target())
    outcome: dict[str, Any] = {"switch": switch}
    try:
        config = EngineArgs(model=model, skip_tokenizer_init=True, dtype="bfloat16", **arguments).create_engine_config()
        outcome["v2"] = config.use_v2_model_runner
        outcome["cudagraph_mode"] = config.compilation_config.cudagraph_mode.name
    except ValueError as error:
        outcome["refused"] = str(error)
    finally:
        os.environ.pop(MODEL_RUNNER_SWITCH, None)
        vllm_config_module.HAS_TRITON = True
    return outcome


def install_gpu(gpu: str, recorder: KernelRecorder) -> None:
    """The mocked platform for one GPU kind, and the attention kernels' entry points recorded."""
    global _capability
    from tests.support import cuda_replay

    _capability = GPUS[gpu]
    cuda_replay.install_platform(_capability, cuda_replay.Recorder())
    torch.ops._vllm_fa2_C = SimpleNamespace(varlen_fwd=recorder.varlen_fwd)
    import vllm.v1.attention.backends.triton_attn as triton_attn  # imported afresh per GPU

    triton_attn.unified_attention = recorder.unified_attention


def main(argv: list[str]) -> int:
    model_dir = argv[0]
    result: dict[str, Any] = {"has_triton": import_triton_as_on_a_gpu()}
    from tests.support import cuda_replay

    cuda_replay.install_stubs()
    import server.models

    server.models.register()
    recorder = KernelRecorder()
    install_gpu(DECISION_GPU, recorder)
    result["decisions"] = {
        f"{runner}-{'triton' if has_triton else 'no-triton'}": runner_decision(model_dir, runner, has_triton)
        for runner in ("auto", "v1", "v2") for has_triton in (True, False)
    }
    result["gpus"] = {}
    for gpu in GPUS:
        install_gpu(gpu, recorder)
        try:
            result["gpus"][gpu] = replay_model(model_dir, recorder)
        except Exception:  # noqa: BLE001 - reported, the test shows it
            result["gpus"][gpu] = {"crash": traceback.format_exc()}
    print("RUNNER-V2-REPLAY " + json.dumps(result))
    return 0


def replay_model(model_dir: str, recorder: KernelRecorder) -> dict[str, Any]:
    """V2's checks of the loaded MPT, then a mixed step and a FULL-graph capture forward."""
    from vllm.config import set_current_vllm_config
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.torch_utils import set_default_torch_dtype

    from server.engine.platform import current_target
    from server.mpt.attention import attention_engine_arguments
    from tests.support.cuda_replay import init_one_rank

    arguments = attention_engine_arguments("auto", model_dir, "auto", current_target())
    config = EngineArgs(model=model_dir, skip_tokenizer_init=True, dtype="bfloat16", max_num_seqs=MAX_REQS,
                        **arguments).create_engine_config()
    out: dict[str, Any] = {"v2": config.use_v2_model_runner}
    with set_current_vllm_config(config):
        init_one_rank()
        from server.models.mpt import MptForCausalLM

        import_compiler_with_cuda_fusion_tables()
        with set_default_torch_dtype(config.model_config.dtype), torch.device("cpu"):
            model = MptForCausalLM(vllm_config=config)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # dummy weights (values are not the point; keys and values must not be 0)
            for parameter in model.parameters():
                parameter.copy_(torch.rand(parameter.shape, generator=generator) - 0.5)
        out["checks"] = runner_checks(config, model)
        runner = V2Pieces(config, model)
        out["attention"] = runner.attention
        out["step"] = run_step(runner, recorder)
        out["capture"] = run_capture_forward(runner, recorder)
    return out


def runner_checks(config, model) -> dict[str, Any]:  # noqa: ANN001
    """What the V2 runner asks of the loaded model (GPUModelRunner.load_model, capture_model)."""
    from torch import nn
    from vllm.v1.worker.gpu.cudagraph_utils import ModelCudaGraphManager, has_compiled_submodule
    from vllm.v1.worker.gpu.model_states import init_model_state

    cpu = torch.device("cpu")
    state = init_model_state(config, model, None, cpu)
    checks: dict[str, Any] = {
        "model_state": type(state).__name__,
        "tasks": list(state.get_supported_generation_tasks()),
        # Inputs the state adds to (or overrides in) the forward call: none without M-RoPE, so
        # the model gets V2's flat positions as they are.
        "extra_model_inputs": sorted(state.prepare_inputs(None, None)),
        "compiled_submodule": has_compiled_submodule(model),
        "cudagraph_mode": config.compilation_config.cudagraph_mode.name,
    }

    class WithoutEmbedInputIds(nn.Module):  # the control: vLLM's interface less one method
        def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            return input_ids

        def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return hidden_states

    control = init_model_state(config, WithoutEmbedInputIds(), None, cpu)
    checks["tasks_without_embed_input_ids"] = list(control.get_supported_generation_tasks())
    # Piecewise CUDA graphs: V2 refuses to capture a model with no active compiled submodule.
    # The control is our model with its @support_torch_compile wrapper switched off.
    from vllm.platforms import current_platform

    type(current_platform)._global_graph_pool = "replayed graph pool"  # CUDA's own; none here
    manager = ModelCudaGraphManager(config, cpu, config.compilation_config.cudagraph_mode, decode_query_len=1)
    model.transformer.do_not_compile, compiled = True, model.transformer.do_not_compile
    try:
        manager.capture(model, state, None, None, None, [], None)
        checks["capture_without_compiled_submodule"] = "accepted"
    except RuntimeError as error:
        checks["capture_without_compiled_submodule"] = str(error)
    finally:
        model.transformer.do_not_compile = compiled
    return checks


def register_attention_ops_for_cpu_tensors() -> None:
    """vLLM registers its attention custom ops (KV write, attention with output) for the
    platform's dispatch key, CUDA here; this replay's tensors live on the CPU, so the same Python
    implementations are registered for CPU too (once per process)."""
    if _LIBRARIES:
        return
    from torch.library import Library

    import vllm.model_executor.layers.attention.attention as attention

    library = Library("vllm", "IMPL")
    for name in ("unified_kv_cache_update", "unified_attention_with_output"):
        library.impl(name, getattr(attention, name), "CPU")
    _LIBRARIES.append(library)  # an implementation lives as long as its Library object
    # FlashAttention's KV write is a CUDA op vLLM's CPU build lacks; vLLM's Triton twin of it
    # (same arguments, what TRITON_ATTN uses) writes the same paged cache, interpreted here.
    from vllm.v1.attention.ops.triton_reshape_and_cache_flash import triton_reshape_and_cache_flash

    real_cache_ops = torch.ops._C_cache_ops

    class CacheOps:
        reshape_and_cache_flash = staticmethod(triton_reshape_and_cache_flash)

        def __getattr__(self, name: str) -> Any:
            return getattr(real_cache_ops, name)

    torch.ops._C_cache_ops = CacheOps()
    # The Triton KV-write kernel asks torch which GPU it runs on (Hopper takes another path).
    torch.cuda.get_device_capability = lambda device=None: _capability


_LIBRARIES: list[Any] = []


class V2Pieces:
    """What GPUModelRunner sets up once the model is loaded, by V2's own functions: the KV cache
    layout (as the engine core resolves it), the KV cache config, the attention groups and their
    metadata builders, the KV cache bound to the layers, and the model state."""

    def __init__(self, config, model) -> None:  # noqa: ANN001
        from vllm.distributed.kv_transfer.kv_connector.utils import get_current_attn_backends
        from vllm.v1.attention.backends.utils import (
            get_supported_kv_cache_layouts, record_kv_cache_layout, resolve_kv_cache_layout,
        )
        from vllm.v1.core.kv_cache_utils import get_kv_cache_configs
        from vllm.v1.worker.gpu.attn_utils import get_kv_cache_spec, init_attn_backend, init_kv_cache
        from vllm.v1.worker.gpu.model_states import init_model_state

        register_attention_ops_for_cpu_tensors()
        self.config, self.model, cpu = config, model, torch.device("cpu")
        specs = get_kv_cache_spec(config)
        supported = [layout.name for layout in get_supported_kv_cache_layouts(get_current_attn_backends(config))]
        record_kv_cache_layout(config.cache_config, resolve_kv_cache_layout(config, [supported], specs.values()).name)
        page = next(iter(specs.values())).page_size_bytes
        self.kv_config = get_kv_cache_configs(config, [specs], [128 * page * len(specs)])[0]
        self.attn_groups, cg_support, kernel_block_sizes = init_attn_backend(self.kv_config, config, cpu)
        self.caches = init_kv_cache(
            config.compilation_config.static_forward_context, self.kv_config, cpu, kernel_block_sizes, config,
            attn_groups=[group for groups in self.attn_groups for group in groups],
        )
        self.block_size = kernel_block_sizes[0]
        self.state = init_model_state(config, model, None, cpu)
        layer = model.transformer.blocks[0].attn.attn
        self.first_cache = layer.kv_cache if isinstance(layer.kv_cache, torch.Tensor) else layer.kv_cache[0]
        assert self.first_cache.data_ptr() == self.caches[layer.layer_name].data_ptr()  # V2's, bound
        self.attention = {
            "backends": sorted({group.backend.get_name() for groups in self.attn_groups for group in groups}),
            "fa_version": getattr(layer.impl, "vllm_flash_attn_version", None),
            "min_cudagraph_support": cg_support.min_cg_support.name,
            "kernel_block_sizes": kernel_block_sizes,
            "num_blocks": self.kv_config.num_blocks,
        }

    def metadata(self, batch, block_table, slots, for_capture=False):  # noqa: ANN001, ANN201
        from vllm.config.compilation import CUDAGraphMode

        # V2 builds capture metadata with mode NONE and for_capture set (prepare_inputs_to_capture).
        return self.state.prepare_attn(batch, CUDAGraphMode.NONE, (block_table,), slots, self.attn_groups,
                                       self.kv_config, for_capture=for_capture)

    def forward(self, metadata, slots, positions, mode, recorder, **inputs: Any) -> torch.Tensor:  # noqa: ANN001
        """The model called as V2 calls it. skip_compiled keeps torch.compile out of this CPU
        replay; the call is the one V2 makes in every mode."""
        from vllm.forward_context import set_forward_context
        from vllm.v1.worker.gpu.attn_utils import build_slot_mappings_by_layer

        recorder.calls.clear()
        with set_forward_context(
            metadata, self.config, num_tokens=positions.shape[0], cudagraph_runtime_mode=mode,
            slot_mapping=build_slot_mappings_by_layer(slots, self.kv_config), skip_compiled=True,
        ), torch.inference_mode():
            return self.model(**inputs, positions=positions, intermediate_tensors=None)

    def kv_slots_written(self) -> list[int]:
        """The cache slots of the first layer holding anything, whatever the backend's layout
        (TRITON_ATTN: blocks × 2 × block × ...; FlashAttention: 2 × blocks × block × ...)."""
        cache, blocks = self.first_cache, self.kv_config.num_blocks
        blocks_dim = list(cache.shape).index(blocks)
        block_dim = blocks_dim + 1 + list(cache.shape[blocks_dim + 1 :]).index(self.block_size)
        other = tuple(d for d in range(cache.dim()) if d not in (blocks_dim, block_dim))
        nonzero = cache.float().abs().sum(dim=other) != 0
        return [block * self.block_size + offset for block in range(blocks) for offset in range(self.block_size)
                if nonzero[block, offset]]


def run_step(runner: V2Pieces, recorder: KernelRecorder) -> dict[str, Any]:
    """One V2 step of a mixed batch, from V2's input kernels to logits."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.worker.gpu.input_batch import prepare_pos_seq_lens, prepare_prefill_inputs

    config, model = runner.config, runner.model
    # Request state, in V2's persistent per-slot buffers (indexed by state slot).
    generator = torch.Generator().manual_seed(0)
    max_len = config.model_config.max_model_len
    vocab = config.model_config.get_vocab_size()
    num_reqs, num_tokens = len(STEP), sum(scheduled for _, scheduled, _ in STEP)
    padded_tokens = num_tokens + 6  # V2's buffers are longer than the batch: padding stays put
    all_token_ids = torch.randint(0, vocab, (MAX_REQS, max_len), dtype=torch.int32, generator=generator)
    prefill_len = torch.zeros(MAX_REQS, dtype=torch.int32)
    num_computed = torch.zeros(MAX_REQS, dtype=torch.int32)
    for slot, (computed, _, prompt) in zip(STATE_SLOTS, STEP):
        prefill_len[slot], num_computed[slot] = prompt, computed
    idx_mapping = torch.tensor(STATE_SLOTS[:num_reqs], dtype=torch.int32)
    query_start_loc = torch.tensor(
        [0, *torch.tensor([scheduled for _, scheduled, _ in STEP]).cumsum(0).tolist()], dtype=torch.int32
    )
    input_ids = torch.full((padded_tokens,), -1, dtype=torch.int32)
    # A decode's token is the one sampled last step (V2's combine_sampled_and_draft_tokens).
    for (computed, _, prompt), slot, start in zip(STEP, STATE_SLOTS, query_start_loc.tolist()):
        if computed >= prompt:
            input_ids[start] = all_token_ids[slot, computed]
    prepare_prefill_inputs(
        input_ids, torch.zeros((1, MAX_REQS), dtype=torch.int32), idx_mapping, query_start_loc,
        all_token_ids, prefill_len, num_computed,
    )
    positions = torch.full((padded_tokens,), -1, dtype=torch.int64)
    seq_lens = torch.full((MAX_REQS,), 99, dtype=torch.int32)  # stale values from an earlier step
    prepare_pos_seq_lens(idx_mapping, query_start_loc, num_computed, positions, seq_lens)
    expected_ids = torch.cat([all_token_ids[slot, computed : computed + scheduled]
                              for (computed, scheduled, _), slot in zip(STEP, STATE_SLOTS)])
    out: dict[str, Any] = {"inputs": {
        "input_ids_match_the_requests": bool(torch.equal(input_ids[:num_tokens], expected_ids)),
        "positions": positions[:num_tokens].tolist(),
        "seq_lens": seq_lens.tolist(),
    }}

    # Block tables and slot mapping as V2 gathers them (its UVA buffers need CUDA): each request's
    # blocks scattered over the cache, block 0 left unused.
    block_size = runner.block_size
    blocks_per_req = (max_len + block_size - 1) // block_size
    order = torch.randperm(runner.kv_config.num_blocks - 1, generator=generator)[: num_reqs * blocks_per_req] + 1
    block_table = order.view(num_reqs, blocks_per_req).to(torch.int32)
    slots = torch.full((1, num_tokens), -1, dtype=torch.int64)
    for row, start in enumerate(query_start_loc[:-1].tolist()):
        for token in range(start, query_start_loc[row + 1].item()):
            position = positions[token].item()
            slots[0, token] = block_table[row, position // block_size].item() * block_size + position % block_size
    batch = SimpleNamespace(
        num_reqs=num_reqs, num_tokens=num_tokens, num_reqs_after_padding=num_reqs,
        num_tokens_after_padding=num_tokens, query_start_loc_np=query_start_loc.numpy(),
        query_start_loc=query_start_loc, max_query_len=None,
        num_scheduled_tokens=(query_start_loc[1:] - query_start_loc[:-1]).numpy(),
        seq_lens=seq_lens[:num_reqs], seq_lens_cpu_upper_bound=seq_lens[:num_reqs].clone(),
        dcp_local_seq_lens=None, dcp_local_seq_lens_cpu_upper_bound=None, positions=positions[:num_tokens],
        is_prefilling_np=(num_computed[idx_mapping] < prefill_len[idx_mapping]).numpy(), req_ids=["a", "b", "c"],
        prompt_lens=prefill_len[idx_mapping], idx_mapping_np=idx_mapping.numpy(), fast_prefill=None,
    )
    metadata = runner.metadata(batch, block_table, slots)
    step = {"metadata": metadata, "slots": slots, "positions": positions[:num_tokens],
            "mode": CUDAGraphMode.NONE, "recorder": recorder}
    hidden = runner.forward(**step, input_ids=input_ids[:num_tokens], inputs_embeds=None)
    out["kernel_calls"] = list(recorder.calls)
    with torch.inference_mode():
        embeds = model.embed_input_ids(input_ids[:num_tokens])
        from_embeds = runner.forward(**step, input_ids=None, inputs_embeds=embeds)
        logits = model.compute_logits(hidden)
    out.update(
        hidden_shape=list(hidden.shape),
        inputs_embeds_path_equal=bool(torch.equal(hidden, from_embeds)),
        logits_shape=list(logits.shape),
        kv_slots_written=runner.kv_slots_written(),
        kv_slots_expected=sorted(slots[0].tolist()),
    )
    return out


def run_capture_forward(runner: V2Pieces, recorder: KernelRecorder) -> dict[str, Any]:
    """The forward V2 records into a FULL CUDA graph for a decode batch, without the graph: V2's
    dummy batch and capture-time metadata (`prepare_inputs_to_capture`), the model in FULL mode.
    The dummy block tables and slot mapping are what `BlockTables.get_dummy_*` return (zeroed
    rows, every slot PAD): the capture writes no KV."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.attention.backends.utils import PAD_SLOT_ID
    from vllm.v1.worker.gpu.input_batch import InputBatch, InputBuffers

    config = runner.config
    buffers = InputBuffers(MAX_REQS, config.scheduler_config.max_num_batched_tokens, torch.device("cpu"))
    batch = InputBatch.make_dummy(CAPTURE_REQS, CAPTURE_REQS, buffers, max_query_len=1)
    blocks_per_req = (config.model_config.max_model_len + runner.block_size - 1) // runner.block_size
    block_table = torch.zeros((CAPTURE_REQS, blocks_per_req), dtype=torch.int32)
    slots = torch.full((1, CAPTURE_REQS), PAD_SLOT_ID, dtype=torch.int64)
    before = runner.kv_slots_written()
    out: dict[str, Any] = {}
    try:
        metadata = runner.metadata(batch, block_table, slots, for_capture=True)
        hidden = runner.forward(metadata, slots, batch.positions, CUDAGraphMode.FULL, recorder,
                                input_ids=batch.input_ids, inputs_embeds=None)
        out["hidden_shape"] = list(hidden.shape)
        out["error"] = None
    except (NotImplementedError, AssertionError, RuntimeError) as error:  # the kernels' guards
        out["error"] = f"{type(error).__name__}: {error}"
    out["kernel_calls"] = list(recorder.calls)
    out["kv_unchanged"] = runner.kv_slots_written() == before
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
