"""The report of one run folder: a retrain (any stage, or ``python -m core.train_model``) or a
DARTS search (its per-epoch operation weights and the derived cells)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.run_folder import RESULT_FILE
from core.words import count_of
from report import plots
from report.markdown import figure, fmt, md, seconds, table
from report.records import CELLS, RunData, valid
from core.chance import classes_of
from report.stats import CHANCE_SE, at_chance, binomial_se, chance_level, chance_text

#: config fields worth naming in "what ran", in this order
SHOWN = ("model", "optimizer", "lr", "scheduler", "epochs", "batch_size", "weight_decay", "data", "subset",
         "val_fraction", "val_subset", "max_batches", "channels", "layers", "n_nodes", "order", "partial_channels",
         "arch_warmup_epochs", "max_skip_connect", "device", "seed")
SERIES = ("train_loss", "val_loss", "test_loss", "arch_loss", "train_acc", "val_acc", "test_acc")


def _what_ran(run: RunData) -> list[str]:
    cfg = run.config
    rows = [(k, cfg[k]) for k in SHOWN if k in cfg]
    lines = [f"- kind: {run.kind}", f"- folder: {md(run.run_dir, code=True)}"]
    if run.origin:
        o = run.origin
        src = o.get("experiment_id") or o.get("source")
        rank = f", rank {md(o['rank'])} of the search" if o.get("rank") else ""
        rank += f", seed {md(o['seed'])}" if o.get("seed") is not None else ""
        metric = o.get("search_metric", o.get("val_acc"))
        lines.append(f"- came from: trial {md(o.get('trial_id'))} of experiment {md(src)}{rank} "
                     f"(search metric {fmt(metric)}; parameters {md(o.get('params'))})")
    if run.arch and not run.is_darts_search:
        lines.append(f"- architecture: {md(run.arch, code=True)}")
    lines += ["", table(("setting", "value"), rows)] if rows else []
    return lines


def _final(run: RunData) -> list[str]:
    last = run.metrics[-1]
    planned = run.config.get("epochs")
    if run.result is None:
        return [f"Still running (or stopped): {last['epoch']} of {count_of(planned, 'epoch', md) if planned else '? epochs'} done; "
                f"no {RESULT_FILE} yet. The last epoch's numbers:",
                "", table(("metric", "value"), [(k, last[k]) for k in SERIES if k in last])]
    res = run.result
    rows = [(k, res[k]) for k in ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss",
                                  "epoch", "params") if k in res]
    total = sum(float(valid(m.get("train_seconds")) or 0) for m in run.metrics)
    rows.append(("training time (sum of epochs)", seconds(total)))
    headline = ""
    for key, name in (("test_acc", "test accuracy"), ("val_acc", "validation accuracy")):
        if key in res:
            value = res[key]
            ok = isinstance(valid(value), (int, float))
            headline = (f"**Final {name}: {f'{value:.4f}' if ok else md(value)}** after "
                        f"{count_of(res.get('epoch', last['epoch']), 'epoch', fmt)}." + ("" if ok else " (See Invalid numbers.)"))
            n = res.get(key.replace("_acc", "_images"))
            se = binomial_se(float(value), n) if ok and isinstance(n, int) else None
            if se is not None:
                headline += f" Standard error {se:.4f} ({n:,} {name.split()[0]} images; binomial)."
            classes = classes_of(run.config, res)
            if ok and at_chance(float(value), n if isinstance(n, int) else None, classes):
                headline += (f" **At chance**: within {CHANCE_SE:g} standard errors of {chance_text(classes)}; this "
                             "run learned nothing at its budget.")
            break
    return [headline, "", table(("metric", "value"), rows)]


def render_run(run: RunData, out: Path, prefix: str = "", heading: str = "#", title: str | None = None) -> str:
    """The Markdown of the run's report; figures are written into ``out`` (names start with ``prefix``)."""
    name = md(run.run_dir.name, code=True)
    title = f"{heading} {title}" if title else f"{heading} Report: {run.kind} {name}" if heading == "#" \
        else f"{heading} Run {name}"
    lines = [title, "", f"{heading}# What ran", "", *_what_ran(run), "", f"{heading}# Final", "", *_final(run), ""]
    epochs = [int(m["epoch"]) for m in run.metrics]
    series = {k: [valid(m.get(k)) for m in run.metrics] for k in SERIES if any(k in m for m in run.metrics)}
    lines += [f"{heading}# Per epoch", ""]
    name = f"{prefix}curves.png"
    once = {k: float(v) for k, v in (run.result or {}).items()
            if k in ("test_acc", "test_loss") and k not in series and isinstance(valid(v), (int, float))}
    labels = loss_labels(run.config)
    chance = chance_level(classes_of(run.config, run.result))
    plots.run_curves(epochs, series, out / name, final=once, labels=labels, se=_typical_se(run), chance=chance)
    lines += [figure(name, "Loss (left) and accuracy (right) per epoch" + ("; dotted: chance" if chance else "")
                     + (f"; {labels['train_loss']}" if "train_loss" in labels else "")), ""]
    times = [float(valid(m.get("train_seconds")) or 0.0) for m in run.metrics]
    if any(times):
        name = f"{prefix}epoch_time.png"
        plots.epoch_times(epochs, times, out / name)
        lines += [figure(name, "Training time per epoch"), ""]
    rows = [[m["epoch"], *(m.get(k) for k in series), m.get("train_seconds")] for m in run.metrics]
    lines += [table(("epoch", *series, "train_seconds"), rows), ""]
    if run.problems:
        lines += [f"{heading}# Invalid numbers", "",
                  "These values are not valid for what they measure; they are shown as invalid, left out of the "
                  "figures and of every comparison:", "", *(f"- {md(p)}" for p in run.problems), ""]
    if run.is_darts_search:
        lines += _darts(run, out, prefix, heading)
    return "\n".join(lines) + "\n"


def loss_labels(config: dict[str, Any]) -> dict[str, str]:
    """Legend texts for losses that are not the plain cross-entropy: a DARTS retrain's training loss
    adds its auxiliary head's, weighted (the evaluation losses do not)."""
    weight = config.get("auxiliary_weight")
    if config.get("auxiliary", True) and isinstance(weight, (int, float)) and weight > 0:
        return {"train_loss": f"train_loss (with {weight:g} x auxiliary loss)"}
    return {}


def _typical_se(run: RunData) -> float | None:
    """The binomial standard error of the run's last accuracy (validation, else test): how finely
    its accuracy axis may be read."""
    last = {**run.metrics[-1], **(run.result or {})}
    for key in ("val_acc", "test_acc"):
        acc, n = valid(last.get(key)), last.get(key.replace("_acc", "_images"))
        if isinstance(acc, (int, float)) and isinstance(n, int):
            return binomial_se(float(acc), n)
    return None


def _darts(run: RunData, out: Path, prefix: str, heading: str) -> list[str]:
    from report import darts_report

    lines = darts_report.search_parts(run.metrics, run.config, out, prefix, heading)   # step variant, collapse
    lines += [f"{heading}# Architecture weights", "",
             "The softmax weight of every operation on every edge (node <- input; the cell's inputs are 0 = c_{k-2} "
             "and 1 = c_{k-1}, its nodes 2, 3, ..., as in the cell graphs and tables below), after each epoch; the "
             "derived cell keeps, for each node, the two strongest incoming edges (by their strongest "
             "operation other than `none`).", ""]
    with_weights = [m for m in run.metrics if isinstance(m.get("edge_weights"), dict)]
    epochs = [int(m["epoch"]) for m in with_weights]
    for cell in CELLS:
        edges: dict[str, dict[str, list[float]]] = {}
        for m in with_weights:
            for edge, ops in m["edge_weights"].items():
                if edge.startswith(cell + "/"):
                    for op, w in ops.items():
                        edges.setdefault(edge, {}).setdefault(op, []).append(float(w))
        if edges:
            name = f"{prefix}edge_weights_{cell}.png"
            plots.edge_weights(epochs, edges, out / name, cell)
            lines += [figure(name, f"{cell} cell: operation weights per edge over the epochs"), ""]
    if run.arch:
        lines += [f"{heading}# Derived cells (after epoch {epochs[-1] if epochs else '?'})", ""]
        for cell in CELLS:
            nodes = run.arch.get(cell)
            if nodes:
                name = f"{prefix}cell_{cell}.png"
                plots.cell_graph([[(op, int(src)) for op, src in node] for node in nodes], out / name, cell)
                lines += [figure(name, f"Derived {cell} cell"), ""]
                rows = [[i, " + ".join(f"{op} from {plots.node_name(int(s))}" for op, s in node)]
                        for i, node in enumerate(nodes, start=2)]
                lines += [table(("node", f"{cell}: its two inputs"), rows), ""]
    return lines
