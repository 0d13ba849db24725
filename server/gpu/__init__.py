"""Everything the server knows about NVIDIA GPUs, kept apart from the CPU path.

- `catalog`: common GPUs with their memory, bandwidth, compute capability, dense bf16 throughput
  and host link (PCIe);
- `attention`: the attention backend that computes MPT's ALiBi right on each GPU, as vLLM engine
  arguments, the check of a user's `--attention-backend`, and the model's load-time refusal;
- `sizing` and `plan`: weights, KV cache, sequences, the decode bound and the host-RAM KV tier
  (`--kv-offload-gib`) for a set-up, and the `airoboros-server plan` command (also run at start
  on GPU hosts).

The acceptance script users run on a CUDA host (`make gpu-check`) is `bench/gpu_check.py`: it
serves through the checkout's tests/support, which the installed package does not ship.

Nothing here imports vLLM or torch at module level: `plan` and the settings answer without them.
"""
