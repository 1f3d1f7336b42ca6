#!/usr/bin/env python3
"""Charts of benchmark results: one PNG per table, one small bar chart per metric.

    python benchmarks/plot.py benchmarks/results.json [--out-dir docs/benchmarks]
    python benchmarks/plot.py benchmarks/results.md       # the "every run" block of an
                                                          # older results file
    python benchmarks/bench.py --plot                      # measure, then plot

Each bar chart compares every pair of a table on one metric, with sing-box:sing-box (the
reference) in grey, pairs with our client or server in colour, the value printed on each bar
and the direction that is better in the title. Needs matplotlib (``pip install
'anytls[bench]'``); renders with the non-interactive Agg backend, so no display is needed.

Results file (``bench.py`` writes it as ``results.json`` beside ``results.md``)::

    {"title": ..., "date": ..., "tables": [
        {"name": "loopback", "title": ..., "reference": "sing-box:sing-box",
         "pairs": ["ours:ours", ...],
         "metrics": [{"key": "down_MBps", "label": "bulk download MB/s",
                      "better": "higher"}, ...],
         "medians": {"ours:ours": {"down_MBps": 885.0, ...}, ...}}]}
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "docs" / "benchmarks"

#: Colours per pair name (others cycle through the tail of the palette).
COLOURS = {
    "ours:ours": "#1f77b4",
    "ours-client:sing-box-server": "#4c9fd6",
    "sing-box-client:ours-server": "#2ca02c",
    "sing-box:sing-box": "#9a9a9a",
    "ours:ours-workers": "#9467bd",
}
PALETTE = ["#ff7f0e", "#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def load_results(path: Path) -> dict[str, Any]:
    """Read a results file: ``results.json``, or a ``results.md`` whose "every run" block
    (raw per-run figures) is turned into one table of medians with bench.py's metrics."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data: dict[str, Any] = json.loads(text)
        return data
    match = re.search(r"```json\n(.*?)\n```", text, re.S)
    if match is None:
        raise SystemExit(f"{path}: no results JSON found (expected bench.py's output)")
    raw: dict[str, list[dict[str, float]]] = json.loads(match.group(1))
    sys.path.insert(0, str(HERE))
    import bench

    title = text.splitlines()[0].lstrip("# ").strip()
    date = re.search(r"- date: ([^;]+);", text)
    return {
        "title": title,
        "date": date.group(1) if date else "",
        "tables": [
            bench.table_data("loopback", "all pairs on loopback", medians_of(raw), bench.FULL)
        ],
    }


def medians_of(raw: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per pair, the median of every figure over its runs."""
    return {
        name: {k: statistics.median(r[k] for r in runs if k in r) for k in runs[0]}
        for name, runs in raw.items()
        if runs
    }


def _label(value: float) -> str:
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.0f}" if a >= 100 else f"{value:.1f}"
    return f"{value:.2f}" if a >= 1 else f"{value:.3f}"


def plot_table(table: dict[str, Any], out: Path, subtitle: str = "") -> Path:
    """Draw one table as a grid of bar charts (one per metric) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs: list[str] = [p for p in table["pairs"] if p in table["medians"]]
    metrics = [m for m in table["metrics"] if any(m["key"] in table["medians"][p] for p in pairs)]
    if not pairs or not metrics:
        raise ValueError(f"table {table.get('name')!r} has no figures to plot")
    reference = table.get("reference")
    extra = iter(PALETTE * 4)
    colours = [COLOURS.get(p) or next(extra) for p in pairs]
    cols = 3 if len(metrics) > 4 else len(metrics)
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 2.6 * rows + 1.2), squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values = [table["medians"][p].get(metric["key"], math.nan) for p in pairs]
        bars = ax.bar(range(len(pairs)), values, color=colours)
        for bar, pair in zip(bars, pairs, strict=True):
            if pair == reference:
                bar.set_hatch("//")
                bar.set_edgecolor("#555555")
        ax.bar_label(bars, labels=[_label(v) if not math.isnan(v) else "n/a" for v in values],
                     fontsize=7, padding=1)  # fmt: skip
        arrow = {"higher": "  (higher is better)", "lower": "  (lower is better)"}
        ax.set_title(metric["label"] + arrow.get(metric["better"], ""), fontsize=8.5)
        ax.set_xticks([])
        ax.margins(y=0.18)
        ax.tick_params(axis="y", labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=c, hatch="//" if p == reference else None)
        for p, c in zip(pairs, colours, strict=True)
    ]
    names = [p + ("  (reference)" if p == reference else "") for p in pairs]
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(pairs), 3), fontsize=8)
    title = table.get("title") or table.get("name", "")
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per table of ``results`` in ``out_dir`` (``bench-<table name>.png``)."""
    written = []
    for table in results["tables"]:
        name = re.sub(r"[^a-z0-9]+", "-", table["name"].lower()).strip("-")
        date = table.get("date") or results.get("date", "")  # a table measured separately
        written.append(plot_table(table, out_dir / f"bench-{name}.png", date))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json (or an older results.md)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where the PNGs go (default {DEFAULT_OUT})",
    )
    args = parser.parse_args(argv)
    for path in plot(load_results(args.results), args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
