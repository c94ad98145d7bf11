"""The quick bench's "litevit fastest" is ``export --fastest``'s own routine: the same candidates, the same gate,
the same timing rule, with the peers timed in its rounds; without images its pick is an exact file and bf16 and int8
are shown apart."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import litevit
from litevit import _extras
from litevit.bench import report as bench_report
from litevit.bench import run as bench
from litevit.bench.pick import Candidacy
from litevit.deploy.candidates import SPEED_ONLY
from litevit.deploy.fastest import REFERENCE, plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from test_int8 import CLASSES, _class_tree, _working_model  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (_extras.available("onnxruntime") and _extras.available("openvino") and _extras.available("nncf")),
    reason="the bench's race needs onnxruntime and openvino + nncf: pip install 'litevit[openvino]'",
)
TINY = dict(num_classes=10, img_size=64, dims=(32, 48, 64), num_heads=(2, 3, 4), depths=(1, 1, 1), key_dim=16)
RUNTIMES = ["eager", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8"]


def _decided(records: list[bench.BenchRecord]) -> dict[str, str]:
    return {r.runtime: r.decision for r in records if r.source == "litevit" and r.runtime != "eager"}


# every family (the rule is --fastest's, and every family goes through it); LeViT in the default run
FAMILIES = [
    pytest.param("levit_128s", TINY, id="levit_128s"),
    *(pytest.param(name, dict(img_size=size, num_classes=10), id=name, marks=pytest.mark.slow) for name, size in (
        ("efficientvit_m0", 64), ("mobilevit_xxs", 192), ("mobilevitv2_050", 192), ("mobilevitv3_xxs", 192),
        ("t2t_vit_7", 64),
    )),
]  # fmt: skip


@pytest.mark.parametrize("name, config", FAMILIES)
def test_without_images_the_pick_is_exact_and_bf16_and_int8_stand_apart(name: str, config: dict, tmp_path) -> None:
    torch.manual_seed(0)
    model = litevit.create_model(name, **config).eval()
    ours = bench.Subject(name, "litevit", lambda: model, 76.6)
    theirs = bench.Subject(name, "timm", lambda: litevit.create_model(name, **config), 76.6)
    records, comparisons = bench.bench_group(
        [ours, theirs], runtimes=RUNTIMES, batch_size=2, seconds=0.05, warmup=0.01, scope="fastest",
        candidacy=Candidacy(tmp_path),
    )  # fmt: skip
    decided = _decided(records)
    the_plan = plan("", speed_only=True)
    # every route --fastest plans here, timed (accuracy control needs labelled images), and the fp32 IR at defaults
    assert set(decided) == {r.name for r in the_plan.routes if not r.accuracy_control} | {REFERENCE}
    chosen = [route for route, why in decided.items() if why.startswith("CHOSEN")]
    assert len(chosen) == 1 and chosen[0] in ("ort-fp32", "ov-fp32")  # exact files only, without images
    for route, why in decided.items():
        if "int8" in route and route != "ov-int8-ac":
            assert why == SPEED_ONLY, (route, why)
        if route == "ov-bf16":
            assert why.startswith("not measured"), why
    kinds = {c.against: c for c in comparisons}
    assert {"fastest", "litevit onnxruntime fp32", "litevit openvino defaults", "unmeasured vs pick"} <= set(kinds)
    assert kinds["fastest"].ours.split(":")[2].split("@")[0] == chosen[0]
    unmeasured = kinds["unmeasured vs pick"].ours.split(":")[2].split("@")[0]
    assert unmeasured in decided and not decided[unmeasured].startswith(("CHOSEN", "eligible"))
    # every litevit and timm runner was timed in the same rounds
    assert len({r.samples for r in records}) == 1
    table = bench_report.markdown(bench.BenchResult(records, comparisons))
    assert "made among files exact to fp32" in table and "fastest file not measured (needs --calibration)" in table
    own = next(line for line in table.splitlines() if line.startswith(f"| {name} | 1 | 2 | {chosen[0]} |"))
    assert not own.endswith("| - |")  # the "vs its fp32 IR at OpenVINO's defaults" column is filled


@pytest.mark.slow  # builds every candidate twice, accuracy control included: about 100 s of CPU
def test_with_images_the_bench_judges_every_candidate_as_fastest_does(tmp_path) -> None:
    """The same held-out images, candidates and gate: each route is eligible in the bench exactly when it is in
    ``export --fastest`` (which of the eligible is fastest is the timing's, and may differ between two runs)."""
    folder = _class_tree(tmp_path / "images", per_class=12)
    model = _working_model("levit_128s", folder)
    names = tuple(f"class{i}" for i in range(CLASSES))  # labelled: the gate is on top-1, and accuracy control runs
    model.model_info = dataclasses.replace(model.model_info, class_names=names)
    exported = litevit.export(model, tmp_path / "m", fastest=True, calibration=folder, max_drop=5.0, batch=2,
                              seconds=0.05, time_cap=0.5)  # fmt: skip
    theirs = {c.route: c.decision for c in exported.metadata.selection.candidates if c.ms is not None}
    theirs.pop(REFERENCE)
    subject = bench.Subject("levit_128s", "litevit", lambda: model, None)
    records, _ = bench.bench_group(
        [subject], runtimes=RUNTIMES, batch_size=2, seconds=0.05, warmup=0.01, scope="fastest",
        candidacy=Candidacy(tmp_path / "bench", folder, max_drop=5.0),
    )  # fmt: skip
    ours = {k: v for k, v in _decided(records).items() if k != REFERENCE}

    def eligible(why: str) -> bool:
        return why.startswith(("CHOSEN", "eligible"))

    assert set(ours) == set(theirs)
    assert {k: eligible(v) for k, v in ours.items()} == {k: eligible(v) for k, v in theirs.items()}
    assert not any(v == SPEED_ONLY for v in ours.values())  # int8 was measured on the held-out images
    assert any("int8" in k and ("drop" in v or "exact" in v or "int8 check" in v) for k, v in ours.items())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(calibration="x"), "--calibration gates litevit's --fastest pick: it applies to --quick"),
        (dict(quick=True, max_drop=-1.0), "--max-drop must be >= 0"),
    ],
)
def test_bad_bench_gate_options_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        bench.run_bench(["levit_128s"], progress=False, **kwargs)
