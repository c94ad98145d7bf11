"""A checkpoint layout's key names against litevit's, written once as a table and read in both directions.

A table is an ordered list of rows ``(theirs, ours)``: key patterns in which ``{rest}`` stands for the tail of the
key (one or more dotted segments) and any other ``{name}`` for part of one segment. A key takes the first row whose
pattern matches it, in either direction, so a row comes before the more general rows it overlaps on both sides
(``attn.q.{rest}`` before ``attn.{rest}``). ``ours`` is None for a key of theirs the model rebuilds (dropped when
read, never written). A key no row matches is an error that names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
T = TypeVar("T")


def _compile(pattern: str) -> re.Pattern[str]:
    parts, last = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[last : m.start()]))
        parts.append(f"(?P<{m[1]}>.+)" if m[1] == "rest" else f"(?P<{m[1]}>[^.]+)")
        last = m.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts) + r"\Z")


@dataclass(frozen=True)
class KeyTable:
    """The rows that rename a checkpoint layout's keys into litevit's and back (the module docstring)."""

    layout: str  # the other layout's name: "timm", "official"
    rows: tuple[tuple[str, str | None], ...]
    _theirs: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _ours: tuple[re.Pattern[str] | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for theirs, ours in self.rows:
            if ours is not None and set(_PLACEHOLDER.findall(theirs)) != set(_PLACEHOLDER.findall(ours)):
                raise ValueError(f"key table row {theirs!r} -> {ours!r}: both sides must name the same placeholders")
        object.__setattr__(self, "_theirs", tuple(_compile(theirs) for theirs, _ in self.rows))
        object.__setattr__(self, "_ours", tuple(None if ours is None else _compile(ours) for _, ours in self.rows))

    def to_litevit(self, key: str) -> str | None:
        """litevit's name for the ``layout`` key ``key``; None for a key the model rebuilds."""
        for pattern, (_, ours) in zip(self._theirs, self.rows, strict=True):
            if m := pattern.match(key):
                return None if ours is None else ours.format(**m.groupdict())
        raise ValueError(f"unknown {self.layout}-layout checkpoint key {key!r}: no row of the key table matches it")

    def from_litevit(self, key: str) -> str:
        """The ``layout`` name for litevit's key ``key``."""
        for pattern, (theirs, _) in zip(self._ours, self.rows, strict=True):
            if pattern is not None and (m := pattern.match(key)):
                return theirs.format(**m.groupdict())
        raise ValueError(
            f"litevit key {key!r} has no name in the {self.layout} layout: no row of the key table matches"
        )

    def read(self, state: Mapping[str, T]) -> dict[str, T]:
        """``state`` (this layout's keys) under litevit's keys, rebuilt keys dropped."""
        return {new: value for key, value in state.items() if (new := self.to_litevit(key)) is not None}

    def write(self, state: Mapping[str, T]) -> dict[str, T]:
        """``state`` (litevit's keys) under this layout's keys."""
        return {self.from_litevit(key): value for key, value in state.items()}
