"""What the running server knows about itself: its phase, its engine, its services.

Phases: `starting` (HTTP listens, engine loading or warming) → `ready` → `draining` (SIGTERM
seen) → stopped; or `dead` at any point when the engine dies. Readiness is `ready` only; liveness
is anything but `dead` (and an engine that has not errored).

Draining has two steps. From the signal on, readiness is 503 but new requests are still served
(during `--shutdown-delay`, a load balancer may still send some). Once the drain itself starts
(the listening socket closes and the drain clock runs), new generation work gets 503.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.errors import APIError, model_not_found, unavailable
from server.metrics import Metrics
from server.settings import Settings

if TYPE_CHECKING:
    from server.admission import AdmissionGate
    from server.chat import ChatService
    from server.completions import CompletionService
    from server.engine import Engine


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics
    served_name: str
    phase: str = "starting"
    engine: "Engine | None" = None
    chat: "ChatService | None" = None
    completions: "CompletionService | None" = None
    admission: "AdmissionGate | None" = None
    startup_error: str | None = None
    started_at: float = field(default_factory=time.time)
    # True once the warm-up generation succeeded (or was skipped): the engine can serve.
    warmed: bool = False
    # True once the drain proper has started: no new generation work is taken.
    drain_started: bool = False
    # Set when the drain deadline passes (or the engine died): requests still running stop.
    drain_expired: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def engine_dead(self) -> bool:
        return self.phase == "dead" or (self.engine is not None and self.engine.dead)

    @property
    def live(self) -> bool:
        # The engine's own flag, not only the watchdog's phase: 503 the moment vLLM knows.
        return not self.engine_dead

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and self.warmed and not self.engine_dead

    def model_names(self) -> tuple[str, ...]:
        return (self.served_name, *self.settings.model_aliases)

    def check_model(self, name: str) -> None:
        if name not in self.model_names():
            raise model_not_found(name)

    def require_serving(self) -> None:
        """Refuse generation work unless the engine is up and the server is not stopping."""
        if self.engine_dead:
            raise unavailable("The inference engine stopped; the server is restarting.")
        if self.drain_started:
            raise unavailable("The server is shutting down; retry on another replica.", retry_after=1)
        if self.phase not in ("ready", "draining") or not self.warmed or self.engine is None:
            raise unavailable("The model is still loading; retry shortly.", retry_after=5)


def require_engine(state: ServerState) -> "Engine":
    if state.engine is None:
        raise APIError(503, "The model is still loading; retry shortly.", type="server_error",
                       code="unavailable", headers={"Retry-After": "5"})
    return state.engine
