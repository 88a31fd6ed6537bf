"""Gateway API keys: parsed from ``SSEGATE_API_KEYS`` and ``--api-keys-file``, kept as hashes.

Keys come from ``--api-keys-file`` (one ``[name:]key`` a line, ``#`` comments) and
``SSEGATE_API_KEYS`` (comma-separated ``[name:]key``). A request presents one as
``Authorization: Bearer <key>``. It is hashed and compared with every configured key's hash by
:func:`hmac.compare_digest`, without stopping at a match, so the time taken says nothing about
which key (or how much of one) matched. Keys are never logged; the gateway knows a key by its
*owner id*: its name, or ``key-`` and 12 hex digits of its SHA-256 when unnamed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._settings import SecurityConfig

__all__ = ["ApiKey", "KeyRing", "parse_key_entries", "split_key_entries"]

log = logging.getLogger("ssegate.auth")

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# Visible ASCII but the separators of the two formats; keys are compared as bytes, and ASCII
# reads the same whatever encoding a client's HTTP library assumes for headers.
_KEY = re.compile(r"[!-~]+")
_MIN_KEY_LENGTH = 16
_MAX_KEY_LENGTH = 512


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key, kept as its SHA-256 only. ``owner`` is what streams record."""

    owner: str
    digest: bytes = field(repr=False)
    named: bool


def split_key_entries(value: str) -> tuple[str, ...]:
    """The entries of ``SSEGATE_API_KEYS``: comma-separated, blanks around them ignored."""
    return tuple(entry.strip() for entry in value.split(",") if entry.strip())


def parse_key_entries(entries: Iterable[str], *, source: str) -> list[tuple[str | None, str]]:
    """``(name, key)`` pairs from ``[name:]key`` entries; ``ValueError`` names a bad entry by
    its position (never its text: it holds a key)."""
    pairs: list[tuple[str | None, str]] = []
    for number, entry in enumerate(entries, 1):
        name: str | None = None
        key = entry
        head, sep, tail = entry.partition(":")
        if sep:
            if not _NAME.fullmatch(head):
                raise ValueError(
                    f"{source}, entry {number}: a key name is 1-64 of A-Z a-z 0-9 _ . @ -"
                )
            name, key = head, tail
        if not key or len(key) > _MAX_KEY_LENGTH or not _KEY.fullmatch(key) or "," in key:
            raise ValueError(
                f"{source}, entry {number}: a key is 1-{_MAX_KEY_LENGTH} visible ASCII "
                "characters, without spaces or commas"
            )
        pairs.append((name, key))
    return pairs


def _file_entries(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the API keys file {path!r}: {exc}") from None
    entries = []
    for line in text.splitlines():
        # A comment is a line starting with '#', or ' #' after the key (keys have no spaces).
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            entries.append(line)
    if not entries:
        raise ValueError(f"the API keys file {path!r} holds no key")
    return entries


class KeyRing:
    """The configured API keys; :meth:`match` finds the one a request presents."""

    def __init__(self, pairs: Sequence[tuple[str | None, str]]) -> None:
        keys: list[ApiKey] = []
        owners: set[str] = set()
        digests: set[bytes] = set()
        for name, key in pairs:
            digest = _digest(key.encode("ascii"))
            owner = name if name is not None else "key-" + digest.hex()[:12]
            if owner in owners:
                raise ValueError(f"two API keys are named {owner!r}")
            if digest in digests:
                raise ValueError(f"the API key named {owner!r} is configured twice")
            if len(key) < _MIN_KEY_LENGTH:
                log.warning(
                    "the API key %s is shorter than %d characters: easy to guess",
                    owner,
                    _MIN_KEY_LENGTH,
                )
            owners.add(owner)
            digests.add(digest)
            keys.append(ApiKey(owner, digest, name is not None))
        self._keys = tuple(keys)
        # The read-token secret when none is configured: a function of every key, so instances
        # sharing the keys share it, and nobody without all of them can compute it.
        mac = hmac.new(b"ssegate read tokens v1", digestmod=hashlib.sha256)
        for _, key in sorted(pairs, key=lambda p: p[1]):
            mac.update(len(key).to_bytes(4, "big") + key.encode("ascii"))
        self.derived_secret = mac.digest()

    @classmethod
    def from_config(cls, config: SecurityConfig) -> KeyRing:
        """The keys of ``config.api_keys`` and ``config.api_keys_file``."""
        pairs = parse_key_entries(config.api_keys, source="SSEGATE_API_KEYS")
        if config.api_keys_file:
            entries = _file_entries(config.api_keys_file)
            pairs += parse_key_entries(entries, source=f"API keys file {config.api_keys_file!r}")
        return cls(pairs)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def owners(self) -> list[str]:
        """Every key's owner id."""
        return [k.owner for k in self._keys]

    def match(self, presented: bytes) -> ApiKey | None:
        """The key equal to ``presented``, or ``None``; constant time in the keys' contents."""
        digest = _digest(presented)
        found: ApiKey | None = None
        for key in self._keys:
            # No early exit: every key is compared, whichever matches.
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found
