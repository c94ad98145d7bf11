"""Files written whole: one file replaced atomically, or a set of files (an IR's ``.xml`` and ``.bin``, QAT's int8
pair) replaced as a unit.

A single file goes through a temporary file in the same folder, fsynced, then renamed over the target: a reader or a
killed process sees the old complete file or the new one. A set of files cannot be renamed in one system call, so
:func:`replace_together` journals it: the new files are written into a staging folder beside the targets, a
``COMMIT`` list is written last (atomically) to mark the set complete, then each file is renamed into place and the
staging folder removed. A process killed before ``COMMIT`` leaves the old set untouched (the incomplete stage is
discarded by the next :func:`recover`); one killed after it is rolled forward by :func:`recover`, which finishes the
renames. Either way the folder ends with every file from one set, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

STAGE_PREFIX = ".stage-"
COMMIT = "COMMIT"


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames into it) to disk, where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder (``write(tmp)``), fsync it, then rename it over
    ``path``: a reader sees the old complete file or the new complete file, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def stage(folder: str | os.PathLike, name: str) -> Path:
    """A new, empty staging folder for :func:`replace_together` inside ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f"{STAGE_PREFIX}{name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def replace_together(staging: Path, names: Sequence[str], *, remove: Sequence[str] = ()) -> list[Path]:
    """Move the files ``names`` of ``staging`` (made by :func:`stage`) into its parent folder as one set.

    ``remove``: files of an earlier set that this set does not replace and that must go with it (a pair that was
    written with an ``.onnx`` and now is not). Returns the paths written.
    """
    missing = [n for n in names if not (staging / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{staging}: staged files missing: {', '.join(missing)}")
    for name in names:
        _fsync(staging / name)
    atomic_write(staging / COMMIT, lambda tmp: tmp.write_text("".join(f"+{n}\n" for n in names) + "".join(
        f"-{n}\n" for n in remove)))  # fmt: skip
    return _roll_forward(staging)


def _roll_forward(staging: Path) -> list[Path]:
    folder = staging.parent
    written = []
    for line in (staging / COMMIT).read_text().splitlines():
        op, name = line[0], line[1:]
        if op == "+":
            if (staging / name).exists():  # absent: renamed before a kill
                os.replace(staging / name, folder / name)
            written.append(folder / name)
        elif op == "-":
            (folder / name).unlink(missing_ok=True)
    fsync_dir(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return written


def recover(folder: str | os.PathLike) -> list[Path]:
    """Finish or discard what a killed :func:`replace_together` left in ``folder``: a complete stage (with its
    ``COMMIT`` list) is moved into place, an incomplete one removed. Returns the paths rolled forward."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done: list[Path] = []
    for staging in sorted(folder.glob(f"{STAGE_PREFIX}*")):
        if (staging / COMMIT).is_file():
            done += _roll_forward(staging)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    return done
