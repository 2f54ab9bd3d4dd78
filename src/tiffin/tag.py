"""Tags: ``name:version`` pairs that name store entries."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass

from tiffin.exceptions import InvalidTag

__all__ = [
    "LATEST",
    "RULE",
    "Tag",
    "is_valid_part",
    "new_version",
    "validate_part",
]

logger = logging.getLogger(__name__)

_PART_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
RULE = (
    "lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit, "
    "at most 63 characters"
)
LATEST = "latest"

# Crockford-style base32 over digits then letters: ASCII order equals numeric order,
# so versions generated later sort after earlier ones as plain strings.
_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_TIME_CHARS = 11  # 55 bits of microseconds since the epoch: good until the year 3111
_RANDOM_CHARS = 5
_clock_lock = threading.Lock()
_last_micros = 0


def _b32(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_version() -> str:
    """A fresh version string: 16 lowercase characters, sortable by creation time.

    Eleven characters encode the creation time in microseconds (strictly increasing within a
    process), five are random, so two processes saving in the same microsecond still differ.
    """
    global _last_micros
    with _clock_lock:
        micros = max(time.time_ns() // 1000, _last_micros + 1)
        _last_micros = micros
    rand = int.from_bytes(os.urandom(4), "big") & ((1 << (5 * _RANDOM_CHARS)) - 1)
    return _b32(micros, _TIME_CHARS) + _b32(rand, _RANDOM_CHARS)


def is_valid_part(value: str) -> bool:
    """True when ``value`` already obeys the naming rule exactly (no lower-casing needed)."""
    return isinstance(value, str) and _PART_RE.fullmatch(value) is not None


def validate_part(value: str, what: str) -> str:
    """Check one half of a tag; lower-case a mixed-case value with a notice."""
    if not isinstance(value, str):
        raise InvalidTag(f"{what} must be a string, got {type(value).__name__}")
    # ASCII only: str.lower() maps some non-ASCII letters (the Kelvin sign) onto ASCII ones
    lowered = value.lower() if value.isascii() else value
    if not _PART_RE.fullmatch(lowered):  # fullmatch: '$' alone would accept 'name\n'
        raise InvalidTag(f"invalid {what} {value!r}: a {what} is {RULE}")
    if lowered != value:
        logger.warning("tiffin: %s %r lower-cased to %r", what, value, lowered)
    return lowered


@dataclass(frozen=True, order=True)
class Tag:
    """A ``name:version`` pair; ``version`` is None until resolved or generated."""

    name: str
    version: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", validate_part(self.name, "name"))
        if self.version is not None:
            object.__setattr__(self, "version", validate_part(self.version, "version"))

    @classmethod
    def from_str(cls, text: str) -> Tag:
        if not isinstance(text, str) or not text:
            raise InvalidTag(f"invalid tag {text!r}: expected 'name' or 'name:version'")
        name, sep, version = text.partition(":")
        if sep and not version:
            raise InvalidTag(f"invalid tag {text!r}: empty version after ':'")
        if ":" in version:
            raise InvalidTag(f"invalid tag {text!r}: a tag has at most one ':'")
        return cls(name, version or None)

    @classmethod
    def from_taglike(cls, value: Tag | str) -> Tag:
        return value if isinstance(value, Tag) else cls.from_str(value)

    @property
    def is_latest(self) -> bool:
        return self.version is None or self.version == LATEST

    def with_new_version(self) -> Tag:
        return Tag(self.name, new_version())

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"

    def __repr__(self) -> str:
        return f"Tag({str(self)!r})"
