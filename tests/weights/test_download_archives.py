"""Release archives that go wrong (mobilevitv3's zips; tar for the other reader): a zip bomb, a corrupt, encrypted
or truncated archive, repeated or missing members. Each is one line and exit code 2, and neither the archive nor
anything extracted from it stays in the cache. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loopback import ARCHIVED, Mirror, body, cached_files, checkpoint, download_error, serve

from litevit import cli
from litevit.weights import download, hub
from litevit.weights import records as weights

MEMBER = weights.get_weights(ARCHIVED).archive_member
assert MEMBER is not None


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    yield from serve(tmp_path, monkeypatch)


def _zip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytearray:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", method) as z:
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, data in entries:
            z.writestr(name, data)
    return bytearray(buffer.getvalue())


def _headers(archive: bytearray) -> tuple[int, int]:
    """Offsets of the first local file header and of the first central directory entry."""
    return archive.find(b"PK\x03\x04"), archive.find(b"PK\x01\x02")


def _bomb() -> bytes:
    """64 MiB of zeros in a 64 kB zip; SMALL allows 1 MiB for the checkpoint."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z, z.open(MEMBER, "w") as f:
        for _ in range(16):
            f.write(bytes(4 << 20))
    return buffer.getvalue()


def _understated() -> bytes:
    """A member whose headers claim 4 kB but whose data inflates to 900 kB: the reader stops at 4 kB, the CRC fails."""
    archive = _zip([(MEMBER, checkpoint(900 << 10))])
    local, central = _headers(archive)
    struct.pack_into("<I", archive, local + 22, 4096)
    struct.pack_into("<I", archive, central + 24, 4096)
    return bytes(archive)


def _corrupt() -> bytes:
    archive = _zip([(MEMBER, checkpoint(seed=3))])
    middle = len(archive) // 3
    archive[middle : middle + 64] = bytes(b ^ 0xFF for b in archive[middle : middle + 64])
    return bytes(archive)


def _encrypted() -> bytes:
    """Python writes no encrypted zips: a plain one with the 'encrypted' flag set in both headers."""
    archive = _zip([(MEMBER, checkpoint())])
    local, central = _headers(archive)
    archive[local + 6] |= 0x1
    archive[central + 8] |= 0x1
    return bytes(archive)


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


BAD: dict[str, tuple[Callable[[], bytes], str]] = {
    "zip bomb": (_bomb, f"{MEMBER} would extract to {64 << 20} bytes, more than"),
    "understated size": (_understated, "is a corrupt archive (Bad CRC-32"),
    "corrupt": (_corrupt, "is a corrupt archive ("),
    "encrypted": (_encrypted, "is encrypted; the published archives are not"),
    "truncated": (lambda: bytes(_zip([(MEMBER, checkpoint())])[:-2000]), "is not a readable zip or tar archive"),
    "duplicate members": (
        lambda: bytes(_zip([(MEMBER, checkpoint()), (MEMBER, checkpoint(seed=1))])),
        f"repeats the member name(s) {MEMBER}",
    ),
    "missing member": (
        lambda: bytes(_zip([("mobilevitv3_XXS_e300_7098/config.yaml", b"model: {}\n")])),
        "holds no checkpoint_ema_best.pt (expected",
    ),
    "not a checkpoint inside": (
        lambda: bytes(_zip([(MEMBER, b"<html>gone</html>")])),
        f"{MEMBER} in the download from",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_archive_is_one_line_and_leaves_nothing(
    case: str, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = BAD[case]
    record = weights.get_weights(ARCHIVED)
    mirror.route(record.url, body(make()))
    line = download_error(capsys, ARCHIVED)
    assert expected in line, line
    assert cached_files() == []
    assert not hub.cached_path(record.url).with_name(hub.cached_path(record.url).name + ".d").exists()


@pytest.mark.parametrize("case", ["corrupt", "duplicate members", "missing member"])
def test_a_bad_archive_already_in_the_cache_is_removed(
    case: str, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = BAD[case]
    record = weights.get_weights(ARCHIVED)
    path = hub.cached_path(record.url)
    path.parent.mkdir(parents=True)
    path.write_bytes(make())  # placed by hand
    line = download_error(capsys, ARCHIVED)
    assert expected in line and line.endswith("; it was removed from the cache")
    assert cached_files() == []
    assert mirror.requests == []
    mirror.route(record.url, body(bytes(_zip([(MEMBER, checkpoint())]))))  # the next run downloads it again
    assert cli.main(["download", ARCHIVED, "--no-progress"]) == 0


def test_a_good_archive_is_kept_with_its_checkpoint_and_its_sha256(mirror: Mirror) -> None:
    payload = checkpoint()
    served = bytes(_zip([(MEMBER.rsplit("/", 1)[0] + "/config.yaml", b"x"), (MEMBER, payload)]))
    record = weights.get_weights(ARCHIVED)
    mirror.route(record.url, body(served))
    path = hub.fetch(record, progress=False)
    archive = hub.cached_path(record.url)
    assert path == archive.with_name(archive.name + ".d") / "checkpoint_ema_best.pt"
    assert path.read_bytes() == payload and archive.read_bytes() == served
    assert cached_files() == sorted([archive, hub.recorded_hash_path(archive), path])


@pytest.mark.slow
def test_a_one_megabyte_zip_does_not_write_a_gigabyte(mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(download, "LIMITS", download.Limits())  # the real bounds
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z, z.open(MEMBER, "w", force_zip64=True) as f:
        for _ in range(64):
            f.write(bytes(16 << 20))
    assert len(buffer.getvalue()) < 1.1e6
    mirror.route(weights.get_weights(ARCHIVED).url, body(buffer.getvalue()))
    line = download_error(capsys, ARCHIVED)
    assert f"would extract to {1 << 30} bytes" in line and "zip bomb" in line
    assert cached_files() == []


TAR_CASES = {
    "good": (lambda: _tar([(MEMBER, checkpoint())]), None),
    "truncated": (lambda: _tar([(MEMBER, checkpoint())])[:-3000], "is a corrupt archive ("),
    "duplicate members": (
        lambda: _tar([(MEMBER, checkpoint()), (MEMBER, checkpoint(seed=1))]),
        f"repeats the member name(s) {MEMBER}",
    ),
    "zip bomb": (lambda: _tar([(MEMBER, bytes(8 << 20))]), f"would extract to {8 << 20} bytes"),
}


@pytest.mark.parametrize("case", list(TAR_CASES))
def test_tar_archives_get_the_same_checks(
    case: str, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = TAR_CASES[case]
    record = weights.get_weights(ARCHIVED)
    record = dataclasses.replace(record, url=record.url.removesuffix(".zip") + ".tar.gz")
    monkeypatch.setitem(weights._WEIGHTS, record.name, record)
    mirror.route(record.url, body(make()))
    if expected is None:
        assert hub.fetch(record, progress=False).read_bytes() == checkpoint()
        return
    line = download_error(capsys, ARCHIVED)
    assert expected in line, line
    assert cached_files() == []
