"""The one settings object: every flag of `airoboros-server serve` and its environment variable.

Precedence: command-line flag, then `AIROBOROS_<NAME>` environment variable, then the default
here. The CLI builds flags from these fields, so a new setting is one new field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

from prompt_formats import format_names

DEFAULT_CACHE_DIR = Path("~/.cache/airoboros-server")
AUTO_PROMPT_FORMAT = "auto"
DEFAULT_RESPONSES_STORE = "sqlite"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIROBOROS_", extra="ignore")

    # --- the model -------------------------------------------------------------------------
    model: Path | None = Field(
        None, description="Checkpoint directory. Absent: the embedded default model."
    )
    served_model_name: str | None = Field(
        None,
        description="The `model` name clients use. Default: the checkpoint directory's name "
        "(the embedded default model: smollm2-135m-instruct).",
    )
    model_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Other names accepted for the model (comma-separated)."
    )
    tokenizer: Path | None = Field(None, description="Tokenizer directory. Default: the model's.")
    max_model_len: int | None = Field(
        None, gt=0, description="Context length. Default: the checkpoint's."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs (CPU: sockets) per replica.")
    dtype: str = Field("auto", description="Weights dtype: auto, bfloat16, float16, float32.")
    enforce_eager: bool | None = Field(
        None,
        description="Skip graph compilation: starts about 4x faster, decodes about a fifth slower. "
        "Default: on for vLLM's CPU build, off on GPUs (CUDA graphs).",
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU memory share for vLLM.")
    cpu_kv_cache_gib: int | None = Field(
        None, ge=1, description="KV cache GiB on CPU hosts (VLLM_CPU_KVCACHE_SPACE; whole GiB; default 4)."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences the engine batches at once.")
    block_size: int | None = Field(
        None, ge=1,
        description="KV-cache block size in tokens, the prefix cache's unit (a router's blockSize must "
        "equal it). Default: vLLM's, 16 on GPUs and 128 on its CPU build (which takes multiples of 32).",
    )
    kv_offload_gib: float | None = Field(
        None, gt=0,
        description="Host-RAM tier for the KV cache, GiB for the whole replica (all GPUs together): "
        "vLLM's CPU offloading copies prompt KV blocks there, so a returning conversation reloads "
        "its earlier prompt over PCIe instead of prefilling it again. GPUs only. Default: off.",
    )
    kv_events_endpoint: str | None = Field(
        None,
        description="Publish the engine's KV-cache events (blocks stored, removed) over ZMQ for a "
        "prefix-aware router (the inference gateway's endpoint picker): tcp://*:5557 binds here, "
        "tcp://picker:5557 connects to a router that binds. Default: off.",
    )
    kv_events_topic: str | None = Field(None, description="ZMQ topic of the KV-cache events. Default: none.")
    prefix_caching_hash_algo: Literal["sha256_cbor", "sha256", "xxhash_cbor", "xxhash"] = Field(
        "sha256_cbor",
        description="How the engine hashes prefix blocks (vLLM's --prefix-caching-hash-algo); "
        "sha256_cbor is the one a router in any language can recompute (docs/production.md, the inference gateway).",
    )
    model_runner: Literal["auto", "v1", "v2"] = Field(
        "auto",
        description="vLLM's model runner: auto (vLLM's choice: Model Runner V2 on GPUs, where Triton "
        "imports; V1 on vLLM's CPU build), v1 or v2 (vLLM's VLLM_USE_V2_MODEL_RUNNER). v2 needs "
        "a GPU build.",
    )
    attention_backend: str = Field(
        "auto",
        description="vLLM attention backend: auto (the server's ALiBi-safe choice per GPU), "
        "TRITON_ATTN, FLASH_ATTN (pinned to FlashAttention 2 for ALiBi) or CPU_ATTN.",
    )
    prompt_format: str = Field(
        "auto",
        description="Prompt format of the chat routes: auto (airoboros for a checkpoint, chatml "
        "for the embedded default model, which was trained on it), airoboros or chatml.",
    )
    add_bos: bool = Field(False, description="Start every chat prompt with the BOS token.")
    cache_dir: Path = Field(
        DEFAULT_CACHE_DIR, description="Where the embedded default model is converted to."
    )

    # --- HTTP ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key_file: Path | None = Field(None, description="File with one API key per line.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys, comma-separated (environment only; never put keys on a command line).",
        exclude=True,
        repr=False,
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins whose browser pages may call the API (CORS), comma-separated; `*` for "
        "any. Default none: no CORS headers at all.",
    )
    allowed_methods: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="HTTP methods CORS allows (with --allowed-origins)."
    )
    allowed_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="Request headers CORS allows (with --allowed-origins)."
    )
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM): serve HTTPS only.")
    ssl_keyfile: Path | None = Field(
        None, description="TLS private key (PEM) of --ssl-certfile, unless that file holds it."
    )
    ssl_ca_certs: Path | None = Field(
        None,
        description="CA certificates (PEM): given, every client must present a certificate they "
        "signed (mutual TLS); absent, none is asked for.",
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Request body limit.")
    keep_alive_timeout: float = Field(
        75.0, gt=0, description="Idle HTTP keep-alive seconds (above load-balancer idle timeouts)."
    )
    max_connections: int = Field(
        1024, ge=1,
        description="Open HTTP connections, at most; at the limit new requests get 503 at once "
        "until connections close (uvicorn's limit_concurrency).",
    )
    header_timeout: float = Field(
        30.0, gt=0,
        description="Seconds a client gets to send a request's headers, from the connection's "
        "opening or the request's first byte; then 408 and the connection closes.",
    )
    body_timeout: float = Field(
        60.0, gt=0,
        description="Seconds a client gets to send a request's body after its headers; then 408 "
        "and the connection closes.",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Request line and headers, at most; beyond, 431."
    )
    sse_ping_seconds: float = Field(
        5.0, gt=0, description="Seconds between `: keep-alive` comments on a stream."
    )

    # --- requests --------------------------------------------------------------------------
    default_max_tokens: int = Field(1024, ge=1, description="max_tokens when a request gives none.")
    max_n: int = Field(8, ge=1, description="Largest `n` a request may ask for.")
    max_inflight: int = Field(256, ge=1, description="Requests generating or waiting, at most.")
    request_timeout: float = Field(600.0, gt=0, description="Seconds a request may run.")
    drain_timeout: float = Field(
        45.0, ge=0, description="Seconds in-flight requests get after SIGTERM."
    )
    shutdown_delay: float = Field(
        0.0, ge=0,
        description="Seconds after SIGTERM/SIGINT that the server still accepts and serves new "
        "requests with readiness 503, so a load balancer polling readiness stops sending first; "
        "then it stops listening and the drain starts (0 when a preStop sleep does this).",
    )
    warmup: bool = Field(True, description="Run one short generation before reporting ready.")
    log_prompts: bool = Field(False, description="Log prompt and output text.")

    # --- the Responses API's store ---------------------------------------------------------
    data_dir: Path | None = Field(
        None,
        description="Where the server keeps its data (the responses store's SQLite file). "
        "Default: $XDG_DATA_HOME/airoboros-server, else ~/.local/share/airoboros-server.",
    )
    responses_store: str = Field(
        DEFAULT_RESPONSES_STORE,
        description="Where stored responses live: sqlite (a file under --data-dir), "
        "sqlite:///PATH (sqlite:////abs/path), postgresql://... (shared by every replica), "
        "or none (store off: `store: true` is a 400).",
    )
    responses_ttl: float = Field(
        30 * 24 * 3600.0, gt=0, description="Seconds a stored response is kept (default 30 days)."
    )
    responses_max_bytes: int = Field(
        1024**3, ge=1024,
        description="Bytes of stored responses (their JSON), at most; the oldest are evicted first.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("model_aliases", "api_keys", "allowed_origins", "allowed_methods", "allowed_headers", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("responses_store")
    @classmethod
    def _known_responses_store(cls, value: str) -> str:
        from server.store.location import parse_store_location

        parse_store_location(value)  # a ValueError names what is accepted
        return value

    @field_validator("attention_backend")
    @classmethod
    def _known_attention_backend(cls, value: str) -> str:
        from server.mpt.attention import normalise_backend_setting

        return normalise_backend_setting(value)

    @field_validator("prompt_format")
    @classmethod
    def _known_prompt_format(cls, value: str) -> str:
        if value != AUTO_PROMPT_FORMAT and value not in format_names():
            raise ValueError(f"unknown prompt format {value!r}; choose auto, {', '.join(format_names())}")
        return value

    @model_validator(mode="after")
    def _resolve_prompt_format(self) -> Settings:
        # Resolved once, here, so everything downstream (the chat service, /v1/models) reads a
        # real format name. The embedded stand-in only ends its turns in its own ChatML; every
        # checkpoint served with --model is taken to be the airoboros model's (R1-R12).
        if self.prompt_format == AUTO_PROMPT_FORMAT:
            self.prompt_format = "airoboros" if self.model is not None else "chatml"
        return self

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir.expanduser()

    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir.expanduser()
        xdg = os.environ.get("XDG_DATA_HOME")
        base = Path(xdg) if xdg else Path("~/.local/share").expanduser()
        return base / "airoboros-server"

    def load_api_keys(self) -> list[str]:
        """Keys from the key file (one per line, `#` comments) and the environment."""
        keys = list(self.api_keys)
        if self.api_key_file is not None:
            for line in self.api_key_file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return keys
