"""The checkout's harness: what the tests, the benchmarks (bench/) and the GPU acceptance check
(`make gpu-check`) share to drive the real server. Not part of the installed package or the image.

- `server`: start the real server (`python -m server serve`) on a loopback port, wait for it,
  read its log, stop it;
- `load`, `streams`, `sse`: the load generator and the SSE reader, metrics and process probes;
- `tiny_mpt`, `tiny_awq`, `lora_checkpoints`: tiny random MPT checkpoints (plain, AWQ, and LoRA
  adapters with their base) and their transformers reference;
- `kv_blocks`: the prefix-block hashes a router computes (the algorithm in docs/production.md);
- `json_schemas`: random JSON Schemas for tool parameters (hypothesis strategies);
- `fake_engine`: a fake of vLLM's `AsyncLLM` for tests and micro-benchmarks that isolate the
  server's own layers; never a default of anything, and never shipped.
"""
