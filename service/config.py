"""Settings, read from the environment with the LOSS_SERVICE_ prefix (pydantic-settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSS_SERVICE_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address `loss-service serve` binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `loss-service serve` listens on.")
    workers: int = Field(default=1, ge=1, le=64, description="Worker processes for `loss-service serve`.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(default="info")
    offload_bytes: int = Field(
        default=64 * 1024,
        ge=0,
        description="Bodies larger than this are parsed and computed in a worker thread, off the event loop.",
    )
