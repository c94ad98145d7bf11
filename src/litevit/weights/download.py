"""One download, checked before anything is cached: the transfer, the content, and release archives.

:mod:`litevit.weights.hub` decides what to fetch and where it is cached; this module does one transfer and the
checks that a wrong file must fail before it is renamed into the cache:

- the transfer has an overall deadline and a minimum rate (:class:`Limits`; ``LITEVIT_DOWNLOAD_TIMEOUT`` sets the
  deadline), and a size bound, so a server that stalls, trickles or streams without end cannot hold it forever;
- the bytes must be a checkpoint (torch zip, torch pickle, safetensors) or a release archive, of a plausible size
  for the model (no release publishes its size: bounds from the parameter count);
- a release archive is refused when it is corrupt, truncated or encrypted, repeats member names, lacks the member,
  or would extract to more than the model can plausibly need (a zip bomb);
- a cache that cannot be written is one :class:`CacheError` naming the path;
- text that came from the server (reason phrases, member names, the start of a wrong body) goes through
  :func:`litevit._extras.printable`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import math
import os
import socket
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from .._extras import printable
from .reading import CheckpointError
from .records import Weights, param_millions

CHUNK = 1 << 20
_HEAD = 512  # bytes read to recognise a file's format (a tar header's "ustar" sits at 257)
_CHECKPOINT_KINDS = ("torch zip", "torch pickle", "safetensors")
_ARCHIVE_KINDS = ("zip archive", "torch zip", "tar archive", "gzip", "bzip2", "xz")
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # pickle protocol 2, a long


@dataclass(frozen=True)
class Limits:
    """Bounds on one download (tests shrink them; ``LITEVIT_DOWNLOAD_TIMEOUT`` sets ``deadline_s``)."""

    deadline_s: float = 1800.0  # the whole download, headers included
    stall_s: float = 30.0  # socket timeout, and the window over which min_rate is averaged
    min_rate: float = 16 * 1024  # bytes/s
    # no release publishes its size: bounds from the model's parameter count. A checkpoint holds every parameter,
    # at least in fp16; a training checkpoint up to ~8 fp32 copies (model, EMA, optimizer moments); a release
    # archive may hold several checkpoints (twice the bound)
    min_bytes_per_param: float = 2.0
    max_bytes_per_param: float = 32.0
    slack_bytes: int = 64 << 20  # on top of the upper bound: buffers, metadata, logs and configs in archives


LIMITS = Limits()


class DownloadError(CheckpointError):
    """Weights that could not be fetched or verified; the message says where to put the file by hand."""


class CacheError(DownloadError):
    """The cache cannot be written (read-only, full, a file where a folder should be); the message names the path."""


def limits() -> Limits:
    """:data:`LIMITS`, with the deadline from ``LITEVIT_DOWNLOAD_TIMEOUT`` (seconds) when it is set."""
    raw = os.environ.get("LITEVIT_DOWNLOAD_TIMEOUT")
    if not raw:
        return LIMITS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise DownloadError(f"LITEVIT_DOWNLOAD_TIMEOUT must be a positive number of seconds, got {printable(raw)!r}")
    return dataclasses.replace(LIMITS, deadline_s=seconds)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """A failed cache write (read-only, full, not a folder) as one line naming the path."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or path
        raise CacheError(
            f"cannot write the litevit cache at {where} ({exc.strerror or exc}): set LITEVIT_HOME to a writable "
            "folder with free space"
        ) from None


def temporary(target: Path) -> tuple[int, Path]:
    """An open ``.part`` file beside ``target`` (same file system, so the final rename is atomic)."""
    with writing(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    return fd, Path(name)


class _Deadline:
    """Shuts the sockets of one download when its time is up: a socket timeout bounds each read, not their sum, so a
    server that trickles headers or body would otherwise hold the download forever."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._start = time.monotonic()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self._start)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                self._shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        # the plain socket's shutdown acts on the descriptor, also under TLS: a blocked read returns at once
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watched:
    """urllib handler part: every connection it opens is watched by the download's deadline."""

    deadline: _Deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        deadline = self.deadline

        class Connection(http_class):
            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return super().do_open(Connection, req, **kwargs)  # type: ignore[misc]


class _HTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _HTTPS(_Watched, urllib.request.HTTPSHandler):
    pass


def _open(url: str, deadline: _Deadline, bounds: Limits) -> Any:
    handlers = [_HTTP(), _HTTPS()]
    for handler in handlers:
        handler.deadline = deadline
    timeout = max(0.01, min(bounds.stall_s, deadline.left()))
    return urllib.request.build_opener(*handlers).open(url, timeout=timeout)


def _kind(head: bytes) -> str | None:
    """The format the first bytes of a file show, among checkpoints and archives."""
    if head.startswith(b"PK\x03\x04"):
        # torch.save writes a zip whose first entry is <folder>/data.pkl (name length at 26, name at 30)
        name = head[30 : 30 + int.from_bytes(head[26:28], "little")]
        return "torch zip" if name.endswith(b"/data.pkl") else "zip archive"
    if head.startswith(_LEGACY_MAGIC):
        return "torch pickle"  # torch.save(_use_new_zipfile_serialization=False): torch's magic number, pickled
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100 << 20:
        return "safetensors"  # u64 header length, then the JSON header
    if head[257:262] == b"ustar":
        return "tar archive"
    for magic, kind in ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz")):
        if head.startswith(magic):
            return kind
    return None


def _describe(head: bytes) -> str:
    stripped = head.lstrip()
    if not stripped:
        return "empty" if not head else "blank"
    what = "an HTML page (an error or login page?)" if stripped[:1] == b"<" else "not a recognised format"
    return f"{what}, starting '{printable(stripped[:48].decode('utf-8', 'replace'))}'"


def _bounds(weights: Weights, bounds: Limits, archive: bool) -> tuple[int, int]:
    """Plausible sizes in bytes of a file holding ``weights``' checkpoint (an archive: no lower bound)."""
    params = param_millions(weights.variant) * 1e6
    high = int(params * bounds.max_bytes_per_param) + bounds.slack_bytes
    return (0, 2 * high) if archive else (int(params * bounds.min_bytes_per_param), high)


def check_content(path: Path, weights: Weights, bounds: Limits, archive: bool, what: str) -> None:
    """Refuse a file that is not a checkpoint (or, for ``archive``, a release archive) of a plausible size."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    kind = _kind(head)
    expected = _ARCHIVE_KINDS if archive else _CHECKPOINT_KINDS
    if kind not in expected:
        form = "a zip or tar release archive" if archive else "a checkpoint (torch zip, torch pickle or safetensors)"
        raise DownloadError(f"{what} is {_describe(head)}: expected {form} for {weights.name}")
    low, high = _bounds(weights, bounds, archive)
    size = path.stat().st_size
    if not low <= size <= high:
        raise DownloadError(
            f"{what} holds {size} bytes, not a plausible size for {weights.name} ({weights.variant}'s "
            f"{param_millions(weights.variant):.1f} M parameters: {low} to {high} bytes)"
        )


def receive(url: str, out: IO[bytes], weights: Weights, bounds: Limits, progress: bool, by_hand: str) -> str:
    """Stream ``url`` into ``out`` within the deadline, the minimum rate and the size bound; returns the sha256."""
    from tqdm import tqdm

    high = _bounds(weights, bounds, weights.archive_member is not None)[1]
    deadline = _Deadline(bounds.deadline_s)

    def late(received: int) -> DownloadError:
        return DownloadError(
            f"download of {url} did not finish within {bounds.deadline_s:g} s ({received} bytes arrived; set "
            f"LITEVIT_DOWNLOAD_TIMEOUT for more time); nothing was kept, try again or {by_hand}"
        )

    try:
        try:
            response = _open(url, deadline, bounds)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            if deadline.expired:
                raise late(0) from None
            raise DownloadError(
                f"cannot download {weights.name} from {url} ({printable(str(exc)) or type(exc).__name__}); {by_hand}"
            ) from None
        with response:
            length = response.headers.get("Content-Length", "").strip()
            total = int(length) if length.isdigit() else None
            if total is not None and total > high:
                raise DownloadError(
                    f"{url} announces {total} bytes (Content-Length), more than {weights.name} can plausibly take "
                    f"({high}); nothing was kept, check LITEVIT_MIRROR or {by_hand}"
                )
            read = getattr(response, "read1", response.read)  # read1: returns what arrived, so a trickle is seen
            h, received = hashlib.sha256(), 0
            mark, mark_received = time.monotonic(), 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=weights.file_name, disable=not progress) as bar:
                while True:
                    try:
                        chunk = read(CHUNK)
                    except (OSError, http.client.HTTPException, ValueError) as exc:
                        if deadline.expired:
                            raise late(received) from None
                        why = (
                            f"nothing arrived for {bounds.stall_s:g} s"
                            if isinstance(exc, TimeoutError)
                            else printable(str(exc)) or type(exc).__name__
                        )
                        raise DownloadError(
                            f"download of {url} broke off after {received} bytes ({why}); nothing was kept, try again "
                            f"or {by_hand}"
                        ) from None
                    if deadline.expired:
                        raise late(received)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > high:
                        raise DownloadError(
                            f"{url} sent more than {high} bytes, more than {weights.name} can plausibly take; nothing "
                            f"was kept, check LITEVIT_MIRROR or {by_hand}"
                        )
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
                    now = time.monotonic()
                    if now - mark >= bounds.stall_s:
                        if received - mark_received < bounds.min_rate * (now - mark):
                            raise DownloadError(
                                f"download of {url} is too slow: {received - mark_received} bytes in {now - mark:.1f} s"
                                f", under the minimum {bounds.min_rate:g} bytes/s; nothing was kept, try again or "
                                f"{by_hand}"
                            )
                        mark, mark_received = now, received
    finally:
        deadline.cancel()
    if total is not None and received != total:
        raise DownloadError(
            f"download of {url} is truncated: {received} of {total} bytes (Content-Length); nothing was kept, "
            f"try again or {by_hand}"
        )
    return h.hexdigest()


def _member(names: list[str], member: str, archive: str) -> str:
    """``member`` if the archive has it, else the single entry with the same file name."""
    if member in names:
        return member
    base = PurePosixPath(member).name
    matches = [n for n in names if PurePosixPath(n).name == base]
    if len(matches) != 1:
        found = f"{len(matches)} files named {base}" if matches else f"no {base}"
        listed = printable(", ".join(names[:5]))
        raise DownloadError(f"{archive} holds {found} (expected {member}); its first entries: {listed}")
    return matches[0]


def _copy_member(archive: Path, weights: Weights, out: BinaryIO, out_path: Path, high: int, what: str) -> None:
    """Copy the record's member out of a zip or tar archive, refusing anything that makes it ambiguous or huge."""
    member = weights.archive_member or ""

    def open_member(names: list[str], files: list[str], size_of: Any) -> str:
        repeated = sorted(n for n, count in Counter(names).items() if count > 1)
        if repeated:
            raise DownloadError(f"{what} repeats the member name(s) {printable(', '.join(repeated[:3]))}")
        name = _member(files, member, what)
        if size_of(name) > high:
            raise DownloadError(
                f"{what}: {printable(name)} would extract to {size_of(name)} bytes, more than {weights.name} can "
                f"plausibly take ({high}); refused (a zip bomb?)"
            )
        return name

    def copy(src: IO[bytes]) -> None:
        written = 0
        for chunk in iter(lambda: src.read(CHUNK), b""):
            written += len(chunk)
            if written > high:
                raise DownloadError(f"{what}: {member} extracts to more than {high} bytes; refused (a zip bomb?)")
            with writing(out_path):  # a failed write is the cache's fault; a failed read (below), the archive's
                out.write(chunk)

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                files = [i.filename for i in infos if not i.is_dir()]
                name = open_member([i.filename for i in infos], files, lambda n: z.getinfo(n).file_size)
                if z.getinfo(name).flag_bits & 0x1:
                    raise DownloadError(f"{what}: {printable(name)} is encrypted; the published archives are not")
                with z.open(name) as src:
                    copy(src)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                entries = t.getmembers()
                files = [m.name for m in entries if m.isfile()]
                name = open_member([m.name for m in entries], files, lambda n: t.getmember(n).size)
                src = t.extractfile(name)
                if src is None:
                    raise DownloadError(f"{what}: {printable(name)} is not a regular file")
                with src:
                    copy(src)
        else:
            raise DownloadError(f"{what} is not a readable zip or tar archive (truncated or corrupt?)")
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        zlib.error,
        EOFError,
        NotImplementedError,
        RuntimeError,
        OSError,
    ) as exc:
        # OSError: gzip, bz2 and lzma report a damaged stream as one
        raise DownloadError(f"{what} is a corrupt archive ({printable(str(exc)) or type(exc).__name__})") from None


def extract(archive: Path, weights: Weights, target: Path, bounds: Limits, what: str) -> None:
    """Extract the record's checkpoint from ``archive`` to ``target`` (atomically), checked like a download."""
    high = _bounds(weights, bounds, archive=False)[1]
    fd, tmp = temporary(target)
    try:
        with writing(tmp), os.fdopen(fd, "wb") as out:
            _copy_member(archive, weights, out, tmp, high, what)
        check_content(tmp, weights, bounds, False, f"{weights.archive_member} in {what}")
        with writing(target):
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the folder made for the checkpoint, when nothing came of it
            target.parent.rmdir()
