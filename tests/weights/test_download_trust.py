"""Files without a published hash (every family but LeViT): a WARNING says so once, the sha256 of the first
download is recorded beside it, and a later file that differs is refused (trust on first use). Also: stale
``.part`` files are removed, and two downloads of one file at once do not corrupt each other. Nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import (
    HTML,
    NAMES,
    UNHASHED,
    Mirror,
    body,
    cached_files,
    checkpoint,
    download_error,
    paced,
    publish,
    release,
    serve,
)

from litevit import cli
from litevit.weights import download, hub
from litevit.weights import records as weights


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    yield from serve(tmp_path, monkeypatch)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == hub.__name__ and r.levelno == logging.WARNING]


def test_every_family_but_levit_is_unverified() -> None:
    assert set(NAMES) - set(UNHASHED) == {"levit_128s"}
    assert {hub.verification(weights.get_weights(n)) for n in UNHASHED} == {"first-use"}
    assert hub.verification(weights.get_weights("levit_128s")) == "sha256-prefix"  # 8 hex digits published


@pytest.mark.parametrize("name", UNHASHED)
def test_an_unverified_download_warns_once_and_records_its_sha256(
    name: str, mirror: Mirror, caplog: pytest.LogCaptureFixture
) -> None:
    served = release(name, checkpoint())
    record = weights.get_weights(name)
    path = mirror.route(record.url, body(served))
    with caplog.at_level(logging.WARNING):
        hub.fetch(record, progress=False)
        hub.fetch(record, progress=False)
    digest = hashlib.sha256(served).hexdigest()
    cached = hub.cached_path(record.url)
    assert hub.recorded_hash_path(cached).read_text() == f"{digest}  {cached.name}\n"  # sha256sum -c reads it
    (message,) = _warnings(caplog)
    assert "has no published hash, so litevit cannot verify it" in message and digest in message
    assert mirror.requests == [path]


def test_a_levit_download_is_verified_without_a_warning(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    served = checkpoint()
    record = publish("levit_128s", served, monkeypatch)
    mirror.route(record.url, body(served))
    with caplog.at_level(logging.WARNING):
        hub.fetch(record, progress=False)
    assert _warnings(caplog) == []
    assert cached_files() == [hub.cached_path(record.url)]  # no sha256 record: the published hash is the check


@pytest.mark.parametrize("name", UNHASHED)
def test_a_later_download_that_differs_from_the_first_is_refused(
    name: str, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    record = weights.get_weights(name)
    first, other = release(name, checkpoint(seed=0)), release(name, checkpoint(seed=1))
    mirror.route(record.url, body(first))
    assert cli.main(["download", name, "--no-progress"]) == 0
    cached = hub.cached_path(record.url)
    for path in cached_files():
        if path != hub.recorded_hash_path(cached):
            path.unlink()  # the checkpoint (and an archive's extracted member) lost; the record stays
    mirror.route(record.url, body(other))
    line = download_error(capsys, name)
    new, old = hashlib.sha256(other).hexdigest(), hashlib.sha256(first).hexdigest()
    assert f"has sha256 {new}, but {old} was recorded when {record.name} was first downloaded" in line
    assert cached_files() == [hub.recorded_hash_path(cached)]
    mirror.route(record.url, body(first))  # the file first seen is accepted again
    assert cli.main(["download", name, "--no-progress"]) == 0


@pytest.mark.parametrize("name", UNHASHED)
def test_a_cached_file_that_changed_is_refused(name: str, mirror: Mirror, capsys: pytest.CaptureFixture[str]) -> None:
    record = weights.get_weights(name)
    mirror.route(record.url, body(release(name, checkpoint(seed=0))))
    assert cli.main(["download", name, "--no-progress"]) == 0
    cached = hub.cached_path(record.url)
    cached.write_bytes(release(name, checkpoint(seed=2)))
    line = download_error(capsys, name)
    assert f"the cached file {cached} has sha256" in line and "it changed since; delete both" in line


def test_a_file_placed_by_hand_is_trusted_on_first_use(mirror: Mirror, caplog: pytest.LogCaptureFixture) -> None:
    record = weights.get_weights("t2t_vit_7")
    cached = hub.cached_path(record.url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(checkpoint())
    with caplog.at_level(logging.WARNING):
        assert hub.fetch(record, progress=False) == cached
    (message,) = _warnings(caplog)
    assert "was placed by hand and has no published hash" in message
    assert hub.recorded_hash_path(cached).read_text().split()[0] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert mirror.requests == []


def test_a_read_only_cache_filled_by_hand_still_loads(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    record = weights.get_weights("mobilevitv2_050")
    cached = hub.cached_path(record.url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(checkpoint())
    denied = OSError(errno.EROFS, os.strerror(errno.EROFS), str(cached.parent))
    monkeypatch.setattr(download.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(denied))  # as root, too
    monkeypatch.setattr(Path, "write_text", lambda *a, **kw: (_ for _ in ()).throw(denied))  # the sha256 record
    with caplog.at_level(logging.WARNING):
        assert hub.fetch(record, progress=False) == cached
    (message,) = _warnings(caplog)
    assert "cannot be recorded: cannot write the litevit cache at" in message and "Read-only file system" in message
    assert not hub.recorded_hash_path(cached).exists()


def test_an_html_page_placed_by_hand_is_refused_not_trusted(mirror: Mirror, capsys: pytest.CaptureFixture[str]) -> None:
    record = weights.get_weights("mobilevit_xxs")
    cached = hub.cached_path(record.url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(HTML)
    line = download_error(capsys, "mobilevit_xxs")
    assert f"the cached file {cached} is an HTML page" in line
    assert not hub.recorded_hash_path(cached).exists()


@pytest.mark.parametrize("name", ["efficientvit_m0", "mobilevitv3_xxs"])
def test_stale_part_files_are_removed(name: str, mirror: Mirror) -> None:
    record = weights.get_weights(name)
    served = release(name, checkpoint())
    mirror.route(record.url, body(served))
    cached = hub.cached_path(record.url)
    cached.parent.mkdir(parents=True)
    stale = [cached.with_name(f".{cached.name}.{tag}.part") for tag in ("k1ll3d_0", "sha256.x9_zq2ab")]
    if record.archive_member is not None:
        extracted = cached.with_name(cached.name + ".d")
        extracted.mkdir()
        stale.append(extracted / ".checkpoint_ema_best.pt.abcdefgh.part")
    other = cached.with_name(".another.pth.abcdefgh.part")  # another file's download: not this one's to remove
    for path in [*stale, other]:
        path.write_bytes(b"half a file")
    hub.fetch(record, progress=False)
    assert not any(p.exists() for p in stale)
    assert other.exists()
    assert cached.read_bytes() == served


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv3_xxs"])
def test_two_downloads_at_once_do_not_corrupt_each_other(name: str, mirror: Mirror) -> None:
    record = weights.get_weights(name)
    served = release(name, checkpoint(256 << 10))
    path = mirror.route(record.url, paced(served, 16 << 10, 0.02, mirror.stop))  # ~0.3 s: the two overlap
    results: list[Path | BaseException] = []

    def run() -> None:
        try:
            results.append(hub.fetch(record, progress=False))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and results[0] == results[1] and isinstance(results[0], Path), results
    assert mirror.requests == [path]  # the second waited for the first, then used its file
    assert hub.cached_path(record.url).read_bytes() == served
    assert not list(hub.cache_dir().rglob("*.part"))


@pytest.mark.slow  # a second Python that imports torch: ~15 s on a busy 2-core machine
def test_a_killed_download_leaves_a_part_file_that_the_next_one_removes(mirror: Mirror) -> None:
    record = weights.get_weights("t2t_vit_7")
    served = checkpoint(900 << 10)
    mirror.route(record.url, paced(served, 16 << 10, 0.5, mirror.stop))  # 32 kB/s: a minute for the file
    code = "from litevit.weights import hub, records; hub.fetch(records.get_weights('t2t_vit_7'), progress=False)"
    child = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    cached = hub.cached_path(record.url)
    try:
        give_up = time.monotonic() + 60
        while not list(cached.parent.glob("*.part")) and time.monotonic() < give_up and child.poll() is None:
            time.sleep(0.1)
        (part,) = cached.parent.glob("*.part")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert part.exists()
    mirror.route(record.url, body(served))
    assert hub.fetch(record, progress=False) == cached  # the dead process's lock went with it
    assert not part.exists() and cached.read_bytes() == served
