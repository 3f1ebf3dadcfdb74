"""``sep serve``'s configuration (``configs/serve.yaml``) and the token rule.

The server binds to 127.0.0.1 unless ``host`` says otherwise; any other address needs
a token (:data:`TOKEN_ENV`), which every page and API call must then carry.
"""

from __future__ import annotations

import ipaddress
import os
import re

from pydantic import Field, field_validator, model_validator

from sepcore.config import Config
from sepcore.errors import ConfigError
from sepcore.io import storage

#: The environment variable holding the token (``Authorization: Bearer <token>``).
TOKEN_ENV = "SEP_SERVE_TOKEN"
#: Shortest token accepted: a guessable one is no protection.
MIN_TOKEN_LENGTH = 16

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ModelEntry(Config):
    """One model the server offers."""

    name: str = Field(description="display name, also the API's model field (letters, digits, _ . -)")
    checkpoint: str = Field(
        description="checkpoint folder or training output (uses best/), or a Demucs model "
        "(demucs:<name> or a .th file), as for sep separate"
    )
    evaluation: str | None = Field(
        default=None, description="output of sep evaluate for this checkpoint: its figures on the model card"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: use 1-64 letters, digits, '_', '.' or '-'")
        return value


class SeparatorReplicas(Config):
    """Each model's Serve deployment: replicas, autoscaling and what a replica holds."""

    min_replicas: int = Field(default=1, ge=0, description="replicas kept up (0: scale to zero when idle)")
    max_replicas: int = Field(default=1, ge=1, description="most replicas per model")
    target_ongoing_requests: float = Field(
        default=1.0, gt=0, description="autoscaling target of requests per replica (one song at a time)"
    )
    max_queued_requests: int = Field(
        default=100, ge=1, description="requests waiting per model before new ones are refused (503)"
    )
    num_cpus: float = Field(default=1.0, gt=0, description="CPUs reserved per replica")
    num_gpus: float | None = Field(
        default=None, ge=0, description="GPUs per replica (default: 1 when the cluster has GPUs, else 0)"
    )
    threads: int = Field(default=1, ge=1, description="torch threads per replica")
    batch_size: int = Field(default=8, ge=1, description="chunks per forward pass")
    block_seconds: float = Field(default=60.0, gt=0, description="audio separated at once; bounds memory")


class ServeConfig(Config):
    models: list[ModelEntry] = Field(min_length=1, description="the models offered, the first the default")
    host: str = Field(
        default="127.0.0.1", description=f"address to bind; other than loopback needs {TOKEN_ENV}"
    )
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port")
    output: str = Field(description="URI where uploads and results are kept (path, file:// or s3://)")
    allowed_prefixes: list[str] = Field(
        default_factory=list, description="URIs below which a client may name an input (none: uploads only)"
    )
    max_upload_mb: float = Field(default=200.0, gt=0, description="largest upload accepted, MiB")
    max_seconds: float = Field(default=900.0, gt=0, description="longest audio accepted, seconds")
    results_ttl_hours: float = Field(
        default=24.0, gt=0, description="hours a job's upload and stems are kept, then deleted"
    )
    library_outputs: list[str] = Field(
        default_factory=list, description="outputs of sep separate shown on the Library page"
    )
    format: str = Field(default="flac", pattern="^(flac|wav)$", description="stem format: flac or wav")
    decode_timeout_s: float = Field(default=120.0, gt=0, description="wall-clock limit to decode an input")
    separator: SeparatorReplicas = SeparatorReplicas()
    num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of the local Ray started when RAY_ADDRESS is not set"
    )

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        names = [m.name for m in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"model name(s) {', '.join(twice)} given twice")
        if self.separator.min_replicas > self.separator.max_replicas:
            raise ValueError("separator.min_replicas is above separator.max_replicas")
        return self

    def model(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    def prefixes(self) -> list[str]:
        """``allowed_prefixes`` as normalised URIs ending in ``/``."""
        return [storage.normalize_uri(p).rstrip("/") + "/" for p in self.allowed_prefixes]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_for(cfg: ServeConfig, environ: dict[str, str] | None = None) -> str | None:
    """The token every call must carry (None: no token, loopback only).

    ConfigError when ``host`` is not loopback and :data:`TOKEN_ENV` is unset, or the
    token is shorter than :data:`MIN_TOKEN_LENGTH`.
    """
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV) or None
    if token is None and not is_loopback(cfg.host):
        raise ConfigError("host", f"{cfg.host} is reachable from other machines: set {TOKEN_ENV} to a "
                          f"secret token (at least {MIN_TOKEN_LENGTH} characters), or bind 127.0.0.1")  # fmt: skip
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(TOKEN_ENV, f"the token has {len(token)} characters; use at least "
                          f"{MIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 16`)")  # fmt: skip
    return token
