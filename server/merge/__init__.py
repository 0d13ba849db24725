"""`airoboros-server merge`: a peft LoRA adapter merged into an MPT base checkpoint, shard by shard.

The modules, in the order a merge uses them:

- `base_checkpoint`: the base as published (sharded `.bin` or safetensors, both MPT config
  dialects), read one shard at a time; refuses quantized bases.
- `adapter`: a peft LoRA adapter (`adapter_config.json` + weights) and each module's scale.
- `plan`: what happens to each base tensor (copy, LoRA merge, replacement), every shape checked
  before anything is written.
- `nf4`: bitsandbytes' NF4 round-trip of the base weights (`--base-nf4`).
- `safetensors_writer`: output shards streamed to disk one tensor at a time, and their index.
- `side_files`: config, tokenizer, generation config and remote code carried into OUT.
- `output_dir`: the temporary directory beside OUT, renamed onto OUT only when complete.
- `merge`: the shard-by-shard merge itself.
- `command`: the command's arguments, progress bar and summary (`sizes`: 5GB ↔ bytes).

Nothing here imports torch at module level except the modules that compute, so `--help` and the
server's other commands stay fast.
"""
