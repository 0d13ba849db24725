"""airoboros-server: an OpenAI-compatible server for airoboros-mpt-30b on vLLM."""

__version__ = "0.1.0"
