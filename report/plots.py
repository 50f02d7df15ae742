"""The report's figures: matplotlib on the Agg backend, each written atomically as a PNG.

Every function takes plain data (numbers, labels) and the path to write; callers never ask for a
figure without data (the report says "no trials finished yet" instead).
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from core.files import atomic_write_bytes  # noqa: E402

DPI = 110
#: An accuracy axis spans at least this many standard errors of what it shows (a difference of a few
#: images never fills the axis), or :data:`MIN_SPAN` when the standard error is unknown.
MIN_SPAN_SE = 8.0
MIN_SPAN = 0.05
CHANCE_STYLE = dict(color="0.35", ls=":", lw=1.3)


def _save(fig: Any, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    buf = io.BytesIO()
    fig.tight_layout(rect=rect)
    for _ in range(3):                      # wrap what sticks out, lay out again, until everything fits
        if not _fit_texts(fig):
            break
        fig.tight_layout(rect=rect)
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


# --- honest axes: spans, chance, epochs, texts that fit ------------------------------------------

def accuracy_limits(values: Sequence[float], se: float | None = None,
                    chance: float | None = None) -> tuple[float, float]:
    """The limits of an accuracy axis showing ``values``: their range with a margin, widened to at
    least :data:`MIN_SPAN_SE` standard errors (:data:`MIN_SPAN` when ``se`` is unknown) around its
    middle, kept inside [0, 1]; widened to the chance level when that lies within one span below."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    need = MIN_SPAN_SE * se if se else MIN_SPAN
    span = max(hi - lo, need)
    pad = 0.08 * span
    mid = (lo + hi) / 2
    lo, hi = min(lo, mid - span / 2) - pad, max(hi, mid + span / 2) + pad
    if chance is not None and chance < lo and lo - chance <= hi - lo:
        lo = chance - pad
    if lo < 0:
        lo, hi = 0.0, min(1.0, hi - lo)
    if hi > 1:
        lo, hi = max(0.0, lo - (hi - 1)), 1.0
    return lo, hi


def accuracy_axis(ax: Any, values: Sequence[float], *, se: float | None = None, chance: float | None = None,
                  axis: str = "y", label_chance: bool = True) -> None:
    """Set an accuracy axis's limits (:func:`accuracy_limits`) and draw the chance level (dotted)
    when it lies within them."""
    lo, hi = accuracy_limits(values, se, chance)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(lo, hi)
    if chance is not None and lo <= chance <= hi:
        line = ax.axhline if axis == "y" else ax.axvline
        line(chance, **CHANCE_STYLE, label=f"chance ({chance:.3g})" if label_chance else None, zorder=1)


def epoch_axis(ax: Any, axis: str = "x") -> None:
    """Whole-number ticks only (matplotlib's integer locator falls back to fractions when fewer than
    two whole numbers are in view: a one-epoch run)."""
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _texts(fig: Any) -> list[tuple[Any, bool]]:
    """The titles and axis labels of a figure, each with whether it runs vertically."""
    out = [(fig._suptitle, False)] if getattr(fig, "_suptitle", None) is not None else []
    for ax in fig.axes:
        out += [(ax.title, False)] + ([(ax.xaxis.label, False), (ax.yaxis.label, True)] if ax.axison else [])
    return [(t, v) for t, v in out if t.get_text()]


def _fit_texts(fig: Any) -> bool:
    """Wrap every title and axis label that reaches outside the figure onto more lines (as wide as
    the room on either side of its centre allows); True when one was wrapped."""
    import textwrap

    renderer = fig.canvas.get_renderer()
    room = fig.bbox
    changed = False
    for text, vertical in _texts(fig):
        box = text.get_window_extent(renderer)
        if vertical:
            size, centre, low, high = box.height, (box.y0 + box.y1) / 2, room.y0, room.y1
        else:
            size, centre, low, high = box.width, (box.x0 + box.x1) / 2, room.x0, room.x1
        allowed = 2 * min(centre - low, high - centre) - 8
        if size <= allowed + 8 or size <= 0:
            continue
        lines = text.get_text().split("\n")
        longest = max(len(line) for line in lines)
        width = max(10, int(longest * max(allowed, 1) / size))
        flat = " ".join(text.get_text().split())
        wrapped = textwrap.fill(flat, width)
        if wrapped != text.get_text():
            text.set_text(wrapped)
            changed = True
    return changed


def clipped_texts(fig: Any) -> list[str]:
    """The titles and axis labels of ``fig`` that reach outside it (after drawing): none, if all fit."""
    if not hasattr(fig.canvas, "get_renderer"):         # a figure closed after saving: draw it again on Agg
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    room = fig.bbox
    out = []
    for text, _ in _texts(fig):
        box = text.get_window_extent(renderer)
        if box.x0 < room.x0 - 1 or box.x1 > room.x1 + 1 or box.y0 < room.y0 - 1 or box.y1 > room.y1 + 1:
            out.append(text.get_text())
    return out


def final_per_trial(numbers: Sequence[int], finals: Sequence[float | None], stopped: Sequence[float | None],
                    path: Path, metric: str, tie_band: tuple[float, float] | None = None, *,
                    ses: Sequence[float | None] | None = None, chance: float | None = None) -> Path:
    """Final metric of each trial in start order, the best so far with its standard error band
    (``ses``: each trial's standard error), and early-stopped trials' last intermediate result (x);
    ``tie_band``: the range of results tied with the best (shaded); ``chance``: the chance level
    (dotted)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if tie_band is not None:
        ax.axhspan(tie_band[0], tie_band[1], color="tab:orange", alpha=0.15, lw=0,
                   label="tied with the best (within 2 standard errors)")
    ses = list(ses) if ses is not None else [None] * len(finals)
    kept = [(n, f, e) for n, f, e in zip(numbers, finals, ses) if f is not None]
    xs, ys = [k[0] for k in kept], [k[1] for k in kept]
    ax.plot(xs, ys, "o", color="tab:blue", label=f"final {metric}")
    best, best_x, best_y, best_e = -math.inf, [], [], []
    for x, y, e in kept:
        if y > best:
            best, err = y, e
        best_x.append(x)
        best_y.append(best)
        best_e.append(err)
    if best_x and max(numbers) > best_x[-1]:      # carry the line to the last trial started
        best_x.append(max(numbers))
        best_y.append(best_y[-1])
        best_e.append(best_e[-1])
    ax.step(best_x, best_y, where="post", color="tab:orange", lw=2, label="best so far")
    if best_x and all(e is not None for e in best_e):
        ax.fill_between(best_x, [y - e for y, e in zip(best_y, best_e)], [y + e for y, e in zip(best_y, best_e)],
                        step="post", color="tab:orange", alpha=0.25, lw=0, label="best so far ± 1 standard error")
    ax.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)
    sx = [n for n, s in zip(numbers, stopped) if s is not None]
    sy = [s for s in stopped if s is not None]
    if sx:
        ax.plot(sx, sy, "x", color="tab:red", ms=8, label="early-stopped (last intermediate)")
    known = [e for e in ses if e is not None]
    accuracy_axis(ax, [*ys, *sy, *(tie_band or ())], se=max(known) if known else None, chance=chance)
    ax.set_xlabel("trial number (start order)")
    epoch_axis(ax)
    ax.set_ylabel(f"{metric} (fraction)")
    ax.set_title("Final result per trial, with the best so far")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def intermediate_curves(curves: Sequence[tuple[str, Sequence[tuple[int, float]], bool]], path: Path, metric: str,
                        *, se: float | None = None, chance: float | None = None) -> Path:
    """Per-epoch results of every trial: ``(label, [(epoch, value), ...], early_stopped)``, each
    point at its own epoch (an epoch whose result was left out is skipped, not closed up);
    early-stopped dashed, ending in x; ``se``: a typical standard error (the axis spans several),
    ``chance``: the chance level (dotted)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("tab20")
    for i, (label, points, stopped) in enumerate(curves):
        epochs, values = [e for e, _ in points], [v for _, v in points]
        line, = ax.plot(epochs, values, "--" if stopped else "-", marker="." if len(values) < 30 else None,
                        color=cmap(i % 20), label=label + (" (early-stopped)" if stopped else ""))
        if stopped:
            ax.plot([epochs[-1]], [values[-1]], "x", color=line.get_color(), ms=9, mew=2)
    accuracy_axis(ax, [v for _, points, _ in curves for _, v in points], se=se, chance=chance,
                  label_chance=len(curves) <= 20)
    ax.set_xlabel("epoch")
    epoch_axis(ax)
    ax.set_ylabel(f"intermediate {metric} (fraction)")
    ax.set_title("Intermediate results of every trial (dashed + x: early-stopped)")
    ax.grid(alpha=0.3)
    if len(curves) <= 20:
        ax.legend(loc="best", fontsize=7, ncol=2)
    return _save(fig, path)


def effect(key: str, groups: Sequence[tuple[str, Sequence[float]]], path: Path, metric: str, *,
           stopped: Sequence[Sequence[float]] | None = None, failed: Sequence[Sequence[float | None]] | None = None,
           yerr: Sequence[float | None] | None = None, se: float | None = None, chance: float | None = None) -> Path:
    """Final metric per value of one parameter: every finished trial as a dot, the mean as a bar
    with an error bar (``yerr``: the noise of each mean); ``stopped``: early-stopped trials' last
    intermediate results, ``failed``: failed trials' last intermediate results (None: the trial
    reported none), both drawn hollow so that a value whose trials were all stopped still shows."""
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.9 * len(groups)) + 2.4, 4.0))
    stopped = list(stopped) if stopped is not None else [[] for _ in groups]
    failed = list(failed) if failed is not None else [[] for _ in groups]
    yerr = list(yerr) if yerr is not None else [None] * len(groups)
    shown: list[float] = []
    labelled: set[str] = set()

    def once(name: str) -> str | None:
        if name in labelled:
            return None
        labelled.add(name)
        return name

    for i, (_, values) in enumerate(groups):
        if values:
            mean = sum(values) / len(values)
            ax.bar(i, mean, width=0.6, color="tab:blue", alpha=0.3, label=once("mean of the finished trials"))
            if yerr[i] is not None:
                ax.errorbar([i], [mean], yerr=[yerr[i]], fmt="none", ecolor="0.2", capsize=5, lw=1.2,
                            label=once("± noise of the mean"))
            offsets = [(j - (len(values) - 1) / 2) * 0.08 for j in range(len(values))]
            ax.plot([i + o for o in offsets], values, "o", color="tab:blue", ms=5, label=once("finished trial"))
            shown += [*values, mean + (yerr[i] or 0.0)]
        halt = [v for v in stopped[i] if v is not None]
        if halt:
            offsets = [0.2 + 0.06 * j for j in range(len(halt))]
            ax.plot([i + o for o in offsets], halt, "o", mfc="none", mec="tab:red", ms=6, mew=1.5,
                    label=once("early-stopped (last intermediate, hollow)"))
            shown += halt
        broke = [v for v in failed[i] if v is not None]
        if broke:
            offsets = [-0.2 - 0.06 * j for j in range(len(broke))]
            ax.plot([i + o for o in offsets], broke, "s", mfc="none", mec="0.3", ms=6, mew=1.5,
                    label=once("failed (last intermediate, hollow)"))
            shown += broke
    ticks = []
    for i, (label, values) in enumerate(groups):
        parts = [f"{len(values)} finished"] + ([f"{len(stopped[i])} stopped"] if stopped[i] else []) + \
            ([f"{len(failed[i])} failed"] if failed[i] else [])
        ticks.append(f"{label}\n" + "\n".join(parts))
    ax.set_xticks(range(len(groups)), ticks, fontsize=7)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    if shown:
        lo, hi = accuracy_limits(shown, se, chance)
        ax.set_ylim(0 if any(values for _, values in groups) else lo, hi)    # bars start at 0
        if chance is not None and ax.get_ylim()[0] <= chance <= hi:
            ax.axhline(chance, **CHANCE_STYLE, label=f"chance ({chance:.3g})", zorder=1)
    ax.set_xlabel(key)
    ax.set_ylabel(f"final {metric} (fraction)")
    ax.set_title(f"Effect of {key}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return _save(fig, path)


def bars(labels: Sequence[str], values: Sequence[float], path: Path, *, title: str, xlabel: str,
         ylabel: str, yerr: Sequence[float | None] | None = None, chance: float | None = None) -> Path:
    """One bar per label (architectures, best first), from 0; ``yerr``: each one's standard error;
    ``chance``: the chance level (dotted)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(labels) + 2), 4.0))
    ax.bar(range(len(values)), values, color="tab:blue")
    if yerr is not None and any(e is not None for e in yerr):
        ax.errorbar(range(len(values)), values, yerr=[e or 0.0 for e in yerr], fmt="none", ecolor="0.2", capsize=4,
                    lw=1.2, label="± 1 standard error")
    top = max([*values, chance or 0.0]) if values else 1.0
    ax.set_ylim(0, min(1.0, max(top + max([e or 0.0 for e in (yerr or [])] + [0.0]) * 1.5, top * 1.1, MIN_SPAN)))
    if chance is not None:
        ax.axhline(chance, **CHANCE_STYLE, label=f"chance ({chance:.3g})", zorder=3)
    ax.set_xticks(range(len(labels)), labels, rotation=60 if len(labels) > 6 else 0, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def _label_offsets(points: Sequence[tuple[float, float]], ax: Any) -> list[tuple[float, float]]:
    """Where each point's label goes (offset in points from it): towards the middle of the axes (so
    it stays inside them), pushed further along while its box would sit on a label placed before."""
    fig = ax.figure
    fig.canvas.draw()
    to_px = ax.transData.transform
    x_mid, y_mid = sum(ax.get_xlim()) / 2, sum(ax.get_ylim()) / 2
    scale = fig.dpi / 72                                   # points -> pixels
    placed: list[tuple[float, float]] = []
    out = []
    order = sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0]))
    offsets: dict[int, tuple[float, float]] = {}
    for i in order:
        x, y = points[i]
        px, py = to_px((x, y))
        dx = -12 if x > x_mid else 12
        step = -13 if y > y_mid else 13
        dy = step
        while any(abs(py + dy * scale - qy) < 12 * scale and abs(px + dx * scale - qx) < 110 * scale
                  for qx, qy in placed) and abs(dy) < 200:
            dy += step
        placed.append((px + dx * scale, py + dy * scale))
        offsets[i] = (dx, dy)
    out = [offsets[i] for i in range(len(points))]
    return out


def search_vs_retrain(points: Sequence[tuple[str, float, float]], path: Path, *, search_metric: str,
                      retrain_metric: str, tau: float | None, xerr: Sequence[float | None] | None = None,
                      yerr: Sequence[float | None] | None = None,
                      chance: tuple[float | None, float | None] = (None, None)) -> Path:
    """Search metric against retrain metric per configuration, each labelled with a line to its own
    point; ``xerr``/``yerr``: error bars (a standard error, a standard deviation over seeds; None:
    none); ``chance``: the chance level of each axis (dotted). Kendall's ``tau`` is in the title
    only over three points or more (over two it is +-1 whatever they are)."""
    fig, ax = plt.subplots(figsize=(6.5, 5.0))
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    if xerr is not None or yerr is not None:
        bars = lambda e: None if e is None else [v or 0.0 for v in e]   # noqa: E731
        ax.errorbar(xs, ys, xerr=bars(xerr), yerr=bars(yerr), fmt="none", ecolor="0.5", capsize=3, lw=1)
    ax.plot(xs, ys, "o", color="tab:blue", ms=8, label="one configuration")
    known = lambda e: max((v for v in e if v), default=None) if e else None   # noqa: E731
    reach = lambda vs, es: [*vs, *(v + (e or 0) for v, e in zip(vs, es or [])),   # noqa: E731  (bars included)
                            *(v - (e or 0) for v, e in zip(vs, es or []))]
    accuracy_axis(ax, reach(xs, xerr), se=known(xerr), chance=chance[0], axis="x", label_chance=False)
    accuracy_axis(ax, reach(ys, yerr), se=known(yerr), chance=chance[1], axis="y")
    for (label, x, y), (dx, dy) in zip(points, _label_offsets([(p[1], p[2]) for p in points], ax)):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                    ha="right" if dx < 0 else "left", va="bottom" if dy > 0 else "top",
                    arrowprops=dict(arrowstyle="-", color="0.4", lw=0.8, shrinkA=0, shrinkB=4))
    ax.set_xlabel(f"search: final {search_metric} (fraction)")
    ax.set_ylabel(f"retrain: {retrain_metric} (fraction)")
    ax.set_title("Search ranking vs retrain" + (f" (Kendall's tau = {tau:.2f}, n = {len(points)})"
                                                if tau is not None and len(points) > 2 else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def run_curves(epochs: Sequence[int], series: dict[str, Sequence[float | None]], path: Path,
               final: dict[str, float] | None = None, *, labels: dict[str, str] | None = None,
               se: float | None = None, chance: float | None = None) -> Path:
    """Losses (left) and accuracies (right) per epoch of one run; ``final``: numbers measured once
    at the end (a retrain's test accuracy), drawn as stars at the last epoch; ``labels``: a series'
    legend text when its name alone would mislead (a loss with an auxiliary term); ``se``: a typical
    standard error of the accuracies, ``chance``: the chance level (dotted)."""
    labels = labels or {}
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4.0))
    accs: list[float] = []
    for name, value in (final or {}).items():
        ax = loss_ax if name.endswith("loss") else acc_ax
        ax.plot([epochs[-1]], [value], "*", ms=12, label=f"final {labels.get(name, name)}")
        if ax is acc_ax:
            accs.append(value)
    for name, values in series.items():
        pts = [(e, v) for e, v in zip(epochs, values) if v is not None and math.isfinite(v)]
        if not pts:
            continue
        ax = loss_ax if name.endswith("loss") else acc_ax
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None,
                label=labels.get(name, name))
        if ax is acc_ax:
            accs += [p[1] for p in pts]
    if accs:
        accuracy_axis(acc_ax, accs, se=se, chance=chance)
    loss_ax.set_title("Loss per epoch")
    loss_ax.set_ylabel("cross-entropy loss (nats)")
    acc_ax.set_title("Accuracy per epoch")
    acc_ax.set_ylabel("accuracy (fraction)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        epoch_axis(ax)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def epoch_times(epochs: Sequence[int], seconds: Sequence[float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    ax.bar(epochs, seconds, color="tab:green", label="training")
    ax.set_xlabel("epoch")
    epoch_axis(ax)
    ax.set_ylabel("training time (s)")
    ax.set_title(f"Time per epoch (total {sum(seconds):.0f} s)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def counts(series: dict[str, tuple[Sequence[int], Sequence[float | None]]], path: Path, *, title: str, ylabel: str,
           ymax: float | None = None) -> Path:
    """Counts over the epochs, one line per series (``name: (epochs, counts)``), each series shifted
    by a few hundredths so that equal counts stay visible; ``ymax``: the most there can be (the top
    of the axis)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for i, (label, (epochs, values)) in enumerate(series.items()):
        shift = 0.06 * (i - (len(series) - 1) / 2)
        pts = [(e, v + shift) for e, v in zip(epochs, values) if v is not None and math.isfinite(v)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 40 else None, ms=4,
                drawstyle="steps-mid", label=label)
    ax.set_ylim(-0.3, (ymax if ymax else max((v for _, vs in series.values() for v in vs if v is not None),
                                                default=1)) + 0.3)
    epoch_axis(ax, "y")
    epoch_axis(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def edge_weights(epochs: Sequence[int], edges: dict[str, dict[str, Sequence[float]]], path: Path,
                 cell: str) -> Path:
    """The softmax weight of every operation on every edge of one cell type, over the epochs: one
    panel per edge (``node_input``), one line per operation."""
    names = sorted(edges, key=lambda e: tuple(int(p) for p in e.split("/")[-1].split("_")))
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows + 0.8), squeeze=False, sharey=True)
    ops = sorted({op for e in names for op in edges[e]})
    cmap = plt.get_cmap("tab10")
    colors = {op: cmap(i % 10) for i, op in enumerate(ops)}
    for ax, name in zip(axes.flat, names):
        for op in ops:
            if op in edges[name]:
                ax.plot(epochs, edges[name][op], color=colors[op], marker="." if len(epochs) < 30 else None, label=op)
        node, src = name.split("/")[-1].split("_")
        ax.set_title(f"node {node} <- {node_name(int(src))}", fontsize=9)
        epoch_axis(ax)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("softmax weight")
    for col in range(cols):                           # the lowest panel drawn in each column
        shown = [r for r in range(rows) if r * cols + col < len(names)]
        if shown:
            axes[shown[-1], col].set_xlabel("epoch")
    fig.suptitle(f"DARTS {cell} cell: operation weights on every edge over the epochs")
    handles = [plt.Line2D([], [], color=colors[op], label=op) for op in ops]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(ops)), fontsize=8)
    return _save(fig, path, rect=(0, 0.06 + 0.03 * math.ceil(len(ops) / 4), 1, 0.95))


def _arrow(ax: Any, p0: tuple[float, float], p1: tuple[float, float], label: str | None, gap: float = 0.3,
           **style: Any) -> None:
    """A straight arrow from ``p0`` to ``p1`` stopping ``gap`` short of both nodes, labelled at its middle."""
    (x0, y0), (x1, y1) = p0, p1
    d = math.hypot(x1 - x0, y1 - y0) or 1.0
    ux, uy = (x1 - x0) / d, (y1 - y0) / d
    ax.annotate("", xy=(x1 - gap * ux, y1 - gap * uy), xytext=(x0 + gap * ux, y0 + gap * uy),
                arrowprops=dict(arrowstyle="-|>", **style))
    if label:
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, label, fontsize=7.5, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.2", fc="lightyellow", ec="0.6"))


def node_name(index: int) -> str:
    """A cell's node as every DARTS figure and table names it: the inputs 0 and 1 are the outputs
    of the two previous cells, c_{k-2} and c_{k-1}; the intermediate nodes are 2, 3, ... (the
    numbers of the search's edge names, ``normal/3_1``, and of ``final_arch.json``'s readers)."""
    return {0: "c_{k-2} (0)", 1: "c_{k-1} (1)"}.get(index, f"node {index}")


def cell_graph(nodes: Sequence[Sequence[tuple[str, int]]], path: Path, cell: str) -> Path:
    """A derived DARTS cell as a graph: inputs 0 = c_{k-2} and 1 = c_{k-1}, intermediate nodes
    2..n+1 (each with its two operation-labelled incoming edges, numbered as :func:`node_name`),
    and the output c_{k} (their concatenation). All nodes sit on a half ellipse, so no edge
    passes through a node."""
    n = len(nodes)
    count = n + 3                                    # two inputs, n nodes, the output
    width, height = 1.6 * (n + 2) / 2, 2.2
    pos = {j: (width * math.cos(math.pi * (1 - j / (count - 1))), height * math.sin(math.pi * j / (count - 1)))
           for j in range(count)}
    names = {0: "0: $c_{k-2}$", 1: "1: $c_{k-1}$", **{i + 2: str(i + 2) for i in range(n)}, n + 2: "$c_{k}$"}
    fig, ax = plt.subplots(figsize=(3.0 + 1.7 * n, 4.6))
    for target, edges in enumerate(nodes, start=2):
        for op, src in edges:
            _arrow(ax, pos[src], pos[target], op, color="0.25", lw=1.3)
    for i in range(n):
        _arrow(ax, pos[i + 2], pos[n + 2], None, color="0.65", lw=1.0, ls="--")
    for key, (x, y) in pos.items():
        kind = "input" if key < 2 else "output" if key == n + 2 else "node"
        ax.text(x, y, names[key], ha="center", va="center", fontsize=10,
                bbox=dict(boxstyle="circle,pad=0.4" if kind == "node" else "round,pad=0.4",
                          fc={"input": "lightblue", "node": "lightgreen", "output": "wheat"}[kind], ec="0.3"))
    ax.set_xlim(-width - 0.6, width + 0.6)
    ax.set_ylim(-0.5, height + 0.5)
    ax.axis("off")
    ax.set_title(f"Derived {cell} cell: nodes 2 to {n + 1}, two operation-labelled inputs each "
                 "(dashed: concatenated into the output)", fontsize=10)
    return _save(fig, path)


def best_so_far(series: dict[str, tuple[Sequence[float], Sequence[float | None]]], path: Path, metric: str, *,
                ses: dict[str, Sequence[float | None]] | None = None, chance: float | None = None) -> Path:
    """Best result so far against trial-epochs spent, one step line per experiment (``label: (xs,
    best)``, ``best`` None until a first result), each with a band of ± its best's standard error
    (``ses``: label -> the standard error at each point); ``chance``: the chance level (dotted)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    shown: list[float] = []
    errors: list[float] = []
    for label, (xs, ys) in series.items():
        errs = list((ses or {}).get(label) or [None] * len(ys))
        pts = [(x, y, e) for x, y, e in zip(xs, ys, errs) if y is not None]
        if not pts:
            continue
        px, py, pe = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
        if xs and xs[-1] > px[-1]:                # carry the line to the last epoch spent
            px.append(xs[-1])
            py.append(py[-1])
            pe.append(pe[-1])
        line, = ax.step(px, py, where="post", lw=2, label=label)
        ax.plot([px[-1]], [py[-1]], "o", color=line.get_color())
        if all(e is not None for e in pe):
            ax.fill_between(px, [y - e for y, e in zip(py, pe)], [y + e for y, e in zip(py, pe)], step="post",
                            color=line.get_color(), alpha=0.2, lw=0)
            errors += pe
            shown += [y - e for y, e in zip(py, pe)] + [y + e for y, e in zip(py, pe)]
        shown += py
    accuracy_axis(ax, shown, se=max(errors) if errors else None, chance=chance)
    ax.set_xlim(left=0)
    epoch_axis(ax)
    ax.set_xlabel("trial-epochs spent (every trial's epochs, in the order trials ended)")
    ax.set_ylabel(f"best final {metric} so far (fraction)")
    ax.set_title("Best result against the training spent" + (" (band: ± 1 standard error)" if errors else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def parallel_coordinates(axes: Sequence[tuple[str, Sequence[Any], str]], values: Sequence[float],
                         emphasised: Sequence[bool], path: Path, metric: str, se: float | None = None) -> Path:
    """One polyline per trial across one vertical axis per parameter and a last one for the result,
    coloured by the result; ``axes``: ``(name, each trial's value, kind)`` with kind 'log', 'linear'
    or 'category'; ``emphasised``: the trials drawn thick (those tied with the best).

    Written here rather than with ``pandas.plotting.parallel_coordinates``, which puts every axis on
    one shared scale and has neither log nor categorical axes."""
    n_axes = len(axes) + 1
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * n_axes + 1.5), 4.8))
    scaled: list[list[float]] = []
    ticks: list[tuple[list[float], list[str]]] = []
    for name, column, kind in axes:
        if kind == "category":
            levels = sorted({json_label(v) for v in column})
            pos = {lab: (i + 0.5) / len(levels) for i, lab in enumerate(levels)}
            scaled.append([pos[json_label(v)] for v in column])
            ticks.append(([pos[lab] for lab in levels], levels))
        else:
            nums = [math.log10(v) if kind == "log" else float(v) for v in column]
            lo, hi = min(nums), max(nums)
            span = (hi - lo) or 1.0
            scaled.append([0.05 + 0.9 * (v - lo) / span for v in nums])
            marks = sorted(set(column), key=float)
            if len(marks) > 6:
                marks = [marks[round(i * (len(marks) - 1) / 5)] for i in range(6)]
            ticks.append(([0.05 + 0.9 * ((math.log10(m) if kind == "log" else float(m)) - lo) / span for m in marks],
                          [f"{float(m):.3g}" for m in marks]))
    lo, hi = min(values), max(values)
    if se and hi - lo < MIN_SPAN_SE * se:                  # the result axis spans at least a few standard errors
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_SPAN_SE * se / 2, mid + MIN_SPAN_SE * se / 2
    span = (hi - lo) or 1.0
    scaled.append([0.05 + 0.9 * (v - lo) / span for v in values])
    ticks.append(([0.05 + 0.9 * i / 4 for i in range(5)], [f"{lo + span * i / 4:.3f}" for i in range(5)]
                  if hi > lo else [f"{lo:.3f}"] * 5))
    cmap = plt.get_cmap("viridis")
    order = sorted(range(len(values)), key=lambda i: (emphasised[i], values[i]))   # the best drawn last, on top
    for i in order:
        ys = [column[i] for column in scaled]
        ax.plot(range(n_axes), ys, color=cmap((values[i] - lo) / span if hi > lo else 0.5),
                lw=2.6 if emphasised[i] else 1.0, alpha=0.95 if emphasised[i] else 0.6)
    for j, (positions, labels) in enumerate(ticks):
        ax.axvline(j, color="0.3", lw=1)
        for y, label in zip(positions, labels):
            ax.text(j + 0.03, y, label, fontsize=7, va="center", ha="left",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))
    ax.set_xticks(range(n_axes), [name for name, _, _ in axes] + [f"final {metric}"], fontsize=8)
    ax.set_xlim(-0.2, n_axes - 0.6)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1e-9))
    fig.colorbar(sm, ax=ax, pad=0.01, label=f"final {metric}")
    ax.set_title("Parallel coordinates: every finished trial (thick: tied with the best)")
    return _save(fig, path)


def json_label(value: Any) -> str:
    """A parameter value as an axis label."""
    return value if isinstance(value, str) else json.dumps(value)


def importance(names: Sequence[str], shares: Sequence[float], spread: Sequence[float], path: Path,
               title: str) -> Path:
    """Horizontal bars of each parameter's importance (largest on top), its spread over the trees as error bars."""
    order = sorted(range(len(names)), key=lambda i: shares[i])
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.55 * len(names)))
    ax.barh(range(len(order)), [shares[i] for i in order], xerr=[spread[i] for i in order], color="tab:blue",
            ecolor="0.4", capsize=3)
    ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=9)
    ax.set_xlim(0, max(1.0, max(shares[i] + spread[i] for i in order)))
    ax.set_xlabel("share of the forest's impurity decrease (sums to 1; bars: spread over its trees)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
