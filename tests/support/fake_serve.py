"""`airoboros-server serve` as a process of its own, on the fake engine: for fleet tests.

    python -m tests.support.fake_serve serve --served-model-name fake-model ...

Everything is the real command (`server.cli.main`: settings, signals, drain, exit status) except
vLLM's engine, which is `harness/fake_engine.py` writing a token every
`AIROBOROS_FAKE_TOKEN_DELAY_S` seconds (0.05 by default: about a small model's pace on a CPU).
It starts in seconds, so tests about what surrounds the server (a load balancer, a rolling
restart, a killed replica) need not wait for engines; what the real engine adds to them (its
start, its shutdown in the drain) is checked on real servers in tests/ops/drain/test_process_exit.py.
"""

from __future__ import annotations

import os
import sys
import shutil

from harness.server import LOOPBACK

FAKE_MODEL = "fake-model"
TOKEN_DELAY_VARIABLE = "AIROBOROS_FAKE_TOKEN_DELAY_S"


def fake_serve_command(*args: str, port: int) -> list[str]:
    """The fake-engine server on loopback `port` with `args`."""
    return [
        sys.executable, "-m", "tests.support.fake_serve", "serve", "--host", LOOPBACK, "--port", str(port),
        "--served-model-name", FAKE_MODEL, *args,
    ]


def main(argv: list[str]) -> int:
    from server.cli import main as cli_main
    from harness.fake_engine import FakeAsyncLLM, fake_checkpoint
    from tests.support.inprocess import fake_engines

    llm = FakeAsyncLLM(token_delay_s=float(os.environ.get(TOKEN_DELAY_VARIABLE, "0.05")))
    # The "checkpoint" (only a config.json), the key to this fake.
    model = fake_checkpoint()
    try:
        with fake_engines.serving(model, llm):
            return cli_main([*argv, "--model", model])
    finally:
        shutil.rmtree(model, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
