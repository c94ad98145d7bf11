"""Downloading published weights into a local cache, safely.

- Cache: ``$LITEVIT_HOME`` (default ``~/.cache/litevit``), files under ``checkpoints/<host>/<path of the URL>`` so
  that releases with the same file name (every MobileViTv2 resolution ships ``mobilevitv2-<width>.pt``) never collide.
- Mirror: with ``LITEVIT_MIRROR=BASE``, ``https://HOST/PATH`` is fetched from ``BASE/HOST/PATH``: a plain HTTP server
  over a folder tree is a mirror (machines without internet, tests).
- A download goes to a temporary file in the cache folder and is renamed only once complete (Content-Length) and
  verified (sha256, or the sha256 prefix in the file name); a failed, truncated or wrong download leaves nothing.
- Release archives (``.zip``, ``.tar*``) are kept, and the checkpoint inside is extracted next to them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from .checkpoint import CheckpointError
from .records import Weights

_CHUNK = 1 << 20
_TIMEOUT_S = 30


class DownloadError(CheckpointError):
    """Weights that could not be fetched or verified; the message says where to put the file by hand."""


def cache_dir() -> Path:
    return Path(os.environ.get("LITEVIT_HOME") or Path.home() / ".cache" / "litevit")


def cached_path(url: str) -> Path:
    """Where the file at ``url`` lives in the cache (and where a user may place it by hand)."""
    parts = urlsplit(url)
    return cache_dir() / "checkpoints" / parts.netloc / PurePosixPath(parts.path.lstrip("/"))


def fetch_url(url: str) -> str:
    """The address actually requested: ``url``, or its place under ``$LITEVIT_MIRROR``."""
    mirror = os.environ.get("LITEVIT_MIRROR")
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


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
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(weights: Weights, target: Path, progress: bool) -> None:
    from tqdm import tqdm

    url = fetch_url(weights.url)
    by_hand = f"download {weights.url} yourself and place it at {target}"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310 - http(s) of a record
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise DownloadError(f"cannot download {weights.name} from {url} ({exc}); {by_hand}") from None
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None and length.isdigit() else None
                h, received = hashlib.sha256(), 0
                with tqdm(total=total, unit="B", unit_scale=True, desc=weights.file_name, disable=not progress) as bar:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except (OSError, urllib.error.URLError) as exc:
                            raise DownloadError(
                                f"download of {url} broke off after {received} bytes ({exc}); {by_hand}"
                            ) from None
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} is truncated: {received} of {total} bytes (Content-Length); nothing was kept, "
                f"try again or {by_hand}"
            )
        if weights.hash is not None:
            _check_hash(h.hexdigest(), weights, f"the download from {url} was refused and not kept")
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _member(names: list[str], member: str, archive: Path) -> str:
    """``member`` if the archive has it, else the single entry with the same file name."""
    if member in names:
        return member
    base = PurePosixPath(member).name
    matches = [n for n in names if PurePosixPath(n).name == base]
    if len(matches) != 1:
        found = f"{len(matches)} files named {base}" if matches else f"no {base}"
        raise DownloadError(f"{archive} holds {found} (expected {member}); its first entries: {names[:5]}")
    return matches[0]


def _extract(archive: Path, member: str, target: Path) -> None:
    """Copy ``member`` (or the one entry with its file name) out of a zip or tar archive, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z, z.open(_member(z.namelist(), member, archive)) as src:
                    shutil.copyfileobj(src, out, _CHUNK)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as t:
                    files = [m.name for m in t.getmembers() if m.isfile()]
                    with t.extractfile(_member(files, member, archive)) as src:
                        shutil.copyfileobj(src, out, _CHUNK)
            else:
                raise DownloadError(f"{archive} is not a zip or tar archive; expected a release archive with {member}")
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def fetch(weights: Weights, progress: bool = True) -> Path:
    """The local path of ``weights``' checkpoint: from the cache, else downloaded (and extracted) and verified."""
    path = cached_path(weights.url)
    if not path.is_file():
        _download(weights, path, progress)
    elif weights.hash is not None:
        _check_hash(_sha256(path), weights, f"the cached file {path} is not the published one; delete it to retry")
    if weights.archive_member is None:
        return path
    extracted = path.with_name(path.name + ".d") / PurePosixPath(weights.archive_member).name
    if not extracted.is_file():
        _extract(path, weights.archive_member, extracted)
    return extracted
