"""What ``litevit bench`` writes: JSON lines (and reads them back), markdown tables and the papers' accuracy-against-
speed plot.

int8 runners carry an accuracy cost when one was measured (``tools/int8_settings.py`` writes it: the top-1 drop of
one variant per family, trained at 64 px on drawn textures, under the settings that route uses). Tables print it
next to every int8 speed of the family. The plot keeps every point at its published ImageNet top-1 (a drop on
textures is no ImageNet figure) and marks the drop below the int8 point of the one variant it was measured on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..deploy.fastest import REFERENCE
from ..deploy.routes import ROUTES, route_of
from ..registry import family_line, list_models
from .peak import Peak
from .records import BenchRecord, Comparison, compared, record_key
from .run import RIVALS, BenchResult, FlopRate

# runtime -> the settings-measurement key whose drop it carries, per source
_COST_KEYS = {("litevit", "openvino-int8"): "openvino", ("litevit", "onnxruntime-int8"): "onnxruntime",
              ("timm", "openvino-int8"): "nncf-defaults"}  # fmt: skip
# what tools/int8_settings.py measures its drops on (its module docstring)
COST_DATA = "64-px drawn textures, 8 classes"


@dataclass(frozen=True)
class Int8Cost:
    """The top-1 an int8 route lost on one variant of a family (``tools/int8_settings.py``)."""

    drop: float  # top-1 points, fp32 minus int8 (negative: int8 scored higher)
    model: str  # the variant it was measured on


def write_jsonl(result: BenchResult, path: str | os.PathLike) -> None:
    with open(path, "a") as f:
        for record in result.records:
            f.write(json.dumps({"kind": "record", **dataclasses.asdict(record)}) + "\n")
        for comparison in result.comparisons:
            f.write(json.dumps({"kind": "comparison", **dataclasses.asdict(comparison)}) + "\n")
        if result.flop_rate is not None:
            f.write(json.dumps({"kind": "flop_rate", **dataclasses.asdict(result.flop_rate)}) + "\n")
        for peak in result.peaks:
            f.write(json.dumps({"kind": "peak", **dataclasses.asdict(peak)}) + "\n")


def read_jsonl(path: str | os.PathLike) -> BenchResult:
    """A run as :func:`write_jsonl` wrote it (the records behind a committed table or plot, drawn again)."""
    result = BenchResult([], [])
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        kind = row.pop("kind")
        if kind == "record":
            result.records.append(BenchRecord(**{**row, "img_size": tuple(row["img_size"])}))
        elif kind == "comparison":
            result.comparisons.append(Comparison(**row))
        elif kind == "flop_rate":
            result.flop_rate = FlopRate(**row)
        elif kind == "peak":
            result.peaks.append(Peak(**row))
    return result


Costs = dict[tuple[str, str], Int8Cost]  # (family line, route) -> the measured drop


def read_int8_costs(path: str | os.PathLike) -> Costs:
    """``(family line, route) -> Int8Cost`` from the ``chosen`` rows of ``tools/int8_settings.py``'s JSON lines."""
    costs = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "chosen":
            for route in ("openvino", "onnxruntime", "nncf-defaults"):
                costs[(family_line(row["model"]), route)] = Int8Cost(
                    row[f"{route.replace('-', '_')}_drop"], row["model"]
                )
    return costs


def int8_cost(record: BenchRecord, costs: Costs) -> Int8Cost | None:
    """The drop measured for the family and route of an int8 record (on one variant of the family), if any."""
    key = _COST_KEYS.get((record.source, record.runtime))
    if key is None or record.model not in list_models():
        return None
    return costs.get((family_line(record.model), key))


def _cost_text(record: BenchRecord, costs: Costs) -> str:
    cost = int8_cost(record, costs)
    return "" if cost is None else f" (top-1 {-cost.drop:+.2f})"


def markdown(result: BenchResult, costs: Costs | None = None) -> str:
    """Tables of the run: litevit's fastest against the other source's first, then every runner, then the
    XNNPACK shares and the FLOP-rate line."""
    costs = costs or {}
    first = result.records[0] if result.records else None
    lines = []
    if first is not None:
        lines += [
            f"Hardware: {first.device_name} ({first.device}); torch {first.torch_version}; dtype {first.dtype}; "
            f"commit {first.git_commit}.",
            "",
        ]
    if result.comparisons:
        lines += [*comparison_table(result, costs), ""]
        own = own_table(result)
        lines += [*own, ""] if len(own) > 2 else []
        apart = unmeasured_table(result)
        lines += [*apart, ""] if len(apart) > 2 else []
        rivals = rivals_table(result)
        lines += [*rivals, ""] if len(rivals) > 2 else []
        notes = dict.fromkeys(f"- {c.model}, batch {c.batch_size}, {c.threads} thread(s): {c.note}"
                              for c in result.comparisons if c.note)  # fmt: skip
        lines += [*notes, ""] if notes else []
    lines += [
        "| model | source | runtime | precision | fused | threads | batch | params (M) | MACs (M) | paper top-1 "
        "| median ms | p90 ms | images/s | speedup vs first litevit runner (p10-p90) |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result.records:
        top1 = f"{r.paper_top1:.1f}" if r.paper_top1 is not None else "-"
        speed = (
            "baseline" if r.baseline is None else f"{r.speedup_median:.2f} ({r.speedup_p10:.2f}-{r.speedup_p90:.2f})"
        )
        if r.source != "litevit":
            speed = "-"
        lines.append(
            f"| {r.model} | {r.source} | {r.runtime}{_cost_text(r, costs)} | {r.precision or '-'} | "
            f"{'yes' if r.fused else 'no'} | {r.threads} | {r.batch_size} | {r.params_m:.2f} | {r.macs_m:.0f} | "
            f"{top1} | {r.median_ms:.2f} | {r.p90_ms:.2f} | {r.images_per_s:.1f} | {speed} |"
        )
    if result.delegations:
        lines += ["", *(f"- `{name}`: {summary}" for name, summary in result.delegations.items())]
    for peak in result.peaks:
        rates = ", ".join(f"{name} {gmacs:.0f}" for name, gmacs in peak.gmacs.items())
        lines += ["", f"This core's peak, a 1024^3 matmul in OpenVINO, {peak.threads} thread(s): {rates} GMAC/s."]
    if (rate := result.flop_rate) is not None:
        lines += [
            "",
            f"{rate.model} fused eager, batch {rate.batch_size}, {rate.threads} thread(s): {rate.model_gflops:.1f} "
            f"GFLOP/s against a float32 1024^3 matmul at {rate.matmul_gflops:.1f} GFLOP/s, timed interleaved: "
            f"{rate.ratio_median:.0%} of the matmul rate (p10-p90 {rate.ratio_p10:.0%}-{rate.ratio_p90:.0%}).",
        ]
    return "\n".join(lines)


def route_text(record: BenchRecord, costs: Costs | None = None) -> str:
    """A runner as the tables name it: runtime, precision where it says more than fp32, and a measured int8 cost;
    a route name alone for ``--fastest``'s candidates in the quick bench."""
    if _is_route(record.runtime):
        return record.runtime
    precision = f" ({record.precision})" if record.precision not in ("", "fp32", "int8") else ""
    fused = " fused" if record.fused and record.runtime in ("eager", "compile") else ""
    return f"{record.runtime}{fused}{precision}{_cost_text(record, costs or {})}"


def comparison_table(result: BenchResult, costs: Costs | None = None) -> list[str]:
    """litevit's fastest runner against timm's fastest route at its defaults and against timm's fp32 IR at
    OpenVINO's defaults, per model, batch and thread count."""
    by_key = {
        (record_key(r.source, r.model, r.runtime, r.precision, r.fused), r.batch_size, r.threads): r
        for r in result.records
    }
    rows: dict[tuple[str, int, int], dict[str, Comparison]] = {}
    for c in result.comparisons:
        rows.setdefault((c.model, c.batch_size, c.threads), {})[c.against] = c
    lines = [
        "| model | threads | batch | litevit fastest (--fastest pick) | ms | timm fastest at defaults | ms "
        "| speed-up (p10-p90) | vs timm's OpenVINO at defaults (p10-p90) |",
        "|---|---:|---:|---|---:|---|---:|---|---|",
    ]
    for (model, batch, threads), against in rows.items():
        best = against.get("fastest")
        if best is None:
            continue
        ours, theirs = by_key[(best.ours, batch, threads)], by_key[(best.theirs, batch, threads)]
        ov = against.get("openvino defaults")
        ov_text = "-" if ov is None else f"{ov.speedup_median:.2f}x ({ov.speedup_p10:.2f}-{ov.speedup_p90:.2f})"
        lines.append(
            f"| {model} | {threads} | {batch} | {route_text(ours, costs)} | {ours.median_ms:.2f} | "
            f"{route_text(theirs, costs)} | {theirs.median_ms:.2f} | "
            f"{best.speedup_median:.2f}x ({best.speedup_p10:.2f}-{best.speedup_p90:.2f}) | {ov_text} |"
        )
    return lines


def route_name(runtime: str, precision: str) -> str:
    """The :class:`litevit.deploy.routes.Route` name of a litevit file runtime at a recorded precision
    (``openvino-int8`` at ``int8 + bf16`` is ``ov-int8-bf16``), or the runtime and precision as recorded."""
    if _is_route(runtime):
        return runtime
    float_part = precision.split(" + ")[-1]
    int8 = runtime.endswith("-int8")
    format = "openvino" if runtime.startswith("openvino") else "onnx" if runtime.startswith("onnxruntime") else ""
    name = (
        ("int8" + ("-bf16" if float_part == "bf16" else "")) if int8 else ("bf16" if float_part == "bf16" else "fp32")
    )
    route = route_of(format, name) if float_part in ("f32", "fp32", "bf16", "int8") else None
    return route.name if route is not None else f"{runtime} ({precision})"


def own_table(result: BenchResult) -> list[str]:
    """litevit's fastest exported file (what ``litevit export --fastest`` writes) against its own fp32 ONNX in
    onnxruntime and its own fp32 IR compiled at OpenVINO's defaults."""
    lines = [
        "| model | threads | batch | litevit fastest file | ms | vs its fp32 ONNX in onnxruntime (p10-p90) "
        "| vs its fp32 IR at OpenVINO's defaults (p10-p90) | share of this core's peak |",
        "|---|---:|---:|---|---:|---|---|---|",
    ]
    for (model, batch, threads), against, ours in _comparisons_by_group(result, "litevit "):
        lines.append(
            f"| {model} | {threads} | {batch} | {route_name(ours.runtime, ours.precision)} | {ours.median_ms:.2f} | "
            f"{_ratio_text(against.get('litevit onnxruntime fp32'))} | "
            f"{_ratio_text(against.get('litevit openvino defaults'))} | {peak_share(ours, result.peaks)} |"
        )
    return lines


def _comparisons_by_group(
    result: BenchResult, kind: str
) -> list[tuple[tuple[str, int, int], dict[str, Comparison], BenchRecord]]:
    """The comparisons whose kind starts with ``kind``, by (model, batch, threads), with the record of their
    ``ours`` side."""
    by_key = {
        (record_key(r.source, r.model, r.runtime, r.precision, r.fused), r.batch_size, r.threads): r
        for r in result.records
    }
    rows: dict[tuple[str, int, int], dict[str, Comparison]] = {}
    for c in result.comparisons:
        if c.against.startswith(kind):
            rows.setdefault((c.model, c.batch_size, c.threads), {})[c.against] = c
    return [
        (group, against, by_key[(next(iter(against.values())).ours, group[1], group[2])])
        for group, against in rows.items()
    ]


def peak_share(record: BenchRecord, peaks: list[Peak]) -> str:
    """The record's MAC rate (MACs per image x images/s) as a share of the measured peak of its precision."""
    peak = next((p for p in peaks if p.threads == record.threads), None)
    rate = None if peak is None else peak.of(record.precision.split(" ")[0])
    if rate is None:
        return "-"
    gmacs = record.macs_m * record.images_per_s / 1e3
    return f"{gmacs / rate:.0%} of {rate:.0f} GMAC/s"


def _is_route(runtime: str) -> bool:
    """Whether a record's runtime is a route name (the quick bench's ``--fastest`` candidates) or the reference."""
    return runtime == REFERENCE or any(runtime == route.name for route in ROUTES)


def unmeasured_table(result: BenchResult) -> list[str]:
    """The fastest file the quick bench could not judge without images (bf16, int8 calibrated on noise), apart:
    against litevit's pick and against the other source's fastest route at its defaults."""
    lines = [
        "| model | threads | batch | fastest file not measured (needs --calibration) | ms | vs litevit's pick "
        "(p10-p90) | vs timm fastest at defaults (p10-p90) | share of this core's peak |",
        "|---|---:|---:|---|---:|---|---|---|",
    ]
    for (model, batch, threads), against, ours in _comparisons_by_group(result, "unmeasured "):
        lines.append(
            f"| {model} | {threads} | {batch} | {ours.runtime} | {ours.median_ms:.2f} | "
            f"{_ratio_text(against.get('unmeasured vs pick'))} | {_ratio_text(against.get('unmeasured vs other'))} | "
            f"{peak_share(ours, result.peaks)} |"
        )
    return lines


def rivals_table(result: BenchResult) -> list[str]:
    """Whether a lightweight ViT is worth deploying: litevit's picks (and the files not measured) beside the models
    a user would pick instead, each at its published top-1 and its fastest route at its runtimes' defaults."""
    by_key = {
        (record_key(r.source, r.model, r.runtime, r.precision, r.fused), r.batch_size, r.threads): r
        for r in result.records
    }
    ours: dict[tuple[str, int, int], tuple[BenchRecord, str]] = {}
    for c in result.comparisons:
        label = {"litevit onnxruntime fp32": "litevit's pick", "unmeasured vs pick": "litevit, not measured"}.get(
            c.against
        )
        if label is not None:
            ours[(c.ours, c.batch_size, c.threads)] = (by_key[(c.ours, c.batch_size, c.threads)], label)
    best: dict[tuple[str, int, int], BenchRecord] = {}
    for r in result.records:
        if r.model in RIVALS and compared(r.source, r.runtime, r.precision):
            key = (r.model, r.batch_size, r.threads)
            if key not in best or r.images_per_s > best[key].images_per_s:
                best[key] = r
    if not best:
        return []
    rows = [*ours.values()] + [
        (r, "timm at defaults" + (", not measured" if r.runtime.endswith("-int8") else "")) for r in best.values()
    ]
    rows.sort(key=lambda row: (row[0].threads, row[0].batch_size, -row[0].images_per_s))
    lines = [
        "| threads | batch | model | published top-1 | file or route | whose (int8/bf16 accuracy) | ms | images/s |",
        "|---:|---:|---|---:|---|---|---:|---:|",
    ]
    for r, label in rows:
        top1 = "-" if r.paper_top1 is None else f"{r.paper_top1:.1f}"
        lines.append(f"| {r.threads} | {r.batch_size} | {r.model} | {top1} | {route_text(r)} | {label} | "
                     f"{r.median_ms:.2f} | {r.images_per_s:.1f} |")  # fmt: skip
    return lines


def _ratio_text(c: Comparison | None) -> str:
    return "-" if c is None else f"{c.speedup_median:.2f}x ({c.speedup_p10:.2f}-{c.speedup_p90:.2f})"


_MARKERS = {"eager": "o", "compile": "s", "onnxruntime": "^", "onnxruntime-int8": "v", "openvino": "D",
            "openvino-int8": "d", "executorch": "P"}  # fmt: skip


@dataclass(frozen=True)
class PlotPoint:
    """One point of a panel, with the decisions :func:`plot` draws: where it sits and what is written beside it."""

    record: BenchRecord  # the runner drawn: x is its images/s
    line: str | None  # the family line it is drawn on; None for a reference CNN
    top1: float  # y: the published ImageNet top-1 (of the fp32 model, for int8 runners too)
    drop: float | None  # int8 top-1 drop drawn below the point: only on the variant it was measured on
    label: str | None  # text beside the point (reference CNNs: name and runtime)


def _int8(runtime: str) -> bool:
    return runtime.endswith("-int8")


def plot_points(records: list[BenchRecord], costs: Costs | None = None) -> list[PlotPoint]:
    """The points of one panel (one batch size and thread count).

    A registered model is drawn at its fastest runner (litevit's: fused forms at the precision its runner compiles
    with; another source's: its routes at their defaults, as :func:`comparison_table` picks them), at its
    published top-1. A measured int8 drop is attached to the int8 point of the variant it was measured on only
    (the same family's other variants were not measured). A reference CNN is drawn at its fastest fp32 runner,
    labelled with it: its int8 accuracy was never measured, so an int8 speed would pair with a top-1 it may not keep.
    """
    costs = costs or {}
    registered = set(list_models())
    best: dict[tuple[str, str], BenchRecord] = {}
    for r in records:
        if r.paper_top1 is None or (r.source == "litevit" and not r.fused):
            continue
        if r.precision and not compared(r.source, r.runtime, r.precision):
            continue  # the runners the comparisons count, old runs (no precision) as they were
        if r.model not in registered and _int8(r.runtime):
            continue
        key = (r.source, r.model)
        if key not in best or r.images_per_s > best[key].images_per_s:
            best[key] = r
    points = []
    for (_, model), r in best.items():
        if model not in registered:
            points.append(PlotPoint(r, None, r.paper_top1, None, f"{model} ({r.runtime})"))
            continue
        cost = int8_cost(r, costs)
        drop = cost.drop if cost is not None and cost.model == model else None
        points.append(PlotPoint(r, family_line(model), r.paper_top1, drop, None))
    return points


def plot(result: BenchResult, path: str | os.PathLike, costs: Costs | None = None) -> None:
    """PNG of :func:`figure`."""
    fig = figure(result, costs)
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt  # after figure() chose the Agg backend

    plt.close(fig)


def figure(result: BenchResult, costs: Costs | None = None) -> Any:
    """As the papers plot it: top-1 against images/s (log), one panel per batch size and thread count.

    One line per family through its variants for litevit's fastest path (solid) and timm's (dashed), the marker
    saying which runtime was fastest (filled: litevit, hollow: timm, so single variants are told apart too). Every
    point sits at its published ImageNet top-1; where an int8 drop was measured (:func:`plot_points`), a dotted
    segment below the int8 point is as long as the drop, and the legend and caption say what it was measured on.
    Reference CNNs are black, labelled with their runtime. Points are not labelled one by one otherwise (families
    are told apart by colour in the legend), so nothing overlaps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    batches = sorted({r.batch_size for r in result.records})
    thread_counts = sorted({r.threads for r in result.records})
    fig, axes = plt.subplots(
        len(thread_counts), len(batches), figsize=(6.5 * len(batches), 5 * len(thread_counts)), squeeze=False,
        sharey=True,
    )  # fmt: skip
    panels = {
        (threads, batch): plot_points([r for r in result.records if (r.threads, r.batch_size) == (threads, batch)],
                                      costs)
        for threads in thread_counts for batch in batches
    }  # fmt: skip
    families = sorted({p.line for points in panels.values() for p in points if p.line is not None})
    colours = {family: f"C{i}" for i, family in enumerate(families)}
    runtimes_seen: set[str] = set()
    sources_seen: set[str] = set()
    drops_drawn = False
    for row, threads in zip(axes, thread_counts, strict=True):
        for column, (ax, batch) in enumerate(zip(row, batches, strict=True)):
            points = panels[(threads, batch)]
            for family in families:
                for source, style in (("litevit", "-"), ("timm", "--")):
                    line = sorted((p for p in points if p.line == family and p.record.source == source),
                                  key=lambda p: p.record.images_per_s)  # fmt: skip
                    if not line:
                        continue
                    ax.plot([p.record.images_per_s for p in line], [p.top1 for p in line], style,
                            color=colours[family], alpha=0.8)  # fmt: skip
                    sources_seen.add(source)
                    for p in line:
                        runtimes_seen.add(p.record.runtime)
                        fill = colours[family] if source == "litevit" else "none"  # timm's points hollow
                        ax.scatter(p.record.images_per_s, p.top1, marker=_MARKERS[p.record.runtime], facecolors=fill,
                                   edgecolors=colours[family], zorder=3)  # fmt: skip
            for p in points:
                x = p.record.images_per_s
                if p.line is None:  # a reference CNN
                    runtimes_seen.add(p.record.runtime)
                    ax.scatter(x, p.top1, marker=_MARKERS[p.record.runtime], color="black", zorder=3)
                    ax.annotate(p.label, (x, p.top1), fontsize=7, xytext=(4, -10), textcoords="offset points")
                elif p.drop is not None:  # its length is the drop (the tables print the numbers)
                    drops_drawn = True
                    ax.plot([x, x], [p.top1, p.top1 - p.drop], ":", color=colours[p.line], linewidth=1.5)
            ax.set_xscale("log")
            ax.set_xlabel(f"images/s, batch {batch}, {threads} thread(s) (log)")
            if column == 0:
                ax.set_ylabel("ImageNet top-1 (%, published, fp32)")
            ax.tick_params(labelleft=True)
            ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=colours[f], label=f) for f in families]
    styles = [
        (src, s, fill) for src, s, fill in (("litevit", "-", "gray"), ("timm", "--", "none")) if src in sources_seen
    ]
    handles += [Line2D([], [], color="gray", linestyle=s, marker="o", markerfacecolor=fill, label=f"{src}'s fastest")
                for src, s, fill in styles]  # fmt: skip
    handles += [Line2D([], [], color="gray", marker=_MARKERS[r], linestyle="", label=r) for r in sorted(runtimes_seen)]
    if drops_drawn:
        handles.append(Line2D([], [], color="gray", linestyle=":", label=f"int8 top-1 drop on {COST_DATA}*"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.04))  # fmt: skip
    if any(_int8(r) for r in runtimes_seen):
        caption = "Every point at its published fp32 ImageNet top-1: int8's ImageNet accuracy was not measured."
        if drops_drawn:
            caption += " *tools/int8_settings.py, below the int8 point of the one variant per family it measured."
        fig.text(0.5, 0.01, caption, ha="center", fontsize=7)
    first = result.records[0]
    fig.suptitle(f"{first.device_name}, torch {first.torch_version}", fontsize=9)
    fig.tight_layout(rect=(0, 0.16 / len(thread_counts), 1, 0.95))
    return fig
