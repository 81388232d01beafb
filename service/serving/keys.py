"""Named API keys: who a caller is, and the limits its key carries.

Keys come from `MNIST_API_KEYS` (a list, named `key-1`, `key-2`, ... in the order given,
without limits) and from `MNIST_API_KEYS_FILE` (TOML or JSON, by suffix), which names each key
and may give it limits. The name is what logs, metrics and fair sharing see; the key itself
never leaves this module. `KeyRing` is immutable: a reload (SIGHUP) builds a new one and
swaps it in, so a request keeps the identity it was checked with.
"""

from __future__ import annotations

import hmac
import json
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: The name of a caller without a valid key (metrics and logs; never a configured name).
ANONYMOUS = "anonymous"

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


def client_id(name: str) -> str:
    """A key's identity for fair sharing (service/serving/admission.py) and quotas."""
    return "key:" + name


class Limits(BaseModel):
    """What one key may use; every limit is optional and holds across the workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_second: float | None = Field(None, gt=0)
    #: Requests allowed at once after an idle spell; default: one second's worth (at least 1).
    burst: int | None = Field(None, ge=1)
    images_per_minute: int | None = Field(None, ge=1)
    concurrent: int | None = Field(None, ge=1)

    @property
    def request_burst(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, int(self.requests_per_second or 1))

    @property
    def limits_requests(self) -> bool:
        """Whether each request must be checked (rate or concurrency)."""
        return self.requests_per_second is not None or self.concurrent is not None


class ApiKey(Limits):
    name: Name
    key: str = Field(min_length=1, repr=False)


class KeyFile(BaseModel):
    """The key file: `[[keys]]` tables in TOML, or `{"keys": [...]}` in JSON."""

    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> KeyFile:
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names) or ANONYMOUS in names:
            raise ValueError(f"key names must be unique and not {ANONYMOUS!r}")
        if len({k.key for k in self.keys}) != len(self.keys):
            raise ValueError("the same key is listed twice")
        return self


class KeyRing:
    """The configured keys; false when there are none (API keys off)."""

    __slots__ = ("keys", "names")

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = tuple(keys)
        self.names = frozenset(k.name for k in keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def identify(self, presented: str) -> ApiKey | None:
        """The key `presented` is, or None."""
        # Compare against every key so the time taken does not reveal which one matched.
        raw = presented.encode()
        found = None
        for key in self.keys:
            if hmac.compare_digest(raw, key.key.encode()):
                found = key
        return found

    def get(self, name: str) -> ApiKey | None:
        for key in self.keys:
            if key.name == name:
                return key
        return None


def read_key_file(path: Path) -> list[ApiKey]:
    """The keys of a TOML or JSON key file; ValueError naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        return KeyFile.model_validate(raw).keys
    except OSError as exc:
        raise ValueError(f"cannot read the API keys file {path.name}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"API keys file {path.name} does not parse: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"API keys file {path.name}: {where}: {first['msg']}") from None


def key_ring(listed: list[str], key_file: Path | None) -> KeyRing:
    """Listed keys (auto-named) and the key file's, as one ring."""
    keys = [ApiKey(name=f"key-{i}", key=k) for i, k in enumerate(listed, start=1)]
    if key_file is not None:
        named = read_key_file(key_file)
        taken = {k.name for k in keys} & {k.name for k in named}
        if taken:
            raise ValueError(f"the key file reuses the names of listed keys: {sorted(taken)}")
        keys.extend(named)
    return KeyRing(keys)
