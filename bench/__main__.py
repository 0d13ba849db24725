"""`python -m bench`: our server against `vllm serve`, and the roofline; see bench/README.md.

    python -m bench                   full run (both models, 3 rounds, c = 1 4 16 64), ~20 min
    python -m bench --quick           one round, short answers, a few minutes
    python -m bench --url http://127.0.0.1:8000 --levels 2    an already running server of ours
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import models, report
from bench.harness import QUICK_PLAN, Plan, add_roofline, compare_model, environment_facts, target_existing
from bench.servers import REPO_ROOT, EngineConfig, find_libraries, log_dir

DEFAULT_OUT = REPO_ROOT / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, 32-token answers")
    parser.add_argument("--levels", help="concurrencies, comma-separated (default 1,4,16,64)")
    parser.add_argument("--rounds", type=int, help="rounds per concurrency (default 3, quick 1)")
    parser.add_argument("--max-tokens", type=int, help="tokens per answer (default 128, quick 32)")
    parser.add_argument("--waves", type=int, help="requests per run = waves x concurrency (default 1)")
    parser.add_argument("--min-requests", type=int, help="at least this many requests per run")
    parser.add_argument("--models", default="default,mpt", help="default (SmolLM2-135M) and/or mpt (tiny MPT)")
    parser.add_argument("--no-vllm", action="store_true", help="our server alone")
    parser.add_argument("--direct", default="default", help="models that also run AsyncLLM in-process (default: default; 'none')")
    parser.add_argument("--compile", action="store_true", help="torch.compile (vLLM's default) instead of enforce-eager")
    parser.add_argument("--preload", default="none", choices=["none", "tcmalloc", "iomp", "tcmalloc+iomp"],
                        help="LD_PRELOAD for every engine (both servers alike)")
    parser.add_argument("--ab-preload", choices=["tcmalloc", "iomp", "tcmalloc+iomp"],
                        help="instead of vllm serve: our server with this LD_PRELOAD against our server without")
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--url", help="benchmark our server already running here (loopback), alone")
    parser.add_argument("--served-model", help="with --url: the model name (default: the first of /v1/models)")
    parser.add_argument("--frontend-pid", type=int, help="with --url: the server's process (default: found by port)")
    parser.add_argument("--model-dir", type=Path, help="with --url: the checkpoint, for the roofline")
    parser.add_argument("--bandwidth-mib", type=int, default=512, help="array size of the bandwidth copy")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where report.json/.md/.png go")
    parser.add_argument("--no-plot", action="store_true")
    return parser.parse_args(argv)


def build_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK_PLAN if args.quick else Plan()
    if args.levels:
        plan = replace(plan, levels=tuple(int(x) for x in args.levels.split(",")))
    for field in ("rounds", "max_tokens", "waves", "min_requests"):
        value = getattr(args, field)
        if value is not None:
            plan = replace(plan, **{field: value})
    return plan


def preload_value(choice: str) -> str:
    if choice == "none":
        return ""
    found = find_libraries()
    parts = []
    for name in choice.split("+"):
        if found[name] is None:
            raise SystemExit(f"--preload {choice}: lib{name} not found (tcmalloc: apt-get install libtcmalloc-minimal4)")
        parts.append(found[name])
    return ":".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = build_plan(args)
    started = time.time()
    preload = preload_value(args.preload)
    environment = environment_facts(preload)

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {message}", flush=True)

    entries = []
    if args.url:
        mode = "existing server"
        entry = target_existing(args.url.rstrip("/"), args.served_model, plan, log, args.frontend_pid)
        if args.model_dir:
            add_roofline(entry, args.model_dir, "bfloat16", args.bandwidth_mib)
        entries.append(entry)
    else:
        mode = "quick" if args.quick else "full"
        logs = log_dir()
        log(f"server logs in {logs}")
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        direct_for = {m.strip() for m in args.direct.split(",")}
        work_dir = Path(tempfile.mkdtemp(prefix="airoboros-bench-"))
        for which in wanted:
            model_plan = plan
            if which == "default":
                config = EngineConfig(model_dir=models.default_model_dir(), served_name=models.DEFAULT_SERVED_NAME,
                                      use_default_model=True)
            elif which == "mpt":
                config = EngineConfig(model_dir=models.make_tiny_mpt(work_dir / models.TINY_MPT_NAME),
                                      served_name=models.TINY_MPT_NAME, use_default_model=False, max_model_len=512)
                # Ten times the default model's speed: more requests, so that a run lasts seconds.
                model_plan = replace(plan, waves=plan.waves * 4, min_requests=plan.min_requests * 4)
            else:
                raise SystemExit(f"unknown model {which!r}: use default and/or mpt")
            config = replace(
                config, enforce_eager=not args.compile, ld_preload=preload, kv_cache_gib=args.kv_cache_gib,
                max_num_seqs=args.max_num_seqs,
                max_model_len=min(config.max_model_len, args.max_model_len),
            )
            ab = (f"ours+{args.ab_preload}", preload_value(args.ab_preload)) if args.ab_preload else None
            entry = compare_model(config, model_plan, with_vllm=not args.no_vllm and ab is None,
                                  with_direct=which in direct_for and ab is None, log_dir=logs, log=log,
                                  ab_preload=ab)
            add_roofline(entry, config.model_dir, config.dtype, args.bandwidth_mib)
            entry["plan"] = model_plan.__dict__ | {"levels": list(model_plan.levels)}
            entries.append(entry)
    result = {
        "meta": {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "duration_s": time.time() - started,
            "mode": mode,
            "plan": plan.__dict__ | {"levels": list(plan.levels)},
            "environment": environment,
            "argv": sys.argv[1:] if argv is None else argv,
        },
        "models": entries,
    }
    written = report.write(result, args.out, with_plot=not args.no_plot)
    print(report.markdown(result))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
