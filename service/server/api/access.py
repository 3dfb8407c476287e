"""Who may do what: API keys with scopes, model patterns and rate limits, read from a TOML file.

    [[keys]]
    name = "fraud-team"                      # shown in logs and metrics; never the key
    key_sha256 = "<64 hex digits>"           # SHA-256 of the key; the key itself is stored nowhere
    scopes = ["compute", "ingest", "read"]   # any of compute, ingest, read, admin, metrics
    models = ["fraud-*"]                     # glob patterns; omitted = every model
    requests_per_second = 50                 # optional
    values_per_second = 5e6                  # optional: numbers in predictions + labels
    max_models = 20                          # optional quotas; default LOSS_SERVICE_QUOTA_MODELS,
    max_stored_bytes = 10_000_000_000        #   LOSS_SERVICE_QUOTA_STORED_BYTES,
    max_row_values = 100_000                 #   LOSS_SERVICE_QUOTA_ROW_VALUES

Keys from `LOSS_SERVICE_API_KEYS` (a plain list) mean full access. Rate limits are token buckets
holding one second's worth, kept per worker process. Quotas bound what a key's writes may make the
store hold over the models its patterns match (see `Principal`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.server.api.problems import clipped, shown

Scope = Literal["compute", "ingest", "read", "admin", "metrics"]
SCOPES: tuple[Scope, ...] = ("compute", "ingest", "read", "admin", "metrics")
audit_log = logging.getLogger("loss_service.audit")
log = logging.getLogger("service.api")


class KeyEntry(BaseModel):
    """One `[[keys]]` table of the keys file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[Scope] = Field(min_length=1)
    models: list[str] | None = Field(default=None, min_length=1)
    requests_per_second: float | None = Field(default=None, gt=0)
    values_per_second: float | None = Field(default=None, gt=0)
    max_models: int | None = Field(default=None, ge=1)
    max_stored_bytes: int | None = Field(default=None, ge=1)
    max_row_values: int | None = Field(default=None, ge=1)


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    keys: list[KeyEntry] = Field(min_length=1)


class KeysFileError(ValueError):
    """The keys file cannot be used; the message says where and why (never a key or a hash)."""


@dataclass
class TokenBucket:
    """`rate` tokens a second, holding at most one second's worth. A take larger than the whole
    bucket is allowed once the bucket is full, leaving it in debt, so no request is refused forever."""

    rate: float
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.tokens = self.rate

    def take(self, amount: float) -> float:
        """Take `amount` tokens and return 0, or take none and return the seconds until possible."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            needed = min(amount, self.rate)
            if self.tokens >= needed:
                self.tokens -= amount
                return 0.0
            return (needed - self.tokens) / self.rate


@dataclass
class Principal:
    """An authenticated key: its name, what it may do, and its buckets (shared by its requests).

    Its quotas (None: the LOSS_SERVICE_QUOTA_* setting) bound its own writes: creating a model
    (`max_models`) and storing rows (`max_stored_bytes`) are refused when the models its
    patterns match would hold more; `max_row_values` bounds one logged row."""

    name: str
    scopes: frozenset[str]
    models: tuple[str, ...] | None
    requests: TokenBucket | None = None
    values: TokenBucket | None = None
    max_models: int | None = None
    max_stored_bytes: int | None = None
    max_row_values: int | None = None

    def may_use(self, model: str | None) -> bool:
        """A key restricted to models must name one of them; an unrestricted key may name any or none."""
        if self.models is None:
            return True
        return model is not None and any(fnmatchcase(model, pattern) for pattern in self.models)


FULL_ACCESS = frozenset(SCOPES)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key: 32 bytes from the operating system's CSPRNG, URL-safe."""
    return "lsk_" + secrets.token_urlsafe(32)


class KeyRing:
    """The keys in force, swapped whole on reload; buckets of a key that stays keep their state."""

    def __init__(self, plain_keys: Iterable[str] = (), file: str | None = None) -> None:
        self.file = Path(file) if file else None
        self._plain = [(digest(key), Principal(f"key-{n}", FULL_ACCESS, None)) for n, key in enumerate(plain_keys, 1)]
        self._entries: list[tuple[str, Principal]] = list(self._plain)
        self._signature: bytes | None = None
        self.reload_failed = False
        if self.file is not None:
            content = self.file.read_bytes()
            self._entries = self._plain + self._load(content, {})
            self._signature = _signature(content)

    @property
    def enabled(self) -> bool:
        return bool(self._entries) or self.file is not None

    def names(self) -> list[str]:
        return [principal.name for _, principal in self._entries]

    def principal(self, name: str) -> Principal | None:
        """The key in force named `name`, if any."""
        return next((principal for _, principal in self._entries if principal.name == name), None)

    def principals(self) -> list[Principal]:
        return [principal for _, principal in self._entries]

    def match(self, token: str) -> Principal | None:
        wanted = digest(token).encode()
        found = None
        # compare_digest against every entry: the time taken says nothing about which key is near.
        for hashed, principal in self._entries:
            if hmac.compare_digest(wanted, hashed.encode()) and found is None:
                found = principal
        return found

    def reload(self) -> bool:
        """Read the keys file again; a file that cannot be used keeps the keys in force. True if changed."""
        if self.file is None:
            return False
        try:
            content = self.file.read_bytes()
            previous = {principal.name: principal for _, principal in self._entries}
            entries = self._plain + self._load(content, previous)
        except (OSError, KeysFileError) as exc:
            self.reload_failed = True
            logging.getLogger("service.api").error(
                "keys file %s not reloaded, the previous keys stay: %s", self.file, exc
            )
            return False
        self._entries, self._signature, self.reload_failed = entries, _signature(content), False
        return True

    def changed_on_disk(self) -> bool:
        """The file's content differs from what was last loaded (or it cannot be read).

        The content is hashed on every check, not its size and modification time compared: an
        edit in place that keeps both (or a clock set back) is still seen. A keys file is a few
        KB, so a check every second costs little."""
        if self.file is None:
            return False
        try:
            return _signature(self.file.read_bytes()) != self._signature
        except OSError:
            return self._signature is not None

    @staticmethod
    def _load(content: bytes, previous: dict[str, Principal]) -> list[tuple[str, Principal]]:
        try:
            parsed = KeysFile.model_validate(tomllib.loads(content.decode()))
        except UnicodeDecodeError as exc:
            raise KeysFileError(f"not UTF-8: byte {exc.start}") from None
        except tomllib.TOMLDecodeError as exc:
            raise KeysFileError(f"not TOML: {exc}") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise KeysFileError(f"{where}: {first['msg']} ({exc.error_count()} error(s))") from None
        names = [entry.name for entry in parsed.keys]
        hashes = [entry.key_sha256.lower() for entry in parsed.keys]
        for what, values in (("name", names), ("key_sha256", hashes)):
            seen: set[str] = set()
            for index, value in enumerate(values):
                if value in seen:
                    which = f" {names[index]!r}" if what == "name" else ""  # a hash is never shown
                    raise KeysFileError(f"keys.{index}: {what}{which} appears more than once")
                seen.add(value)
        entries = []
        for entry, hashed in zip(parsed.keys, hashes, strict=True):
            old = previous.get(entry.name)
            principal = Principal(
                entry.name,
                frozenset(entry.scopes),
                tuple(entry.models) if entry.models else None,
                _bucket(entry.requests_per_second, old.requests if old else None),
                _bucket(entry.values_per_second, old.values if old else None),
                entry.max_models,
                entry.max_stored_bytes,
                entry.max_row_values,
            )
            entries.append((hashed, principal))
        return entries


def _bucket(rate: float | None, old: TokenBucket | None) -> TokenBucket | None:
    if rate is None:
        return None
    return old if old is not None and old.rate == rate else TokenBucket(rate)


def _signature(content: bytes) -> bytes:
    """What identifies a version of the keys file: the SHA-256 of its bytes."""
    return hashlib.sha256(content).digest()


# -- checks once a body is parsed ------------------------------------------------------------------


class AccessRefusedError(Exception):
    """An authorisation refusal raised after the body was read: 403 or 429, with its audit reason."""

    def __init__(
        self, status: int, detail: str, reason: str, model: str | None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.reason, self.model = status, detail, reason, model
        self.retry_after = retry_after


def authorize(principal: Principal | None, model: str | None, values: int = 0) -> None:
    """The request's key (None: the service has no keys) may use `model`, and its value budget
    covers `values` numbers."""
    if principal is None:
        return
    if not principal.may_use(model):
        named = "names no model" if model is None else f"names model {shown(model)}"
        detail = f"the API key {principal.name!r} may not use this model: the request {named}"
        raise AccessRefusedError(403, detail, "model", model)
    if values and principal.values is not None:
        wait = principal.values.take(values)
        if wait:
            raise AccessRefusedError(
                429,
                f"the API key {principal.name!r} is over its {principal.values.rate:g} values per second",
                "values_rate",
                model,
                wait,
            )


def visible(principal: Principal | None, models: Sequence[str]) -> list[str]:
    return list(models) if principal is None else [m for m in models if principal.may_use(m)]


def audit(status: int, key: str, route: str, model: str | None, reason: str) -> None:
    """One line per refusal: who (the key's name, or "unknown"), where, what, why; never a key.

    The line is a JSON object written by a JSON encoder: the decoded path and the model name
    come from the client and may hold quotes, backslashes, CR and LF, which it escapes, so a
    request can neither end a line early nor forge another. The route is clipped to 200
    characters and the model to 64, as problem details clip what they echo."""
    line = {
        "event": "refused",
        "status": status,
        "key": key,
        "route": clipped(route, 200),
        "model": None if model is None else clipped(model),
        "reason": reason,
    }
    audit_log.warning("%s", orjson.dumps(line).decode())


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


# -- one request's key, for a transport without the HTTP guard (gRPC) ----------------------------


def bearer_principal(keys: KeyRing, authorization: str) -> Principal | AccessRefusedError:
    """The key an `Authorization: Bearer <key>` value names, or the 401 that refuses it (and its
    audit line), in the HTTP guard's words."""
    scheme, _, token = authorization.partition(" ")
    principal = keys.match(token.strip()) if scheme.lower() == "bearer" else None
    if principal is not None:
        return principal
    if not authorization:
        return AccessRefusedError(401, "an API key is required: Authorization: Bearer <key>", "missing_key", None)
    return AccessRefusedError(401, "the API key is not valid", "invalid_key", None)


def permitted(principal: Principal, needed: Scope | None) -> AccessRefusedError | None:
    """None if the key holds the scope `needed` and its requests-per-second bucket has a token
    (taken here); else the 403 or 429 that refuses the request."""
    if needed is not None and needed not in principal.scopes:
        detail = f"the API key {principal.name!r} lacks the scope {needed!r} this route needs"
        return AccessRefusedError(403, detail, "scope", None)
    if principal.requests is not None and (wait := principal.requests.take(1)):
        detail = f"the API key {principal.name!r} is over its {principal.requests.rate:g} requests per second"
        return AccessRefusedError(429, detail, "requests_rate", None, wait)
    return None
