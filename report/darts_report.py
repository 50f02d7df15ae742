"""The DARTS parts of the reports: a search run's variant (order, partial channels K, warm-up, guard)
and its collapse counts over the epochs (composed into a run folder's report by
:mod:`report.run_report`), and the report of a protocol folder (``search.py --seeds ...``): every
seed's search and derived cell, its short retrain, and the selection.

Collapse: long DARTS searches drift to parameter-free operations in the normal cell, skip_connect
first (DARTS+, Liang et al. 2019; P-DARTS, Chen et al. 2019; RobustDARTS, Zela et al. 2020). The
search records, every epoch, how many of the derived normal cell's edges are parameter-free
(``normal_param_free``) and skip_connects (``normal_skip_connect``), as its weights have it (before
the P-DARTS guard ``max_skip_connect``, whose replacements are ``guard_replaced``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.words import count_of
from report import plots
from core.run_folder import (ARCH_FILE, METRICS_FILE, PROTOCOL_FILE, SEARCH_STEP, SELECT_STEP, SELECTION_FILE,
                             step_dir_name)
from report.markdown import figure, fmt, md, table
from report.records import CELLS, check_cells, checked, load_run, read_dict, run_result, valid
from core.chance import classes_of
from report.stats import (CHANCE_SE, TIE_SE, Noise, at_chance, binomial_se, chance_level, chance_text, kendall,
                          mean_std, seed_spread, tied_with, with_se)

#: DARTS+'s early-stopping signal: two or more skip_connects in the normal cell.
DARTS_PLUS_SKIPS = 2


# --- a search run ----------------------------------------------------------------------------------

def variant(config: dict[str, Any]) -> str:
    """The search's step in words: its gradient order, partial channels, warm-up and guard."""
    order = config.get("order", 1)
    parts = ["second order (the paper's unrolled gradient)" if order == 2 else "first order"]
    k = config.get("partial_channels", 1)
    if isinstance(k, int) and k > 1:
        parts.append(f"PC-DARTS with K = {k} (1/{k} of each edge's channels, edge normalisation)")
    if config.get("arch_warmup_epochs"):
        parts.append(f"architecture frozen for the first {count_of(config['arch_warmup_epochs'], 'epoch', md)}")
    guard = config.get("max_skip_connect", -1)
    parts.append(f"P-DARTS guard: at most {guard} skip_connect in the normal cell" if isinstance(guard, int)
                 and guard >= 0 else "no collapse guard")
    return "; ".join(parts)


def search_parts(metrics: list[dict[str, Any]], config: dict[str, Any], out: Path, prefix: str,
                 heading: str) -> list[str]:
    """The variant line and the collapse counts per epoch (figure and table) of a DARTS search."""
    lines = [f"{heading}# Search step", "", f"- {variant(config)}", ""]
    if metrics and still_uniform(metrics[-1]):
        lines += [still_uniform_text(metrics[-1]), ""]
    counted = [m for m in metrics if valid(m.get("normal_skip_connect")) is not None]
    if not counted:
        return lines
    edges = 2 * config["n_nodes"] if isinstance(config.get("n_nodes"), int) else None
    epochs = [int(m["epoch"]) for m in counted]
    series = {"skip_connect": (epochs, [m["normal_skip_connect"] for m in counted]),
              "parameter-free (pools, skip_connect)": (epochs, [valid(m.get("normal_param_free")) for m in counted])}
    name = f"{prefix}collapse.png"
    plots.counts(series, out / name, title="Collapse watch: the derived normal cell's parameter-free edges",
                 ylabel=f"edges of the normal cell{f' (of {edges})' if edges else ''}", ymax=edges)
    last = counted[-1]
    verdict = (f"after epoch {last['epoch']} the normal cell holds {fmt(last['normal_skip_connect'])} skip_connect and "
               f"{fmt(last.get('normal_param_free'))} parameter-free operations"
               + (f" of {edges} edges" if edges else ""))
    if last["normal_skip_connect"] >= DARTS_PLUS_SKIPS:
        verdict += (f"; {DARTS_PLUS_SKIPS} or more skip_connects is DARTS+'s sign of collapse (a guard: "
                    "--max-skip-connect 2, P-DARTS's cap)")
    lines += [f"{heading}# Collapse watch", "", verdict[0].upper() + verdict[1:] + ".", "",
              figure(name, "Skip_connects and parameter-free operations in the derived normal cell per epoch"), ""]
    guarded = any("guard_replaced" in m for m in counted)
    rows = [[m["epoch"], m["normal_skip_connect"], m.get("normal_param_free"), *([m.get("guard_replaced")] if guarded
                                                                                 else [])] for m in counted]
    lines += [table(("epoch", "skip_connect", "parameter-free", *(["replaced by the guard"] if guarded else [])),
                    rows), ""]
    return lines


def still_uniform(record: dict[str, Any]) -> bool:
    """Whether a search's record (an epoch's metrics, its result, a protocol's row) says its
    architecture weights were still uniform (``arch_uniform``), so that its derived cell is arbitrary."""
    uniform = record.get("arch_uniform")
    return isinstance(uniform, dict) and uniform.get("uniform") is True


def still_uniform_text(last: dict[str, Any]) -> str:
    """What the search's record of architecture weights still uniform (``arch_uniform``) means."""
    low, high = ((last["arch_uniform"].get("weight_range") or []) + [None, None])[:2]
    tolerance = valid(last["arch_uniform"].get("tolerance"))
    within = f"within {tolerance:.0%} of 1/8" if isinstance(tolerance, (int, float)) else "close to 1/8"
    return (f"**The derived cell is arbitrary:** after epoch {last.get('epoch')} the architecture weights are still "
            f"uniform (every operation weight {fmt(low)}-{fmt(high)}, {within}): the search has not yet told the "
            "operations apart.")


# --- a protocol folder -----------------------------------------------------------------------------

def is_protocol_folder(path: Path) -> bool:
    return path.is_dir() and (path / PROTOCOL_FILE).is_file()


@dataclass
class ProtocolData:
    folder: Path
    settings: dict[str, Any]
    steps: dict[str, Any]
    selection: dict[str, Any] | None
    searches: dict[int, Any] = field(default_factory=dict)     # seed -> the search's RunData (report.records)
    problems: list[str] = field(default_factory=list)


def load_protocol(folder: str | Path) -> ProtocolData:
    """Read a protocol folder: its record, its selection (when finished) and every search run."""
    folder = Path(folder)
    problems: list[str] = []
    record = read_dict(folder / PROTOCOL_FILE, problems)
    if not record or not isinstance(record.get("settings"), dict) or not isinstance(record.get("steps", {}), dict):
        raise UserError(f"{str(folder / PROTOCOL_FILE)!r} is not a protocol record (settings and steps)")
    seeds = record["settings"].get("seeds")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"{str(folder / PROTOCOL_FILE)!r}: settings.seeds is not a list of seeds")
    selection = read_dict(folder / SELECTION_FILE, problems)
    if selection is not None:
        rows = selection.get("seeds")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("genotype"), dict)
                                                 for r in rows):
            raise UserError(f"{str(folder / SELECTION_FILE)!r}: seeds is not a list of each seed's cell and results")
        for r in rows:
            check_cells(r["genotype"], set(), f"{str(folder / SELECTION_FILE)!r}, seed {r.get('seed')}")
        selection["seeds"] = [checked(r, f"{SELECTION_FILE}, seed {r.get('seed')}", problems) for r in rows]
        if isinstance(selection.get("winner"), dict):
            selection["winner"] = checked(selection["winner"], f"{SELECTION_FILE}, winner", problems)
    steps = {k: checked(v, f"{PROTOCOL_FILE}, step {k}", problems) if isinstance(v, dict) else {}
             for k, v in record.get("steps", {}).items()}
    data = ProtocolData(folder, record["settings"], steps, selection, problems=problems)
    for s in seeds:
        run_dir = folder / step_dir_name(SEARCH_STEP, s)
        if (run_dir / METRICS_FILE).is_file():
            data.searches[s] = load_run(run_dir)
            problems += data.searches[s].problems
    return data


def _with_se(acc: Any, result: dict[str, Any]) -> Any:
    """``acc`` with its binomial standard error, from the image count the run's ``result`` records."""
    value = valid(acc)
    if value is None:
        return acc
    return with_se(value, binomial_se(float(value), result.get("val_images")))


def select_result(data: ProtocolData, seed: Any) -> dict[str, Any] | None:
    """The result of a seed's short retrain (None while it runs)."""
    return run_result(data.folder / step_dir_name(SELECT_STEP, seed))


def _classes(data: ProtocolData, seed: Any) -> int | None:
    """The number of classes of a seed's short retrain (its result records it), else of the search's data."""
    return classes_of(data.settings.get("search"), select_result(data, seed))


def _protocol_chance(data: ProtocolData, seeds: list[int], rows: list[list[Any]]) -> dict[int, tuple[Any, Any]]:
    """Per seed: whether its search accuracy and its short-retrain accuracy are at chance."""
    out = {}
    for s, r in zip(seeds, rows):
        run = data.searches.get(s)
        search_n = ((run.result or {}) if run else {}).get("val_images")
        select_n = (select_result(data, s) or {}).get("val_images")
        classes = _classes(data, s)
        out[s] = (at_chance(valid(r[1]), search_n, classes), at_chance(valid(r[2]), select_n, classes))
    return out


def _search_seed_spread(rows: list[list[Any]]) -> list[str]:
    """The spread of the search's validation accuracy over the seeds: one search configuration run
    with several seeds, the seed-to-seed noise of a search."""
    accs = [float(valid(r[1])) for r in rows if valid(r[1]) is not None]
    spread = seed_spread([accs])
    if spread is None:
        return []
    mean, _ = mean_std(accs)
    return [f"The search itself, run with {len(accs)} seeds: validation accuracy {mean:.4f} ± {spread[0]:.4f} "
            "(mean ± standard deviation over the seeds): the seed-to-seed spread of one search configuration.", ""]


def _cell_text(arch: dict[str, Any], cell: str) -> str:
    return " ".join(f"{n}<-" + "+".join(f"{op}({src})" for op, src in node)
                    for n, node in enumerate(arch.get(cell) or [], start=2))


def render_protocol(data: ProtocolData, out: Path, prefix: str = "", level: int = 1, title: str | None = None) -> str:
    """The Markdown of a protocol folder's report (its title at ``level``); figures are written
    into ``out``, their names starting with ``prefix``."""
    h = "#" * level
    settings, search = data.settings, data.settings.get("search") or {}
    select = data.settings.get("select") or {}
    seeds = settings["seeds"]
    lines = [f"{h} {title or f'Report: DARTS protocol {md(data.folder.name, code=True)}'}", "", f"{h}# What ran", "",
             f"- folder: {md(data.folder, code=True)}",
             f"- the DARTS paper's selection (Liu et al. 2019, section 3.2): {len(seeds)} searches (seeds "
             f"{', '.join(map(str, seeds))}), each derived cell trained from scratch for "
             f"{count_of(settings.get('select_epochs'), 'epoch', md)} and compared on a validation split held out of the training "
             "split; the test split is never read",
             f"- search: {variant(search)}; C={md(search.get('channels'))}, {md(search.get('layers'))} cells x "
             f"{md(search.get('n_nodes'))} nodes, {count_of(search.get('epochs'), 'epoch', md)}, batch "
             f"{md(search.get('batch_size'))}, data {md(search.get('data'))}",
             f"- short retrains: C={md(select.get('channels'))}, {md(select.get('layers'))} cells, batch "
             f"{md(select.get('batch_size'))}, validation split {md(select.get('val_fraction'))}, seed "
             f"{md(select.get('seed'))} for every cell", ""]
    lines += [f"{h}# Selection", ""]
    sel = data.selection
    if sel is None:
        searched = sum(step_dir_name(SEARCH_STEP, s) in data.steps for s in seeds)
        retrained = sum(step_dir_name(SELECT_STEP, s) in data.steps for s in seeds)
        lines += [f"Not finished yet: {searched} of {len(seeds)} searches and {retrained} of {len(seeds)} short "
                  "retrains are done (run the same command again to continue it).", ""]
        rows_by_seed = {s: {"seed": s, "search_val_acc": (data.steps.get(step_dir_name(SEARCH_STEP, s)) or {}).get("val_acc"),
                            "select_val_acc": (data.steps.get(step_dir_name(SELECT_STEP, s)) or {}).get("val_acc"),
                            "genotype": (data.steps.get(step_dir_name(SEARCH_STEP, s)) or {}).get("arch")} for s in seeds}
        winner = None
    else:
        rows_by_seed = {r["seed"]: r for r in sel["seeds"]}
        winner = (sel.get("winner") or {}).get("seed")
        w = rows_by_seed.get(winner, {})
        retrain = md(f"python oneshot_darts/retrain.py --arc {data.folder / ARCH_FILE}", code=True)
        lines += [f"**Selected: the cell of seed {md(winner)}**, validation accuracy {fmt(w.get('select_val_acc'))} "
                  f"after its {md(sel.get('select_epochs'))}-epoch retrain (the rule: {md(sel.get('rule'))}). Its cell "
                  f"is `{ARCH_FILE}`; retrain it with {retrain}.", ""]
    uniform = [s for s in seeds if still_uniform(rows_by_seed.get(s) or {})]
    if uniform:
        lines += [f"**Arbitrary cells:** the search{'es' if len(uniform) > 1 else ''} of seed{'s' if len(uniform) > 1 else ''} "
                  f"{', '.join(md(s) for s in uniform)} ended with the architecture weights still uniform (within 1 % of "
                  "1/8), so their derived cells are arbitrary, not chosen by the search.", ""]
    rows, shown = [], []
    for s in seeds:
        r = rows_by_seed.get(s, {})
        run = data.searches.get(s)
        last = run.metrics[-1] if run else {}
        rows.append([s, r.get("search_val_acc"), r.get("select_val_acc"), r.get("params"),
                     last.get("normal_skip_connect"), "yes" if s == winner else ""])
        # each accuracy with its binomial standard error (the runs record how many images they scored)
        select = select_result(data, s) or {}
        shown.append([s, _with_se(r.get("search_val_acc"), (run.result or {}) if run else {}),
                      _with_se(r.get("select_val_acc"), select), *rows[-1][3:]])
    chance = _protocol_chance(data, seeds, rows)
    for line, (s, r) in zip(shown, zip(seeds, rows)):
        if chance.get(s, (None, None))[1] and valid(r[2]) is not None:
            line[2] = f"{line[2]} (at chance)"
        if chance.get(s, (None, None))[0] and valid(r[1]) is not None:
            line[1] = f"{line[1]} (at chance)"
    lines += [table(("seed", "search val_acc ± SE (architecture half)", "short-retrain val_acc ± SE", "parameters",
                     "normal skip_connect", "selected"), shown), ""]
    select_se = {s: binomial_se(valid(r[2]), (select_result(data, s) or {}).get("val_images"))
                 for s, r in zip(seeds, rows)}
    lines += _search_seed_spread(rows)
    winner_at_chance = bool(chance.get(winner, (None, None))[1]) if winner is not None else False
    if winner is not None and valid(rows_by_seed.get(winner, {}).get("select_val_acc")) is not None:
        top, top_se = float(rows_by_seed[winner]["select_val_acc"]), select_se.get(winner)
        tied = [s for s, r in zip(seeds, rows) if s != winner and valid(r[2]) is not None
                and tied_with(top, top_se, float(r[2]))]
        if winner_at_chance:
            lines += [f"**At chance: the short retrains learned nothing at this budget.** The selected cell's "
                      f"{top:.4f} is within {CHANCE_SE:g} standard errors of "
                      f"{chance_text(_classes(data, winner))}: the selection is arbitrary, and no cell is better "
                      "than, or tied with, another.", ""]
        else:
            lines += [("The selected cell's standard error is unknown (its short retrain did not record how many "
                       "validation images it was scored on)." if top_se is None else
                       f"Cells within {TIE_SE:g} standard errors of the selected one's short-retrain accuracy (tied "
                       f"with it): {', '.join(f'seed {md(s)}' for s in tied) if tied else 'none'}. "
                       + Noise(top_se).text()[0].upper() + Noise(top_se).text()[1:]
                       + " (each cell was retrained once, with one seed)."), ""]
    done = [(s, valid(r[1]), valid(r[2])) for s, r in zip(seeds, rows)]
    done = [d for d in done if d[1] is not None and d[2] is not None]
    classes = next((_classes(data, s) for s in seeds if _classes(data, s) is not None), None)
    if done:
        name = f"{prefix}selection.png"
        plots.bars([f"seed {s}" for s, _, _ in done], [v for _, _, v in done], out / name,
                   title="Validation accuracy after the short retrain, per seed's cell", xlabel="search seed",
                   ylabel="validation accuracy (fraction)", yerr=[select_se.get(s) for s, _, _ in done],
                   chance=chance_level(classes))
        lines += [figure(name, "Short-retrain validation accuracy of every seed's cell (± its standard error; "
                         "dotted: chance)"), ""]
    if len(done) >= 2:
        k = None if winner_at_chance else kendall([d[1] for d in done], [d[2] for d in done])
        name = f"{prefix}search_vs_select.png"
        plots.search_vs_retrain([(f"seed {s}", a, b) for s, a, b in done], out / name,
                                search_metric="validation accuracy (architecture half)",
                                retrain_metric="short-retrain validation accuracy", tau=k.tau if k else None,
                                yerr=[select_se.get(s) for s, _, _ in done],
                                chance=(chance_level(classes), chance_level(classes)))
        lines += [figure(name, "Search accuracy against short-retrain accuracy per seed"
                          + (f" ({k.text()}{'; over two seeds it is +1 or -1 whatever they are' if k.n == 2 else ''})"
                             if k else "")), ""]
        if winner_at_chance:
            lines += ["No rank correlation between search and short-retrain accuracy is stated: the short retrains "
                      "are at chance.", ""]
    curves = {f"seed {s}": ([int(m["epoch"]) for m in run.metrics if valid(m.get("normal_skip_connect")) is not None],
                            [m["normal_skip_connect"] for m in run.metrics if valid(m.get("normal_skip_connect"))
                             is not None]) for s, run in data.searches.items()}
    curves = {k: v for k, v in curves.items() if v[0]}
    if curves:
        n_nodes = search.get("n_nodes")
        name = f"{prefix}collapse.png"
        plots.counts(curves, out / name, title="Collapse watch: skip_connects in each seed's derived normal cell",
                     ylabel="skip_connect edges", ymax=2 * n_nodes if isinstance(n_nodes, int) else None)
        lines += [f"{h}# Collapse watch across seeds", "",
                  figure(name, "Skip_connects in the derived normal cell per search epoch, one line per seed"), ""]
    lines += [f"{h}# Every seed's cell", ""]
    for s in seeds:
        arch = rows_by_seed.get(s, {}).get("genotype")
        lines += [f"{h}## Seed {s}" + (" (selected)" if s == winner else ""), ""]
        if not isinstance(arch, dict):
            lines += ["Its search has not finished yet.", ""]
            continue
        for cell in CELLS:
            nodes = arch.get(cell)
            if nodes:
                name = f"{prefix}seed{s}_cell_{cell}.png"
                plots.cell_graph([[(op, int(src)) for op, src in node] for node in nodes], out / name, cell)
                lines += [figure(name, f"Seed {s}: {cell} cell"), "",
                          md(f"{cell}: {_cell_text(arch, cell)}", code=True), ""]
        lines += [f"Its search: {md(data.folder / step_dir_name(SEARCH_STEP, s), code=True)} (`python -m report` on it shows its "
                  "curves and edge weights).", ""]
    if data.problems:
        lines += [f"{h}# Invalid numbers", "", *(f"- {md(p)}" for p in data.problems), ""]
    return "\n".join(lines) + "\n"
