"""The benchmark harness: interleaving, well-formed records, comparisons, CLI outputs."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

import litevit
from litevit import cli
from litevit.bench import report as bench_report
from litevit.bench import run as bench
from litevit.bench import runtimes as bench_runtimes
from litevit.flops import count_macs

TINY = dict(num_classes=10, img_size=64, dims=(32, 48, 64), num_heads=(2, 3, 4), depths=(1, 1, 1), key_dim=16)


def test_time_interleaved_rotates_and_balances() -> None:
    calls: list[str] = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = bench.time_interleaved(runners, seconds=0.0, warmup=0.0)
    assert [len(t) for t in times.values()] == [3, 3, 3]  # at least three rounds, equal counts
    assert calls[:9] == list("abc") + list("bca") + list("cab")
    assert all(t >= 0 for ts in times.values() for t in ts)


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
    assert records[0].baseline is None and records[1].baseline == "litevit:tiny_levit:eager"
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
    assert comparison.theirs == "timm:levit_128s:eager" and comparison.ours.startswith("litevit:levit_128s:eager")
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
    assert "| levit_128s | litevit | eager | yes | 1 | 2 |" in table.read_text()  # 1 thread, batch 2
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


def test_exported_files_are_built_once_per_run() -> None:
    pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install 'litevit[export]'")
    subject = bench.Subject("tiny_levit", "litevit", lambda: litevit.create_model("levit_128s", **TINY), None)
    exported_files = bench_runtimes.ExportedFiles()
    for batch, threads in ((1, 1), (3, 2)):
        records, _ = bench.bench_group(
            [subject], runtimes=["onnxruntime"], batch_size=batch, threads=threads, seconds=0.02, warmup=0.01,
            exported_files=exported_files,
        )  # fmt: skip
        assert [(r.runtime, r.threads, r.batch_size) for r in records][-1] == ("onnxruntime", threads, batch)
    assert len(exported_files.files) == 1  # one dynamic-batch file served both groups


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
    assert [bench_report.int8_cost(r, costs) for r in (records[1], ov, ort, timm)] == [None, 0.5, 1.25, 2.0]
    table = bench_report.markdown(bench.BenchResult([records[0], ov, ort], []), costs)
    assert "| openvino-int8 (top-1 -0.50) |" in table and "| onnxruntime-int8 (top-1 -1.25) |" in table
    png = tmp_path / "p.png"
    bench_report.plot(bench.BenchResult([records[0], ov, timm], []), png, costs)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
