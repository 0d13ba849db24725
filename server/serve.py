"""`airoboros-server serve`: build the app from the settings and run it until it is stopped.

The exit code is 0 after a drain, 1 when the engine died or never started (see
`server.ops.runner` for the signal handling and `server.ops.lifecycle` for the drain).
"""

from __future__ import annotations

import faulthandler
import logging
import signal

from server.app import create_app
from server.engine.args import apply_engine_environment
from server.ops.lifecycle import Lifecycle
from server.ops.runner import DrainingServer, uvicorn_config
from server.ops.state import Phase
from server.settings import Settings

logger = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    exit_code = {"value": 0}
    server: DrainingServer | None = None

    def request_exit(code: int) -> None:
        exit_code["value"] = max(exit_code["value"], code)
        if server is not None:
            server.should_exit = True

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
    logger.info("stopped (exit code %d)", exit_code["value"])
    return exit_code["value"]
