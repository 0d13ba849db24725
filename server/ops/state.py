"""What the running server knows about itself: its phase, its engine, and what every request
shares (admission, the running generations, metrics).

Phases and the only moves between them (`Phase.allowed`):

    loading → warming → ready → delisting → draining → stopped
                                  (dead from any phase but stopped)

- `loading`: HTTP listens (liveness 200), the model is prepared and loaded in a thread.
- `warming`: the engine exists; one short generation must succeed before readiness.
- `ready`: readiness 200; generation requests are served.
- `delisting`: an exit signal arrived; readiness 503 while requests are still served for
  `--shutdown-delay`, so a balancer polling readiness stops sending before the socket closes.
- `draining`: the listening socket is closed and new generation work gets 503; in-flight
  requests run until the drain deadline, when the rest are interrupted.
- `stopped`: the engine is shut down.
- `dead`: the engine died (or never started); the process exits non-zero.

A signal before the server was ever ready skips `delisting` (nothing is served yet).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum

from server.engine import Engine
from server.errors import model_not_found, unavailable
from server.generation import Interruptions
from server.metrics import Metrics
from server.ops.admission import AdmissionGate
from server.settings import Settings

logger = logging.getLogger(__name__)


class Phase(str, Enum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DELISTING = "delisting"
    DRAINING = "draining"
    STOPPED = "stopped"
    DEAD = "dead"

    def allowed(self) -> frozenset["Phase"]:
        return _TRANSITIONS[self]


_TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.LOADING: frozenset({Phase.WARMING, Phase.DRAINING, Phase.STOPPED, Phase.DEAD}),
    Phase.WARMING: frozenset({Phase.READY, Phase.DRAINING, Phase.STOPPED, Phase.DEAD}),
    Phase.READY: frozenset({Phase.DELISTING, Phase.DRAINING, Phase.STOPPED, Phase.DEAD}),
    Phase.DELISTING: frozenset({Phase.DRAINING, Phase.STOPPED, Phase.DEAD}),
    Phase.DRAINING: frozenset({Phase.STOPPED, Phase.DEAD}),
    Phase.STOPPED: frozenset(),
    Phase.DEAD: frozenset(),
}


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics
    served_name: str
    phase: Phase = Phase.LOADING
    engine: Engine | None = None
    started_at: float = field(default_factory=time.time)
    interruptions: Interruptions = field(default_factory=Interruptions)
    admission: AdmissionGate = field(init=False)

    def __post_init__(self) -> None:
        self.admission = AdmissionGate(self.settings.max_inflight, self.metrics)

    def advance(self, phase: Phase) -> bool:
        """Move to `phase` if the current one allows it; False (and no change) otherwise."""
        if phase is self.phase:
            return True
        if phase not in self.phase.allowed():
            return False
        logger.debug("phase %s → %s", self.phase.value, phase.value)
        self.phase = phase
        return True

    @property
    def engine_dead(self) -> bool:
        return self.phase is Phase.DEAD or (self.engine is not None and self.engine.dead)

    @property
    def live(self) -> bool:
        # The engine's own flag, not only the watchdog's phase: 503 the moment vLLM knows.
        return not self.engine_dead

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY and not self.engine_dead

    def model_names(self) -> tuple[str, ...]:
        return (self.served_name, *self.settings.model_aliases)

    def check_model(self, name: str) -> None:
        if name not in self.model_names():
            raise model_not_found(name)

    def serving_engine(self) -> Engine:
        """The engine, for generation work; 503 unless the server is up and not stopping."""
        if self.engine_dead:
            raise unavailable("The inference engine stopped; the server is restarting.")
        if self.phase in (Phase.READY, Phase.DELISTING) and self.engine is not None:
            return self.engine
        if self.phase in (Phase.DRAINING, Phase.STOPPED):
            raise unavailable("The server is shutting down; retry on another replica.", retry_after=1)
        raise unavailable("The model is still loading; retry shortly.", retry_after=5)
