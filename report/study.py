"""The study report: ``python -m report --study HPO_EXP NAS_EXP DARTS_RUN RETRAIN_RUN [-o OUT]``.

The lab's workflow chains the stages: HPO picks model, optimizer and learning rate; classic NAS
searches the skips with that optimizer and lr (``--from-hpo``); one-shot DARTS searches cells; the
best is retrained. This report puts any subset of one study's four sources in that order, each
with the sections its own report has (composed, not redrawn: :mod:`report.experiment_report`,
:mod:`report.run_report`, :mod:`report.darts_report`), and closes with one table of the study's
numbers beside the lab's and the DARTS paper's (:data:`REFERENCES`), each with its epochs and data,
saying plainly where this study's budget is smaller.

Each source's kind is read from what it is, in any order: an experiment of the HPO or classic-NAS
stage, a DARTS search (a run folder, a protocol folder, or an nnictl experiment of
``oneshot_darts`` whose best trial is a search), a retrain (any other run folder).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.chance import classes_of
from core.errors import UserError
from core.paths import REPO_ROOT
from core.run_folder import ARCH_FILE, read_json_file
from experiments.folder import DB_PATH, is_experiment_dir
from core.words import count
from report import darts_report, experiment_report as er, run_report
from report import trials as table_of
from report.markdown import Md, file_part, fmt, md, table
from report.records import Invalid, RunData, is_run_folder, load_run, run_metrics, trial_config, valid
from report.stats import CHANCE_SE, TIE_SE, at_chance, binomial_se, chance_text

#: The kinds of source, in the lab report's order, and what each is called.
KINDS = {"hpo": "HPO experiment", "classic_nas": "classic-NAS experiment", "darts": "one-shot DARTS search",
         "retrain": "retrain"}
#: CIFAR-10's training split (what the reference numbers trained on) and test split.
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000


@dataclass(frozen=True)
class Reference:
    """A published or reported number this study is set beside."""

    who: str
    what: str
    acc: float                  # percent
    pm: float | None            # +- (percent), when given
    epochs: int
    data: str

    def text(self) -> str:
        return (f"{self.what}: {self.acc:.2f}{f' ± {self.pm:.2f}' if self.pm is not None else ''} % after "
                f"{count(self.epochs, 'epoch')} ({self.data})")


#: The lab report's numbers and the DARTS paper's (Liu et al. 2019, Table 1: 2.76 +- 0.09 % test error
#: of the second-order cell, retrained 600 epochs on all 50,000 training images; mean and std over runs).
LAB_HPO = Reference("the lab", "HPO best", 96.66, None, 200, "CIFAR-10")
LAB_DARTS = Reference("the lab", "DARTS cell retrained", 97.25, None, 600, "CIFAR-10")
PAPER_DARTS = Reference("the DARTS paper", "DARTS cell (second order) retrained, Liu et al. 2019", 97.24, 0.09, 600,
                        "CIFAR-10: trained on all 50,000 training images, tested on the 10,000 test images; mean ± "
                        "std over runs")
REFERENCES = {"hpo": (LAB_HPO,), "darts_retrain": (LAB_DARTS, PAPER_DARTS), "hpo_retrain": (LAB_HPO,)}


@dataclass
class Source:
    arg: str
    kind: str
    data: Any                   # ExperimentData, RunData or ProtocolData


@dataclass
class Study:
    sources: dict[str, Source] = field(default_factory=dict)     # kind -> source


def _classify(arg: str, experiments_dir: str | None, retrain_dirs: Sequence[str]) -> Source:
    path = Path(arg).expanduser()
    if darts_report.is_protocol_folder(path):
        return Source(arg, "darts", darts_report.load_protocol(path))
    if is_run_folder(path):
        run = load_run(path)
        return Source(arg, "darts" if run.is_darts_search else "retrain", run)
    if path.is_dir() and not is_experiment_dir(path):
        raise UserError(f"--study: {arg!r} is neither an NNI experiment folder (no {DB_PATH}) nor a run folder")
    exp = er.load(arg, experiments_dir, retrain_dirs)
    if exp.stage in ("hpo", "classic_nas"):
        return Source(arg, exp.stage, exp)
    if exp.stage == "oneshot_darts" and exp.best.trial.log_dir:
        run = load_run(exp.best.trial.log_dir)
        if run.is_darts_search:
            return Source(arg, "darts", run)
    raise UserError(f"--study: {arg!r} is an experiment of stage {exp.stage!r}, which the study does not take; it "
                    f"takes {_kinds_text()}")


def _kinds_text() -> str:
    return "one of each: an HPO experiment, a classic-NAS experiment, a DARTS search (run or protocol folder) and a " \
           "retrain run folder, in any order"


def load(args: Sequence[str], experiments_dir: str | None, retrain_dirs: Sequence[str]) -> Study:
    """Read and classify every source; two of one kind is an error naming both."""
    study = Study()
    for arg in args:
        src = _classify(arg, experiments_dir, retrain_dirs)
        other = study.sources.get(src.kind)
        if other is not None:
            raise UserError(f"--study: {other.arg!r} and {arg!r} are both of kind '{KINDS[src.kind]}'; the study "
                            f"takes {_kinds_text()}")
        study.sources[src.kind] = src
    return study


# --- what each stage ran, in numbers -------------------------------------------------------------

@dataclass
class Measured:
    """One number of this study, with what it took to get it."""

    what: str
    acc: float | Invalid | None  # fraction; Invalid: the run recorded something that is not an accuracy
    se: float | None
    epochs: Any
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    kind: str = ""              # which references apply (REFERENCES' keys)
    images: int | None = None   # the images the accuracy was measured on
    classes: int | None = None  # the data's number of classes (core.chance)

    def data_text(self) -> Md:
        return data_text(self.config, self.metrics)

    @property
    def at_chance(self) -> bool | None:
        return at_chance(valid(self.acc), self.images, self.classes)


def data_name(config: dict[str, Any]) -> Md:
    data = config.get("data")
    return Md("CIFAR-10" if data == "cifar10" else "synthetic images (--data fake)" if data == "fake"
              else f"image folder {md(data, code=True)}" if data else "data not recorded")


def data_text(config: dict[str, Any], metrics: Sequence[dict[str, Any]]) -> Md:
    """Which data a run trained on, and how much of it, in words (Markdown)."""
    parts = [data_name(config)]
    last = metrics[-1] if metrics else {}
    if isinstance(valid(last.get("train_images")), int):
        parts.append(f"{last['train_images']:,} training images per epoch")
    elif config.get("subset"):
        parts.append(f"a subset of {md(format(config['subset'], ','))} training images")
    if config.get("max_batches"):
        parts.append(f"{md(config['max_batches'])} batches of {md(config.get('batch_size'))} per epoch (a smoke run)")
    return Md(", ".join(parts))


def _per_epoch_train_images(m: Measured) -> int | None:
    last = m.metrics[-1] if m.metrics else {}
    n = valid(last.get("train_images"))
    return n if isinstance(n, int) else None


def _trial_run(row) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    log_dir = row.trial.log_dir
    if not log_dir:
        return {}, []
    try:
        return trial_config(log_dir), run_metrics(Path(log_dir))
    except UserError:          # damaged metrics: that trial's numbers are left out, the study goes on
        return trial_config(log_dir), []


def _experiment_measured(exp: er.ExperimentData, what: str, kind: str) -> Measured:
    best = exp.best
    config, metrics = _trial_run(best)
    return Measured(f"{what}: trial {best.trial.trial_id} ({exp.label(best)}), validation accuracy", best.valid_final,
                    best.se, f"{best.trial.epochs_run} per trial ({er.epochs_spent(exp)} trial-epochs in all)", config,
                    metrics, kind, best.images, best.classes)


def _run_measured(run: RunData, what: str, key: str, kind: str) -> Measured:
    res = run.result or {}
    source = res if key in res else run.metrics[-1]
    acc = source.get(key)                   # result.json and metrics.jsonl are checked: a number, Invalid or None
    n = _count(source.get(key.replace("_acc", "_images")))
    epochs = res.get("epoch", run.metrics[-1]["epoch"])
    planned = run.config.get("epochs")
    shown = f"{fmt(epochs)}" + (f" of {md(planned)} planned (unfinished)" if run.result is None and planned else "")
    return Measured(what, acc, binomial_se(valid(acc), n), Md(shown), run.config, run.metrics, kind, n,
                    classes_of(run.config, run.result))


def _count(n: Any) -> int | None:
    """An image count as a run records it: a whole number, else unknown."""
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def retrain_kind(run: RunData) -> tuple[str, str]:
    """What a retrain run retrained: ``(REFERENCES key, words)``."""
    stage = (run.origin or {}).get("stage")
    if stage == "hpo_retrain" or (run.run_dir / "hpo_best.json").is_file():
        return "hpo_retrain", "the HPO winner retrained"
    if stage == "classic_nas_retrain" or "skip1" in (run.arch or {}):
        return "classic_nas_retrain", "a classic-NAS architecture retrained"
    if "auxiliary_weight" in run.config:
        return "darts_retrain", "a DARTS cell retrained"
    return "retrain", "a training run"


def measured(study: Study) -> list[Measured]:
    out = []
    for kind in KINDS:
        src = study.sources.get(kind)
        if src is None:
            continue
        if kind in ("hpo", "classic_nas"):
            out.append(_experiment_measured(src.data, {"hpo": "HPO best configuration",
                                                       "classic_nas": "classic-NAS best architecture"}[kind], kind))
        elif kind == "darts" and isinstance(src.data, darts_report.ProtocolData):
            sel = src.data.selection
            winner = (sel or {}).get("winner") or {}
            search = src.data.settings.get("search") or {}
            acc = winner.get("select_val_acc")        # checked with selection.json: a number, Invalid or None
            select = darts_report.select_result(src.data, winner.get('seed')) or {}
            n = _count(select.get("val_images"))
            out.append(Measured(f"DARTS protocol: seed {winner.get('seed', '?')}'s cell, short-retrain validation "
                                "accuracy", acc, binomial_se(valid(acc), n),
                                f"{search.get('epochs')} search + {src.data.settings.get('select_epochs')} short "
                                "retrain", search, [], "darts", n, classes_of(search, select)))
        elif kind == "darts":
            out.append(_run_measured(src.data, "DARTS search: validation accuracy of the supernet", "val_acc", "darts"))
        else:
            key, words = retrain_kind(src.data)
            metric = "test_acc" if any("test_acc" in m for m in [src.data.result or {}, *src.data.metrics]) \
                else "val_acc"
            out.append(_run_measured(src.data, f"retrain ({words}): {metric.replace('_acc', '')} accuracy", metric, key))
    return out


def _pct(acc: float | Invalid | None, se: float | None) -> str:
    if acc is None or isinstance(acc, Invalid):
        return fmt(acc)
    return f"{100 * acc:.2f}" + (f" ± {100 * se:.2f}" if se is not None else "") + " %"


def _plainly(m: Measured, ref: Reference) -> str:
    """One sentence: how this study's number and the reference differ in budget and data."""
    epochs = m.metrics[-1]["epoch"] if m.metrics and isinstance(m.metrics[-1].get("epoch"), int) else None
    smaller = []
    if epochs is not None and epochs < ref.epochs:
        smaller.append(f"{epochs} epoch{'s' if epochs != 1 else ''} against {ref.epochs}")
    if m.config.get("data") != "cifar10":
        smaller.append(f"its data is {data_name(m.config)}, not CIFAR-10")
    images = _per_epoch_train_images(m)
    if images is not None and images < CIFAR10_TRAIN:
        smaller.append(f"{images:,} training images per epoch against {CIFAR10_TRAIN:,}")
    if not smaller:
        return (f"- {md(m.what)} beside {ref.who}'s {ref.text()}: the same budget ({count(ref.epochs, 'epoch')} on CIFAR-10); "
                "the difference is the study's result.")
    return (f"- **This study's budget is smaller than {ref.who}'s** ({'; '.join(smaller)}): its "
            f"{md(m.what.split(':')[0])} of {_pct(m.acc, m.se)} is not comparable with {ref.who}'s {ref.acc:.2f} %.")


def closing(study: Study) -> list[str]:
    rows, notes = [], []
    for m in measured(study):
        refs = REFERENCES.get(m.kind, ())
        lab = [r for r in refs if r.who == "the lab"]
        paper = [r for r in refs if r.who != "the lab"]
        rows.append([m.what, Md(_pct(m.acc, m.se) + (" (at chance)" if m.at_chance else "")), m.epochs, m.data_text(),
                     "; ".join(r.text() for r in lab) or "-", "; ".join(r.text() for r in paper) or "-"])
        notes += [_plainly(m, r) for r in refs]
        if m.at_chance:
            notes.append(f"- **{md(m.what.split(':')[0])} is at chance** (within {CHANCE_SE:g} standard errors of "
                         f"{chance_text(m.classes)}): that stage learned nothing at this budget, and its number says "
                         "nothing about the method.")
    if not rows:
        return []
    lines = ["## This study beside the lab's and the DARTS paper's", "",
             table(("number", "this study", "epochs", "data", "the lab", "the DARTS paper"), rows), "",
             "A validation accuracy is a search's score on images held out of the training split (never the test "
             "split); ± is its binomial standard error (for the paper: the standard deviation over its runs). The "
             "paper's number is a test accuracy after a full 600-epoch retrain; the lab's are as its report gives "
             "them, with their epochs and data."]
    if not any(m.kind in ("hpo_retrain", "darts_retrain") for m in measured(study)):
        lines += [" No retrain of this study is set beside them, so none of its numbers is like for like."]
    lines += ["", *notes, ""]
    return lines


# --- the report ----------------------------------------------------------------------------------

def _winner_taken(study: Study) -> list[str]:
    """Whether the classic-NAS experiment took this study's HPO winner (--from-hpo)."""
    nas, hpo = study.sources.get("classic_nas"), study.sources.get("hpo")
    if nas is None:
        return []
    p = er.hpo_provenance(nas.data)
    if p is None or p.source is None:
        return ["**The classic-NAS experiment did not take the HPO winner** (no --from-hpo / CIFAR_AUTOML_FROM_HPO): "
                "its trials trained with the stage's own optimizer and lr.", ""]
    if hpo is None:
        return [f"The classic-NAS experiment took the winner of HPO experiment {md(p.source, code=True)} (trial "
                f"{md(p.trial)}: optimizer {md(p.optimizer)}, lr {md(p.lr)}); that experiment is not part of this "
                "report.", ""]
    exp = hpo.data
    best = exp.best.trial
    if p.names(exp.profile.experiment_id, exp.exp_dir) and p.trial == best.trial_id:
        return [f"**The classic-NAS experiment took this study's HPO winner** (--from-hpo): trial "
                f"{md(best.trial_id)}'s optimizer {md(p.optimizer)} and lr {md(p.lr)}, in {p.trials} of its {p.of} "
                "finished trials.", "", winner_ties(exp), ""]
    return [f"**The classic-NAS experiment took another HPO winner** than this study's ({md(p.source, code=True)}, "
            f"trial {md(p.trial)}: optimizer {md(p.optimizer)}, lr {md(p.lr)}; this study's HPO best is trial "
            f"{md(best.trial_id)} of {md(exp.profile.experiment_id, code=True)}).", ""]


def winner_ties(exp: er.ExperimentData) -> str:
    """Whether the HPO winner classic NAS took stood out: at chance, tied with other configurations,
    or ahead of every other by more than the noise."""
    best = exp.best
    if best.at_chance:
        return (f"**The HPO winner it took is at chance** ({best.valid_final:.4f}, within {CHANCE_SE:g} standard "
                f"errors of {chance_text(best.classes)}): the HPO search learned nothing at its budget, so its "
                "optimizer and lr are an arbitrary pick.")
    if len(table_of.by_rank(exp.rows)) == 1:
        return "The HPO winner it took was the only HPO configuration that finished: nothing to be tied with."
    if best.se is None:
        return ("Whether the HPO winner it took was tied with other configurations is unknown: its trials did not "
                "record how many validation images they were scored on.")
    tied = [r for r in table_of.by_rank(exp.rows) if r is not best and r.tied]
    if not tied:
        return (f"The HPO winner it took was ahead of every other HPO configuration by more than {TIE_SE:g} standard "
                f"errors ({TIE_SE * best.se:.4f}; validation sampling only).")
    shown = ", ".join(f"{md(r.trial.trial_id)} ({md(exp.label(r))}, {r.valid_final:.4f})" for r in tied[:10]) + \
        (f" and {len(tied) - 10} more" if len(tied) > 10 else "")
    return (f"**The HPO winner it took was tied with {len(tied)} other configuration(s)** within {TIE_SE:g} standard "
            f"errors ({TIE_SE * best.se:.4f}): {shown}. The HPO search could not tell them apart at its budget, so "
            "the optimizer and lr classic NAS trained with were one pick among equals.")


# --- is the retrained cell the searched one? ---------------------------------------------------------

#: The published cells the DARTS stage ships (``oneshot_darts/archs/``), read here as files.
ARCHS_DIR = REPO_ROOT / "oneshot_darts" / "archs"


def _canonical(arch: Any) -> dict[str, list] | None:
    """A cell pair as comparable data: per cell, each node's two (operation, input) edges sorted
    (a node's sum does not depend on their order); None when it is not a cell pair."""
    if not isinstance(arch, dict) or not all(isinstance(arch.get(c), list) for c in ("normal", "reduce")):
        return None
    try:
        return {c: [sorted((str(op), int(src)) for op, src in node) for node in arch[c]] for c in ("normal", "reduce")}
    except (TypeError, ValueError):
        return None


def _published(arch: dict[str, list] | None, arc: Any) -> str | None:
    """The published cell a retrain trained, by its architecture file (``--arc`` in
    ``oneshot_darts/archs/``) or by equality with one of the JSON cells there: ``DARTS-V2``."""
    name = lambda path: Path(path).stem.upper().replace("_", "-")   # noqa: E731
    if isinstance(arc, str) and Path(arc).parts[-3:-1] == ARCHS_DIR.parts[-2:]:   # any checkout's archs/
        return name(arc)
    for path in sorted(ARCHS_DIR.glob("*.json")):
        try:
            if arch is not None and _canonical(read_json_file(path)) == arch:
                return name(path)
        except UserError:
            continue
    return None


def searched_cell(study: Study) -> tuple[dict[str, list] | None, Md]:
    """This study's searched cell (the protocol's selected one, else the search's last derived
    cell) and where it comes from."""
    src = study.sources.get("darts")
    if src is None:
        return None, Md("")
    if isinstance(src.data, darts_report.ProtocolData):
        winner = ((src.data.selection or {}).get("winner") or {})
        final = src.data.folder / ARCH_FILE
        try:
            arch = read_json_file(final)
        except UserError:
            arch = None
        arch = arch if isinstance(arch, dict) else winner.get("genotype")
        return _canonical(arch), Md(f"the protocol's selected cell (seed {md(winner.get('seed', '?'))}, "
                                    f"{md(final, code=True)})")
    return _canonical(src.data.arch), Md(f"the search's derived cell ({md(src.data.run_dir, code=True)}, its last "
                                         "epoch)")


def cell_check(study: Study) -> list[str]:
    """For a retrained DARTS cell: whether it is the cell this study searched, a published cell
    (DARTS-V2, ...) or another one."""
    src = study.sources.get("retrain")
    if src is None or retrain_kind(src.data)[0] != "darts_retrain":
        return []
    run = src.data
    arch = _canonical(run.arch)
    arc = run.config.get("arc")
    searched, where = searched_cell(study)
    published = _published(arch, arc)
    lines = ["### Is it the searched cell?", ""]
    if arch is None:
        return lines + [f"Its cell cannot be checked: the run folder holds no `arch.json` (it trained {md(arc, code=True)}).", ""]
    if searched is not None and arch == searched:
        return lines + [f"**Yes: the retrained cell is this study's searched cell**, {where}.", ""]
    what = (f"the published {md(published)} cell" if published else f"another cell (from {md(arc, code=True)})" if arc else
            "another cell")
    if searched is None:
        return lines + [f"It retrained {what}; this study holds no DARTS search to check it against.", ""]
    differ = sum(a != b for c in ("normal", "reduce") for a, b in zip(arch[c], searched[c])) + \
        sum(abs(len(arch[c]) - len(searched[c])) for c in ("normal", "reduce"))
    return lines + [f"**No: the retrain trained {what}, not this study's searched cell** ({where}; {differ} node(s) "
                    "differ). Its test accuracy measures that cell, not this study's search.", ""]


def render(study: Study, out: Path) -> str:
    """The Markdown of the study report; figures and exports are written into ``out``."""
    present = [KINDS[k] for k in KINDS if k in study.sources]
    missing = [KINDS[k] for k in KINDS if k not in study.sources]
    lines = ["# Study report: HPO → classic NAS → one-shot DARTS → retrain", "",
             f"In the lab report's order: {', '.join(present)}." + (f" Not part of it: {', '.join(missing)}."
                                                                   if missing else ""), ""]
    for i, kind in enumerate((k for k in KINDS if k in study.sources), 1):
        src = study.sources[kind]
        if kind in ("hpo", "classic_nas"):
            lines += [er.render(src.data, out, prefix="hpo_" if kind == "hpo" else "nas_", level=2, tensorboard=False,
                                title=f"{i}. {KINDS[kind]} {md(src.data.profile.experiment_id, code=True)}",
                                intro=_winner_taken(study) if kind == "classic_nas" else ()).rstrip("\n"), ""]
        elif kind == "darts" and isinstance(src.data, darts_report.ProtocolData):
            lines += [darts_report.render_protocol(src.data, out, prefix="darts_", level=2, title=f"{i}. {KINDS[kind]}: "
                                                   f"protocol {md(src.data.folder.name, code=True)}").rstrip("\n"), ""]
        else:
            what = KINDS[kind] if kind == "darts" else f"{KINDS[kind]}: {retrain_kind(src.data)[1]}"
            lines += [run_report.render_run(src.data, out, prefix=f"{kind}_", heading="##",
                                            title=f"{i}. {what} {md(src.data.run_dir.name, code=True)}").rstrip("\n"),
                      ""]
            if kind == "retrain":
                lines += cell_check(study)
    lines += closing(study)
    return "\n".join(lines) + "\n"


def default_name(study: Study) -> str:
    """A name for the study's report folder: its sources' names (each through :func:`file_part`)."""
    names = []
    for kind in KINDS:
        src = study.sources.get(kind)
        if src is not None:
            names.append(file_part(src.data.profile.experiment_id if kind in ("hpo", "classic_nas") else
                                   Path(os.path.normpath(src.arg)).name))
    return "study-" + "-".join(names)[:120]
