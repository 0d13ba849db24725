"""GPU acceptance check (`make gpu-check`): does this host serve MPT right, and how fast?

    python -m bench.gpu_check --device cuda [--model DIR] [--tensor-parallel-size 2] [--out DIR]
    python -m bench.gpu_check --device cpu     the same on vLLM's CPU build (what the tests run)

1. Tiny random MPTs with MPT-30B's head size 112 and with 128 (and one at tensor parallel 2 when
   two GPUs are visible) are written, served by the real server with its defaults (attention
   backend auto, CUDA graphs on), and compared with transformers' MPT on the same device: the
   reference's greedy continuation of a few prompts, fed back teacher-forced (echo + logprobs),
   must get the same log-probs (1e-3 in float32 on CPU; 0.15 on GPUs, where the checkpoints are
   bfloat16 and the reference float32), and the server's own greedy tokens, each prompt its own
   concurrent request, are counted against the reference's.
   On GPUs one more case has the shape of an MPT-30B tensor-parallel-2 rank: head size 112 and 32
   heads. TRITON_ATTN's decode then takes the 2D kernel for batches above 4 sequences (its 3D
   threshold is 128 // kv heads, moved to the nearest CUDA-graph capture size), so its 8
   concurrent greedy streams decode through the 2D kernel replayed from full CUDA graphs: the
   path that serves real traffic on a TP2 rank, which the 2-head cases never take.
2. With `--model DIR` (the real checkpoint), it is served too: the model card's closed-context
   question (blueberries) and a PLAINFORMAT coding prompt are asked and their answers checked,
   and output tokens/s are measured at 1, 16 and 64 concurrent streams next to `plan`'s batch-1
   decode bound for this host.
3. `report.json` and `report.md` go to `--out` (written whole, then moved into place).

It lives in bench/, not in the shipped `server/` package, because it runs from a checkout: it
serves through harness/ and measures with bench/load.py. Run it from the repository root
(`python -m` puts the root on sys.path). It needs the GPT-NeoX tokenizer for the tiny models
(`--tokenizer`, else ../shared/data, else the real checkpoint's, else the embedded default
model's), and exits 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gpu_kernels import CAPTURE_SIZES

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,"]
# Eight streams for the 2D-kernel case: more than its 3D threshold of 4 sequences.
MORE_PROMPTS = PROMPTS + ["The three primary colors are", "import numpy as np\n", "Dear Sir or Madam,",
                          "In 1969, the first", "The recipe calls for two cups of"]
CONTINUATION = 16
TOLERANCE = {"cpu": 1e-3, "cuda": 0.15}
BLUEBERRY = {
    "messages": [{"role": "user", "content": "What color are blueberries? Source?"}],
    "documents": [{
        "text": "In a shocking turn of events, blueberries are now green, but will be sticking with the same name.",
        "metadata": {"date": "2021-01-01", "url": "https://web.site/123"},
    }],
}
PLAINFORMAT = {"messages": [{"role": "user", "content": "Write a Python function that reverses a string."}],
               "plainformat": True}
LEVELS = (1, 16, 64)



def tiny_cases(device: str, gpus: int) -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {"head112": {"d_model": 224, "n_heads": 2}}
    if device == "cuda":
        cases["head128"] = {"d_model": 256, "n_heads": 2}
        # An MPT-30B TP2 rank's attention (32 heads of 112) with 8 greedy streams: the 2D kernel.
        cases["head112-32heads-2d"] = {"d_model": 112 * 32, "n_heads": 32, "prompts": MORE_PROMPTS}
        if gpus >= 2:
            cases["head112-tp2"] = {"d_model": 448, "n_heads": 4, "tp": 2}
    return cases


def served_greedy(base_url: str, model: str, prompts: list[str]) -> list[dict[str, Any]]:
    """Each prompt its own request, all at once: the engine decodes them as one batch."""
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    def one(prompt: str) -> dict[str, Any]:
        body = {"model": model, "prompt": prompt, "max_tokens": CONTINUATION, "temperature": 0,
                "ignore_eos": True, "logprobs": 1, "return_tokens_as_token_ids": True}
        response = httpx.post(base_url + "/v1/completions", json=body, timeout=600)
        response.raise_for_status()
        return response.json()["choices"][0]

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        return list(pool.map(one, prompts))


def find_tokenizer(given: Path | None, model: Path | None) -> Path:
    shared = Path(os.environ.get("AIROBOROS_NEOX_TOKENIZER", REPO_ROOT.parent / "shared/data/gpt-neox-20b-tokenizer.json"))
    for candidate in (given, shared, model / "tokenizer.json" if model else None):
        if candidate is not None and candidate.is_file():
            return candidate
    from server.engine.default_model import prepare_default_model

    return prepare_default_model(Path("~/.cache/airoboros-server").expanduser()) / "tokenizer.json"


def server_env(device: str, tp: int) -> dict[str, str]:
    if device == "cpu":
        return {"VLLM_CPU_OMP_THREADS_BIND": "0|1"} if tp == 2 else {}
    return {"AIROBOROS_ENFORCE_EAGER": "false"}  # the defaults: CUDA graphs, as served


def teacher_forced(model, token_ids: list[int]) -> list[float]:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([token_ids], device=model.device)).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[i - 1, token].item() for i, token in enumerate(token_ids) if i > 0]


def check_tiny(name: str, shape: dict[str, Any], device: str, tokenizer_file: Path, work: Path) -> dict[str, Any]:
    import httpx
    import torch
    from transformers import PreTrainedTokenizerFast

    from bench.triton_alibi import triton_3d_threshold
    from harness.server import running_server
    from harness.tiny_mpt import TinyMpt, build_reference, save_checkpoint

    shape = dict(shape)
    tp = shape.pop("tp", 1)
    prompts = shape.pop("prompts", PROMPTS)
    spec = TinyMpt(**shape, dialect="mosaicml")
    model = build_reference(spec)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    directory = save_checkpoint(model.to(dtype), spec, work / f"tiny-mpt-{name}", tokenizer_file)
    reference = model.to(torch.float32).to(device)  # the checkpoint's values, computed in float32
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    sequences, greedy = [], []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            out = reference.generate(torch.tensor([ids], device=device), do_sample=False, max_new_tokens=CONTINUATION,
                                     min_new_tokens=CONTINUATION, pad_token_id=0, eos_token_id=None)[0].tolist()
        greedy.append(out[len(ids):])
        text = tokenizer.decode(out)
        sequences.append((prompt, text, tokenizer.encode(text, add_special_tokens=False)))
    flags = ["--model", str(directory), "--tensor-parallel-size", str(tp)]
    if device == "cpu":
        flags += ["--dtype", "float32"]
    started = time.monotonic()
    with running_server(*flags, env=server_env(device, tp)) as server:
        start_s = time.monotonic() - started
        body = {"model": directory.name, "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": 0,
                "return_tokens_as_token_ids": True, "prompt": [text for _, text, _ in sequences]}
        echoed = httpx.post(server.base_url + "/v1/completions", json=body, timeout=600).json()
        served = served_greedy(server.base_url, directory.name, prompts)
        log_lines = server.log_text().splitlines()
        backend_line = next((line.strip() for line in log_lines if "Using" in line and "ATTN" in line), None)
        graphs_line = next((line.strip() for line in log_lines if "Capturing CUDA graphs" in line), None)
    worst, agree = 0.0, 0
    for (_, _, ids), choice in zip(sequences, sorted(echoed["choices"], key=lambda c: c["index"])):
        got = choice["logprobs"]["token_logprobs"][1:len(ids)]
        worst = max(worst, *(abs(a - b) for a, b in zip(got, teacher_forced(reference, ids))))
    for want, choice in zip(greedy, served):
        tokens = [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]]
        agree += next((i for i, (a, b) in enumerate(zip(tokens, want)) if a != b), len(want))
    return {
        "case": name, "head_size": spec.d_model // spec.n_heads, "tensor_parallel_size": tp,
        "dtype": str(dtype).removeprefix("torch."), "start_s": round(start_s, 1),
        "max_logprob_difference": worst, "tolerance": TOLERANCE[device],
        "concurrent_streams": len(prompts), "greedy_tokens_agreeing": f"{agree}/{len(prompts) * CONTINUATION}",
        "decode_kernel": "2d" if len(prompts) > triton_3d_threshold(spec.n_heads // tp, CAPTURE_SIZES) else "3d",
        "attention_log": backend_line, "cuda_graphs_log": graphs_line, "passed": worst <= TOLERANCE[device],
    }


def check_real(model_dir: Path, tp: int, device: str) -> dict[str, Any]:
    import httpx

    from bench.load import run_level, summarize
    from harness.server import running_server

    served = "airoboros-check"
    result: dict[str, Any] = {"model": str(model_dir), "tensor_parallel_size": tp}
    with running_server("--model", str(model_dir), "--served-model-name", served,
                        "--tensor-parallel-size", str(tp), env=server_env(device, tp)) as server:
        answers = {}
        for name, extra in (("blueberry", BLUEBERRY), ("plainformat", PLAINFORMAT)):
            body = {"model": served, "temperature": 0, "max_tokens": 256, **extra}
            reply = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=600).json()
            answers[name] = reply["choices"][0]["message"]["content"]
        result["answers"] = answers
        result["answers_passed"] = ("green" in answers["blueberry"].lower()
                                    and "def " in answers["plainformat"] and "```" not in answers["plainformat"])
        levels = {}
        for level in LEVELS:
            records, wall = asyncio.run(run_level(server.base_url, model=served, prompts=PROMPTS, concurrency=level,
                                                  requests=2 * level, max_tokens=256, time_limit_s=600))
            summary = summarize(records, wall, 256)
            levels[str(level)] = {k: summary[k] for k in ("output_tokens_per_s", "tpot_ms_p50", "requests_failed")}
        result["throughput"] = levels
    result["bound"] = decode_bound(model_dir, tp) if device == "cuda" else None
    tpot = levels["1"]["tpot_ms_p50"]
    if result["bound"] and tpot:
        result["batch1_fraction_of_bound"] = round(1000 / tpot / result["bound"], 2)
    return result


def decode_bound(model_dir: Path, tp: int) -> float | None:
    import torch

    from server.mpt.catalog import Gpu, bandwidth_for_driver_name
    from server.gpu.plan import quantization_of
    from server.mpt.sizing import Setup, make_plan
    from server.mpt.config import MptSpec

    config = json.loads((model_dir / "config.json").read_text())
    name = torch.cuda.get_device_name()
    gpu = Gpu("this", name, torch.cuda.get_device_properties(0).total_memory, bandwidth_for_driver_name(name),
              torch.cuda.get_device_capability())
    quantization = quantization_of(config)
    dtype = "float16" if quantization in ("awq", "gptq") else "bfloat16"
    plan = make_plan(Setup(MptSpec.from_config(config), gpu, tp, dtype, quantization), suggest=False)
    return plan.decode_bound


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# GPU check: {'PASSED' if report['passed'] else 'FAILED'}", "", f"device: {report['device']}", "",
             "| case | head | TP | dtype | streams | decode kernel | max Δ log-prob | tolerance | greedy agree | passed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {c['case']} | {c['head_size']} | {c['tensor_parallel_size']} | {c['dtype']} | "
              f"{c['concurrent_streams']} | {c['decode_kernel']} | {c['max_logprob_difference']:.2e} | "
              f"{c['tolerance']:g} | {c['greedy_tokens_agreeing']} | {c['passed']} |"
              for c in report["tiny"]]
    if report.get("real"):
        lines += ["", "```json", json.dumps(report["real"], indent=2), "```"]
    for name, text in (("report.json", json.dumps(report, indent=2)), ("report.md", "\n".join(lines) + "\n")):
        handle, temporary = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--model", type=Path, help="the real checkpoint, served and measured too")
    parser.add_argument("--tensor-parallel-size", type=int, default=None, help="for --model (default: GPUs visible)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json for the tiny models")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "gpu-check-report")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible (use --device cpu on a machine without one)", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    device_name = torch.cuda.get_device_name() if gpus else "cpu"
    tokenizer_file = find_tokenizer(args.tokenizer, args.model)
    report: dict[str, Any] = {"device": f"{gpus} × {device_name}" if gpus else "cpu", "tiny": []}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        for name, shape in tiny_cases(args.device, gpus).items():
            print(f"gpu-check: serving tiny MPT {name} ...", flush=True)
            report["tiny"].append(check_tiny(name, shape, args.device, tokenizer_file, Path(work)))
            print(f"gpu-check: {json.dumps(report['tiny'][-1])}", flush=True)
    if args.model:
        print(f"gpu-check: serving {args.model} ...", flush=True)
        report["real"] = check_real(args.model, args.tensor_parallel_size or max(gpus, 1), args.device)
    report["passed"] = all(c["passed"] for c in report["tiny"]) and report.get("real", {}).get("answers_passed", True)
    write_report(args.out, report)
    print(f"gpu-check: {'passed' if report['passed'] else 'FAILED'}; report in {args.out}", flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
