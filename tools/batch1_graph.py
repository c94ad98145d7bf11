"""Node counts and batch-1 OpenVINO times of litevit's exported IRs against those of an older litevit (its fused
form), f32, bf16 and int8, 1 thread, interleaved: what a change to the fused graphs buys.

Usage: OMP_NUM_THREADS=1 python tools/batch1_graph.py --old-tree DIR [--seconds S] [--out FILE.jsonl] MODEL...
``DIR`` is a checkout of the older litevit (``git worktree add --detach DIR COMMIT``); its IRs are exported by this
tool run again under ``PYTHONPATH=DIR/src``. Each IR is static at batch 1; bf16 files are compiled with bf16 inference
precision, f32 and int8 files with f32 (int8 files: their float parts). Per model and precision it prints and appends
one JSON record: the IR's operations by type (Constants, Parameters and Results left out), the nodes OpenVINO's CPU
plugin runs after its own fusions (``runtime_nodes``, Reorders included; ``precision_reorders``: Reorders that change
the element type, int8 <-> float), the median time per call of each form and the ratio new/old per interleaved round
(median, p10, p90).

``--accuracy RUNS --data DIGITS`` checks instead that the int8 accuracy is kept: each model's checkpoint
``RUNS/MODEL/best.safetensors`` (trained on ``DIGITS/train``, tools/precision_costs.py's digits) is exported as an int8
IR by the old tree and by this one (calibrated on ``DIGITS/train``), and both are scored on ``DIGITS/val``: top-1 and
top-1 agreement with PyTorch fp32.

``--depthwise`` compares instead, in this tree only, each model's int8 IR with its family's settings ("old") against
the same settings with ``float_depthwise=False`` ("new"): what keeping depthwise convolutions float costs in time.
Output of the committed runs: ``benchmarks/speed/batch1_graph.md`` (tables by ``--report JSONL``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("f32", "bf16", "int8")
SKIPPED_OPS = {"Constant", "Parameter", "Result"}
SKIPPED_RUNTIME = {"Input", "Output", "Const"}


def export_all(
    names: list[str], folder: Path, calibration: Path, images: int, dw_int8: bool = False, runs: Path | None = None
) -> None:
    """``folder/MODEL_PRECISION.xml`` for every model and precision, by whichever litevit is imported; ``dw_int8``:
    only the int8 file, with the family's settings but int8 depthwise convolutions; ``runs``: only the int8 file, of
    the trained checkpoint ``runs/MODEL/best.safetensors``."""
    import litevit
    from litevit.deploy.exporting import export
    from litevit.deploy.int8 import int8_settings_for

    for name in names:
        model = (litevit.load(runs / name / "best.safetensors") if runs else litevit.create_model(name)).eval()
        settings = int8_settings_for(model)
        if dw_int8:
            settings = dataclasses.replace(settings, float_depthwise=False)
        elif runs is None:
            export(model, folder / f"{name}_f32.xml", batch=1)
            export(model, folder / f"{name}_bf16.xml", batch=1, precision="bf16")
        export(
            model, folder / f"{name}_int8.xml", batch=1, int8=True, calibration=calibration,
            calibration_images=images, int8_settings=settings,
        )  # fmt: skip


def graph_ops(model: Any) -> dict[str, int]:
    counts = collections.Counter(op.get_type_name() for op in model.get_ops())
    return {kind: n for kind, n in counts.most_common() if kind not in SKIPPED_OPS}


def rt_info(op: Any, key: str) -> str:
    """A runtime node's (or IR op's) rt_info entry ``key`` as text."""
    return op.get_rt_info()[key].astype(str)


def runner(core: Any, path: Path, precision: str, x: np.ndarray) -> tuple[Any, dict[str, int], int]:
    """The compiled IR's infer call, the nodes the CPU plugin runs by type, and how many of its Reorders change the
    element type (constant paths left out: those run once, at compile time)."""
    from litevit.deploy.openvino import openvino_config

    config = openvino_config(1, "bf16" if precision == "bf16" else "f32")
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    ops = compiled.get_runtime_model().get_ops()
    runtime = collections.Counter(rt_info(op, "layerType") for op in ops)
    converting = 0
    for op in ops:
        if rt_info(op, "layerType") != "Reorder":
            continue
        source = op.input(0).get_source_output().get_node()
        precisions = rt_info(source, "outputPrecisions"), rt_info(op, "outputPrecisions")
        if rt_info(source, "layerType") != "Const" and precisions[0] != precisions[1]:
            converting += 1
    nodes = {kind: n for kind, n in runtime.most_common() if kind not in SKIPPED_RUNTIME}
    return (lambda: request.infer({0: x})), nodes, converting


def measure(
    names: list[str], folders: dict[str, Path], precisions: tuple[str, ...], seconds: float, meta: dict
) -> list[dict]:
    import openvino as ov

    import litevit
    from litevit.timing import percentile, time_interleaved

    core, records = ov.Core(), []
    for name in names:
        size = litevit.get_variant(name).config.img_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
        for precision in precisions:
            paths = {label: folder / f"{name}_{precision}.xml" for label, folder in folders.items()}
            ops = {label: graph_ops(core.read_model(path)) for label, path in paths.items()}
            compiled = {label: runner(core, path, precision, x) for label, path in paths.items()}
            times = time_interleaved({label: c[0] for label, c in compiled.items()}, 2 * seconds, seconds / 4)
            ratios = [n / o for n, o in zip(times["new"], times["old"], strict=True)]
            record = dict(
                model=name, precision=precision, **meta,
                ops_old=ops["old"], ops_new=ops["new"],
                nodes_old=sum(ops["old"].values()), nodes_new=sum(ops["new"].values()),
                runtime_nodes_old=compiled["old"][1], runtime_nodes_new=compiled["new"][1],
                runtime_total_old=sum(compiled["old"][1].values()), runtime_total_new=sum(compiled["new"][1].values()),
                precision_reorders_old=compiled["old"][2], precision_reorders_new=compiled["new"][2],
                median_ms_old=1e3 * statistics.median(times["old"]),
                median_ms_new=1e3 * statistics.median(times["new"]),
                ratio_median=statistics.median(ratios), ratio_p10=percentile(ratios, 0.1),
                ratio_p90=percentile(ratios, 0.9), rounds=len(ratios), load_average=os.getloadavg()[0],
            )  # fmt: skip
            print(json.dumps(record), flush=True)
            records.append(record)
    return records


def accuracy(names: list[str], folders: dict[str, Path], runs: Path, data: Path, meta: dict) -> list[dict]:
    """Top-1 on ``data/val`` of each form's int8 IR, and its top-1 agreement with PyTorch fp32."""
    import openvino as ov
    import torch

    import litevit
    from litevit.data import eval_transform, image_folder
    from litevit.deploy.openvino import openvino_config
    from litevit.predict import preprocessing

    core, records = ov.Core(), []
    for name in names:
        fp32 = litevit.load(runs / name / "best.safetensors").eval()
        config, size, _ = preprocessing(fp32)
        val = image_folder(data / "val", eval_transform(config, size))
        images = torch.stack([x for x, _ in val])
        targets = torch.tensor([y for _, y in val])
        with torch.inference_mode():
            reference = fp32(images).argmax(-1)
        record = dict(model=name, precision="int8", images=len(targets), **meta)
        record["top1_fp32"] = 100 * float((reference == targets).float().mean())
        for label, folder in folders.items():
            request = core.compile_model(core.read_model(folder / f"{name}_int8.xml"), "CPU", openvino_config(1))
            request = request.create_infer_request()
            rows = [np.array(request.infer({0: images[i : i + 1].numpy()})[0]) for i in range(len(images))]
            predicted = torch.from_numpy(np.concatenate(rows)).argmax(-1)
            record[f"top1_{label}"] = 100 * float((predicted == targets).float().mean())
            record[f"agreement_{label}"] = 100 * float((predicted == reference).float().mean())
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


def report(path: Path) -> str:
    """Markdown tables of a jsonl written by this tool: one per comparison, machine and older tree."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [f"Raw records: `{path.as_posix()}`. 1 thread, batch 1, static shapes.", ""]
    for r in records:
        if "ratio_median" not in r:
            r["comparison"] += ", int8 accuracy on the digits"
    groups = dict.fromkeys((r["comparison"], r["cpu"], r["old_commit"]) for r in records)
    for comparison, cpu, old_commit in groups:
        rows = [r for r in records if (r["comparison"], r["cpu"], r["old_commit"]) == (comparison, cpu, old_commit)]
        first = rows[0]
        lines += [
            f"### {comparison} (old {old_commit}, {cpu})", "",
            f"Hardware: {cpu}; ISA {', '.join(first['isa'])}; torch {first['torch']}, openvino {first['openvino']}.",
            "", *dict.fromkeys(f"Command: `{r['command']}` (commit {r['commit']})." for r in rows), "",
        ]  # fmt: skip
        if "ratio_median" in rows[0]:
            lines += [
                "| model | precision | IR ops old -> new | CPU-plugin nodes old -> new | element-type reorders "
                "old -> new | ms old | ms new | time new/old (p10-p90) |",
                "|---|---|---:|---:|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {r['model']} | {r['precision']} | {r['nodes_old']} -> {r['nodes_new']} | {r['runtime_total_old']}"
                f" -> {r['runtime_total_new']} | {r['precision_reorders_old']} -> {r['precision_reorders_new']} | "
                f"{r['median_ms_old']:.2f} | {r['median_ms_new']:.2f} | {r['ratio_median']:.3f} "
                f"({r['ratio_p10']:.2f}-{r['ratio_p90']:.2f}) |"
                for r in rows
            ]
        else:
            lines += [
                "| model | images | fp32 top-1 | int8 top-1 old | int8 top-1 new | agreement old | agreement new |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {r['model']} | {r['images']} | {r['top1_fp32']:.2f} | {r['top1_old']:.2f} | {r['top1_new']:.2f} "
                f"| {r['agreement_old']:.2f} | {r['agreement_new']:.2f} |"
                for r in rows
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--old-tree", type=Path, help="checkout of the older litevit to compare with")
    parser.add_argument("--depthwise", action="store_true", help="int8: float depthwise (old) against int8 (new)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per form and precision")
    parser.add_argument("--calibration", type=Path, help="int8 calibration images (default: synthetic)")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--out", type=Path, help="append the records to this jsonl file")
    parser.add_argument("--accuracy", type=Path, metavar="RUNS", help="int8 accuracy of trained checkpoints instead")
    parser.add_argument("--data", type=Path, help="with --accuracy: the digits folder (train/ and val/)")
    parser.add_argument("--report", type=Path, metavar="JSONL", help="print the markdown tables of a jsonl and stop")
    parser.add_argument("--export-only", type=Path, help=argparse.SUPPRESS)  # the old tree's run
    args = parser.parse_args()
    if args.report is not None:
        print(report(args.report))
        return
    if not args.models:
        parser.error("name at least one model")
    if args.export_only is not None:
        export_all(args.models, args.export_only, args.calibration, args.calibration_images, runs=args.accuracy)
        return
    if args.accuracy is not None and (args.data is None or args.depthwise):
        parser.error("--accuracy needs --data DIGITS and compares old and new trees (not --depthwise)")
    if args.accuracy is not None:
        args.calibration, args.calibration_images = args.data / "train", 300
    if not args.depthwise and (args.old_tree is None or not (args.old_tree / "src" / "litevit").is_dir()):
        parser.error("--old-tree must be a litevit checkout (a folder holding src/litevit)")
    import openvino as ov
    import torch

    from litevit._extras import cpu_isa, cpu_model
    from litevit.bench.timing import git_commit
    from litevit.deploy.int8 import synthetic_calibration

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="litevit-batch1-"))
    folders = {"old": work / "old", "new": work / "new"}
    for folder in folders.values():
        folder.mkdir()
    calibration = args.calibration or synthetic_calibration(224, 224, args.calibration_images)
    if args.depthwise:
        comparison, old_commit = "int8: float depthwise (old) / int8 depthwise (new)", git_commit()
        export_all(args.models, folders["old"], calibration, args.calibration_images)
        export_all(args.models, folders["new"], calibration, args.calibration_images, dw_int8=True)
    else:
        comparison = "fused form: old tree / this tree"
        old_commit = subprocess.run(
            ["git", "-C", str(args.old_tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        env = {**os.environ, "PYTHONPATH": str(args.old_tree.resolve() / "src")}
        extra = ["--accuracy", str(args.accuracy)] if args.accuracy else []
        subprocess.run(
            [sys.executable, __file__, *args.models, "--export-only", str(folders["old"]), "--calibration",
             str(calibration), "--calibration-images", str(args.calibration_images), *extra],
            env=env, check=True,
        )  # fmt: skip
        export_all(args.models, folders["new"], calibration, args.calibration_images, runs=args.accuracy)
    meta = dict(
        comparison=comparison, cpu=cpu_model(), isa=list(cpu_isa()), torch=torch.__version__, openvino=ov.__version__,
        commit=git_commit(), old_commit=old_commit, threads=1, batch=1, seconds=args.seconds,
        command=f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python tools/batch1_graph.py "
        + " ".join(sys.argv[1:]),
    )  # fmt: skip
    if args.accuracy is not None:
        records = accuracy(args.models, folders, args.accuracy, args.data, meta)
    else:
        records = measure(args.models, folders, ("int8",) if args.depthwise else PRECISIONS, args.seconds, meta)
    if args.out is not None:
        with args.out.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main()
