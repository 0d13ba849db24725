"""The one generation path every generating route shares.

request → `PreparedGeneration` (built by the route's service: prompt ids, sampling, how to shape
the output) → `run_generation` (one engine request: abort, deadline, drain) → `Generation` (choice
assembly: text shaping, stop classification, token accounting, finish, usage) → the route's
`ChoiceEncoder` (its JSON body, or its SSE frames). Each route supplies only what differs: its
service and its encoder.
"""

from server.generation.driver import ChoiceEncoder, FinalChoice, Generation
from server.generation.loop import GenerationInterrupted, Interruptions, run_generation
from server.generation.outcome import Outcome, classify_stop
from server.generation.prepared import EnginePrompt, PreparedGeneration

__all__ = [
    "ChoiceEncoder",
    "EnginePrompt",
    "FinalChoice",
    "Generation",
    "GenerationInterrupted",
    "Interruptions",
    "Outcome",
    "PreparedGeneration",
    "classify_stop",
    "run_generation",
]
