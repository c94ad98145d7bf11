"""Bulk prediction: sources, results files checked against predict's own top-k, bad images, resume, one-line errors."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import NAME, _calibrated_state, _picture

import litevit
from litevit import bulk
from litevit.bulk import files as bulk_files
from litevit.bulk import local
from litevit.cli import main
from litevit.data import eval_transform
from litevit.predict import check_sources, columns, iter_sources, load_classifier, predict


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint and a folder of 14 pictures (JPEG and PNG, nested, a link loop) with 3 bad files."""
    root = tmp_path_factory.mktemp("bulk")
    model = litevit.create_model(NAME)
    torch.save(_calibrated_state(model), root / "weights.pth")
    images = root / "images"
    (images / "b" / "c").mkdir(parents=True)
    for i in range(14):
        folder = images / ("b/c" if i % 5 == 0 else "b" if i % 3 == 0 else "")
        _picture(200 + i, (160 + 10 * (i % 4), 230)).save(folder / f"{i:02d}.{'png' if i % 4 == 0 else 'jpg'}")
    (images / "b" / "up").symlink_to("..")  # a loop: must not be walked again
    (images / "zero.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes((images / "01.jpg").read_bytes()[:400])
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (images / "notes.txt").write_text("not an image, not listed")
    return {"root": root, "ckpt": root / "weights.pth", "images": images}


def _all_images(images: Path) -> list[str]:
    """Every image file under ``images`` walked independently (no links), sorted as the walk orders them."""
    found = []
    for folder, subfolders, files in os.walk(images):
        subfolders[:] = sorted(s for s in subfolders if not os.path.islink(os.path.join(folder, s)))
        found += [os.path.join(folder, f) for f in sorted(files) if not f.endswith(".txt")]
    return found


def test_every_source_kind(collection: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    images = collection["images"]
    walked = _all_images(images)
    assert len(walked) == 17 and len(set(walked)) == 17
    assert list(iter_sources([str(images)])) == walked  # the link loop b/up -> .. is not followed
    one = str(images / "03.jpg")
    assert list(iter_sources([one])) == [one]
    pngs = list(iter_sources([f"{images}/**/*.png"]))
    assert sorted(pngs) == sorted(p for p in walked if p.endswith(".png")) and len(set(pngs)) == len(pngs)
    assert list(iter_sources([f"{images}/*/c/0?.*"])) == [str(images / "b/c/00.png"), str(images / "b/c/05.jpg")]
    assert sorted(iter_sources([f"{images}/**"])) == sorted([*walked, str(images / "notes.txt")])  # all files
    assert list(iter_sources([f"{images}/b/[c]"])) == []  # folders are not matches
    listing = collection["root"] / "list.txt"
    listing.write_text(f"{walked[2]}\n\n{walked[0]}\n")
    assert list(iter_sources([f"@{listing}"])) == [walked[2], walked[0]]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{walked[5]}\n{walked[1]}\r\n"))
    assert list(iter_sources(["-", one])) == [walked[5], walked[1], one]


@pytest.mark.parametrize(
    "source, message",
    [("nowhere/x.jpg", "image source not found"), ("nowhere/*.jpg", "matches no file"), ("@no.txt", "not found")],
)
def test_sources_that_name_nothing_fail_in_one_line(source: str, message: str) -> None:
    with pytest.raises(FileNotFoundError, match=message):
        check_sources([source])


def _read(out: Path) -> list[dict]:
    """The rows of a results file, as Python values (CSV cells parsed back)."""
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(out).to_pylist()
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text().splitlines()]
    rows = []
    with open(out, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                if value == "":
                    parsed[key] = None
                elif key.endswith("_index"):
                    parsed[key] = int(value)
                elif key.endswith("_prob"):
                    parsed[key] = float(value)
                elif key == "embedding":
                    parsed[key] = [float(v) for v in value.split()]
                else:
                    parsed[key] = value
            rows.append(parsed)
    return rows


def _check_rows(rows: list[dict], expected_paths: list[str], model: torch.nn.Module, topk: int) -> None:
    """Each path once, in order; rows equal predict's own top-k; the three bad files are error rows."""
    assert [r["path"] for r in rows] == expected_paths
    reference = predict(model, expected_paths, topk=topk, batch_size=3)
    for row, ref in zip(rows, reference, strict=True):
        assert (row["error"] is None) == (ref.error is None), row["path"]
        if ref.error is not None:
            assert row["error"] == ref.error and row["top1_index"] is None
            continue
        assert [row[f"top{r}_index"] for r in range(1, topk + 1)] == [c for c, _, _ in ref.topk]
        assert [row[f"top{r}_name"] for r in range(1, topk + 1)] == [n for _, n, _ in ref.topk]
        np.testing.assert_allclose([row[f"top{r}_prob"] for r in range(1, topk + 1)], [p for *_, p in ref.topk],
                                   atol=1e-5)  # fmt: skip
    bad = {r["path"].rsplit("/", 1)[-1] for r in rows if r["error"] is not None}
    assert bad == {"zero.jpg", "truncated.jpg", "corrupt.png"}
    top1 = {r["top1_index"] for r in rows if r["error"] is None}
    assert len(top1) > 1, "every image got the same class: the weights do not see the image"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_results_rows_equal_predicts_topk(collection: dict[str, Path], tmp_path: Path, suffix: str) -> None:
    model = load_classifier(NAME, collection["ckpt"])
    out = tmp_path / f"results{suffix}"
    summary = bulk.predict_files(model, [collection["images"]], out, topk=3, batch_size=4, workers=1, part_rows=5,
                                 progress=False)  # fmt: skip
    assert (summary.rows, summary.errors, summary.resumed) == (17, 3, 0)
    _check_rows(_read(out), _all_images(collection["images"]), model, 3)
    assert not (tmp_path / f"results{suffix}.parts").exists()
    meta = bulk.read_meta(out)
    assert meta["model"] == NAME and meta["route"] == "eager (PyTorch)" and meta["topk"] == 3
    assert meta["weights"] == str(collection["ckpt"]) and meta["litevit_version"] == litevit.__version__
    assert meta["weights_sha256"] == bulk.describe(model, 3, False)["weights_sha256"]
    assert (suffix == ".parquet") != bulk.sidecar(out).exists()


def test_embeddings_are_the_pre_logits_features(collection: dict[str, Path], tmp_path: Path) -> None:
    model = load_classifier(NAME, collection["ckpt"])
    good = [str(collection["images"] / f"{i:02d}.jpg") for i in (1, 2, 7)]
    out = tmp_path / "emb.csv"
    bulk.predict_files(model, good, out, topk=2, embeddings=True, workers=0, progress=False)
    transform = eval_transform(litevit.get_variant(NAME).data)
    from PIL import Image

    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in good])
    with torch.no_grad():
        pooled = model.forward_features(x).mean(1)  # LeViT's pre-logits: mean over tokens
    rows = _read(out)
    assert len(rows[0]["embedding"]) == pooled.shape[1] == 384
    np.testing.assert_allclose([r["embedding"] for r in rows], pooled.numpy(), atol=1e-4)


def test_one_line_errors(collection: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, images = ["--checkpoint", str(collection["ckpt"])], str(collection["images"])
    cases = [
        ([images, "--out", str(tmp_path / "r.txt")], "expected a .csv, .jsonl or .parquet suffix"),
        ([str(tmp_path / "none"), "--out", str(tmp_path / "r.csv")], "image source not found"),
        ([images, "--embeddings"], "need --out"),
        ([images, "--gpus-per-worker", "1"], "--gpus-per-worker need --out"),
    ]
    for args, message in cases:
        assert main(["predict", NAME, *ckpt, "--quiet", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # --resume against a file written by another model
    first = tmp_path / "first.jsonl"
    assert main(["predict", NAME, *ckpt, str(collection["images"] / "01.jpg"), "--out", str(first), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["predict", "levit_128s", "--quiet", images, "--out", str(first), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was written by levit_128s" in err and "write a new --out" in err and err.count("\n") == 1, err
    assert main(["predict", NAME, *ckpt, "--quiet", images, "--out", str(first)]) == 2  # exists, no --resume
    assert "exists" in capsys.readouterr().err


def test_ray_engine_without_the_extra(collection: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when it is not installed
    args = ["predict", NAME, "--checkpoint", str(collection["ckpt"]), str(collection["images"]), "--quiet"]
    assert main([*args, "--engine", "ray", "--out", str(tmp_path / "r.parquet")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'litevit[ray]'" in err and err.count("\n") == 1, err


def test_full_disk_keeps_the_finished_parts(collection: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    model = load_classifier(NAME, collection["ckpt"])
    out = tmp_path / "r.parquet"
    real, calls = bulk_files.atomic_write, []

    def fills_up(path: Path, write) -> None:
        calls.append(path)
        if len(calls) == 4:  # run.json, two parts, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, write)

    monkeypatch.setattr(bulk_files, "atomic_write", fills_up)
    with pytest.raises(bulk.ResultsError, match="No space left on device; the 2 finished part") as caught:
        bulk.predict_files(model, [collection["images"]], out, batch_size=4, part_rows=4, workers=0, progress=False)
    assert "\n" not in str(caught.value)
    parts = sorted((tmp_path / "r.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 2 and all(len(_read(p)) == 4 for p in parts)  # readable, whole
    assert not list((tmp_path / "r.parquet.parts").glob(".*tmp"))
    monkeypatch.setattr(bulk_files, "atomic_write", real)
    other = litevit.create_model(NAME)  # other weights: the interrupted run's parts are not its rows
    with pytest.raises(bulk.ResultsError, match=r"^--resume: .*r.parquet.parts was written by .*write a new --out$"):
        bulk.predict_files(other, [collection["images"]], out, batch_size=4, part_rows=4, workers=0, progress=False,
                           resume=True)  # fmt: skip
    summary = bulk.predict_files(model, [collection["images"]], out, batch_size=4, part_rows=4, workers=0,
                                 progress=False, resume=True)  # fmt: skip
    assert (summary.rows, summary.resumed, summary.errors) == (17, 8, 3)
    _check_rows(_read(out), _all_images(collection["images"]), model, 5)


def _decode_or_die(chunk: list[str], *args: object) -> object:
    if any(path.endswith("11.jpg") for path in chunk):
        os._exit(3)  # the decoding process dies, as when the kernel kills it for memory
    from litevit.predict import decode

    return decode(chunk, *args)


def test_a_dead_decoding_worker_ends_in_one_line(collection: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    model = load_classifier(NAME, collection["ckpt"])
    monkeypatch.setattr(local, "decode", _decode_or_die)
    with pytest.raises(bulk.ResultsError, match="decoding worker process ended unexpectedly") as caught:
        bulk.predict_files(model, [collection["images"]], tmp_path / "r.csv", batch_size=2, part_rows=2, workers=1,
                           progress=False)  # fmt: skip
    assert "\n" not in str(caught.value)
    first = tmp_path / "r.csv.parts" / "part-00000000.csv"  # the batch before the death, written whole
    assert [r["path"] for r in _read(first)] == _all_images(collection["images"])[:2]


def test_resume_checks_the_sources_did_not_change(collection: dict[str, Path], tmp_path: Path) -> None:
    model = load_classifier(NAME, collection["ckpt"])
    out = tmp_path / "r.csv"
    parts = tmp_path / "r.csv.parts"
    everything = _all_images(collection["images"])
    bulk.predict_files(model, everything[:6], out, batch_size=3, part_rows=3, workers=0, progress=False)
    done = _read(out)
    out.unlink()  # as if killed after the two parts: rebuild the parts folder from the finished file's rows
    parts.mkdir()
    (parts / bulk_files.RUN_FILE).write_text(json.dumps(bulk.describe(model, 5, False)))
    with open(parts / "part-00000000.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns(5, False))
        writer.writerows([bulk_files.csv_cell(row[c]) for c in columns(5, False)] for row in done[:3])
    with pytest.raises(bulk.ResultsError, match="sources no longer give the paths"):
        bulk.predict_files(model, everything[1:], out, batch_size=3, part_rows=3, workers=0, progress=False,
                           resume=True)  # fmt: skip
    summary = bulk.predict_files(model, everything[:6], out, batch_size=3, part_rows=3, workers=0, progress=False,
                                 resume=True)  # fmt: skip
    assert (summary.rows, summary.resumed) == (6, 3)
    assert _read(out) == done
    parts.mkdir()  # as if killed after the join, before the parts were removed
    again = bulk.predict_files(model, everything[:6], out, workers=0, progress=False, resume=True)  # complete
    assert (again.rows, again.resumed) == (6, 6) and not parts.exists() and _read(out) == done
    out.unlink()
    parts.mkdir()  # as if killed before run.json was written: nothing to resume, a fresh run
    fresh = bulk.predict_files(model, everything[:6], out, batch_size=3, workers=0, progress=False)
    assert (fresh.rows, fresh.resumed) == (6, 0) and _read(out) == done


def _children(pid: int) -> list[str]:
    """The processes whose parent is ``pid`` (from /proc: each process's stat names its parent)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(entry.name)
    return found


def _running(pid: str) -> bool:
    """Whether a process exists and has not ended (a zombie waiting for its parent to reap it has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_killed_run_resumes_with_every_image_once(collection: dict[str, Path], tmp_path: Path) -> None:
    images = tmp_path / "many"
    images.mkdir()
    for i in range(48):
        _picture(400 + i, (150, 200)).save(images / f"{i:03d}.jpg", quality=90)
    (images / "bad.jpg").write_bytes(b"\xff\xd8\xff")
    command = [sys.executable, "-m", "litevit", "predict", NAME, "--checkpoint", str(collection["ckpt"]),
               str(images), "--batch-size", "4", "--part-rows", "4", "--workers", "1", "--quiet", "--out"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(litevit.__file__).parents[1]), *sys.path])}
    whole = tmp_path / "whole.jsonl"
    subprocess.run([*command, str(whole)], check=True, env=env, capture_output=True)
    out = tmp_path / "killed.jsonl"
    run = subprocess.Popen([*command, str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.jsonl.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*"))) < 3 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _children(run.pid)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(workers) == 1  # --workers 1: the decoding process, which must not outlive the run
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, workers)), "a decoding worker outlived the killed run"
    assert not out.exists()
    finished = len(list(parts.glob("part-*")))
    assert 3 <= finished < 13
    resumed = subprocess.run([*command, str(out), "--resume"], env=env, capture_output=True, text=True, check=True)
    assert f"{finished * 4} from the interrupted run" in resumed.stdout
    rows, reference = _read(out), _read(whole)
    assert len(rows) == 49 and len({r["path"] for r in rows}) == 49
    assert [r["path"] for r in rows] == [r["path"] for r in reference]
    for row, ref in zip(rows, reference, strict=True):
        assert {k: v for k, v in row.items() if not k.endswith("_prob")} == {
            k: v for k, v in ref.items() if not k.endswith("_prob")
        }
        np.testing.assert_allclose([row[f"top{r}_prob"] or 0 for r in range(1, 6)],
                                   [ref[f"top{r}_prob"] or 0 for r in range(1, 6)], rtol=1e-6)  # fmt: skip


def test_torchvision_decoder_reads_jpegs_as_pil_does(tmp_path: Path) -> None:
    from PIL import Image

    from litevit.data import ImageLoadError, load_image, load_image_decoder

    picture = _picture(7, (120, 160))
    picture.save(tmp_path / "rgb.jpg", quality=90)
    picture.convert("L").save(tmp_path / "grey.jpg")
    picture.convert("CMYK").save(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # to be turned 90 degrees clockwise
    picture.save(tmp_path / "rotated.jpg", exif=exif)
    for name in ("rgb", "grey", "cmyk", "rotated"):
        path = tmp_path / f"{name}.jpg"
        tensor = load_image_decoder(path, "torchvision")
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8, name
        np.testing.assert_array_equal(tensor.permute(1, 2, 0).numpy(), np.asarray(load_image(path)), err_msg=name)
    assert tensor.shape[1:] == (160, 120)  # rotated: width and height swapped
    picture.save(tmp_path / "image.png")
    assert isinstance(load_image_decoder(tmp_path / "image.png", "torchvision"), Image.Image)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "rgb.jpg").read_bytes()[:900])
    with pytest.raises(ImageLoadError, match=r"cut.jpg: cannot decode image .*truncated"):
        load_image_decoder(tmp_path / "cut.jpg", "torchvision")
    with pytest.raises(ValueError, match="unknown decoder 'x'"):
        load_image_decoder(tmp_path / "rgb.jpg", "x")


def test_torchvision_decoder_rows_within_evals_tolerance(collection: dict[str, Path], tmp_path: Path) -> None:
    model = load_classifier(NAME, collection["ckpt"])
    kw = {"topk": 3, "workers": 0, "progress": False}
    by_pil = _read(Path(bulk.predict_files(model, [collection["images"]], tmp_path / "pil.jsonl", **kw).out))
    fast = bulk.predict_files(model, [collection["images"]], tmp_path / "tv.jsonl", decoder="torchvision", **kw)
    by_torchvision = _read(Path(fast.out))
    assert bulk.read_meta(fast.out)["decoder"] == "torchvision" and fast.errors == 3
    transform = eval_transform(litevit.get_variant(NAME).data)
    from litevit.data import load_image, load_image_decoder

    for pil_row, tv_row in zip(by_pil, by_torchvision, strict=True):
        assert pil_row["path"] == tv_row["path"] and (pil_row["error"] is None) == (tv_row["error"] is None)
        if pil_row["error"] is None:
            path = pil_row["path"]
            difference = transform(load_image_decoder(path, "torchvision")) - transform(load_image(path))
            if path.endswith(".jpg"):  # torch's resizing: close to PIL's, within what test_data accepts for tensors
                assert 0 < difference.abs().mean() < 0.05, path
            else:  # other formats go through PIL
                assert difference.abs().max() == 0, path
            assert tv_row["top1_index"] == pil_row["top1_index"], path
            assert abs(tv_row["top1_prob"] - pil_row["top1_prob"]) < 0.01, path


def test_subcommand_help_says_what_each_does_now(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "unfused vs fused" not in text and "ONNX, TorchScript or torch.export (pt2)" not in text
    for said in ("ONNX Runtime, OpenVINO, ExecuTorch", "ONNX, OpenVINO IR, ExecuTorch .pte, Core ML", "--fastest",
                 "CSV/JSONL/Parquet results file", "on Ray"):  # fmt: skip
        assert said in text, said
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "@list.txt" in text and ".xml" in text and "--resume" in text and "--decoder" in text


def test_model_rows_keep_the_order_and_run_the_model_in_its_own_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model thread runs one batch ahead of this one: rows come back in the order of the batches whatever each
    batch takes, every batch reaches the model normalised, and an error in the model thread ends the run as itself."""
    import threading

    seen: list[tuple[str, float]] = []

    def fake_rows(model, chunk, x, errors, names, topk, embeddings):  # noqa: ANN001, ANN202
        seen.append((threading.current_thread().name, float(x.mean())))
        time.sleep(0.02 * (3 - len(seen)) if len(seen) < 3 else 0)  # the first batches slowest
        if chunk == ["boom"]:
            raise RuntimeError("model failed")
        return [{"path": p} for p in chunk]

    monkeypatch.setattr(local, "batch_rows", fake_rows)
    data = litevit.get_variant(NAME).data
    batches = [([f"{i}.jpg", f"{i}b.jpg"], np.full((2, 3, 4, 4), i, np.uint8), [None, None]) for i in range(5)]
    out = list(local.model_rows(None, iter(batches), data, [], 1, False))
    assert [rows for _, _, rows in out] == [[{"path": f"{i}.jpg"}, {"path": f"{i}b.jpg"}] for i in range(5)]
    assert all(name.startswith("litevit-model") for name, _ in seen)
    expected = [float(local.normalized(images, data).mean()) for _, images, _ in batches]
    assert [mean for _, mean in seen] == expected
    with pytest.raises(RuntimeError, match="model failed"):
        list(local.model_rows(None, iter([(["boom"], batches[0][1][:1], [None])]), data, [], 1, False))
