"""Results as a person reads them: results.json, results.md, per_class.png and (for sweeps) sweep.png.

Scores are given in percent, as the papers print them. matplotlib (the ``eval`` extra) is imported
only to draw, so importing this module (``rsov.cli`` does) needs none of it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_output
from .metrics import RECALL_IOUS, SplitScores
from .options import option_values
from .runner import InstanceRun, SemanticRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SEEN_COLOUR, UNSEEN_COLOUR, MEAN_COLOUR = "#0072B2", "#E69F00", "#444444"
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


@dataclass
class RunSummary:
    """One variant's results, in percent; the first entry of ``metrics`` and ``per_class`` is the headline."""

    name: str
    swept: dict[str, str]
    options: dict[str, object]
    metrics: dict[str, float | None]
    per_class: dict[str, list[float | None]]
    per_image: list[dict] = field(default_factory=list)
    confusion: list[list[int]] | None = None  # semantic: pixel counts, rows true class, columns predicted + "none"


@dataclass
class Report:
    task: str  # "semantic" or "instance"
    dataset: str
    classes: list[str]
    unseen: list[str]
    images: int
    command: str
    runs: list[RunSummary]
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> RunSummary:
        """The run with the highest headline score (the first run when none has one)."""
        return max(self.runs, key=_ranking)


def _headline(run: RunSummary) -> float | None:
    return next(iter(run.metrics.values()))


def _ranking(run: RunSummary) -> float:
    headline = _headline(run)
    return headline if headline is not None else -1.0


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _pcts(values: list[float | None]) -> list[float | None]:
    return [_pct(v) for v in values]


def _split(split: SplitScores | None, names: tuple[str, str, str]) -> dict[str, float | None]:
    if split is None:
        return {}
    return {names[0]: _pct(split.seen), names[1]: _pct(split.unseen), names[2]: _pct(split.harmonic)}


def semantic_summary(run: SemanticRun) -> RunSummary:
    s = run.scores
    metrics = {"mIoU": _pct(s.miou), "pixel accuracy": _pct(s.pixel_accuracy)}
    metrics |= _split(s.split, ("s-mIoU", "u-mIoU", "h-mIoU"))
    images = [{"image": name, "mIoU": _pct(miou), "pixel accuracy": _pct(acc)} for name, miou, acc in run.per_image]
    return RunSummary(
        run.variant.name,
        dict(run.variant.swept),
        option_values(run.variant, "semantic"),
        metrics,
        {"IoU": _pcts(s.iou)},
        images,
        run.confusion.tolist(),
    )


def instance_summary(run: InstanceRun) -> RunSummary:
    s = run.scores
    metrics = {"mAP@0.5": _pct(s.map50)}
    metrics |= {f"R@100 (IoU {iou})": _pct(s.mean_recall[iou]) for iou in RECALL_IOUS}
    metrics |= _split(s.ap_split, ("seen mAP", "unseen mAP", "HM mAP"))
    metrics |= _split(s.recall_split, ("seen R@100", "unseen R@100", "HM R@100"))
    per_class = {"AP@0.5": _pcts(s.ap50)} | {f"R@100 (IoU {iou})": _pcts(s.recall[iou]) for iou in RECALL_IOUS}
    images = [{"image": name, "detections": count} for name, count in run.per_image]
    return RunSummary(
        run.variant.name, dict(run.variant.swept), option_values(run.variant, "instance"), metrics, per_class, images
    )


def write_report(report: Report, folder: Path) -> list[Path]:
    """Write the JSON, the Markdown and the charts into ``folder``; returns the files written."""
    written = [
        _write_text(folder / "results.json", json.dumps({"units": "percent", **asdict(report)}, indent=1)),
        _write_text(folder / "results.md", markdown(report)),
        plot_per_class(report, folder / "per_class.png"),
    ]
    if report.runs[0].swept:
        written.append(plot_sweep(report, folder / "sweep.png"))
    return written


def _write_text(path: Path, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _fmt(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "—"
    return f"**{value:.1f}**" if bold else f"{value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(report: Report) -> str:
    """A summary table (best run in bold), per-class scores of every run, the settings and the command."""
    best = report.best
    metric_names = list(report.runs[0].metrics)
    lines = [
        f"# {report.dataset}: {report.task} segmentation",
        "",
        f"{images_text(report.images)}, {len(report.classes)} classes, {len(report.runs)} configuration(s); "
        "scores in percent.",
        "",
    ]
    lines += _table(
        ["run"] + metric_names,
        [
            [r.name] + [_fmt(r.metrics[m], bold=r is best and m == metric_names[0]) for m in metric_names]
            for r in report.runs
        ],
    )
    class_metric = next(iter(best.per_class))
    lines += ["", f"## Per-class {class_metric}", ""]
    unseen = set(report.unseen)
    names = [f"{c} (unseen)" if c in unseen else c for c in report.classes]
    lines += _table(
        ["class"] + [r.name for r in report.runs],
        [[name] + [_fmt(r.per_class[class_metric][k]) for r in report.runs] for k, name in enumerate(names)],
    )
    lines += [
        "",
        "— : the class is in neither the labels nor the predictions (left out of the means)."
        if report.task == "semantic"
        else "— : the class has no ground-truth object (left out of the means).",
    ]
    if best.confusion is not None:
        lines += _confusions(best, report.classes)
    worst = sorted((im for im in best.per_image if im.get("mIoU") is not None), key=lambda im: im["mIoU"])[:5]
    if len(best.per_image) > 1 and worst:
        lines += ["", f"## Lowest-scoring images ({best.name})", ""]
        lines += _table(
            ["image", "mIoU", "pixel accuracy"],
            [[im["image"], _fmt(im["mIoU"]), _fmt(im["pixel accuracy"])] for im in worst],
        )
    lines += ["", "## Settings", ""]
    swept = set(best.swept)
    lines += [f"- {name}: {value}" for name, value in best.options.items() if name not in swept]
    lines += ["", "## Command", "", "```sh", report.command, "```"]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def _confusions(run: RunSummary, classes: list[str], count: int = 5) -> list[str]:
    """The largest shares of a class's labelled pixels given to another class (or to none)."""
    matrix = np.asarray(run.confusion, dtype=np.float64)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    np.fill_diagonal(share[:, : len(classes)], 0)
    targets = classes + ["(no class)"]
    pairs = sorted(
        ((share[t, p], t, p) for t in range(len(classes)) for p in range(len(targets)) if share[t, p] > 0), reverse=True
    )[:count]
    if not pairs:
        return []
    lines = ["", f"## Most confused ({run.name})", ""]
    return lines + _table(
        ["true class", "predicted as", "share of its pixels"],
        [[classes[t], targets[p], f"{100 * v:.1f}%"] for v, t, p in pairs],
    )


def _save(figure: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def plot_per_class(report: Report, path: Path) -> Path:
    """Horizontal bars of the best run's per-class headline score, its mean as a dashed line."""
    run = report.best
    metric = next(iter(run.per_class))
    values = run.per_class[metric]
    from matplotlib.figure import Figure

    n = len(report.classes)
    figure = Figure(figsize=(8, 1.6 + 0.34 * n))
    ax = figure.add_subplot()
    unseen = set(report.unseen)
    colours = [UNSEEN_COLOUR if c in unseen else SEEN_COLOUR for c in report.classes]
    y = np.arange(n)
    ax.barh(y, [v or 0.0 for v in values], color=colours, height=0.7)
    for k, v in enumerate(values):
        label, x, colour = (f"{v:.1f}", v + 1, "black") if v is not None else ("n/a (absent)", 1, "grey")
        ax.text(x, k, label, va="center", fontsize=9, color=colour)
    mean = _headline(run)
    if mean is not None:
        ax.axvline(mean, color=MEAN_COLOUR, linestyle="--", linewidth=1)
        ax.text(mean, -0.75, f" {next(iter(run.metrics))} {mean:.1f}", color=MEAN_COLOUR, fontsize=9, va="bottom")
    ax.set_yticks(y, report.classes)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_ylim(n - 0.5, -1.2)
    ax.set_xlabel(f"{metric} (%)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", alpha=0.3)
    if unseen:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=SEEN_COLOUR, label="seen"), Patch(color=UNSEEN_COLOUR, label="unseen")],
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            ncol=2,
            frameon=False,
        )
    title = f"{report.dataset}: per-class {metric}, {images_text(report.images)}"
    ax.set_title(title + (f"\nbest configuration: {run.name}" if run.swept else ""), loc="left", fontsize=11)
    return _save(figure, path)


def images_text(count: int) -> str:
    """Singular or plural: "1 image", "3 images"."""
    return f"{count} image" + ("" if count == 1 else "s")


def _as_numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot_sweep(report: Report, path: Path) -> Path:
    """Headline score against the first swept option; one line per combination of the other swept options.

    With a single line, every summary metric is drawn (the headline thicker).
    """
    options = list(report.runs[0].swept)
    x_option = options[0]
    x_texts = list(dict.fromkeys(r.swept[x_option] for r in report.runs))
    numbers = _as_numbers(x_texts)
    position = dict(zip(x_texts, numbers if numbers is not None else range(len(x_texts)), strict=True))
    series: dict[str, list[RunSummary]] = {}
    for run in report.runs:
        key = ", ".join(f"{o}={run.swept[o]}" for o in options[1:])
        series.setdefault(key, []).append(run)
    metric_names = list(report.runs[0].metrics)
    lines = (
        [(name, metric, runs) for name, runs in series.items() for metric in metric_names[:1]]
        if len(series) > 1
        else [(metric, metric, next(iter(series.values()))) for metric in metric_names]
    )
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.8))
    ax = figure.add_subplot()
    best = report.best
    # lines of equal scores would hide each other: shift each series sideways by a little
    spread = (max(position.values()) - min(position.values()) or 1) * 0.012
    dodge = {key: (i - (len(series) - 1) / 2) * spread for i, key in enumerate(series)} if len(series) > 1 else {}
    for i, (label, metric, runs) in enumerate(lines):
        shift = dodge.get(label, 0.0)
        points = [
            (position[r.swept[x_option]] + shift, r.metrics[metric]) for r in runs if r.metrics[metric] is not None
        ]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        headline = metric == metric_names[0]
        ax.plot(
            xs,
            ys,
            marker="o",
            color=SERIES_COLOURS[i % len(SERIES_COLOURS)],
            label=label or metric,
            linewidth=2.4 if headline else 1.2,
            linestyle="-" if headline else "--",
        )
        if headline:
            for x, yv in points:
                ax.annotate(f"{yv:.1f}", (x, yv), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    best_score = _headline(best)
    if best_score is not None:
        best_key = ", ".join(f"{o}={best.swept[o]}" for o in options[1:])
        ax.plot(
            [position[best.swept[x_option]] + dodge.get(best_key, 0.0)],
            [best_score],
            marker="*",
            markersize=16,
            color="#CC0000",
            linestyle="none",
            label=f"best: {best.name}",
            zorder=3,
        )
    if numbers is None:
        ax.set_xticks(list(position.values()), x_texts)
    else:
        ax.set_xticks(numbers, x_texts)
    ax.set_xlabel(x_option)
    ax.set_ylabel(f"{metric_names[0]} (%)" if len(series) > 1 else "score (%)")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(
        f"{report.dataset}: {metric_names[0]} against {x_option}, {images_text(report.images)}", loc="left", fontsize=11
    )
    return _save(figure, path)
