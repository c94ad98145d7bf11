"""litevit._files: atomic single-file writes and sets of files replaced as a unit, with a kill at every step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from litevit import _files


def _write_set(folder: Path, tag: str, names: list[str]) -> Path:
    staging = _files.stage(folder, "pair")
    for name in names:
        (staging / name).write_text(f"{tag}:{name}")
    return staging


def _contents(folder: Path, names: list[str]) -> set[str]:
    return {(folder / n).read_text().split(":")[0] for n in names if (folder / n).exists()}


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    _files.atomic_write(target, lambda tmp: tmp.write_text("old"))

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _files.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_replace_together_moves_the_set(tmp_path: Path) -> None:
    names = ["m.onnx", "m.bin", "m.xml"]
    _files.replace_together(_write_set(tmp_path, "old", names), names)
    written = _files.replace_together(_write_set(tmp_path, "new", names), names)
    assert written == [tmp_path / n for n in names]
    assert _contents(tmp_path, names) == {"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_replace_together_removes_what_the_new_set_drops(tmp_path: Path) -> None:
    _files.replace_together(_write_set(tmp_path, "old", ["m.onnx", "m.xml"]), ["m.onnx", "m.xml"])
    _files.replace_together(_write_set(tmp_path, "new", ["m.xml"]), ["m.xml"], remove=["m.onnx"])
    assert not (tmp_path / "m.onnx").exists() and (tmp_path / "m.xml").read_text() == "new:m.xml"


@pytest.mark.parametrize("killed_after", range(3))
def test_a_kill_at_any_rename_is_rolled_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_after: int):
    """A process killed after k of the renames: recover() finishes the set, so no mix of two sets remains."""
    names = ["m.onnx", "m.bin", "m.xml"]
    _files.replace_together(_write_set(tmp_path, "old", names), names)
    real, calls = os.replace, []

    def dying(src: os.PathLike, dst: os.PathLike) -> None:
        if Path(src).parent.name.startswith(_files.STAGE_PREFIX) and Path(src).name in names:
            if len(calls) == killed_after:
                raise KeyboardInterrupt("killed")
            calls.append(src)
        real(src, dst)

    monkeypatch.setattr(_files.os, "replace", dying)
    staging = _write_set(tmp_path, "new", names)
    with pytest.raises(KeyboardInterrupt):
        _files.replace_together(staging, names)
    monkeypatch.setattr(_files.os, "replace", real)
    if killed_after > 0:  # the planted fault is real: the folder holds two sets until recovery
        assert _contents(tmp_path, names) == {"old", "new"}
    _files.recover(tmp_path)
    assert _contents(tmp_path, names) == {"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_an_incomplete_stage_is_discarded(tmp_path: Path) -> None:
    names = ["m.bin", "m.xml"]
    _files.replace_together(_write_set(tmp_path, "old", names), names)
    _write_set(tmp_path, "new", names)  # killed before COMMIT
    assert _files.recover(tmp_path) == []
    assert _contents(tmp_path, names) == {"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_missing_staged_file_is_refused(tmp_path: Path) -> None:
    staging = _write_set(tmp_path, "new", ["m.xml"])
    with pytest.raises(FileNotFoundError, match="m.bin"):
        _files.replace_together(staging, ["m.xml", "m.bin"])
