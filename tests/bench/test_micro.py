"""`python -m bench.frontend_micro` measures the server's real streaming layers on the fake engine.

It once imported modules that no longer exist; running it (briefly) keeps it on the code path the
server really takes.
"""

from __future__ import annotations

import asyncio
import math

from bench.frontend_micro import measure

CHUNKS = 300


def test_every_layer_is_measured_on_the_real_code_path():
    results = asyncio.run(asyncio.wait_for(measure(CHUNKS), 120))
    # The chat stream of " word" x 60: a frame per token, except where the output shaper holds a
    # space back to send it with the next word (and the stop-string hold-back at the start).
    assert CHUNKS * 0.7 <= results.pop("(frames Generation.stream sent)") <= CHUNKS + 5
    assert set(results) == {
        "fake engine alone", "run_generation (+ fake engine)", "Generation.stream, chat (+ run_generation + engine)",
        "json dumps of one chunk", "data_frame", "bare ASGI send loop", "sse_response (sse-starlette)",
        "middlewares + bare ASGI send loop",
    }
    # Each layer's figure is the CPU time it took, per chunk: a finite, positive number of
    # microseconds (no layer is skipped, none fails to time), and no claim on its size.
    assert all(math.isfinite(microseconds) and microseconds > 0 for microseconds in results.values()), results
