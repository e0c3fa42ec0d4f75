"""Typed, frozen settings read from ``MEDIASEARCH_*`` environment variables.

Read once at start-up with :func:`load_settings` (never at import). Every service gets the same
object; tests build their own with keyword overrides.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mediasearch.errors import ConfigError


class Settings(BaseSettings):
    """Everything a mediasearch process can be told from outside."""

    model_config = SettingsConfigDict(env_prefix="MEDIASEARCH_", frozen=True, extra="forbid")

    model_repository: Path = Field(
        default=Path("model_repository"),
        description="Triton model repository holding the exported encoders and the model manifest.",
    )
    model_name: str = Field(
        default="clip", description="Prefix of the Triton models: <name>_text, <name>_vision."
    )
    max_image_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description="Larger images are refused.")
    max_image_pixels: int = Field(
        default=64_000_000, gt=0, description="Decompression-bomb guard: images with more pixels are refused."
    )
    triton_grpc_url: str = Field(default="127.0.0.1:8001", description="Triton gRPC address (host:port).")
    triton_http_port: int = Field(default=8000, ge=0, le=65535)
    triton_grpc_port: int = Field(default=8001, ge=0, le=65535)
    triton_metrics_port: int = Field(default=8002, ge=0, le=65535)
    log_level: str = Field(default="INFO")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (``MEDIASEARCH_*``), with explicit overrides on top."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"MEDIASEARCH_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
