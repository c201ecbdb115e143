"""Cross-process safety and integrity for graphllm's cache: a file lock held while an entry is written,
file checksums (size + digest) recorded at write time, and JSON files that carry a checksum of their own body.

One digest serves every key and checksum of the cache: XXH3-128 (the xxhash library), 35 GB/s here against
sha256's 2, and it loads no OpenSSL (3.4 MiB of a process's memory). It guards against damage, not against an
attacker: the cache is the user's own folder. (The tuning database keeps sha256 keys: it is the user's data.)"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

_CHUNK = 1 << 20
_HEAD = '{"checksum": "'  # a checked JSON file starts with its body's digest (see write_checked_json)
_HEX = 32
DIGEST = "xxh3_128"


def digest(data: bytes | str, length: int | None = None) -> str:
    """The cache's hex digest of ``data`` (a str is UTF-8 encoded), its first ``length`` characters when given."""
    return xxhash.xxh3_128_hexdigest(data.encode() if isinstance(data, str) else data)[:length]


def digester() -> xxhash.xxh3_128:
    """A running digest of the same kind (``update`` with each piece, then ``hexdigest``)."""
    return xxhash.xxh3_128()


def tree_digest(root: Path, suffixes: tuple[str, ...], length: int) -> str:
    """The digest of the files under ``root`` with these suffixes, by relative path and content (read as files, not
    imported): what a cache keyed by source code compares."""
    h = digester()
    for path in sorted(p for p in root.rglob("*") if p.suffix in suffixes):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:length]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed); another process blocks here until it is released.

    The kernel drops the lock when its holder dies, so a killed writer never leaves a stale lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FileSum:
    """A file's size and digest, recorded when it is written and checked before it is used."""

    size: int
    digest: str

    @staticmethod
    def of(*paths: Path) -> FileSum:
        """The size and digest of one file, or of several files read one after the other."""
        h = digester()
        size = 0
        for path in paths:
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
        return FileSum(size, h.hexdigest())

    def mismatch(self, path: Path) -> str | None:
        """Why ``path`` is not the file recorded (missing, another size, other bytes), or None when it is."""
        try:
            size = path.stat().st_size
        except OSError as e:
            return f"{path.name} cannot be read ({e.strerror or e})"
        if size != self.size:
            return f"{path.name} is {size} bytes, {self.size} were written"
        if FileSum.of(path).digest != self.digest:
            return f"{path.name} does not match the checksum recorded when it was written"
        return None

    def to_json(self) -> dict[str, Any]:
        """The checksum as JSON-able data."""
        return {"size": self.size, DIGEST: self.digest}

    @staticmethod
    def from_json(data: Any) -> FileSum:
        """The checksum of JSON data (ValueError when it is not one)."""
        if not isinstance(data, dict) or not isinstance(data.get("size"), int) or not isinstance(data.get(DIGEST), str):
            raise ValueError(f"not a file checksum: {str(data)[:60]}")
        return FileSum(data["size"], data[DIGEST])


def checked_json_text(data: dict[str, Any]) -> str:
    """``data`` (a non-empty JSON object without a "checksum" key) as JSON text led by the digest of the rest.

    The text is ``{"checksum": "<digest of BODY>",`` followed by BODY less its opening brace, where BODY
    is the indented JSON of ``data``: the check needs one hash of the text, not a second serialization.
    """
    if not data or "checksum" in data:
        raise ValueError("a checked JSON file holds a non-empty object without a 'checksum' key")
    body = json.dumps(data, indent=1, default=str)
    return f'{_HEAD}{digest(body)}",{body[1:]}'


def write_checked_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` with its checksum (see checked_json_text), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(checked_json_text(data))
    os.replace(tmp, path)


def read_checked_json(text: str) -> dict[str, Any]:
    """The object of a checked JSON text; ValueError when it has no checksum or its body does not match it."""
    checksum, rest = text[len(_HEAD):len(_HEAD) + _HEX], text[len(_HEAD) + _HEX:]
    if not text.startswith(_HEAD) or not rest.startswith('",'):
        raise ValueError("it carries no checksum")
    if digest("{" + rest[2:]) != checksum:
        raise ValueError("it does not match its checksum")
    data = json.loads(text)
    del data["checksum"]
    return data
