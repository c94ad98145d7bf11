"""Downloads that go wrong, on every family: wrong content, wrong size, slow or stalled servers, a cache that cannot
be written, escape sequences from the server. Each is one line and exit code 2 from the CLI, and the cache holds
nothing afterwards (so the next run, against a mirror that behaves, succeeds). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import errno
import os
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import (
    HTML,
    NAMES,
    Mirror,
    body,
    cached_files,
    checkpoint,
    cli_error,
    download_error,
    endless,
    paced,
    publish,
    release,
    serve,
    silent,
    status,
    trickled_status,
)

from litevit import cli
from litevit._extras import printable
from litevit.weights import download, hub
from litevit.weights import records as weights


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    yield from serve(tmp_path, monkeypatch)


def _good(mirror: Mirror, name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A mirror that now behaves: the download succeeds, nothing of the failed one got in the way."""
    served = release(name, checkpoint())
    record = publish(name, served, monkeypatch)
    mirror.route(record.url, body(served))
    assert cli.main(["download", name, "--no-progress"]) == 0
    assert str(hub.cached_path(record.url)) in capsys.readouterr().out
    assert hub.cached_path(record.url).read_bytes() == served


@pytest.mark.parametrize("name", NAMES)
def test_an_html_page_answered_with_200_is_refused(
    name: str, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    record = weights.get_weights(name)
    mirror.route(record.url, body(HTML, "text/html"))
    line = download_error(capsys, name)
    assert "is an HTML page" in line and "starting '<!DOCTYPE html>\\n<html>" in line and "not kept" in line
    assert cached_files() == []
    _good(mirror, name, monkeypatch, capsys)


@pytest.mark.parametrize("name", NAMES)
def test_a_body_shorter_than_its_content_length_is_refused(
    name: str, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served = release(name, checkpoint())
    record = publish(name, served, monkeypatch)
    mirror.route(record.url, body(served[:-1000], length=len(served)))
    line = download_error(capsys, name)
    assert f"truncated: {len(served) - 1000} of {len(served)} bytes (Content-Length)" in line
    assert cached_files() == []
    _good(mirror, name, monkeypatch, capsys)


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "endless"])
@pytest.mark.parametrize("name", NAMES)
def test_a_stream_far_larger_than_the_model_is_refused(
    name: str, announced: bool, mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    record = weights.get_weights(name)
    high = (1 << 20) * (2 if record.archive_member is not None else 1)  # SMALL: 1 MiB, twice for an archive
    if announced:
        mirror.route(record.url, body(b"PK\x03\x04" + bytes(3 << 20)))
    else:
        mirror.route(record.url, endless(mirror.stop))
    line = download_error(capsys, name)
    assert ("announces 3145732 bytes" if announced else "sent more than") in line and str(high) in line
    assert cached_files() == []


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_too_small_for_the_model_is_refused(
    name: str, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(download, "LIMITS", download.Limits())  # the real bounds: at least 2 bytes per parameter
    served = release(name, checkpoint(4096))
    record = publish(name, served, monkeypatch)
    mirror.route(record.url, body(served))
    line = download_error(capsys, name)
    params = weights.param_millions(record.variant) * 1e6
    assert "not a plausible size" in line and f"{int(params * 2)} to " in line
    assert cached_files() == []


def test_a_trickle_under_the_minimum_rate_is_cut(mirror: Mirror, capsys: pytest.CaptureFixture[str]) -> None:
    record = weights.get_weights("efficientvit_m0")
    mirror.route(record.url, paced(checkpoint(), 1, 0.02, mirror.stop))  # ~50 bytes/s, under SMALL's 4096
    start = time.monotonic()
    line = download_error(capsys, "efficientvit_m0")
    assert time.monotonic() - start < 3
    assert "is too slow" in line and "under the minimum 4096 bytes/s" in line
    assert cached_files() == []


def test_the_deadline_cuts_a_slow_but_steady_download(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(download, "LIMITS", download.Limits(**{**vars(download.LIMITS), "min_rate": 0.0}))
    monkeypatch.setenv("LITEVIT_DOWNLOAD_TIMEOUT", "1")
    record = weights.get_weights("mobilevit_xxs")
    mirror.route(record.url, paced(checkpoint(), 100, 0.05, mirror.stop))  # 2 kB/s: 30 s for the file
    start = time.monotonic()
    line = download_error(capsys, "mobilevit_xxs")
    assert time.monotonic() - start < 3
    assert "did not finish within 1 s" in line and "LITEVIT_DOWNLOAD_TIMEOUT" in line
    assert cached_files() == []


def test_the_deadline_cuts_headers_trickled_forever(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITEVIT_DOWNLOAD_TIMEOUT", "1")
    mirror.route(weights.get_weights("t2t_vit_7").url, trickled_status(mirror.stop))
    start = time.monotonic()
    line = download_error(capsys, "t2t_vit_7")
    assert time.monotonic() - start < 3  # each byte arrives well within the socket timeout: only the deadline ends it
    assert "did not finish within 1 s" in line
    assert cached_files() == []


def test_a_silent_server_times_out(mirror: Mirror, capsys: pytest.CaptureFixture[str]) -> None:
    mirror.route(weights.get_weights("mobilevitv2_050").url, silent(mirror.stop))
    line = download_error(capsys, "mobilevitv2_050")
    assert "broke off after 0 bytes (nothing arrived for 0.5 s)" in line
    assert cached_files() == []


@pytest.mark.parametrize("value", ["abc", "0", "-3", "inf", "nan"])
def test_a_wrong_timeout_setting_is_one_line(
    value: str, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITEVIT_DOWNLOAD_TIMEOUT", value)
    line = download_error(capsys, "levit_128s")
    assert f"LITEVIT_DOWNLOAD_TIMEOUT must be a positive number of seconds, got '{value}'" in line
    assert mirror.requests == []


@pytest.mark.parametrize("problem", ["not a folder", "read-only", "full"])
def test_a_cache_that_cannot_be_written_is_one_line_naming_the_path(
    problem: str, mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    record = weights.get_weights("efficientvit_m0")
    mirror.route(record.url, body(checkpoint(900 << 10)))
    home = tmp_path / "home"
    limit = None
    if problem == "not a folder":
        home.write_text("a file where the cache folder should be")
    elif problem == "read-only":
        home.mkdir()
        home.chmod(0o555)
        if os.access(home, os.W_OK):  # root writes anywhere: the file system's answer is simulated
            denied = OSError(errno.EROFS, os.strerror(errno.EROFS), str(home))
            monkeypatch.setattr(download.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(denied))
    else:  # a full disk, as a file size limit: writes fail part-way with EFBIG, as with ENOSPC
        resource = pytest.importorskip("resource")
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, limit[1]))
    try:
        line = download_error(capsys, "efficientvit_m0")
    finally:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        if home.is_dir():
            home.chmod(0o755)
    reason = {"not a folder": "Not a directory", "read-only": "", "full": "File too large"}[problem]
    assert f"cannot write the litevit cache at {home}" in line and reason in line
    assert "set LITEVIT_HOME to a writable folder" in line
    assert not home.is_dir() or cached_files() == []
    assert not [p for p in tmp_path.rglob("*.part")]


def test_a_reason_phrase_with_escape_sequences_is_printed_escaped(
    mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = "\x1b[2J\x1b[1;31mgone\x07\x9bevil"  # http.server sends it as latin-1
    record = weights.get_weights("levit_128s")
    mirror.route(record.url, status(410, reason))
    for argv in (["download", "levit_128s", "--no-progress"], ["predict", "levit_128s", "--pretrained", "x.png"]):
        line = cli_error(capsys, *argv)
        assert line.startswith(f"litevit {argv[0]}: error: cannot download levit_128s.fb_dist_in1k")
        assert "HTTP Error 410: \\x1b[2J\\x1b[1;31mgone\\x07\\x9bevil" in line
        assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in line)
    assert cached_files() == []


def test_the_start_of_a_wrong_body_is_printed_escaped(mirror: Mirror, capsys: pytest.CaptureFixture[str]) -> None:
    mirror.route(weights.get_weights("t2t_vit_7").url, body(b"\x1b]0;owned\x07\x1b[31m" + bytes(100)))
    line = download_error(capsys, "t2t_vit_7")
    assert "not a recognised format, starting '\\x1b]0;owned\\x07\\x1b[31m\\x00" in line
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in line)


def test_predict_that_downloads_fails_in_one_line(mirror: Mirror, capsys: pytest.CaptureFixture[str]) -> None:
    mirror.route(weights.get_weights("mobilevit_xxs").url, body(HTML, "text/html"))
    line = cli_error(capsys, "predict", "mobilevit_xxs.cvnets_in1k", "x.png")
    assert line.startswith("litevit predict: error: the download from ") and "is an HTML page" in line
    assert cached_files() == []


def test_printable_escapes_exactly_the_characters_that_control_a_terminal() -> None:
    escaped = {"Cc", "Cf", "Cs", "Zl", "Zp"}
    for code in range(0x110000):
        c = chr(code)
        out = printable(c)
        if unicodedata.category(c) in escaped:
            # a Python escape of the character: ASCII, printable, and it reads back as the character
            assert out.isascii() and out.isprintable() and out.startswith("\\")
            assert out.encode().decode("unicode_escape") == c
        else:
            assert out == c
    assert printable("ok \\x1b é 中") == "ok \\x1b é 中"
    assert printable("\x1b[31m\r\n\t\x7f\x9b\u2028\ufeff") == "\\x1b[31m\\r\\n\\t\\x7f\\x9b\\u2028\\ufeff"
