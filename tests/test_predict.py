"""predict and eval on real image files, through PyTorch and through an exported ONNX file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reference import recipe_value
from torch import nn

import litevit
from litevit.cli import main
from litevit.data import eval_transform, imagenet_classes
from litevit.deploy.exporting import export
from litevit.predict import evaluate, load_classifier, predict

NAME = "levit_128s"


def _live_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The reference fixtures' weight recipe applied to the model's own keys (every branch live)."""
    return {
        k: torch.from_numpy(recipe_value(k, list(v.shape))) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }


def _calibrated_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Recipe weights, with the classifiers' BatchNorm statistics measured on pictures as training would set them.

    Recipe weights give pooled features that barely depend on the image; normalising them by their statistics
    over a few pictures makes the class ranking image-dependent, so that preprocessing mistakes show.
    """
    model.load_state_dict(_live_state(model))
    transform = eval_transform(litevit.get_variant(NAME).data)
    with torch.no_grad():
        pooled = model.eval().forward_features(torch.stack([transform(_picture(50 + i)) for i in range(8)])).mean(1)
    state = model.state_dict()
    for head in ("head", "head_dist"):
        state[f"{head}.bn.running_mean"] = pooled.mean(0)
        state[f"{head}.bn.running_var"] = pooled.var(0)
    return state


def _picture(seed: int, size: tuple[int, int] = (180, 240)) -> Image.Image:
    rs = np.random.RandomState(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    freq = rs.uniform(5, 40, size=3)
    planes = [128 + 110 * np.sin(xx / freq[c] + rs.uniform(0, 6)) * np.cos(yy / freq[c]) for c in range(3)]
    array = np.stack(planes, axis=-1) + rs.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint, its ONNX export, PNG and JPEG images, and files that are not images."""
    root = tmp_path_factory.mktemp("predict")
    model = litevit.create_model(NAME)
    torch.save(_calibrated_state(model), root / "weights.pth")
    export(litevit.create_model(NAME, checkpoint=root / "weights.pth"), root / "model.onnx")
    paths = {"ckpt": root / "weights.pth", "onnx": root / "model.onnx"}
    for i in range(3):
        paths[f"png{i}"] = root / f"image{i}.png"
        _picture(i).save(paths[f"png{i}"])
        paths[f"jpg{i}"] = root / f"photo{i}.jpg"
        _picture(10 + i, (300, 220)).save(paths[f"jpg{i}"], quality=92)
    paths["corrupt"] = root / "corrupt.jpg"
    paths["corrupt"].write_bytes(paths["jpg0"].read_bytes()[:200])
    paths["text"] = root / "readme.png"
    paths["text"].write_text("this is not a PNG")
    paths["missing"] = root / "does_not_exist.jpg"
    return paths


def _images(files: dict[str, Path]) -> list[Path]:
    return [files[k] for k in ("png0", "jpg0", "png1", "jpg1", "png2", "jpg2")]


def test_pytorch_and_onnx_agree_on_real_images(files: dict[str, Path]) -> None:
    images = _images(files)
    torch_model = load_classifier(NAME, files["ckpt"])
    onnx_model = load_classifier(str(files["onnx"]))
    by_torch = predict(torch_model, images, topk=5, batch_size=4)  # batches of 4 and 2
    by_onnx = predict(onnx_model, images, topk=5, batch_size=4)
    assert [p.path for p in by_torch] == [str(p) for p in images]
    top1 = [p.topk[0][0] for p in by_torch]
    assert [p.topk[0][0] for p in by_onnx] == top1
    assert len(set(top1)) > 1, "every image got the same class: the weights do not see the image"
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert a.error is None and len(a.topk) == 5
        np.testing.assert_allclose([p for *_, p in a.topk], [p for *_, p in b.topk], atol=1e-5)

    # independent recomputation: the DataConfig recipe by hand, then softmax of the unfused model
    model = litevit.create_model(NAME, checkpoint=files["ckpt"]).eval()
    for prediction, path in zip(by_torch, images, strict=True):
        image = Image.open(path).convert("RGB")
        w, h = image.size
        short = int(224 / 0.875)
        image = image.resize((short, int(h * short / w)) if w <= h else (int(w * short / h), short), Image.BICUBIC)
        left, top = round((image.size[0] - 224) / 2), round((image.size[1] - 224) / 2)
        pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
        x = torch.from_numpy((pixels - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
        with torch.no_grad():
            probs = model(x.permute(2, 0, 1)[None].float()).softmax(-1)[0]  # H, W, C -> 1, C, H, W
        values, indices = probs.topk(5)
        assert [c for c, *_ in prediction.topk] == indices.tolist()
        np.testing.assert_allclose([p for *_, p in prediction.topk], values.numpy(), atol=1e-4)
        # a bare state dict names no classes: 1000 rows alone do not make them ImageNet's
        assert [n for _, n, _ in prediction.topk] == [f"class_{i}" for i in indices.tolist()]


def test_bad_files_are_reported_and_the_rest_predicted(files: dict[str, Path]) -> None:
    model = load_classifier(str(files["onnx"]))
    order = [files["png0"], files["corrupt"], files["missing"], files["jpg1"], files["text"], files["png2"]]
    results = predict(model, order, topk=3)
    assert [r.path for r in results] == [str(p) for p in order]
    for r, bad in zip(results, [False, True, True, False, True, False], strict=True):
        if bad:
            assert r.error is not None and r.path in r.error and not r.topk
        else:
            assert r.error is None and len(r.topk) == 3
    good = predict(model, [files["png0"], files["jpg1"], files["png2"]], topk=3)
    assert [r.topk for r in results if r.error is None] == [r.topk for r in good]


def test_cli_predict(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(files["png1"]), str(files["corrupt"]), str(files["missing"]), str(files["jpg2"])]
    code = main(["predict", NAME, "--checkpoint", str(files["ckpt"]), "--topk", "2", *args])
    out, err = capsys.readouterr()
    assert code == 1  # some files failed
    assert str(files["png1"]) in out and str(files["jpg2"]) in out
    assert str(files["corrupt"]) in err and str(files["missing"]) in err
    top = predict(load_classifier(NAME, files["ckpt"]), [files["png1"]], topk=2)[0].topk
    assert f"{top[0][1]} ({top[0][0]})" in out
    assert main(["predict", str(files["onnx"]), str(files["jpg0"])]) == 0
    assert main(["predict", str(files["onnx"]), "--checkpoint", str(files["ckpt"]), str(files["jpg0"])]) == 2


def test_class_names_follow_the_head(files: dict[str, Path]) -> None:
    model = litevit.create_model(NAME, num_classes=7)
    (p,) = predict(model, [files["png0"]], topk=10)
    assert len(p.topk) == 7 and all(name == f"class_{i}" for i, name, _ in p.topk)
    assert np.isclose(sum(prob for *_, prob in p.topk), 1.0, atol=1e-5)
    assert [prob for *_, prob in p.topk] == sorted((prob for *_, prob in p.topk), reverse=True)


@pytest.fixture(scope="module")
def folder(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    for c, cls in enumerate(("cat", "dog", "eel")):
        (root / cls).mkdir()
        for i in range(3):
            _picture(100 + 10 * c + i, (150 + 20 * i, 200)).save(root / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _brute_force(model: nn.Module, root: Path) -> tuple[float, float, float]:
    transform = eval_transform(litevit.get_variant(NAME).data)
    hits1 = hits3 = 0
    losses = []
    for label, cls in enumerate(sorted(p.name for p in root.iterdir())):
        for path in sorted((root / cls).iterdir()):
            with torch.no_grad():
                out = model(transform(Image.open(path).convert("RGB"))[None])[0]
            losses.append(F.cross_entropy(out[None], torch.tensor([label])).item())
            hits1 += int(out.argmax().item() == label)
            hits3 += int(label in out.topk(3).indices.tolist())
    n = len(losses)
    return 100 * hits1 / n, 100 * hits3 / n, sum(losses) / n


def test_evaluate_matches_brute_force(folder: Path) -> None:
    model = litevit.create_model(NAME, num_classes=3)
    model.load_state_dict(_calibrated_state(model))
    result = evaluate(model, folder, batch_size=4, workers=0, progress=False)
    top1, top3, loss = _brute_force(model, folder)
    assert result.count == 9 and result.num_classes == 3
    assert result.top1 == pytest.approx(top1) and result.top5 == pytest.approx(top3)  # top-5 is top-3 of 3 classes
    assert result.loss == pytest.approx(loss, rel=1e-5)


def test_cli_eval_pytorch_and_onnx(folder: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--data", str(folder), "--batch-size", "4", "--workers", "0", "--no-progress"]
    assert main(["eval", NAME, "--checkpoint", str(files["ckpt"]), *base]) == 0
    by_torch = capsys.readouterr().out
    assert main(["eval", str(files["onnx"]), *base]) == 0
    by_onnx = capsys.readouterr().out
    assert "9 images, 3 classes" in by_torch
    assert by_torch.split(":", 1)[1] == by_onnx.split(":", 1)[1]  # same top-1, top-5 and loss to 4 decimals
    assert main(["eval", NAME, "--data", str(folder / "missing"), "--workers", "0"]) == 2


# ------------------------------------------------------------------------------------- streaming, synsets, skipping


@pytest.mark.parametrize("count", [1, 200])
def test_predict_streams_its_files_in_batches(
    count: int, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import litevit.predict as P

    model = litevit.create_model(NAME, num_classes=3, img_size=32)
    alive = {"loaded": 0, "predicted": 0, "peak": 0}
    real_load, real_logits = P.load_image, P.logits

    def counting_load(path: str) -> Image.Image:
        alive["loaded"] += 1
        return real_load(path)

    def counting_logits(m: P.Classifier, x: torch.Tensor) -> torch.Tensor:
        alive["peak"] = max(alive["peak"], alive["loaded"] - alive["predicted"])  # images held before this forward
        alive["predicted"] += x.shape[0]
        return real_logits(m, x)

    monkeypatch.setattr(P, "load_image", counting_load)
    monkeypatch.setattr(P, "logits", counting_logits)
    stream = P.iter_predictions(model, [files["png0"]] * count, topk=1, batch_size=8)
    first = next(stream)
    assert first.error is None and alive["loaded"] == min(count, 8)  # the first result comes before the rest is read
    results = [first, *stream]
    assert len(results) == count and alive["loaded"] == count
    assert alive["peak"] == min(count, 8)  # flat: one batch held at a time, whatever the number of files


def test_eval_skips_and_counts_unreadable_images_and_prints_json(
    folder: Path, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / "dog" / "3.jpg").write_bytes(files["jpg0"].read_bytes()[:200])  # truncated JPEG
    base = ["--checkpoint", str(files["ckpt"]), "--batch-size", "4", "--workers", "0", "--json"]
    assert main(["eval", NAME, "--data", str(folder), *base]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert main(["eval", NAME, "--data", str(damaged), *base]) == 0
    out, err = capsys.readouterr()
    record = json.loads(out)  # one JSON object, nothing else on stdout
    assert {"top1", "top5", "images", "skipped"} <= set(record)
    assert record["images"] == 9 and record["skipped"] == 1 and clean["skipped"] == 0
    assert record["top1"] == pytest.approx(clean["top1"]) and record["top5"] == pytest.approx(clean["top5"])


def test_eval_maps_imagenet_synset_folders_to_imagenet_classes(
    folder: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from litevit.data import imagenet_synsets
    from litevit.deploy.accuracy import folder_targets

    wnids = {"cat": "n02123045", "dog": "n02085620", "eel": "n02526121"}  # tabby, Chihuahua, eel
    synsets = tmp_path / "synsets"
    for cls, wnid in wnids.items():
        shutil.copytree(folder / cls, synsets / wnid)
    assert folder_targets(sorted(wnids.values()), imagenet_classes(), 1000) == [151, 281, 390]
    assert [imagenet_classes()[i] for i in (151, 281, 390)] == ["Chihuahua", "tabby", "eel"]
    assert imagenet_synsets()[281] == "n02123045"
    model = load_classifier(NAME, files["ckpt"])
    result = evaluate(model, synsets, batch_size=4, workers=0, progress=False)
    losses = []
    transform = eval_transform(litevit.get_variant(NAME).data)
    for wnid in sorted(wnids.values()):
        label = imagenet_synsets().index(wnid)
        for path in sorted((synsets / wnid).iterdir()):
            with torch.no_grad():
                out = model(transform(Image.open(path).convert("RGB"))[None])
            losses.append(F.cross_entropy(out, torch.tensor([label])).item())
    assert result.count == 9 and result.loss == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    with pytest.raises(ValueError, match="not ImageNet-1k classes"):
        folder_targets(["n00000001"], imagenet_classes(), 1000, strict=True)


# ------------------------------------------------------------------------------- text from files reaches the terminal

# clear the screen and recolour, fake a line, reverse the text direction
HOSTILE = ["\x1b[2J\x1b[31mcat", "dog\nlitevit predict: error: fake", "eel\u202egpj.exe"]


def _raw_control(text: str) -> list[str]:
    """The control and bidirectional-format characters in ``text`` other than the newlines ending lines."""
    import unicodedata

    return [c for c in text.replace("\n", "") if unicodedata.category(c) in ("Cc", "Cf")]


def test_class_names_from_a_checkpoint_are_printed_escaped(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from litevit.training.checkpoint import export_safetensors

    model = litevit.create_model(NAME, num_classes=3)
    path = tmp_path / "best.safetensors"
    export_safetensors(path, model.state_dict(), NAME, {"num_classes": 3, "classes": HOSTILE}, model.model_info.data)
    assert main(["predict", str(path), "--topk", "3", str(files["png0"])]) == 0
    out = capsys.readouterr().out
    assert not _raw_control(out), out
    assert "\\x1b[2J\\x1b[31mcat" in out and "dog\\nlitevit predict" in out and "eel\\u202egpj.exe" in out
    assert len(out.splitlines()) == 4  # the path and three classes: no line faked by a name


def test_class_names_from_an_exported_file_are_printed_escaped(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import onnx

    from litevit.deploy.metadata import META_KEY

    proto = onnx.load(str(files["onnx"]))
    for prop in proto.metadata_props:
        if prop.key == META_KEY:
            meta = json.loads(prop.value)
            meta["class_names"] = [HOSTILE[i % 3] + str(i) for i in range(meta["num_classes"])]
            prop.value = json.dumps(meta)
    path = tmp_path / "hostile.onnx"
    onnx.save(proto, str(path))
    assert main(["predict", str(path), "--topk", "5", str(files["png0"])]) == 0
    out = capsys.readouterr().out
    assert not _raw_control(out) and len(out.splitlines()) == 6 and "\\x1b[2J" in out, out


def test_file_names_in_errors_and_warnings_are_escaped(
    folder: Path,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import shutil

    hostile = tmp_path / "hostile"
    shutil.copytree(folder, hostile)
    (hostile / "dog" / "\x1b[2Jbad.jpg").write_bytes(files["jpg0"].read_bytes()[:200])  # unreadable: skipped, logged
    base = ["--checkpoint", str(files["ckpt"]), "--batch-size", "4", "--workers", "0", "--no-progress"]
    assert main(["eval", NAME, "--data", str(hostile), *base]) == 0
    assert "\\x1b[2Jbad.jpg" in caplog.text and not _raw_control(caplog.text), caplog.text
    missing = tmp_path / "\x1b]0;title\x07.onnx"
    assert main(["predict", str(missing), str(files["png0"])]) == 2
    err = capsys.readouterr().err
    assert "\\x1b]0;title\\x07.onnx" in err and not _raw_control(err), err


def test_eval_counts_each_image_once_through_link_loops(folder: Path, files: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    looped = tmp_path / "looped"
    shutil.copytree(folder, looped)
    (looped / "cat" / "up").symlink_to("..")  # through one such link torchvision counted each image about 60 times
    (looped / "dog" / "self").symlink_to(".")
    model = load_classifier(NAME, files["ckpt"])
    clean = evaluate(model, folder, batch_size=4, workers=0, progress=False)
    result = evaluate(model, looped, batch_size=4, workers=0, progress=False)
    assert result.count == clean.count == 9 and result.num_classes == 3
    assert (result.top1, result.top5) == (clean.top1, clean.top5) and result.loss == pytest.approx(clean.loss)


def test_cli_defaults_and_choices_are_the_librarys() -> None:
    """The CLI reads its defaults and choices from the library, so that the two cannot drift apart."""
    import inspect

    from litevit.cli import build_parser
    from litevit.deploy.exporting import export
    from litevit.deploy.metadata import FORMATS
    from litevit.predict import iter_predictions

    def default(function: object, name: str) -> object:
        return inspect.signature(function).parameters[name].default

    parser = build_parser()
    predict_args = parser.parse_args(["predict", NAME, "x.png"])
    assert predict_args.topk == default(iter_predictions, "topk") and predict_args.topk == default(predict, "topk")
    assert predict_args.batch_size == default(iter_predictions, "batch_size")
    assert parser.parse_args(["eval", NAME, "--data", "d"]).batch_size == default(evaluate, "batch_size")
    export_args = parser.parse_args(["export", NAME, "--out", "m.onnx"])
    assert export_args.calibration_images == default(export, "calibration_images")
    export_parser = parser._subparsers._group_actions[0].choices["export"]  # argparse keeps no public accessor
    assert next(a for a in export_parser._actions if a.dest == "format").choices == FORMATS
