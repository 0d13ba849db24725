"""The server's phases: the moves allowed, written once, and what each phase answers."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from server.errors import APIError
from server.metrics import Metrics
from server.ops.state import Phase, ServerState
from server.settings import Settings


class LiveEngine:
    dead = False


def state_in(*path: Phase) -> ServerState:
    state = ServerState(settings=Settings(), metrics=Metrics(CollectorRegistry()), served_name="m")
    for phase in path:
        assert state.advance(phase), f"{state.phase} → {phase} refused"
    return state


def test_the_normal_life_is_loading_warming_ready_delisting_draining_stopped():
    state = state_in(Phase.WARMING, Phase.READY, Phase.DELISTING, Phase.DRAINING, Phase.STOPPED)
    assert state.phase is Phase.STOPPED


@pytest.mark.parametrize("phase", [p for p in Phase if p not in (Phase.STOPPED, Phase.DEAD)])
def test_the_engine_can_die_in_any_phase_before_stopped(phase):
    path = {
        Phase.LOADING: [], Phase.WARMING: [Phase.WARMING], Phase.READY: [Phase.WARMING, Phase.READY],
        Phase.DELISTING: [Phase.WARMING, Phase.READY, Phase.DELISTING],
        Phase.DRAINING: [Phase.WARMING, Phase.READY, Phase.DRAINING],
    }[phase]
    state = state_in(*path)
    assert state.advance(Phase.DEAD) and state.phase is Phase.DEAD


@pytest.mark.parametrize(
    "path, refused",
    [
        ([], Phase.READY),  # never ready without a warm-up
        ([], Phase.DELISTING),  # nothing to delist before ready
        ([Phase.WARMING, Phase.READY, Phase.DRAINING], Phase.READY),  # no way back
        ([Phase.DRAINING], Phase.WARMING),  # a load that ends after the signal does not warm up
        ([Phase.DEAD], Phase.READY),
        ([Phase.STOPPED], Phase.DEAD),
    ],
)
def test_moves_outside_the_table_are_refused_and_change_nothing(path, refused):
    state = state_in(*path)
    before = state.phase
    assert not state.advance(refused)
    assert state.phase is before


def test_generation_is_served_when_ready_and_while_delisting_only():
    for path, serves in [
        ([], False),
        ([Phase.WARMING], False),
        ([Phase.WARMING, Phase.READY], True),
        ([Phase.WARMING, Phase.READY, Phase.DELISTING], True),
        ([Phase.WARMING, Phase.READY, Phase.DELISTING, Phase.DRAINING], False),
    ]:
        state = state_in(*path)
        state.engine = LiveEngine()
        if serves:
            assert state.serving_engine() is state.engine
        else:
            with pytest.raises(APIError) as refused:
                state.serving_engine()
            assert refused.value.status == 503 and refused.value.code == "unavailable"


def test_readiness_is_ready_only_and_liveness_follows_the_engine():
    state = state_in(Phase.WARMING, Phase.READY)
    state.engine = LiveEngine()
    assert state.ready and state.live
    state.advance(Phase.DELISTING)
    assert not state.ready and state.live
    state.engine.dead = True
    assert not state.live
