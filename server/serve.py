"""`airoboros-server serve`: build the app from the settings and run it until it is stopped.

The exit code is 0 after a drain, 1 when the engine died or never started, 130 after a second
SIGINT cut the drain short (see `server.ops.runner` for the signal handling and
`server.ops.lifecycle` for the drain).
"""

from __future__ import annotations

import atexit
import faulthandler
import logging
import signal

from server.app import create_app
from server.engine.args import apply_engine_environment
from server.engine.processes import exit_without_teardown
from server.ops.lifecycle import Lifecycle
from server.ops.runner import FORCED_EXIT_CODE, DrainingServer, uvicorn_config
from server.ops.state import Phase
from server.settings import Settings

logger = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    exit_code = {"value": 0}
    served = {"done": False}
    server: DrainingServer | None = None

    def request_exit(code: int) -> None:
        exit_code["value"] = max(exit_code["value"], code)
        if server is not None:
            server.should_exit = True

    def end_quietly() -> None:
        # Registered before vLLM loads, so it runs after vLLM's exit handlers; once the server
        # has stopped (engine shut down, no child left) the interpreter's teardown has nothing
        # to do but cost seconds and print vLLM's __del__ traceback: skip it. A run that did not
        # return (an exception) keeps Python's own exit.
        if served["done"]:
            exit_without_teardown(exit_code["value"])

    atexit.register(end_quietly)
    apply_engine_environment(settings)
    # `kill -USR1 <pid>`: where a start-up or request that seems stuck is waiting, from the log
    # alone, without a debugger in the image.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    app = create_app(settings, request_exit=request_exit)
    lifecycle: Lifecycle = app.state.lifecycle
    server = DrainingServer(uvicorn_config(settings, app), lifecycle, settings.shutdown_delay)
    scheme = "https" if settings.ssl_certfile is not None else "http"
    logger.info("listening on %s://%s:%d", scheme, settings.host, settings.port)
    server.run()
    if app.state.server.phase is Phase.DEAD:
        exit_code["value"] = max(exit_code["value"], 1)
    if server.forced:
        exit_code["value"] = max(exit_code["value"], FORCED_EXIT_CODE)
    logger.info("stopped (exit code %d)", exit_code["value"])
    served["done"] = True
    return exit_code["value"]
