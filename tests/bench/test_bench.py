"""The benchmark harness: interleaving, well-formed records, comparisons, CLI outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

import pytest
import torch

import litevit
from litevit import cli
from litevit.bench import report as bench_report
from litevit.bench import run as bench
from litevit.bench import runtimes as bench_runtimes
from litevit.bench.pick import Candidacy
from litevit.deploy.runtime import ExportedModel
from litevit.flops import count_macs

TINY = dict(num_classes=10, img_size=64, dims=(32, 48, 64), num_heads=(2, 3, 4), depths=(1, 1, 1), key_dim=16)


def test_time_interleaved_rotates_and_balances(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litevit.timing, "SETTLE_S", 0.0)  # blocks of one untimed and one timed call
    monkeypatch.setattr(litevit.timing, "BLOCK_S", 0.0)
    calls: list[str] = []

    def runner(name: str) -> None:
        calls.append(name)
        if name == "b":
            time.sleep(0.02)  # the one runner that takes time: its samples must show it, in seconds

    runners = {name: (lambda name=name: runner(name)) for name in "abc"}
    times = bench.time_interleaved(runners, seconds=0.0, warmup=0.0)
    assert [len(t) for t in times.values()] == [3, 3, 3]  # at least three rounds, equal counts
    assert calls[:18] == list("aabbcc") + list("bbccaa") + list("ccaabb")
    assert min(times["b"]) >= 0.02 and statistics.median(times["b"]) < 1.0  # each call timed, in seconds
    assert max(statistics.median(times["a"]), statistics.median(times["c"])) < 0.02  # timed apart, not summed


def test_time_interleaved_times_each_runner_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner is slow for its first calls after another ran (its caches cold): the samples leave those out."""
    monkeypatch.setattr(litevit.timing, "SETTLE_S", 0.03)
    monkeypatch.setattr(litevit.timing, "BLOCK_S", 0.01)
    last = {"name": "", "streak": 0}

    def runner(name: str) -> None:
        last["streak"] = last["streak"] + 1 if last["name"] == name else 1
        last["name"] = name
        time.sleep(0.012 if last["streak"] <= 2 else 0.001)  # two cold calls, then warm

    times = bench.time_interleaved({n: (lambda n=n: runner(n)) for n in "abc"}, seconds=0.0, warmup=0.0)
    for samples in times.values():
        assert len(samples) == 3 and max(samples) < 0.006  # warm calls only: 1 ms, not 12

    monkeypatch.setattr(litevit.timing, "SETTLE_S", 0.0)  # one untimed call: the second, still cold, is timed
    times = bench.time_interleaved({n: (lambda n=n: runner(n)) for n in "abc"}, seconds=0.0, warmup=0.0)
    assert all(min(samples) >= 0.012 for samples in times.values())


def test_bench_group_on_tiny_model_gives_well_formed_records() -> None:
    subject = bench.Subject("tiny_levit", "litevit", lambda: litevit.create_model("levit_128s", **TINY), None)
    records, comparisons = bench.bench_group([subject], batch_size=2, seconds=0.05, warmup=0.01)
    assert [(r.fused, r.runtime) for r in records] == [(False, "eager"), (True, "eager")]
    for r in records:
        assert r.samples >= 3 and r.p10_ms <= r.median_ms <= r.p90_ms
        assert abs(r.images_per_s - 2 / (r.median_ms / 1e3)) < 1e-6 * r.images_per_s
        assert r.img_size == (64, 64) and r.threads == 1 and r.torch_version == torch.__version__
        assert r.device == "cpu" and r.device_name and r.git_commit and r.dtype == "fp32"
        assert r.params_m > 0 and r.macs_m > 0
    assert records[0].baseline is None and records[1].baseline == "litevit:tiny_levit:eager@fp32"
    assert comparisons == []  # nothing to compare against without another source


def test_compare_timm_uses_the_same_weights_and_reports_a_ratio() -> None:
    subjects = bench._subjects("levit_128s", None, "timm")
    assert [s.source for s in subjects] == ["litevit", "timm"]
    ours, theirs = subjects[0].build(), subjects[1].build()  # build() itself checks that the logits agree
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    records, comparisons = bench.bench_group(subjects, batch_size=1, seconds=0.05, warmup=0.01)
    assert {r.source for r in records} == {"litevit", "timm"}
    (comparison,) = comparisons
    assert comparison.theirs == "timm:levit_128s:eager@fp32" and comparison.ours.startswith("litevit:levit_128s:eager")
    assert comparison.speedup_p10 <= comparison.speedup_median <= comparison.speedup_p90


def test_compare_runs_both_sides_at_the_variants_input_size() -> None:
    subjects = bench._subjects("mobilevit_xxs", None, "timm")
    assert [s.img_size for s in subjects] == [(256, 256), (256, 256)]
    records, _ = bench.bench_group(subjects, batch_size=1, seconds=0.02, warmup=0.01)
    assert {r.img_size for r in records} == {(256, 256)}
    assert len({round(r.macs_m) for r in records}) == 1  # the same network at the same size


def test_default_models_are_smallest_per_family_plus_two() -> None:
    names = bench.default_models()
    families = {litevit.get_variant(n).family for n in litevit.list_models()}
    assert {litevit.get_variant(n).family for n in names} == families
    assert "levit_128s" in names and "levit_256" in names
    for name in names:
        variant = litevit.get_variant(name)
        same = [
            litevit.get_variant(n) for n in litevit.list_models() if litevit.get_variant(n).family == variant.family
        ]
        assert name in ("levit_256", "efficientvit_m4") or variant.paper.macs_m == min(v.paper.macs_m for v in same)


def test_flop_rate_uses_counted_macs() -> None:
    rate = bench.flop_rate("levit_128s", batch_size=1, seconds=0.2)
    assert rate.model_gflops > 0 and rate.matmul_gflops > 0 and rate.ratio_p10 <= rate.ratio_median


def test_mac_counts_of_the_benchmark_match_papers() -> None:
    for name in ("levit_128s", "efficientvit_m0"):
        if name not in litevit.list_models():
            continue
        paper = litevit.get_variant(name).paper
        macs = count_macs(litevit.create_model(name), paper.img_size) / 1e6
        assert abs(macs / paper.macs_m - 1) <= 0.03, (name, macs, paper.macs_m)


def test_cli_bench_writes_jsonl_markdown_and_plot(tmp_path, capsys) -> None:
    out, table, png = tmp_path / "r.jsonl", tmp_path / "r.md", tmp_path / "r.png"
    argv = ["bench", "levit_128s", "--batch-size", "1", "2", "--seconds", "0.05", "--warmup", "0.01"]
    assert cli.main(argv + ["--out", str(out), "--markdown", str(table), "--plot", str(png), "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    records = [r for r in lines if r["kind"] == "record"]
    assert len(records) == 4 and {r["batch_size"] for r in records} == {1, 2}
    assert {r["fused"] for r in records} == {False, True}
    (rate,) = [r for r in lines if r["kind"] == "flop_rate"]
    assert rate["model"] == "levit_128s" and rate["batch_size"] == 2 and rate["matmul_gflops"] > 0
    assert rate["ratio_p10"] <= rate["ratio_median"] <= rate["ratio_p90"]
    # the ratio is the model's FLOP rate over the matmul rate
    assert abs(rate["model_gflops"] / rate["matmul_gflops"] / rate["ratio_median"] - 1) < 0.5
    assert "| levit_128s | litevit | eager | fp32 | yes | 1 | 2 |" in table.read_text()  # 1 thread, batch 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "of the matmul rate" in capsys.readouterr().out


def test_cli_bench_rejects_unknown_models(capsys) -> None:
    assert cli.main(["bench", "nothing_*", "--no-progress"]) == 2
    assert "no registered model matches" in capsys.readouterr().err


def test_cli_bench_times_each_thread_count(tmp_path) -> None:
    out = tmp_path / "r.jsonl"
    argv = ["bench", "levit_128s", "--batch-size", "1", "--threads", "1", "all", "--seconds", "0.02"]
    assert cli.main(argv + ["--warmup", "0.01", "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines() if '"record"' in line]
    assert {r["threads"] for r in records} == {1, len(os.sched_getaffinity(0))}


@pytest.mark.parametrize("bad", ["0", "two"])
def test_cli_bench_rejects_bad_thread_counts(bad, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["bench", "levit_128s", "--threads", bad])
    assert "thread count" in capsys.readouterr().err


def test_installed_runtimes_follow_the_importable_packages(monkeypatch) -> None:
    real = bench_runtimes.importlib.util.find_spec
    monkeypatch.setattr(
        bench_runtimes.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name)
    )
    runtimes = bench_runtimes.installed_runtimes()
    assert runtimes[0] == "eager" and not any(r.startswith("openvino") for r in runtimes)
    if real("onnxruntime") and real("onnx"):
        assert {"onnxruntime", "onnxruntime-int8"} <= set(runtimes)


def test_candidates_are_built_once_per_model(tmp_path) -> None:
    """export --fastest's candidates are built once per model and input size, with a dynamic batch that the runner
    compiles at each group's static shape; every batch and thread count races the same files."""
    pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install 'litevit[export]'")
    subject = bench.Subject("tiny_levit", "litevit", lambda: litevit.create_model("levit_128s", **TINY), None)
    candidacy = Candidacy(tmp_path)
    for batch, threads in ((1, 1), (1, 2), (3, 1)):
        records, _ = bench.bench_group(
            [subject], runtimes=["onnxruntime"], batch_size=batch, threads=threads, seconds=0.02, warmup=0.01,
            candidacy=candidacy,
        )  # fmt: skip
        assert ("ort-fp32", threads, batch) in [(r.runtime, r.threads, r.batch_size) for r in records]
    assert list(candidacy.built) == [("tiny_levit", (64, 64))]
    _, found = candidacy.built[("tiny_levit", (64, 64))]
    assert {ExportedModel(t.path).metadata.batch for t in found.trials if t.path is not None} == {"dynamic"}


def test_int8_costs_are_printed_next_to_int8_speeds(tmp_path) -> None:
    costs_file = tmp_path / "recipes.jsonl"
    chosen = dict(kind="chosen", model="levit_128s", openvino="ov-transformer", onnxruntime="ort-per-channel",
                  openvino_drop=0.5, onnxruntime_drop=1.25, nncf_defaults_drop=2.0)  # fmt: skip
    costs_file.write_text(json.dumps({"kind": "accuracy", "model": "levit_128s"}) + "\n" + json.dumps(chosen) + "\n")
    costs = bench_report.read_int8_costs(costs_file)
    subject = bench.Subject("levit_128s", "litevit", lambda: litevit.create_model("levit_128s", **TINY), 76.6)
    records, _ = bench.bench_group([subject], batch_size=1, seconds=0.02, warmup=0.01)
    ov = dataclasses.replace(records[1], runtime="openvino-int8")
    ort = dataclasses.replace(records[1], runtime="onnxruntime-int8")
    timm = dataclasses.replace(records[1], runtime="openvino-int8", source="timm", fused=False)
    costs_of = [bench_report.int8_cost(r, costs) for r in (records[1], ov, ort, timm)]
    assert [c and (c.drop, c.model) for c in costs_of] == [None, (0.5, "levit_128s"), (1.25, "levit_128s"),
                                                          (2.0, "levit_128s")]  # fmt: skip
    table = bench_report.markdown(bench.BenchResult([records[0], ov, ort], []), costs)
    assert "| openvino-int8 (top-1 -0.50) |" in table and "| onnxruntime-int8 (top-1 -1.25) |" in table
    png = tmp_path / "p.png"
    bench_report.plot(bench.BenchResult([records[0], ov, timm], []), png, costs)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _record(model: str, source: str, runtime: str, images_per_s: float, top1: float, fused: bool = True):
    return bench.BenchRecord(
        model=model, source=source, runtime=runtime, fused=fused, batch_size=1, img_size=(224, 224), dtype="fp32",
        channels_last=False, device="cpu", device_name="test CPU [AVX2]", threads=1, torch_version="2.x",
        git_commit="abc", params_m=1.0, macs_m=100.0, paper_top1=top1, median_ms=1e3 / images_per_s,
        p10_ms=1.0, p90_ms=1.0, images_per_s=images_per_s, samples=3, baseline=None, speedup_median=1.0,
        speedup_p10=1.0, speedup_p90=1.0,
    )  # fmt: skip


def _costs(tmp_path) -> dict:
    rows = [dict(kind="chosen", model=m, openvino_drop=d, onnxruntime_drop=d + 1, nncf_defaults_drop=d + 3)
            for m, d in (("levit_128s", 1.25), ("mobilevitv2_050", 0.5))]  # fmt: skip
    (tmp_path / "costs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return bench_report.read_int8_costs(tmp_path / "costs.jsonl")


def test_int8_costs_are_keyed_by_family_line_and_name_the_measured_variant(tmp_path) -> None:
    costs = _costs(tmp_path)
    assert set(costs) == {(line, route) for line in ("levit", "mobilevitv2")
                          for route in ("openvino", "onnxruntime", "nncf-defaults")}  # fmt: skip
    assert costs[("mobilevitv2", "onnxruntime")] == bench_report.Int8Cost(1.5, "mobilevitv2_050")
    # the table prints a family's drop next to every variant's int8 speed (as measured on one of them)
    other = _record("mobilevitv2_100", "litevit", "openvino-int8", 50.0, 78.1)
    assert bench_report.int8_cost(other, costs).drop == 0.5
    assert bench_report.int8_cost(_record("mobilevit_xxs", "litevit", "openvino-int8", 50.0, 69.0), costs) is None


def test_plot_keeps_published_top1_and_draws_a_drop_only_where_measured(tmp_path) -> None:
    costs = _costs(tmp_path)
    records = [
        _record("levit_128s", "litevit", "eager", 40.0, 76.6, fused=False),
        _record("levit_128s", "litevit", "eager", 50.0, 76.6),
        _record("levit_128s", "litevit", "openvino-int8", 90.0, 76.6),  # the variant the drop was measured on
        _record("levit_256", "litevit", "openvino-int8", 40.0, 81.6),  # its family's drop, not measured on it
        _record("levit_128s", "timm", "openvino-int8", 70.0, 76.6),
        _record("mobilevitv2_050", "litevit", "onnxruntime", 30.0, 70.2),  # fastest is fp32: no drop
        _record("mobilevitv2_050", "litevit", "onnxruntime-int8", 20.0, 70.2),
        _record("efficientnet_b0", "timm", "onnxruntime", 60.0, 77.1),
        _record("efficientnet_b0", "timm", "openvino-int8", 120.0, 77.1),  # faster, but its top-1 is fp32's
    ]
    points = {(p.record.source, p.record.model): p for p in bench_report.plot_points(records, costs)}
    assert set(points) == {("litevit", "levit_128s"), ("litevit", "levit_256"), ("timm", "levit_128s"),
                           ("litevit", "mobilevitv2_050"), ("timm", "efficientnet_b0")}  # fmt: skip
    assert all(p.top1 == p.record.paper_top1 for p in points.values())  # published ImageNet top-1, never shifted
    drops = {key: (p.record.runtime, p.drop) for key, p in points.items()}
    assert drops == {
        ("litevit", "levit_128s"): ("openvino-int8", 1.25),
        ("litevit", "levit_256"): ("openvino-int8", None),
        ("timm", "levit_128s"): ("openvino-int8", 4.25),  # NNCF defaults, on the measured variant
        ("litevit", "mobilevitv2_050"): ("onnxruntime", None),
        ("timm", "efficientnet_b0"): ("onnxruntime", None),
    }
    cnn = points[("timm", "efficientnet_b0")]
    assert cnn.line is None and cnn.label == "efficientnet_b0 (onnxruntime)"
    assert {p.line for p in points.values()} == {"levit", "mobilevitv2", None}
    assert all(p.label is None for p in points.values() if p.line is not None)


def test_plot_layout_keeps_labels_off_the_other_panels(tmp_path) -> None:
    """Two batch sizes side by side: one y label, on the left panel, and no axis label or tick label of a panel
    inside another panel."""
    one_batch = [
        _record("levit_128s", "litevit", "openvino-int8", 90.0, 76.6),
        _record("levit_256", "litevit", "eager", 40, 81.6),
        _record("efficientnet_b0", "timm", "onnxruntime", 60.0, 77.1),
    ]
    records = [dataclasses.replace(r, batch_size=b) for b in (1, 16) for r in one_batch]
    fig = bench_report.figure(bench.BenchResult(records, []), _costs(tmp_path))
    renderer = fig.canvas.get_renderer()
    left, right = fig.axes[:2]
    assert left.get_ylabel() == "ImageNet top-1 (%, published, fp32)" and right.get_ylabel() == ""
    for ax, other in ((left, right), (right, left)):
        texts = [ax.yaxis.label, ax.xaxis.label, *ax.get_yticklabels(), *ax.get_xticklabels()]
        boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
        assert boxes and not any(b.overlaps(other.get_window_extent(renderer)) for b in boxes)
    legend_text = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "int8 top-1 drop on 64-px drawn textures, 8 classes*" in legend_text
    assert any("int8's ImageNet accuracy was not measured" in t.get_text() for t in fig.texts)


def test_bench_records_read_back_as_written(tmp_path) -> None:
    records = [
        _record("levit_128s", "litevit", "eager", 50.0, 76.6),
        _record("efficientnet_b0", "timm", "eager", 9, 77.1),
    ]
    comparison = bench.Comparison("levit_128s", 1, "litevit:levit_128s:eager:fused", "timm:levit_128s:eager", 1.2, 1.1,
                                  1.3)  # fmt: skip
    rate = bench.FlopRate("levit_128s", 16, 1, 50.0, 100.0, 0.5, 0.45, 0.55)
    result = bench.BenchResult(records, [comparison], rate)
    bench_report.write_jsonl(result, tmp_path / "r.jsonl")
    assert bench_report.read_jsonl(tmp_path / "r.jsonl") == result
