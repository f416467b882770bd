"""Write a benchmark run as JSON (everything), Markdown (tables) and PNG (one chart per metric).

Input is the ``summary`` of ``bench.runner.summarize`` plus a ``meta`` dict (date, machine,
command, sizes, peer versions and notes, skipped peers). Ratios are peer median divided by
catzilla_mp's median, whatever the metric's direction: the arrow in each row says which way
is better, so ``×0.10`` on a ↑ row means the peer reaches a tenth of catzilla_mp.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from bench import peers as peers_mod
from bench import workloads as wl

ARROW = {"higher": "↑", "lower": "↓"}


def fmt(x) -> str:
    """Three significant figures, thousands separated: 123,000 / 1,230 / 12.3 / 0.0123."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(x)))))
    return f"{round(x, digits):,.{digits}f}"


def _rows(summary: dict, names: list):
    """(workload, metric) pairs that some peer has a figure for, in catalogue order."""
    for name in names:
        for metric in wl.BY_NAME[name].metrics:
            if metric.key == "processes":
                continue  # context, not a result
            if any(metric.key in summary[p].get(name, {}).get("metrics", {}) for p in summary):
                yield name, metric


def _labels(summary: dict) -> list:
    return [(p, peers_mod.BY_NAME[p].label if p in peers_mod.BY_NAME else p) for p in summary]


def markdown(summary: dict, meta: dict, names: list) -> str:
    cols = _labels(summary)
    out = [f"# catzilla_mp benchmark — {meta['date']} on {meta['host']}", "",
           f"Machine: {meta['machine']}. Command: `{meta['command']}` "
           f"({meta['mode']}, {meta['reps']} interleaved repetitions, 2 workers each). "
           f"Other processes on the machine used {fmt(meta.get('other_cpu_percent'))}% of a "
           f"core during the run (0 means the figures are undisturbed).", ""]
    out += ["Median over repetitions; in brackets each peer's ratio to catzilla_mp "
            "(peer ÷ catzilla_mp; ↑ higher is better, ↓ lower is better).", ""]
    out.append("| Workload | " + " | ".join(label for _, label in cols) + " |")
    out.append("|---|" + "---:|" * len(cols))
    for name, metric in _rows(summary, names):
        cells = []
        for peer, _ in cols:
            entry = summary[peer].get(name, {})
            st = entry.get("metrics", {}).get(metric.key)
            if st is None:
                cells.append("failed" if entry.get("errors") else "–")
                continue
            ratio = st.get("ratio")
            extra = f" (×{fmt(ratio)})" if ratio is not None and peer != "catzilla_mp" else ""
            cells.append(fmt(st["median"]) + extra)
        out.append(f"| {metric.label} ({metric.unit}) {ARROW[metric.better]} | "
                   + " | ".join(cells) + " |")
    out += ["", "Min–max over repetitions:", ""]
    out.append("| Workload | " + " | ".join(label for _, label in cols) + " |")
    out.append("|---|" + "---:|" * len(cols))
    for name, metric in _rows(summary, names):
        cells = []
        for peer, _ in cols:
            st = summary[peer].get(name, {}).get("metrics", {}).get(metric.key)
            cells.append(f"{fmt(st['min'])}–{fmt(st['max'])}" if st else "–")
        out.append(f"| {metric.label} | " + " | ".join(cells) + " |")
    out += ["", "Peers:", ""]
    for peer, _ in cols:
        info = meta["peers"].get(peer, {})
        out.append(f"- **{peer}** {info.get('version', '')}: {info.get('note', '')}")
    for peer, why in meta.get("skipped", {}).items():
        out.append(f"- **{peer}** skipped: {why}")
    errors = [(p, n, e) for p in summary for n, entry in summary[p].items()
              for e in entry.get("errors", [])]
    if errors:
        out += ["", "Failures:", ""]
        out += [f"- {p} / {n}: {e}" for p, n, e in errors]
    out += ["", "Workloads:", ""]
    for name in names:
        out.append(f"- `{name}`: {wl.BY_NAME[name].doc}")
    out.append("")
    return "\n".join(out)


def chart(summary: dict, meta: dict, names: list, path: Path) -> None:
    """One horizontal bar chart per metric: median bar, min–max whisker, catzilla_mp first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(_rows(summary, names))
    cols = _labels(summary)
    ncols = 3
    nrows = max(1, math.ceil(len(rows) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 0.45 * len(cols) * nrows + 1.2 * nrows),
                             squeeze=False)
    for ax, (name, metric) in zip(axes.flat, rows):
        labels, med, lo, hi, colors = [], [], [], [], []
        for peer, label in cols:
            st = summary[peer].get(name, {}).get("metrics", {}).get(metric.key)
            labels.append(label)
            if st is None:
                med.append(0.0); lo.append(0.0); hi.append(0.0)
            else:
                med.append(st["median"])
                lo.append(st["median"] - st["min"])
                hi.append(st["max"] - st["median"])
            colors.append("tab:orange" if peer == "catzilla_mp" else "tab:blue")
        y = range(len(labels))
        ax.barh(list(y), med, xerr=[lo, hi], color=colors, capsize=2)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        positive = [m for m in med if m > 0]
        if positive and max(positive) / min(positive) > 50:
            ax.set_xscale("log")
        ax.set_title(f"{metric.label} ({metric.unit}) {ARROW[metric.better]}", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(f"catzilla_mp vs peers — {meta['date']} {meta['host']} ({meta['mode']}, "
                 f"{meta['reps']} reps, 2 workers; other processes used "
                 f"{fmt(meta.get('other_cpu_percent'))}% of a core meanwhile)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(summary: dict, meta: dict, names: list, outdir: Path, with_chart: bool = True) -> dict:
    """Write <date>-<host>.{json,md,png} into ``outdir``; return the paths written."""
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{meta['date'][:10]}-{meta['host']}"
    paths = {"json": outdir / f"{stem}.json", "md": outdir / f"{stem}.md"}
    doc = {"meta": meta, "workloads": {n: {"doc": wl.BY_NAME[n].doc, "metrics": {
        m.key: {"unit": m.unit, "better": m.better, "label": m.label}
        for m in wl.BY_NAME[n].metrics}} for n in names}, "results": summary}
    paths["json"].write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    paths["md"].write_text(markdown(summary, meta, names))
    if with_chart:
        paths["png"] = outdir / f"{stem}.png"
        chart(summary, meta, names, paths["png"])
    return paths
