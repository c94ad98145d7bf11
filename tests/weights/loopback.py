"""A loopback HTTP mirror (127.0.0.1, the LITEVIT_MIRROR layout) that misbehaves on purpose, and the helpers that the
download tests share: small limits so every case takes seconds, synthetic release files, one-line CLI errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import io
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from litevit import cli
from litevit.weights import download, hub
from litevit.weights import records as weights

# one published checkpoint per family; mobilevitv3's is a release archive
FAMILIES = {
    "levit": "levit_128s",
    "efficientvit_msra": "efficientvit_m0",
    "mobilevit": "mobilevit_xxs",
    "mobilevitv2": "mobilevitv2_050",
    "mobilevitv3": "mobilevitv3_xxs",
    "t2t_vit": "t2t_vit_7",
}
NAMES = list(FAMILIES.values())
UNHASHED = [n for n in NAMES if weights.get_weights(n).hash is None]
ARCHIVED = "mobilevitv3_xxs"

# a checkpoint may be 1 MiB, an archive 2 MiB; a download has 5 s, and 4 KiB/s averaged over 0.5 s
SMALL = download.Limits(
    deadline_s=5.0, stall_s=0.5, min_rate=4096, min_bytes_per_param=0.0, max_bytes_per_param=0.0, slack_bytes=1 << 20
)
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in</body></html>\n"

Handler = http.server.BaseHTTPRequestHandler
Respond = Callable[[Handler], None]


class Mirror:
    """Answers each path with its responder; the rest get 404. ``stop`` ends the responders that run on."""

    def __init__(self) -> None:
        self.routes: dict[str, Respond] = {}
        self.requests: list[str] = []
        self.stop = threading.Event()
        mirror = self

        class Handle(Handler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                mirror.requests.append(self.path)
                respond = mirror.routes.get(self.path)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if respond is None:
                        self.send_error(404)
                    else:
                        respond(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def route(self, url: str, respond: Respond) -> str:
        parts = urlsplit(url)
        path = f"/{parts.netloc}{parts.path}"
        self.routes[path] = respond
        return path

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    """The body of each test module's ``mirror`` fixture: a mirror, an empty cache, the small limits."""
    server = Mirror()
    monkeypatch.setenv("LITEVIT_MIRROR", server.base)
    monkeypatch.setenv("LITEVIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LITEVIT_DOWNLOAD_TIMEOUT", raising=False)
    monkeypatch.setattr(download, "LIMITS", SMALL)
    yield server
    server.close()


# responders


def body(data: bytes, content_type: str = "application/octet-stream", length: int | None = -1) -> Respond:
    """200 with ``data``; ``length``: the Content-Length sent (-1: the true one, None: none, close-delimited)."""

    def respond(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        if length is not None:
            h.send_header("Content-Length", str(len(data) if length == -1 else length))
        h.end_headers()
        h.wfile.write(data)

    return respond


def paced(data: bytes, piece: int, pause_s: float, stop: threading.Event) -> Respond:
    """200 with ``data`` in pieces of ``piece`` bytes, ``pause_s`` apart (a trickle, or a slow but steady server)."""

    def respond(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        for start in range(0, len(data), piece):
            if stop.is_set():
                return
            h.wfile.write(data[start : start + piece])
            h.wfile.flush()
            time.sleep(pause_s)

    return respond


def endless(stop: threading.Event) -> Respond:
    """200 without Content-Length, then bytes without end (until the client hangs up)."""

    def respond(h: Handler) -> None:
        h.send_response(200)
        h.end_headers()
        block = b"PK\x03\x04" + bytes(64 << 10)
        while not stop.is_set():
            h.wfile.write(block)

    return respond


def trickled_status(stop: threading.Event) -> Respond:
    """The status line and headers one byte every 50 ms, forever: no body ever starts."""

    def respond(h: Handler) -> None:
        line = b"HTTP/1.0 200 OK\r\nX-Padding: " + b"a" * 100_000
        for byte in line:
            if stop.is_set():
                return
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.05)

    return respond


def silent(stop: threading.Event) -> Respond:
    """Headers announcing 1000 bytes, then nothing."""

    def respond(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.flush()
        stop.wait(10)

    return respond


def status(code: int, reason: str) -> Respond:
    def respond(h: Handler) -> None:
        h.send_response(code, reason)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return respond


# release files


def checkpoint(size: int = 64 << 10, seed: int = 0) -> bytes:
    """A real ``torch.save`` file of about ``size`` bytes; another ``seed`` gives other bytes."""
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(size // 4, dtype=torch.float32) + seed}, buffer)
    return buffer.getvalue()


def release(name: str, payload: bytes) -> bytes:
    """``payload`` in ``name``'s release form: as is, or in a zip archive at the record's member path."""
    member = weights.get_weights(name).archive_member
    if member is None:
        return payload
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(member.rsplit("/", 1)[0] + "/config.yaml", "model: {}\n")
        z.writestr(member, payload)
    return buffer.getvalue()


def publish(name: str, served: bytes, monkeypatch: pytest.MonkeyPatch) -> weights.Weights:
    """The record of ``name``; a hashed one gets the hash of ``served`` (its real hash cannot match a test file)."""
    record = weights.get_weights(name)
    if record.hash is not None:
        digest = hashlib.sha256(served).hexdigest()
        record = dataclasses.replace(record, hash=digest[: len(record.hash)])
        monkeypatch.setitem(weights._WEIGHTS, record.name, record)
    return record


# what the tests look at


def cached_files() -> list[Path]:
    """Every file in the checkpoint cache (the lock files live elsewhere)."""
    return sorted(p for p in (hub.cache_dir() / "checkpoints").rglob("*") if p.is_file())


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, expect exit code 2 and exactly one line on stderr besides a progress bar; returns that line."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    # the progress bar of a command that downloads (tqdm's) is not part of the error
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def download_error(capsys: pytest.CaptureFixture[str], name: str) -> str:
    line = cli_error(capsys, "download", name, "--no-progress")
    assert line.startswith("litevit download: error: "), line
    return line
