"""Published weights through a loopback mirror: download, cache, hash checks, truncation, archives, offline errors.

Release files are written from the reference fixtures in each family's official release form, with the training
extras the official scripts save (optimizer state, ``args`` as an ``argparse.Namespace``, EMA weights, ...).
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import io
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from reference import assert_logits_match, load_fixture, recipe_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))  # the family tests' release builders
import test_efficientvit_msra  # noqa: E402
import test_levit  # noqa: E402
import test_t2t_vit  # noqa: E402

import litevit
from litevit import cli
from litevit.weights import hub
from litevit.weights import records as weights
from litevit.weights.reading import CheckpointError


class Mirror:
    """A loopback HTTP server over in-memory files, laid out as ``/<host>/<path>`` (the LITEVIT_MIRROR layout)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.truncate: set[str] = set()  # paths served with a Content-Length larger than the body
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                mirror.requests.append(self.path)
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in mirror.truncate else body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def put(self, url: str, body: bytes) -> str:
        parts = urlsplit(url)
        path = f"/{parts.netloc}{parts.path}"
        self.files[path] = body
        return path


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    server = Mirror()
    monkeypatch.setenv("LITEVIT_MIRROR", server.base)
    monkeypatch.setenv("LITEVIT_HOME", str(tmp_path / "home"))
    yield server
    server.server.shutdown()
    server.server.server_close()


def _bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _args() -> argparse.Namespace:
    return argparse.Namespace(model="x", lr=5e-4, epochs=300, input_size=224, data_path="/data", dist_eval=True)


def _deit(state: dict[str, torch.Tensor]) -> bytes:
    """DeiT/LeViT/EfficientViT ``main.py``: model, model_ema, optimizer, lr_scheduler, epoch, scaler, args."""
    noisy = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}  # EMA differs: must not be taken
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-3}]}
    return _bytes(
        {
            "model": state,
            "model_ema": noisy,
            "optimizer": optimizer,
            "lr_scheduler": {"last_epoch": 299, "base_lrs": [5e-4]},
            "epoch": 299,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0},
            "args": _args(),
        }
    )


def _timm_saver(state: dict[str, torch.Tensor]) -> bytes:
    """timm's CheckpointSaver (T2T-ViT's releases): state_dict, state_dict_ema, optimizer, args, metric."""
    noisy = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}  # T2T-ViT evaluates the EMA
    return _bytes(
        {
            "epoch": 309,
            "arch": "t2t_vit_7",
            "state_dict": {f"module.{k}": v for k, v in noisy.items()},
            "state_dict_ema": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]},
            "version": 2,
            "args": _args(),
            "metric": 71.68,
        }
    )


def _zip(member: str, body: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(member.rsplit("/", 1)[0] + "/config.yaml", "model: {}\n")
        z.writestr(member, body)
    return buffer.getvalue()


def _release(name: str) -> tuple[dict, bytes]:
    """The fixture of ``name``'s default weights and its release file, in the official release form."""
    record = weights.get_weights(name)
    if name == "levit_128s":
        spec = load_fixture("official/LeViT_128S.json")
        return spec, _deit(recipe_state_dict(spec, test_levit._non_generated))
    if name == "efficientvit_m0":
        spec = load_fixture("official/EfficientViT_M0.json")
        return spec, _deit(recipe_state_dict(spec, test_efficientvit_msra._non_generated))
    if name == "mobilevit_xxs":
        spec = load_fixture("official/mobilevit_xx_small.json")
        return spec, _bytes(recipe_state_dict(spec))  # ml-cvnets: a plain state dict
    if name == "mobilevitv3_xxs":
        spec = load_fixture("official/mobilevit_v3_xx_small_v3.json")
        return spec, _zip(record.archive_member, _bytes(recipe_state_dict(spec)))
    if name == "t2t_vit_7":
        spec = load_fixture("official/t2t_vit_7.json")
        return spec, _timm_saver(test_t2t_vit.official_state(spec, with_pos_embed=True))
    raise AssertionError(name)


def _serve(mirror: Mirror, monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[dict, weights.Weights, str]:
    """Put the release file on the mirror; a hashed record gets the hash of the file served (its real one cannot
    match a file made from the fixture)."""
    spec, body = _release(name)
    record = weights.get_weights(name)
    if record.hash is not None:
        digest = hashlib.sha256(body).hexdigest()
        record = dataclasses.replace(record, hash=digest[: len(record.hash)])
        monkeypatch.setitem(weights._WEIGHTS, record.name, record)
    return spec, record, mirror.put(record.url, body)


@pytest.mark.parametrize("name", ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv3_xxs", "t2t_vit_7"])
def test_pretrained_downloads_verifies_caches_and_reproduces(
    name: str, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, record, path = _serve(mirror, monkeypatch, name)
    model = litevit.create_model(name, pretrained=True)
    assert mirror.requests == [path]
    assert_logits_match(model, spec)
    info = model.model_info
    assert info.weights == record.name and info.num_classes == 1000 and len(info.class_names) == 1000
    assert info.data == record.data
    assert info.verification == ("sha256-prefix" if name == "levit_128s" else "first-use")  # LeViT: 8 hex digits
    with pytest.warns(DeprecationWarning, match="verification"):
        assert info.weights_verified is (name == "levit_128s")  # the deprecated reading of the same fact
    # the second call reads the cache: no request
    again = litevit.create_model(f"{name}.{record.tag}")
    assert mirror.requests == [path]
    assert_logits_match(again, spec)
    assert hub.cached_path(record.url).is_file()
    assert not [p for p in hub.cache_dir().rglob("*.part")]


def test_wrong_file_under_a_hashed_name_is_refused_and_not_kept(mirror: Mirror) -> None:
    spec, body = _release("levit_128s")  # made from the fixture: cannot have the published file's hash
    record = weights.get_weights("levit_128s")
    mirror.put(record.url, body)
    actual = hashlib.sha256(body).hexdigest()
    with pytest.raises(litevit.DownloadError) as info:
        litevit.create_model("levit_128s", pretrained=True)
    message = str(info.value)
    assert record.file_name in message and actual in message and f"expected {record.hash}..." in message
    assert not hub.cached_path(record.url).exists()
    assert all(p.is_dir() for p in (hub.cache_dir() / "checkpoints").rglob("*"))


def test_truncated_download_is_refused_and_retried(mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, record, path = _serve(mirror, monkeypatch, "mobilevit_xxs")
    mirror.truncate.add(path)
    with pytest.raises(litevit.DownloadError, match=r"truncated: \d+ of \d+ bytes"):
        litevit.create_model("mobilevit_xxs", pretrained=True)
    assert not hub.cached_path(record.url).exists()
    assert all(p.is_dir() for p in (hub.cache_dir() / "checkpoints").rglob("*"))
    mirror.truncate.clear()
    assert_logits_match(litevit.create_model("mobilevit_xxs", pretrained=True), spec)
    assert mirror.requests == [path, path]


def test_offline_error_names_the_url_and_where_to_put_the_file(mirror: Mirror, monkeypatch) -> None:
    record = weights.get_weights("efficientvit_m0")  # nothing served: 404
    with pytest.raises(litevit.DownloadError) as info:
        litevit.create_model("efficientvit_m0", pretrained=True)
    assert record.url in str(info.value) and str(hub.cached_path(record.url)) in str(info.value)
    monkeypatch.setenv("LITEVIT_MIRROR", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(litevit.DownloadError, match="place it at"):
        litevit.create_model("efficientvit_m0", pretrained=True)


def test_a_file_placed_by_hand_is_used(mirror: Mirror, monkeypatch) -> None:
    spec, body = _release("t2t_vit_7")
    record = weights.get_weights("t2t_vit_7")
    target = hub.cached_path(record.url)
    target.parent.mkdir(parents=True)
    target.write_bytes(body)
    assert_logits_match(litevit.create_model("t2t_vit_7", pretrained=True), spec)
    assert mirror.requests == []


def test_cli_download_and_its_errors(mirror: Mirror, monkeypatch, capsys) -> None:
    spec, record, path = _serve(mirror, monkeypatch, "mobilevit_xxs")
    assert cli.main(["download", "mobilevit_xxs", "--no-progress"]) == 0
    assert str(hub.cached_path(record.url)) in capsys.readouterr().out
    assert cli.main(["download", "efficientvit_m0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("litevit download: error: cannot download efficientvit_m0.r224_in1k")
    assert "\n" not in err and "Traceback" not in err
    assert cli.main(["download", "levit_128s.nope"]) == 2
    assert "no weights 'nope' for levit_128s; published: fb_dist_in1k" in capsys.readouterr().err


def test_mirror_url_mapping(monkeypatch) -> None:
    monkeypatch.setenv("LITEVIT_MIRROR", "http://127.0.0.1:8000/base/")
    url = "https://dl.fbaipublicfiles.com/LeViT/LeViT-256-13b5763e.pth"
    assert hub.fetch_url(url) == "http://127.0.0.1:8000/base/dl.fbaipublicfiles.com/LeViT/LeViT-256-13b5763e.pth"
    monkeypatch.delenv("LITEVIT_MIRROR")
    assert hub.fetch_url(url) == url


def test_archive_without_the_member_is_a_clear_error(mirror: Mirror) -> None:
    record = weights.get_weights("mobilevitv3_xs")
    mirror.put(record.url, _zip("other/readme.txt", b"no checkpoint here"))
    with pytest.raises(CheckpointError, match=r"holds no checkpoint_ema_best\.pt"):
        litevit.create_model("mobilevitv3_xs", pretrained=True)


def test_pretrained_weights_load_into_a_features_model(mirror: Mirror, monkeypatch) -> None:
    _serve(mirror, monkeypatch, "efficientvit_m0")
    classifier = litevit.create_model("efficientvit_m0", pretrained=True)
    features = litevit.create_model("efficientvit_m0", pretrained=True, features_only=True, out_indices=(1, 2))
    head = tuple(classifier.head_prefixes)
    expected = {k: v for k, v in classifier.state_dict().items() if not k.startswith(head)}
    got = features.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    maps = features.eval()(torch.randn(1, 3, 224, 224))
    assert [m.shape[1] for m in maps] == features.feature_info.channels()
