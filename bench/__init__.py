"""Benchmarks of airoboros-server against `vllm serve` (see bench/README.md)."""
