"""A new API key and its entry for the keys file (`loss-service keys new`), checked as the server
reads the file."""

from __future__ import annotations

from typing import Any

from service.server.api.access import KeyEntry, digest, new_key


def key_entry(name: str, scopes: str, models: str | None) -> tuple[str, dict[str, Any]]:
    """A fresh random key, and the fields of its `[[keys]]` entry: its SHA-256, never the key.
    `scopes` and `models` are comma-separated. Raises ValueError for an entry the server would refuse."""
    key = new_key()
    fields: dict[str, Any] = {
        "name": name,
        "key_sha256": digest(key),
        "scopes": [part.strip() for part in scopes.split(",") if part.strip()],
    }
    if models:
        fields["models"] = [part.strip() for part in models.split(",") if part.strip()]
    KeyEntry.model_validate(fields)
    return key, fields
