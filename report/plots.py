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


def _save(fig: Any, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    buf = io.BytesIO()
    fig.tight_layout(rect=rect)
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def final_per_trial(numbers: Sequence[int], finals: Sequence[float | None], stopped: Sequence[float | None],
                    path: Path, metric: str, tie_band: tuple[float, float] | None = None) -> Path:
    """Final metric of each trial in start order, the best so far, and early-stopped trials' last
    intermediate result (hollow markers); ``tie_band``: the range of results tied with the best
    (shaded)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if tie_band is not None:
        ax.axhspan(tie_band[0], tie_band[1], color="tab:orange", alpha=0.15, lw=0,
                   label="tied with the best (within 2 standard errors)")
    xs = [n for n, f in zip(numbers, finals) if f is not None]
    ys = [f for f in finals if f is not None]
    ax.plot(xs, ys, "o", color="tab:blue", label=f"final {metric}")
    best, best_x, best_y = -math.inf, [], []
    for x, y in zip(xs, ys):
        best = max(best, y)
        best_x.append(x)
        best_y.append(best)
    if best_x and max(numbers) > best_x[-1]:      # carry the line to the last trial started
        best_x.append(max(numbers))
        best_y.append(best_y[-1])
    ax.step(best_x, best_y, where="post", color="tab:orange", lw=2, label="best so far")
    ax.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)
    sx = [n for n, s in zip(numbers, stopped) if s is not None]
    sy = [s for s in stopped if s is not None]
    if sx:
        ax.plot(sx, sy, "x", color="tab:red", ms=8, label="early-stopped (last intermediate)")
    ax.set_xlabel("trial number (start order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric} (fraction)")
    ax.set_title("Final result per trial, with the best so far")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def intermediate_curves(curves: Sequence[tuple[str, Sequence[float], bool]], path: Path, metric: str) -> Path:
    """Per-epoch results of every trial: ``(label, values, early_stopped)``; early-stopped dashed, ending in x."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("tab20")
    for i, (label, values, stopped) in enumerate(curves):
        epochs = range(1, len(values) + 1)
        line, = ax.plot(epochs, values, "--" if stopped else "-", marker="." if len(values) < 30 else None,
                        color=cmap(i % 20), label=label + (" (early-stopped)" if stopped else ""))
        if stopped:
            ax.plot([len(values)], [values[-1]], "x", color=line.get_color(), ms=9, mew=2)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"intermediate {metric} (fraction)")
    ax.set_title("Intermediate results of every trial (dashed + x: early-stopped)")
    ax.grid(alpha=0.3)
    if len(curves) <= 20:
        ax.legend(loc="best", fontsize=7, ncol=2)
    return _save(fig, path)


def effect(key: str, groups: Sequence[tuple[str, Sequence[float]]], path: Path, metric: str) -> Path:
    """Final metric per value of one parameter: every trial as a dot, the mean as a bar."""
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.9 * len(groups)), 4.0))
    for i, (_, values) in enumerate(groups):
        if values:
            ax.bar(i, sum(values) / len(values), width=0.6, color="tab:blue", alpha=0.3,
                   label="mean" if i == 0 else None)
            offsets = [(j - (len(values) - 1) / 2) * 0.08 for j in range(len(values))]
            ax.plot([i + o for o in offsets], values, "o", color="tab:blue", ms=5,
                    label="one trial" if i == 0 else None)
    ax.set_xticks(range(len(groups)), [f"{label}\n(n={len(v)})" for label, v in groups], fontsize=8)
    ax.set_xlabel(key)
    ax.set_ylabel(f"final {metric} (fraction)")
    ax.set_title(f"Effect of {key}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def bars(labels: Sequence[str], values: Sequence[float], path: Path, *, title: str, xlabel: str,
         ylabel: str) -> Path:
    """One bar per label (architectures, best first)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(labels) + 2), 4.0))
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=60 if len(labels) > 6 else 0, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def search_vs_retrain(points: Sequence[tuple[str, float, float]], path: Path, *, search_metric: str,
                      retrain_metric: str, tau: float | None, xerr: Sequence[float | None] | None = None,
                      yerr: Sequence[float | None] | None = None) -> Path:
    """Search metric against retrain metric per configuration, labelled; ``xerr``/``yerr``: error
    bars (a standard error, a standard deviation over seeds; None: none)."""
    fig, ax = plt.subplots(figsize=(6.5, 5.0))
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    if xerr is not None or yerr is not None:
        bars = lambda e: None if e is None else [v or 0.0 for v in e]   # noqa: E731
        ax.errorbar(xs, ys, xerr=bars(xerr), yerr=bars(yerr), fmt="none", ecolor="0.5", capsize=3, lw=1)
    ax.plot(xs, ys, "o", color="tab:blue", ms=8, label="one configuration")
    right = max(xs)
    for label, x, y in points:    # labels of the right-most points go to their left, inside the axes
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(-5 if x == right else 5, 5), fontsize=8,
                    ha="right" if x == right else "left")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"search: final {search_metric} (fraction)")
    ax.set_ylabel(f"retrain: {retrain_metric} (fraction)")
    ax.set_title("Search ranking vs retrain" + (f" (Kendall's tau = {tau:.2f})" if tau is not None else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def run_curves(epochs: Sequence[int], series: dict[str, Sequence[float | None]], path: Path,
               final: dict[str, float] | None = None) -> Path:
    """Losses (left) and accuracies (right) per epoch of one run; ``final``: numbers measured once
    at the end (a retrain's test accuracy), drawn as stars at the last epoch."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4.0))
    for name, value in (final or {}).items():
        ax = loss_ax if name.endswith("loss") else acc_ax
        ax.plot([epochs[-1]], [value], "*", ms=12, label=f"final {name}")
    for name, values in series.items():
        pts = [(e, v) for e, v in zip(epochs, values) if v is not None and math.isfinite(v)]
        if not pts:
            continue
        ax = loss_ax if name.endswith("loss") else acc_ax
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None, label=name)
    loss_ax.set_title("Loss per epoch")
    loss_ax.set_ylabel("cross-entropy loss (nats)")
    acc_ax.set_title("Accuracy per epoch")
    acc_ax.set_ylabel("accuracy (fraction)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def epoch_times(epochs: Sequence[int], seconds: Sequence[float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    ax.bar(epochs, seconds, color="tab:green", label="training")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
        ax.set_title(f"node {node} <- {'input ' if int(src) < 2 else 'node '}{src}", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("softmax weight")
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch")
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


def cell_graph(nodes: Sequence[Sequence[tuple[str, int]]], path: Path, cell: str) -> Path:
    """A derived DARTS cell as a graph: inputs c_{k-2}, c_{k-1}, intermediate nodes 0..n-1 (each
    with its two operation-labelled incoming edges), and the output c_{k} (their concatenation).
    All nodes sit on a half ellipse, so no edge passes through a node."""
    n = len(nodes)
    count = n + 3                                    # two inputs, n nodes, the output
    width, height = 1.6 * (n + 2) / 2, 2.2
    pos = {j: (width * math.cos(math.pi * (1 - j / (count - 1))), height * math.sin(math.pi * j / (count - 1)))
           for j in range(count)}
    names = {0: "$c_{k-2}$", 1: "$c_{k-1}$", **{i + 2: str(i) for i in range(n)}, n + 2: "$c_{k}$"}
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
    ax.set_title(f"Derived {cell} cell: {n} nodes, two operation-labelled inputs each "
                 "(dashed: concatenated into the output)", fontsize=10)
    return _save(fig, path)


def best_so_far(series: dict[str, tuple[Sequence[float], Sequence[float | None]]], path: Path, metric: str) -> Path:
    """Best result so far against trial-epochs spent, one step line per experiment (``label: (xs,
    best)``, ``best`` None until a first result)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, (xs, ys) in series.items():
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if not pts:
            continue
        px, py = [p[0] for p in pts], [p[1] for p in pts]
        if xs and xs[-1] > px[-1]:                # carry the line to the last epoch spent
            px.append(xs[-1])
            py.append(py[-1])
        line, = ax.step(px, py, where="post", lw=2, label=label)
        ax.plot([px[-1]], [py[-1]], "o", color=line.get_color())
    ax.set_xlim(left=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial-epochs spent (every trial's epochs, in the order trials ended)")
    ax.set_ylabel(f"best final {metric} so far (fraction)")
    ax.set_title("Best result against the training spent")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def parallel_coordinates(axes: Sequence[tuple[str, Sequence[Any], str]], values: Sequence[float],
                         emphasised: Sequence[bool], path: Path, metric: str) -> Path:
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
