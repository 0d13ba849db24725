"""What the server knows about MPT and the GPUs it runs on: one leaf, importing no other package
of the server, so every package that needs the knowledge reads it from here.

- `config`: MPT's checkpoint configuration in both dialects (transformers' and MosaicML's
  remote-code one), normalised into `MptSpec`, with what the plugin refuses, and MPT's ALiBi slopes;
- `catalog`: common GPUs with their memory, bandwidth, compute capability, dense bf16 throughput
  and host link (PCIe);
- `attention`: the attention backend that computes MPT's ALiBi right on each GPU, as vLLM engine
  arguments, the check of a user's `--attention-backend`, and the reasons behind each choice;
- `sizing`: weights, KV cache, sequences, the decode bound and the host-RAM KV tier for a set-up.

Who reads it: `engine/` (engine arguments, the platform), `models/` (the vLLM plugin), `gpu/`
(the `plan` command) and `settings`. Nothing here imports vLLM, or torch at module level: `plan`
and the settings answer without them.
"""
