"""The FastAPI app built in process, for tests that read its routes or schema (no engine starts:
the lifespan only runs when a server serves it). Each gets its own metrics registry, since the
default one accepts each metric name once per process."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from server.app import create_app
from server.metrics import Metrics
from server.settings import Settings


def build_app(**settings) -> FastAPI:
    return create_app(Settings(**settings), metrics=Metrics(CollectorRegistry()))
