"""What ``litevit bench`` writes: JSON lines, markdown tables and the papers' accuracy-against-speed plot.

int8 runners carry an accuracy cost when one was measured (``tools/int8_settings.py`` writes it: the top-1 drop of
a trained model of the family under the settings that route uses): tables print it next to the speed, and the plot
draws an int8 point at the paper top-1 minus that drop.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..registry import get_variant, list_models
from .run import BenchRecord, BenchResult

# runtime -> the settings-measurement key whose drop it carries, per source
_COST_KEYS = {("litevit", "openvino-int8"): "openvino", ("litevit", "onnxruntime-int8"): "onnxruntime",
              ("timm", "openvino-int8"): "nncf-defaults"}  # fmt: skip


def write_jsonl(result: BenchResult, path: str | os.PathLike) -> None:
    with open(path, "a") as f:
        for record in result.records:
            f.write(json.dumps({"kind": "record", **dataclasses.asdict(record)}) + "\n")
        for comparison in result.comparisons:
            f.write(json.dumps({"kind": "comparison", **dataclasses.asdict(comparison)}) + "\n")
        if result.flop_rate is not None:
            f.write(json.dumps({"kind": "flop_rate", **dataclasses.asdict(result.flop_rate)}) + "\n")


def read_int8_costs(path: str | os.PathLike) -> dict[tuple[str, str], float]:
    """``(family line, route) -> top-1 drop`` from the ``chosen`` rows of ``tools/int8_settings.py``'s JSON lines."""
    costs = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "chosen":
            for route in ("openvino", "onnxruntime", "nncf-defaults"):
                costs[(_line(row["model"]), route)] = row[f"{route.replace('-', '_')}_drop"]
    return costs


def int8_cost(record: BenchRecord, costs: dict[tuple[str, str], float]) -> float | None:
    key = _COST_KEYS.get((record.source, record.runtime))
    if key is None or record.model not in list_models():
        return None
    return costs.get((_line(record.model), key))


def _cost_text(record: BenchRecord, costs: dict[tuple[str, str], float]) -> str:
    cost = int8_cost(record, costs)
    return "" if cost is None else f" (top-1 {-cost:+.2f})"


def markdown(result: BenchResult, costs: dict[tuple[str, str], float] | None = None) -> str:
    """Tables of the run: every runner, then litevit-vs-other comparisons, then the FLOP-rate line."""
    costs = costs or {}
    first = result.records[0] if result.records else None
    lines = []
    if first is not None:
        lines += [
            f"Hardware: {first.device_name} ({first.device}); torch {first.torch_version}; dtype {first.dtype}; "
            f"commit {first.git_commit}.",
            "",
        ]
    lines += [
        "| model | source | runtime | fused | threads | batch | params (M) | MACs (M) | paper top-1 | median ms "
        "| p90 ms | images/s | speedup vs unfused eager (p10-p90) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result.records:
        top1 = f"{r.paper_top1:.1f}" if r.paper_top1 is not None else "-"
        speed = (
            "baseline" if r.baseline is None else f"{r.speedup_median:.2f} ({r.speedup_p10:.2f}-{r.speedup_p90:.2f})"
        )
        if r.source != "litevit":
            speed = "-"
        lines.append(
            f"| {r.model} | {r.source} | {r.runtime}{_cost_text(r, costs)} | {'yes' if r.fused else 'no'} | "
            f"{r.threads} | {r.batch_size} | {r.params_m:.2f} | {r.macs_m:.0f} | {top1} | {r.median_ms:.2f} | "
            f"{r.p90_ms:.2f} | {r.images_per_s:.1f} | {speed} |"
        )
    if result.comparisons:
        lines += ["", *comparison_table(result, costs)]
    if result.delegations:
        lines += ["", *(f"- `{name}`: {summary}" for name, summary in result.delegations.items())]
    if (rate := result.flop_rate) is not None:
        lines += [
            "",
            f"{rate.model} fused eager, batch {rate.batch_size}, {rate.threads} thread(s): {rate.model_gflops:.1f} "
            f"GFLOP/s against a float32 1024^3 matmul at {rate.matmul_gflops:.1f} GFLOP/s, timed interleaved: "
            f"{rate.ratio_median:.0%} of the matmul rate (p10-p90 {rate.ratio_p10:.0%}-{rate.ratio_p90:.0%}).",
        ]
    return "\n".join(lines)


def comparison_table(result: BenchResult, costs: dict[tuple[str, str], float] | None = None) -> list[str]:
    """litevit's fastest runner against timm's fastest, with images/s and int8 accuracy costs."""
    costs = costs or {}
    by_key = {
        (r.source, r.model, r.runtime, r.fused, r.batch_size, r.threads): r for r in result.records
    }  # the runner keys are source:model:runtime[:fused]

    def record(key: str, batch: int, threads: int) -> BenchRecord:
        parts = key.split(":")
        return by_key[(parts[0], parts[1], parts[2], len(parts) > 3, batch, threads)]

    lines = [
        "| model | threads | batch | litevit fastest | images/s | timm fastest | images/s | speedup (p10-p90) |",
        "|---|---:|---:|---|---:|---|---:|---|",
    ]
    for c in result.comparisons:
        ours, theirs = record(c.ours, c.batch_size, c.threads), record(c.theirs, c.batch_size, c.threads)
        lines.append(
            f"| {c.model} | {c.threads} | {c.batch_size} | {ours.runtime}{_cost_text(ours, costs)} | "
            f"{ours.images_per_s:.1f} | {theirs.runtime}{_cost_text(theirs, costs)} | {theirs.images_per_s:.1f} | "
            f"{c.speedup_median:.2f} ({c.speedup_p10:.2f}-{c.speedup_p90:.2f}) |"
        )
    return lines


_MARKERS = {"eager": "o", "compile": "s", "onnxruntime": "^", "onnxruntime-int8": "v", "openvino": "D",
            "openvino-int8": "d", "executorch": "P"}  # fmt: skip


def _fastest(records: list[BenchRecord]) -> dict[tuple[str, str], BenchRecord]:
    """(source, model) -> its fastest runner (litevit's fused forms only: that is what it deploys)."""
    best: dict[tuple[str, str], BenchRecord] = {}
    for r in records:
        if r.source == "litevit" and not r.fused:
            continue
        key = (r.source, r.model)
        if key not in best or r.images_per_s > best[key].images_per_s:
            best[key] = r
    return best


def _line(model: str) -> str:
    """The line a registered model is drawn on: its family, with MobileViT split into v1, v2 and v3."""
    family = get_variant(model).family
    return model.split("_")[0] if family == "mobilevit" else family


def plot(result: BenchResult, path: str | os.PathLike, costs: dict[tuple[str, str], float] | None = None) -> None:
    """PNG, as the papers plot it: top-1 against images/s (log), one panel per batch size and thread count.

    One line per family through its variants for litevit's fastest path (solid) and timm's (dashed), the
    marker saying which runtime was fastest (filled: litevit, hollow: timm, so single variants are told apart too);
    an int8 point sits at the paper top-1 minus its measured drop.
    Reference CNNs are labelled crosses. Points are not labelled one by one (families are told apart by colour
    in the legend), so nothing overlaps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    costs = costs or {}
    batches = sorted({r.batch_size for r in result.records})
    thread_counts = sorted({r.threads for r in result.records})
    fig, axes = plt.subplots(
        len(thread_counts), len(batches), figsize=(6.5 * len(batches), 5 * len(thread_counts)), squeeze=False
    )
    registered = set(list_models())
    families = sorted({_line(r.model) for r in result.records if r.model in registered})
    colours = {family: f"C{i}" for i, family in enumerate(families)}
    runtimes_seen: set[str] = set()

    def top1(r: BenchRecord) -> float:
        return r.paper_top1 - (int8_cost(r, costs) or 0.0)

    for row, threads in zip(axes, thread_counts, strict=True):
        for ax, batch in zip(row, batches, strict=True):
            group = [r for r in result.records if r.batch_size == batch and r.threads == threads]
            best = _fastest([r for r in group if r.paper_top1 is not None])
            for family in families:
                for source, style in (("litevit", "-"), ("timm", "--")):
                    points = sorted(
                        (r for (src, model), r in best.items() if src == source and model in registered
                         and _line(model) == family),
                        key=lambda r: r.images_per_s,
                    )  # fmt: skip
                    if not points:
                        continue
                    ax.plot([r.images_per_s for r in points], [top1(r) for r in points], style,
                            color=colours[family], alpha=0.8)  # fmt: skip
                    for r in points:
                        runtimes_seen.add(r.runtime)
                        fill = colours[family] if source == "litevit" else "none"  # timm's points hollow
                        ax.scatter(r.images_per_s, top1(r), marker=_MARKERS[r.runtime], facecolors=fill,
                                   edgecolors=colours[family], zorder=3)  # fmt: skip
            for (_, model), r in best.items():
                if model not in registered:  # a reference CNN
                    ax.scatter(r.images_per_s, r.paper_top1, marker="x", color="black", zorder=3)
                    ax.annotate(model, (r.images_per_s, r.paper_top1), fontsize=7, xytext=(4, -10),
                                textcoords="offset points")  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel(f"images/s, batch {batch}, {threads} thread(s) (log)")
            ax.set_ylabel("ImageNet top-1 (%, published; int8: minus measured drop)")
            ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=colours[f], label=f) for f in families]
    handles += [Line2D([], [], color="gray", linestyle=s, marker="o", markerfacecolor=fill, label=f"{src}'s fastest")
                for src, s, fill in (("litevit", "-", "gray"), ("timm", "--", "none"))]  # fmt: skip
    handles += [Line2D([], [], color="gray", marker=_MARKERS[r], linestyle="", label=r) for r in sorted(runtimes_seen)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    first = result.records[0]
    fig.suptitle(f"{first.device_name}, torch {first.torch_version}", fontsize=9)
    fig.tight_layout(rect=(0, 0.1 / len(thread_counts), 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
