"""Writing a folder of generated files (`compile -o`, `export -o`) without ever losing what the user had there.

The files are written into a temporary folder first and published at the end:
- a new or empty folder becomes the written folder (one rename);
- a folder holding only files of an earlier write of the same kind is replaced (the old one is moved
  aside, the new one renamed into place, then the old one's known files removed), for kinds that
  replace without asking (artifacts), else only with ``force`` (exports);
- a folder holding anything else is refused, unless ``force``: then the generated files are written
  beside the user's (each file replaced atomically), and nothing else in the folder is touched;
- a folder of a kind that is graphllm's own whole (a build cache entry) is replaced whole, whatever it holds.
Nothing that this module did not write is ever deleted (beyond such a folder of its own), and its temporary
folder never outlives a call.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import GraphLLMError


@dataclass(frozen=True)
class FolderKind:
    """What one kind of generated folder holds: every entry name it may have, one that it always has."""

    what: str  # e.g. "artifact", in messages
    owned: frozenset[str]
    marker: str  # present in every such folder: without it, nothing in a folder is taken for ours
    replaces: bool = True  # an earlier write is replaced without --force (False: it needs --force too)
    whole: bool = False  # the folder is graphllm's own (a cache entry): replaced whole, unknown entries too


@contextmanager
def output_folder(out: str | os.PathLike, kind: FolderKind, *, force: bool) -> Iterator[Path]:
    """Yield a temporary folder to write into; on success publish its files at ``out`` (see the module doc)."""
    out = Path(out).expanduser().absolute()
    beside = check_output_folder(out, kind, force=force)
    parent = out if beside else out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".graphllm-tmp-", dir=parent))
    except OSError as e:
        raise GraphLLMError(f"cannot write into {parent}: {e.strerror or e}") from None
    try:
        yield tmp
        _publish(tmp, out, kind, beside)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only ever our own temporary folder


def check_output_folder(out: Path, kind: FolderKind, *, force: bool) -> bool:
    """Refuse an output that would lose user files (GraphLLMError); True when the files go beside the user's."""
    if out.exists() and not out.is_dir():
        raise GraphLLMError(f"{out} is a file, not a folder: give -o a new or empty folder")
    foreign = _foreign(out, kind)
    if foreign and not force:
        shown = ", ".join(sorted(foreign)[:3]) + (" ..." if len(foreign) > 3 else "")
        raise GraphLLMError(f"{out} holds files graphllm did not write ({shown}); choose a new or empty folder, "
                            f"or pass --force to write the {kind.what}'s files beside them (nothing of yours is removed)")
    if not foreign and not kind.replaces and not force and out.is_dir() and any(out.iterdir()):
        raise GraphLLMError(f"{out} holds an earlier {kind.what}; pass --force to replace it")
    return bool(foreign)


def _foreign(out: Path, kind: FolderKind) -> list[str]:
    """Entries of ``out`` that no earlier write of this kind made (all of them when its marker is absent)."""
    if not out.is_dir() or kind.whole:
        return []
    names = [p.name for p in out.iterdir() if not p.name.startswith(".graphllm-tmp-")]
    if names and kind.marker not in names:
        return names
    return [n for n in names if n not in kind.owned]


def _publish(tmp: Path, out: Path, kind: FolderKind, beside: bool) -> None:
    """Move the written files into place (see the module doc)."""
    if beside:
        for path in tmp.iterdir():
            _replace(path, out / path.name)
        return
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=".graphllm-tmp-old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        if kind.whole:
            shutil.rmtree(old)  # our temporary folder, holding the replaced folder (links in it are not followed)
            return
        _remove_owned(old / out.name, kind.owned)
        _remove_if_empty(old)
        return
    os.replace(tmp, out)


def _replace(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src`` (a generated file or folder) in one rename when possible."""
    if src.is_dir() and dst.is_dir():
        shutil.rmtree(dst)  # an owned subfolder of an earlier write (the name is in ``owned``)
    os.replace(src, dst)


def _remove_owned(folder: Path, owned: frozenset[str]) -> None:
    """Delete an earlier write's own entries; the folder goes only if nothing else appeared in it meanwhile."""
    for path in folder.iterdir():
        if path.name in owned:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    """rmdir, which never deletes anything but an empty folder (a file that appeared meanwhile stays)."""
    try:
        folder.rmdir()
    except OSError:
        pass
