"""The bench's precisions: OpenVINO timed at its defaults and pinned, named in every record; timm's fastest route
taken at its defaults; ``--quick``, the table ``make bench`` prints first."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

import litevit
from litevit import cli
from litevit.bench import pick
from litevit.bench import records as bench_records
from litevit.bench import report as bench_report
from litevit.bench import run as bench
from litevit.bench import runtimes as bench_runtimes
from litevit.bench.peak import Peak
from litevit.bench.pick import Picked
from litevit.registry import family_line, get_variant, list_models

BF16 = frozenset({"avx512f", "avx512_bf16"})
NO_BF16 = frozenset({"avx512f", "avx512_vnni"})
TINY = dict(num_classes=10, img_size=64, dims=(32, 48, 64), num_heads=(2, 3, 4), depths=(1, 1, 1), key_dim=16)


@pytest.mark.parametrize("flags", [BF16, NO_BF16], ids=["bf16-cpu", "vnni-only-cpu"])
def test_openvino_is_timed_at_its_defaults_and_pinned_where_the_cpu_computes_it(flags) -> None:
    bf16 = ["bf16"] if "avx512_bf16" in flags else []
    # the IR as a plain convert_model gives it and reshaped to the static shape litevit's files are written at
    defaults = ["defaults", "defaults-static"]
    assert bench_runtimes.precisions("openvino", "full", flags) == [*defaults, "f32", *bf16]
    assert bench_runtimes.precisions("openvino-int8", "full", flags) == [*defaults, "f32", *bf16]
    assert bench_runtimes.precisions("onnxruntime", "full", flags) == ["fp32"]
    # quick: what a plain user gets
    assert bench_runtimes.precisions("openvino-int8", "fastest", flags) == defaults
    assert bench_runtimes.precisions("onnxruntime-int8", "fastest", flags) == []
    assert bench_runtimes.precisions("executorch", "fastest", flags) == ["fp32"]


def test_a_bad_scope_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="bench scope must be one of full, fastest"):
        bench_runtimes.precisions("openvino", "everything")


def test_records_name_the_precision_openvino_chose(monkeypatch) -> None:
    monkeypatch.setattr(bench_runtimes, "openvino_default_precision", lambda: "bf16")
    label = bench_runtimes.precision_label
    assert [label("openvino", p) for p in ("defaults", "f32", "bf16")] == ["defaults (bf16)", "f32", "bf16"]
    assert label("openvino-int8", "defaults") == "int8 + defaults (bf16)" and label("onnxruntime", "fp32") == "fp32"
    assert bench_records.at_defaults("openvino-int8", "int8 + defaults (bf16)")
    assert not bench_records.at_defaults("openvino", "bf16")
    assert bench_records.at_defaults("onnxruntime", "fp32") and bench_records.at_defaults("eager", "fp32")


def test_openvino_default_precision_is_what_openvino_reports() -> None:
    ov = pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")
    want = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert bench_runtimes.openvino_default_precision() == want in ("f32", "bf16", "f16")


class _Plain(nn.Module):
    """timm's side of a comparison: any plain module (no litevit metadata)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


def test_timm_is_compiled_at_defaults_and_pinned_as_recorded(monkeypatch) -> None:
    """The hint each OpenVINO session is compiled with is the precision its record names."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")
    from litevit.deploy import openvino as deploy_openvino

    hints: list[str | None] = []
    real = deploy_openvino.openvino_config
    monkeypatch.setattr(deploy_openvino, "openvino_config", lambda t, p="f32": hints.append(p) or real(t, p))
    monkeypatch.setattr(bench_runtimes, "has_native_bf16", lambda flags=None: True)
    subject = bench.Subject("plain", "timm", _Plain, None, (32, 32))
    records, _ = bench.bench_group([subject], runtimes=["openvino"], batch_size=1, seconds=0.02, warmup=0.01)
    timed = [r.precision for r in records if r.runtime == "openvino"]
    assert (
        timed[0].startswith("defaults (") and timed[1].startswith("defaults-static (") and timed[2:] == ["f32", "bf16"]
    )
    assert hints == [None, None, "f32", "bf16"]  # None: no INFERENCE_PRECISION_HINT, OpenVINO's own choice
    assert bench_records.at_defaults("openvino", timed[1])  # the static peer is a defaults route


def test_comparisons_set_the_pick_against_timms_fastest_route_at_defaults_only() -> None:
    """Brute force over the records: ours is --fastest's pick, not litevit's fastest runner (planted: eager and the
    unmeasured int8 file are faster); theirs is the fastest timm runner at defaults (a faster pinned one does not
    count; the IR reshaped to the static shape is the peer when faster); the pick is set against its own fp32 ONNX
    in onnxruntime and its fp32 IR at OpenVINO's defaults; the unmeasured file stands apart."""

    def entry(source: str, runtime: str, precision: str) -> dict:
        return dict(source=source, runtime=runtime, precision=precision, model="m")

    meta = {
        "litevit:m:eager@fp32:fused": entry("litevit", "eager", "fp32"),
        "litevit:m:ort-fp32@fp32:fused": entry("litevit", "ort-fp32", "fp32"),
        "litevit:m:ov-fp32@fp32:fused": entry("litevit", "ov-fp32", "fp32"),
        "litevit:m:ov-int8@int8:fused": entry("litevit", "ov-int8", "int8"),
        "litevit:m:ov-defaults@defaults (bf16):fused": entry("litevit", "ov-defaults", "defaults (bf16)"),
        "timm:m:eager@fp32": entry("timm", "eager", "fp32"),
        "timm:m:openvino@defaults (bf16)": entry("timm", "openvino", "defaults (bf16)"),
        "timm:m:openvino@f32": entry("timm", "openvino", "f32"),
        "timm:m:openvino@defaults-static (bf16)": entry("timm", "openvino", "defaults-static (bf16)"),
    }
    medians = [2.5, 4.0, 3.0, 1.0, 1.5, 8.0, 6.0, 2.0, 5.0]
    times = {key: [m * (1 + 0.01 * i) for i in range(5)] for key, m in zip(meta, medians, strict=True)}
    picked = Picked("ov-fp32", "ort-fp32", "ov-defaults", "ov-int8", {}, ["made among exact files"], False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pick, "race_precision", lambda name: next(m["precision"] for m in meta.values()
                                                             if m["runtime"] == name))  # fmt: skip
        comparisons = {c.against: c for c in pick.race_comparisons(times, meta, picked, 1, 1)}
    assert set(comparisons) == {"fastest", "openvino defaults", "litevit onnxruntime fp32", "litevit openvino defaults",
                                "unmeasured vs other", "unmeasured vs pick", "unmeasured vs litevit onnxruntime fp32",
                                "unmeasured vs litevit openvino defaults"}  # fmt: skip
    best = comparisons["fastest"]
    assert best.ours == "litevit:m:ov-fp32@fp32:fused" and best.theirs == "timm:m:openvino@defaults-static (bf16)"
    assert best.speedup_median == pytest.approx(statistics.median([a / b for a, b in zip(
        times[best.theirs], times[best.ours], strict=True)]))  # fmt: skip
    assert best.speedup_median == pytest.approx(5.0 / 3.0) and best.note == "made among exact files"
    assert comparisons["openvino defaults"].theirs == "timm:m:openvino@defaults-static (bf16)"
    own_ort, own_ov = comparisons["litevit onnxruntime fp32"], comparisons["litevit openvino defaults"]
    assert own_ort.ours == own_ov.ours == best.ours
    assert own_ort.speedup_median == pytest.approx(4.0 / 3.0) and own_ov.speedup_median == pytest.approx(1.5 / 3.0)
    apart = comparisons["unmeasured vs pick"]
    assert apart.ours == "litevit:m:ov-int8@int8:fused" and apart.speedup_median == pytest.approx(3.0)


def test_quick_models_are_each_familys_smallest_first_version() -> None:
    families = {get_variant(n).family for n in list_models()}
    assert {get_variant(n).family for n in bench.QUICK_MODELS} == families
    for name in bench.QUICK_MODELS:
        same_line = [n for n in list_models() if family_line(n) == family_line(name)]
        assert get_variant(name).paper.macs_m == min(get_variant(n).paper.macs_m for n in same_line)


def test_quick_bench_times_the_candidates_and_puts_the_comparison_first(monkeypatch, capsys) -> None:
    """``--quick``: the quick models, fused litevit against timm at defaults, no reference CNNs, no FLOP rate; the
    printed tables start with the comparison."""
    calls = []

    def fake_group(subjects, **kwargs):
        calls.append(([s.name for s in subjects], kwargs["runtimes"], kwargs["scope"], kwargs["batch_size"]))
        return [], []

    monkeypatch.setattr(bench, "bench_group", fake_group)
    monkeypatch.setattr(
        bench, "_subjects", lambda name, size, compare: [bench.Subject(name, "litevit", nn.Identity, None)]
    )
    made: list[bench_runtimes.ExportedFiles] = []
    monkeypatch.setattr(bench, "ExportedFiles", lambda: made.append(bench_runtimes.ExportedFiles()) or made[-1])
    result = bench.run_bench(runtimes=["eager", "executorch", "openvino"], quick=True, compare="timm", progress=False)
    assert not made[0].folder.exists()  # the run's exported files are removed with it
    rivals = [n for n in bench.QUICK_RIVALS for _ in (1, 16)]  # the models a user would pick instead, after
    assert [c[0][0] for c in calls] == [n for n in bench.QUICK_MODELS for _ in (1, 16)] + rivals
    assert {tuple(c[1]) for c in calls} == {("eager", "openvino")} and {c[2] for c in calls} == {"fastest"}
    assert result.flop_rate is None

    subject = bench.Subject("levit_128s", "litevit", lambda: litevit.create_model("levit_128s", **TINY), 76.6)
    theirs = bench.Subject("levit_128s", "timm", lambda: litevit.create_model("levit_128s", **TINY), 76.6)
    monkeypatch.undo()
    records, comparisons = bench.bench_group(
        [subject, theirs], batch_size=1, seconds=0.02, warmup=0.01, scope="fastest"
    )
    assert [(r.source, r.fused) for r in records] == [("litevit", True), ("timm", False)]  # no unfused litevit
    table = bench_report.markdown(bench.BenchResult(records, comparisons))
    body = table.split("\n\n", 1)[1]
    assert body.startswith("| model | threads | batch | litevit fastest (--fastest pick) |")
    assert "| levit_128s | 1 | 1 | eager fused |" in body


def test_cli_quick_flag_reaches_the_bench(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(bench, "run_bench", lambda models, **kw: seen.update(kw) or bench.BenchResult([], []))
    assert cli.main(["bench", "--quick", "--no-progress"]) == 0
    assert seen["quick"] is True


@pytest.mark.parametrize("variable, quick", [("BENCH_ARGS", True), ("BENCH_FULL_ARGS", False)])
def test_make_bench_targets_pass_arguments_litevit_bench_takes(variable, quick) -> None:
    """``make bench`` is the quick question (table first), ``make bench-full`` the sweep: their arguments parse."""
    import re
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    args = re.search(rf"^{variable} \?= (.*)$", makefile, re.M).group(1).split()
    parsed = cli.build_parser().parse_args(["bench", *args])
    assert parsed.quick is quick and parsed.compare == "timm" and parsed.runtime == ["installed"]
    assert parsed.models == [] and 1 in parsed.threads


def test_own_table_sets_the_fastest_file_against_its_fp32_onnx_and_openvino_defaults() -> None:
    def record(runtime: str, precision: str, ms: float) -> bench.BenchRecord:
        return bench.BenchRecord(
            model="m", source="litevit", runtime=runtime, fused=True, batch_size=1, img_size=(224, 224),
            dtype="fp32", channels_last=False, device="cpu", device_name="CPU [AVX2]", threads=1,
            torch_version="2.x", git_commit="abc", params_m=1.0, macs_m=1.0, paper_top1=None, median_ms=ms,
            p10_ms=ms, p90_ms=ms, images_per_s=1e3 / ms, samples=3, baseline=None, speedup_median=1.0,
            speedup_p10=1.0, speedup_p90=1.0, precision=precision,
        )  # fmt: skip

    records = [record("ov-int8-bf16", "int8-bf16", 2.0), record("ort-fp32", "fp32", 5.0)]
    key = bench.record_key("litevit", "m", "ov-int8-bf16", "int8-bf16", True)
    ort = bench.record_key("litevit", "m", "ort-fp32", "fp32", True)
    comparison = bench.Comparison("m", 1, key, ort, 2.5, 2.25, 2.75, 1, "litevit onnxruntime fp32")
    result = bench.BenchResult(records, [comparison])
    assert bench_report.own_table(result)[2] == "| m | 1 | 1 | ov-int8-bf16 | 2.00 | 2.50x (2.25-2.75) | - | - |"
    # 1 M MACs an image at 500 images/s: 0.5 G MAC/s, a quarter of an int8 peak of 2 (an int8 file's precision)
    result.peaks = [Peak(1, {"f32": 0.5, "int8": 2.0})]
    assert bench_report.own_table(result)[2].endswith("| - | 25% of 2 GMAC/s |")


def test_bench_records_map_to_the_one_route_name() -> None:
    cases = {("onnxruntime", "fp32"): "ort-fp32", ("onnxruntime-int8", "int8"): "ort-int8",
             ("openvino", "f32"): "ov-fp32", ("openvino", "bf16"): "ov-bf16",
             ("openvino-int8", "int8 + f32"): "ov-int8", ("openvino-int8", "int8 + bf16"): "ov-int8-bf16"}  # fmt: skip
    assert {k: bench_report.route_name(*k) for k in cases} == cases
    assert bench_report.route_name("openvino", "defaults (bf16)") == "openvino (defaults (bf16))"  # no route: as is


def test_the_plot_draws_the_runners_the_comparisons_count() -> None:
    """timm's point is its fastest route at defaults (a faster pinned one is not drawn), litevit's never an OpenVINO
    run at OpenVINO's defaults: the plot and the comparison table tell the same story."""

    def record(source: str, runtime: str, precision: str, per_s: float) -> bench.BenchRecord:
        return bench.BenchRecord(
            model="levit_128s", source=source, runtime=runtime, fused=source == "litevit", batch_size=1,
            img_size=(224, 224), dtype="fp32", channels_last=False, device="cpu", device_name="CPU", threads=1,
            torch_version="2.x", git_commit="abc", params_m=1.0, macs_m=1.0, paper_top1=76.6, median_ms=1e3 / per_s,
            p10_ms=1.0, p90_ms=1.0, images_per_s=per_s, samples=3, baseline=None, speedup_median=1.0,
            speedup_p10=1.0, speedup_p90=1.0, precision=precision,
        )  # fmt: skip

    records = [
        record("litevit", "openvino", "defaults (bf16)", 90.0),
        record("litevit", "openvino", "f32", 60.0),
        record("timm", "openvino", "f32", 80.0),
        record("timm", "openvino", "defaults (bf16)", 50.0),
    ]
    drawn = {p.record.source: p.record.precision for p in bench_report.plot_points(records)}
    assert drawn == {"litevit": "f32", "timm": "defaults (bf16)"}


def test_bench_log_takes_the_libraries_output_and_the_terminal_keeps_the_bar_and_table(
    monkeypatch, tmp_path, capfd
) -> None:
    """What Python and native code print while the bench builds (tracer warnings, NNCF's progress) goes to --log;
    the progress bar's stream and the table stay on the terminal."""
    import os
    import sys

    def noisy(models, **kwargs):
        print("tracer noise")
        sys.stderr.write("deprecation noise\n")
        os.write(2, b"native noise\n")
        kwargs["progress_to"].write("bar 1/1\n")
        return bench.BenchResult([], [])

    monkeypatch.setattr(bench, "run_bench", noisy)
    log = tmp_path / "bench.log"
    assert cli.main(["bench", "--log", str(log)]) == 0
    out, err = capfd.readouterr()
    assert "noise" not in out + err
    assert "bar 1/1" in err and f"the run's warnings and progress output: {log}" in err
    assert "| model | source | runtime |" in out  # the table
    assert log.read_text().split() == "tracer noise deprecation noise native noise".split()


def test_a_verdict_is_decided_on_the_95_percent_interval_of_the_median_ratio() -> None:
    """Brute force: the interval is the sign test's order statistics of the per-round ratios; a target inside it
    is not decided, whatever the median says (the old verdicts read "missed (2.496x < 2.5x)" off 3 rounds)."""
    times = {"slow": [2.5 * (1 + 0.02 * ((7 * i) % 11 - 5)) for i in range(40)], "fast": [1.0] * 40}
    c = bench_records.Comparison.of(times, "m", 1, "fast", "slow", 1, "litevit onnxruntime fp32")
    ratios = sorted(a / b for a, b in zip(times["slow"], times["fast"], strict=True))
    assert c.speedup_median == pytest.approx(statistics.median(ratios))
    assert (c.median_low, c.median_high) == (ratios[13], ratios[26])  # n = 40: the 14th and 27th of 40, at 95 %
    assert c.verdict(c.median_low - 0.01) == "met"
    assert c.verdict(c.median_high + 0.01).startswith("missed")
    assert c.verdict(c.speedup_median).startswith("not decided at 95%")
    few = bench_records.Comparison.of({"slow": [2.49, 2.50, 2.51], "fast": [1.0] * 3}, "m", 1, "fast", "slow", 1, "x")
    assert few.verdict(2.5).startswith("not decided")  # 3 rounds cannot decide at 95 %


def test_the_peak_multiplies_in_the_precision_it_is_named_for() -> None:
    """What OpenVINO executes: the int8 matmul runs in i8, the bf16 one in bf16 (planted: an int8 peak measured on the
    f32 graph would read as i8-free here)."""
    pytest.importorskip("nncf", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")
    from litevit import _extras
    from litevit.bench.peak import compiled_matmuls

    _, compiled = compiled_matmuls(1)
    assert set(compiled) == {"f32", "int8", *(["bf16"] if _extras.has_native_bf16() else [])}
    for name, model in compiled.items():
        ran = {op.get_rt_info()["runtimePrecision"].astype(str) for op in model.get_runtime_model().get_ops()
               if op.get_rt_info()["layerType"].astype(str) in ("FullyConnected", "MatMul")}  # fmt: skip
        assert ran == {"i8" if name == "int8" else name}, (name, ran)
    assert Peak(1, {"f32": 1.0, "int8": 4.0}).of("int8-bf16") == 4.0 and Peak(1, {"f32": 1.0}).of("bf16") is None


def test_the_models_a_user_would_pick_instead_stand_beside_the_picks() -> None:
    """make bench times RepViT-M0.9 (reparameterized) and MobileNetV4-Conv-S at their published top-1 and input
    size; the table sets litevit's pick beside each rival's fastest route at its defaults (a faster pinned route of
    the rival does not count), fastest first."""
    pytest.importorskip("timm")
    subjects = bench._references(quick=True)
    assert [(s.name, s.paper_top1, s.img_size) for s in subjects] == [
        ("repvit_m0_9", 78.7, (224, 224)), ("mobilenetv4_conv_small", 73.8, (224, 224))
    ]  # fmt: skip
    import timm

    def norms(model: nn.Module) -> int:
        return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())

    assert norms(subjects[0].build()) < norms(timm.create_model("repvit_m0_9"))  # reparameterized: branches folded
    assert {s.name for s in bench._references(quick=False)} >= {"fastvit_t8", "efficientnet_b0"}

    def record(model: str, source: str, runtime: str, precision: str, per_s: float) -> bench.BenchRecord:
        return bench.BenchRecord(
            model=model, source=source, runtime=runtime, fused=source == "litevit", batch_size=1,
            img_size=(224, 224), dtype="fp32", channels_last=False, device="cpu", device_name="CPU", threads=1,
            torch_version="2.x", git_commit="abc", params_m=1.0, macs_m=1.0, paper_top1=70.0, median_ms=1e3 / per_s,
            p10_ms=1.0, p90_ms=1.0, images_per_s=per_s, samples=3, baseline=None, speedup_median=1.0,
            speedup_p10=1.0, speedup_p90=1.0, precision=precision,
        )  # fmt: skip

    records = [
        record("levit_128s", "litevit", "ov-fp32", "fp32", 200.0),
        record("levit_128s", "litevit", "ort-fp32", "fp32", 150.0),
        record("repvit_m0_9", "timm", "openvino", "defaults (bf16)", 300.0),
        record("repvit_m0_9", "timm", "openvino", "f32", 400.0),  # pinned: not what a plain user gets
    ]  # fmt: skip
    ours, ort = (bench.record_key("litevit", "levit_128s", r, "fp32", True) for r in ("ov-fp32", "ort-fp32"))
    comparison = bench.Comparison("levit_128s", 1, ours, ort, 1.33, 1.3, 1.4, 1, "litevit onnxruntime fp32")
    lines = bench_report.rivals_table(bench.BenchResult(records, [comparison]))
    assert [line.split(" | ")[2:5] for line in lines[2:]] == [
        ["repvit_m0_9", "70.0", "openvino (defaults (bf16))"], ["levit_128s", "70.0", "ov-fp32"]
    ]  # fmt: skip
