"""The `airoboros-server plan` command: will a set-up fit, and how fast can it decode?

`plan` reads what the server knows about MPT and GPUs from `server.mpt` (the model's shape, the
GPU catalog, the attention choice, the sizing) and prints it for a user's GPUs; the server runs
the same check at start on GPU hosts (`check_at_start`).

The acceptance script users run on a CUDA host (`make gpu-check`) is `bench/gpu_check.py`: it
serves through the checkout's harness/, which the installed package does not ship.
"""
