"""Published weights in a local cache: where they live, who may download them, and how they are verified.

- Cache: ``$LITEVIT_HOME`` (default ``~/.cache/litevit``), files under ``checkpoints/<host>/<path of the URL>`` so
  that releases with the same file name (every MobileViTv2 resolution ships ``mobilevitv2-<width>.pt``) never collide.
- Mirror: with ``LITEVIT_MIRROR=BASE``, ``https://HOST/PATH`` is fetched from ``BASE/HOST/PATH``: a plain HTTP server
  over a folder tree is a mirror (machines without internet, tests).
- A download goes to a temporary ``.part`` file in the cache folder and is renamed only once
  :mod:`litevit.weights.download` found it complete, in time, of a plausible size and of a checkpoint's (or
  archive's) format, and it is verified: against the published hash (LeViT), else against the sha256 recorded
  beside the cached file (``<file>.sha256``) when it was first downloaded: trust on first use, with a WARNING that
  the file could not be verified. A failed or wrong download leaves nothing.
- Concurrency: one process at a time downloads a given URL (a lock under ``$LITEVIT_HOME/locks``); the holder of
  the lock removes ``.part`` files that a killed process left behind.
- Release archives (``.zip``, ``.tar*``) are kept once the checkpoint inside is extracted next to them; an archive
  in the cache whose checkpoint cannot be extracted is removed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from .._files import atomic_write
from .download import (
    CHUNK,
    CacheError,
    DownloadError,
    Limits,
    check_content,
    extract,
    limits,
    receive,
    temporary,
    writing,
)
from .records import Weights

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale .part files are then removed by age only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("LITEVIT_HOME") or Path.home() / ".cache" / "litevit")


def cached_path(url: str) -> Path:
    """Where the file at ``url`` lives in the cache (and where a user may place it by hand)."""
    parts = urlsplit(url)
    return cache_dir() / "checkpoints" / parts.netloc / PurePosixPath(parts.path.lstrip("/"))


def recorded_hash_path(path: Path) -> Path:
    """The ``sha256sum``-format file beside a cached file without a published hash: its sha256 at first download."""
    return path.with_name(path.name + ".sha256")


def fetch_url(url: str) -> str:
    """The address actually requested: ``url``, or its place under ``$LITEVIT_MIRROR``."""
    mirror = os.environ.get("LITEVIT_MIRROR")
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


@contextlib.contextmanager
def _locked(url: str, bounds: Limits) -> Iterator[None]:
    """Hold the download lock of ``url``; waits at most as long as the holder's own download may take."""
    if fcntl is None:
        yield
        return
    lock = cache_dir() / "locks" / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}.lock"
    with writing(lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+b")  # noqa: SIM115 - held until the end of the with block below
    with handle:
        give_up = time.monotonic() + bounds.deadline_s + bounds.stall_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > give_up:
                    raise DownloadError(
                        f"another process has been downloading {url} for over {bounds.deadline_s:.0f} s (lock "
                        f"{lock}); try again later"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clean_parts(target: Path, bounds: Limits) -> None:
    """Remove ``.part`` files of ``target`` left by a killed process (called with the lock held: no live writer)."""
    if not target.parent.is_dir():
        return
    oldest = time.time() - 2 * bounds.deadline_s
    # tempfile names are .<file>.<8 random characters>.part: the pattern leaves other files' parts alone
    for part in target.parent.glob(f".{glob.escape(target.name)}.{'?' * 8}.part"):
        with writing(part), contextlib.suppress(FileNotFoundError):
            if fcntl is not None or part.stat().st_mtime < oldest:
                part.unlink()
                log.info("removed %s, left by an interrupted download", part)


def _check_hash(digest: str, weights: Weights, problem: str) -> None:
    expected = (weights.hash or "").lower()
    ok = digest == expected if weights.hash_kind == "sha256" else digest.startswith(expected)
    if not ok:
        shown = expected + ("..." if weights.hash_kind == "sha256-prefix" else "")
        raise DownloadError(
            f"{weights.file_name} for {weights.name} has sha256 {digest}, expected {shown} ({weights.hash_kind}): "
            f"{problem}"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _recorded(path: Path) -> str | None:
    """The sha256 recorded at first download beside ``path``, if any."""
    record = recorded_hash_path(path)
    try:
        text = record.read_text(errors="replace").split()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DownloadError(f"cannot read {record} ({exc.strerror}); delete it to trust the next download") from None
    digest = text[0].lower() if text else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise DownloadError(f"{record} is not a sha256 record (sha256sum format); delete it to trust the next download")
    return digest


def _record(path: Path, digest: str) -> None:
    record = recorded_hash_path(path)
    with writing(record):
        atomic_write(record, lambda tmp: tmp.write_text(f"{digest}  {path.name}\n"))


def _download(weights: Weights, target: Path, member: Path | None, progress: bool, bounds: Limits) -> None:
    """Download, check and verify ``weights``' file (and extract its checkpoint), then rename it into the cache."""
    url = fetch_url(weights.url)
    by_hand = f"download {weights.url} yourself and place it at {target}"
    fd, tmp = temporary(target)
    try:
        with writing(tmp), os.fdopen(fd, "wb") as out:
            digest = receive(url, out, weights, bounds, progress, by_hand)
        what = f"the download from {url} (not kept)"
        check_content(tmp, weights, bounds, member is not None, what)
        recorded = None
        if weights.hash is not None:
            _check_hash(digest, weights, f"the download from {url} was refused and not kept")
        else:
            recorded = _recorded(target)
            if recorded is not None and recorded != digest:
                raise DownloadError(
                    f"the download from {url} has sha256 {digest}, but {recorded} was recorded when {weights.name} "
                    f"was first downloaded ({recorded_hash_path(target)}); nothing was kept. If the publisher "
                    "replaced the file, delete that record to accept the new one"
                )
        if member is not None:
            extract(tmp, weights, member, bounds, what)
        if weights.hash is None and recorded is None:
            _record(target, digest)
        with writing(target):
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if weights.hash is None and recorded is None:
        log.warning(
            "%s: %s has no published hash, so litevit cannot verify it; its sha256 %s is recorded in %s and a "
            "different file will be refused from now on (trust on first use)",
            weights.name,
            weights.file_name,
            digest,
            recorded_hash_path(target),
        )


def _verify_cached(weights: Weights, path: Path, bounds: Limits) -> str | None:
    """Check a cached file (downloaded, or placed by hand) against the published hash, else the recorded one;
    returns its sha256 when it has neither (a file placed by hand), for :func:`_trust`."""
    if weights.hash is not None:
        _check_hash(_sha256(path), weights, f"the cached file {path} is not the published one; delete it to retry")
        return None
    check_content(path, weights, bounds, weights.archive_member is not None, f"the cached file {path}")
    digest, recorded = _sha256(path), _recorded(path)
    if recorded is not None and digest != recorded:
        raise DownloadError(
            f"the cached file {path} has sha256 {digest}, but {recorded} was recorded when it was first downloaded "
            f"({recorded_hash_path(path)}): it changed since; delete both to download it again"
        )
    return digest if recorded is None else None


def _trust(weights: Weights, path: Path, digest: str | None) -> None:
    """Record the sha256 of a file placed by hand, if it has none yet; a read-only cache keeps working unrecorded."""
    if digest is None:
        return
    try:
        _record(path, digest)
    except CacheError as exc:
        log.warning("%s: %s has no published hash and its sha256 %s cannot be recorded: %s", weights.name, path,
                    digest, exc)  # fmt: skip
        return
    log.warning(
        "%s: %s was placed by hand and has no published hash, so litevit cannot verify it; its sha256 %s is "
        "recorded in %s and a different file will be refused from now on",
        weights.name,
        path,
        digest,
        recorded_hash_path(path),
    )


def verification(weights: Weights) -> str:
    """How :func:`fetch` verifies ``weights``: against the published hash (``"sha256"``) or a published prefix of it
    (``"sha256-prefix"``), else against the sha256 recorded at its first download (``"first-use"``)."""
    return weights.hash_kind if weights.hash is not None and weights.hash_kind is not None else "first-use"


def fetch(weights: Weights, progress: bool = True) -> Path:
    """The local path of ``weights``' checkpoint: from the cache, else downloaded (and extracted) and verified."""
    bounds = limits()
    path = cached_path(weights.url)
    member = None
    if weights.archive_member is not None:
        member = path.with_name(path.name + ".d") / PurePosixPath(weights.archive_member).name
    if not (path.is_file() and (member is None or member.is_file())):
        with _locked(weights.url, bounds):
            for target in (path, recorded_hash_path(path), member):
                if target is not None:
                    _clean_parts(target, bounds)
            if not path.is_file():
                _download(weights, path, member, progress, bounds)
                return member or path
            if member is not None and not member.is_file():  # an archive placed by hand, or extraction killed
                try:
                    digest = _verify_cached(weights, path, bounds)
                    extract(path, weights, member, bounds, f"the cached archive {path}")
                except CacheError:
                    raise
                except DownloadError as exc:  # a wrong archive must not fail again on every later run
                    with writing(path):
                        path.unlink(missing_ok=True)
                    raise DownloadError(f"{exc}; it was removed from the cache") from None
                _trust(weights, path, digest)
                return member
    _trust(weights, path, _verify_cached(weights, path, bounds))
    return member or path
