"""How long a stage will take on this runtime, from a few timed steps, beside how long the runtime
has been up; and a plain warning when the stage cannot finish before Colab ends the runtime.

The probe runs the stage's own training command at the stage's sizes for 2 epochs of at most 3
batches (the HPO models in one process, :mod:`lab.probe`); the second epoch's seconds per step is the
step time (the first pays for warm-up), and the probe's time outside its timed epochs stands for a
run's start-up (imports, data, model). A stage's time is then, over its runs,

    start-up + epochs x (steps per epoch + evaluated images / batch size / 3) x seconds per step

(evaluation counted as a third of a training step per batch: a forward pass without the backward),
divided by the trials that run at once, for what is left of the stage (finished trials, epochs and
seeds are not counted again). An experiment's assessor may stop trials early: its estimate is the
most it takes. Times are cached per device and command in the lab's ``probes.json``, so a rerun
after a reconnect on the same kind of runtime times nothing again.

The runtime's age is the container's (``/proc/uptime`` less the start of process 1); Colab ends a
runtime after at most :data:`COLAB_HOURS` hours (an idle one sooner).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.errors import UserError
from core.files import atomic_write_text
from core.paths import REPO_ROOT
from core.run_folder import METRICS_FILE, RESULT_FILE, read_metrics
from experiments.folder import db_path
from lab.plan import EXPERIMENT_STAGES, PROBE_ARC, Size
from lab.state import Lab
from lab.stages import DARTS_RETRAIN, PROTOCOL, elapsed

#: Colab's longest runtime, hours (its FAQ: "notebooks can run for at most 12 hours").
COLAB_HOURS = 12
#: Training steps timed per probe epoch, at most.
PROBE_STEPS = 3
PROBES = "probes.json"


@dataclass(frozen=True)
class Work:
    """``runs`` runs of ``size``, timed by the probe ``probe``, ``concurrency`` of them at once."""

    probe: str
    runs: float
    size: Size
    concurrency: int = 1


@dataclass(frozen=True)
class Timing:
    step_s: float
    other_s: float


def seconds(work: Work, timing: Timing) -> float:
    s = work.size
    per_epoch = (s.steps + s.eval_images / s.batch_size / 3) * timing.step_s
    return work.runs * (timing.other_s + s.epochs * per_epoch) / max(work.concurrency, 1)


def device_name() -> str:
    """This machine's GPU (read from the NVIDIA driver, without torch) or its CPU cores."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        match = re.search(r"Model:\s*(.+)", info.read_text(errors="replace"))
        if match:
            names.append(match.group(1).strip())
    if names:
        return f"{len(names)} x {names[0]}" if len(names) > 1 else names[0]
    return f"CPU, {os.cpu_count()} cores"


def runtime_age() -> float | None:
    """Seconds since this runtime (container or machine) started, or None where /proc cannot say."""
    try:
        up = float(Path("/proc/uptime").read_text().split()[0])
        fields = Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return max(up - started, 0.0)


# --- what a stage runs ---------------------------------------------------------------------------

def hpo_winner_model(lab: Lab) -> str | None:
    rec = lab.stage("hpo")
    if not rec.get("experiment_dir"):
        return None
    from experiments.reader import best_trial, trials_from_db

    db = db_path(lab.path(rec["experiment_dir"]))
    try:
        model = best_trial(trials_from_db(db, ("lr", "optimizer", "model"))).params.get("model")
    except UserError:
        return None
    return str(model) if model else None


def works(lab: Lab, stage: str) -> list[Work]:
    b = lab.budget
    if stage == "hpo":
        models = b.hpo.models
        return [Work(f"model:{m}", b.hpo.trials / len(models), b.hpo.size, b.hpo.concurrency) for m in models]
    if stage == "hpo_retrain":
        model = hpo_winner_model(lab)
        models = (model,) if model else b.hpo.models
        return [Work(f"model:{m}", 1 / len(models), b.hpo_retrain) for m in models]
    if stage == "classic_nas":
        return [Work("classic_nas", b.classic_nas.trials, b.classic_nas.size, b.classic_nas.concurrency)]
    if stage == "darts_protocol":
        return [Work("darts_search", len(b.seeds), b.search), Work("darts_select", len(b.seeds), b.select)]
    if stage == "darts_retrain":
        return [Work("darts_retrain", 1, b.retrain)]
    return []


def _epochs_done(folder: Path) -> int:
    """The epochs a run folder's metrics record (a damaged metrics file: none)."""
    try:
        return len(read_metrics(folder) or [])
    except UserError:
        return 0


def left(lab: Lab, stage: str, work: Work) -> float:
    """The share of ``work`` not yet done (finished trials, epochs, seeds are done)."""
    rec = lab.stage(stage)
    if stage in EXPERIMENT_STAGES and rec.get("experiment_dir"):
        from experiments.reader import FINISHED, trials_from_db

        db = db_path(lab.path(rec["experiment_dir"]))
        try:
            finished = sum(t.status in FINISHED for t in trials_from_db(db))
        except UserError:
            return 1.0
        return max(0.0, 1 - finished / getattr(lab.budget, stage).trials)
    if stage == "hpo_retrain":
        folders = sorted(lab.runs.glob("hpo_retrain-*"))
        return 1.0 if not folders else max(0.0, 1 - _epochs_done(folders[0]) / work.size.epochs)
    if stage == "darts_retrain":
        folders = sorted((lab.runs / DARTS_RETRAIN).glob(f"{DARTS_RETRAIN}-*"))
        done = max((_epochs_done(f) for f in folders), default=0)
        return max(0.0, 1 - done / work.size.epochs)
    if stage == "darts_protocol":
        step = "search" if work.probe == "darts_search" else "select"
        runs = [lab.runs / PROTOCOL / f"{step}-seed{s}" for s in lab.budget.seeds]
        done = sum((f / RESULT_FILE).is_file() or _epochs_done(f) / work.size.epochs for f in runs)
        return max(0.0, 1 - done / len(runs))
    return 1.0


# --- probes --------------------------------------------------------------------------------------

def _trial_config(lab: Lab) -> str:
    """The ``--config`` of the classic-NAS trials (read from the shipped nnictl config's trialCommand)."""
    src = REPO_ROOT / lab.budget.classic_nas.config
    config = yaml.safe_load(src.read_text())
    words = shlex.split(str(config.get("trialCommand", "")))
    code = (src.parent / str(config.get("trialCodeDirectory", "."))).resolve()
    if "--config" in words:
        return str((code / words[words.index("--config") + 1]).resolve())
    return ""


def probe_command(lab: Lab, work: Work, out: Path) -> list[str]:
    """The command that times ``work``'s runs (2 epochs of at most PROBE_STEPS batches) into ``out``."""
    steps = min(PROBE_STEPS, work.size.max_batches or PROBE_STEPS)
    # evaluation is not timed (module doc): small batches keep the probe short
    timing = ["--epochs", "2", "--max-batches", str(steps), "--eval-batch-size", "16", "--out-dir", str(out)]
    py = sys.executable
    if work.probe.startswith("model:"):
        return [py, "-m", "lab.probe", "--out", str(out / "times.json"), "--models", work.probe[len("model:"):],
                "--", *work.size.flags(), *timing]
    if work.probe == "classic_nas":
        arc = out / "arc.json"
        arc.write_text(json.dumps({f"skip{i}": 1 for i in range(1, 7)}))
        config = _trial_config(lab)
        return [py, "classic_nas/trial.py", "--arc", str(arc), *(["--config", config] if config else []),
                *work.size.flags(), *timing]
    if work.probe == "darts_search":
        return [py, "oneshot_darts/search.py", *work.size.flags(), *timing]
    if work.probe == "darts_select":
        return [py, "oneshot_darts/retrain.py", *lab.budget.select_flags(), "--arc", PROBE_ARC, *timing]
    if work.probe == "darts_retrain":
        return [py, "oneshot_darts/retrain.py", *work.size.flags(), "--arc", PROBE_ARC, *timing]
    raise ValueError(work.probe)


def _key(work: Work) -> str:
    return f"{work.probe} {' '.join(work.size.flags(epochs=False))}"


def timings(lab: Lab, todo: list[Work]) -> dict[str, Timing]:
    """The timing of every work's probe: from ``probes.json`` for this device, else probed now
    (the HPO models of one stage in one process)."""
    cache_path = lab.work / PROBES
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    device = device_name()
    known = cache.setdefault(device, {})
    missing = [w for w in todo if _key(w) not in known]
    groups: dict[str, list[Work]] = {}
    for w in missing:
        group = f"models {' '.join(w.size.flags(epochs=False))}" if w.probe.startswith("model:") else _key(w)
        groups.setdefault(group, []).append(w)
    for group in groups.values():
        with tempfile.TemporaryDirectory(prefix="lab-probe-") as tmp:
            out = Path(tmp)
            argv = probe_command(lab, group[0], out)
            if group[0].probe.startswith("model:"):
                models = [w.probe[len("model:"):] for w in group]
                at = argv.index("--models")
                argv[at + 1:at + 2] = models
            start = time.monotonic()
            proc = subprocess.run(argv, cwd=REPO_ROOT, env=lab.env(), capture_output=True, text=True)
            wall = time.monotonic() - start
            if proc.returncode:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
                raise UserError(f"the timing probe `{' '.join(argv)}` failed (exit {proc.returncode}):\n{tail}")
            if group[0].probe.startswith("model:"):
                times = json.loads((out / "times.json").read_text())
                for w in group:
                    t = times[w.probe[len("model:"):]]
                    known[_key(w)] = {"step_s": t["step_s"], "other_s": t["other_s"],
                                      "measured": time.strftime("%F %T")}
            else:
                from lab.probe import step_seconds

                runs = sorted(p.parent for p in out.rglob(METRICS_FILE))
                if not runs:
                    raise UserError(f"the timing probe `{' '.join(argv)}` wrote no metrics")
                step, trained = step_seconds(runs[-1])
                known[_key(group[0])] = {"step_s": step, "other_s": max(wall - trained, 0.0),
                                         "measured": time.strftime("%F %T")}
        atomic_write_text(cache_path, json.dumps(cache, indent=2) + "\n")
    return {_key(w): Timing(known[_key(w)]["step_s"], known[_key(w)]["other_s"]) for w in todo}


# --- the estimate --------------------------------------------------------------------------------

def estimate(lab: Lab, stage: str) -> tuple[float | None, list[str]]:
    """The stage's remaining seconds on this runtime (None: nothing to estimate) and the lines to print."""
    if lab.status(stage) == "done":
        return None, [f"{stage}: finished earlier; nothing left to run"]
    todo = works(lab, stage)
    if not todo:
        return None, [f"{stage}: a report of what is there: seconds, not estimated"]
    if not lab.budget.timed:
        return None, [f"{stage}: the {lab.budget.name} budget takes seconds per stage; not timed",
                      *_runtime(None, stage)]
    shares = {_key(w) + str(i): left(lab, stage, w) for i, w in enumerate(todo)}
    try:
        times = timings(lab, todo)
    except UserError as exc:           # no estimate is no reason to stop the lab
        return None, [f"{stage}: no estimate: {exc}", *_runtime(None, stage)]
    total = sum(seconds(w, times[_key(w)]) * shares[_key(w) + str(i)] for i, w in enumerate(todo))
    device = device_name()
    steps = ", ".join(f"{w.probe.replace('model:', '')} {times[_key(w)].step_s:.3g} s" for w in todo)
    done = 1 - (sum(seconds(w, times[_key(w)]) * shares[_key(w) + str(i)] for i, w in enumerate(todo)) /
                max(sum(seconds(w, times[_key(w)]) for w in todo), 1e-9))
    lines = [f"{stage}: about {elapsed(total)} on this runtime ({device})"
             + (f" for the {1 - done:.0%} of it not done yet" if done > 0.005 else "")
             + ("; at most that: the assessor stops poor trials early" if has_assessor(lab, stage) else ""),
             f"  seconds per training step: {steps}"]
    return total, lines + _runtime(total, stage)


def _runtime(total: float | None, stage: str) -> list[str]:
    """How long this runtime has been up, and the warning when ``total`` seconds will not fit in it."""
    age = runtime_age()
    if age is None:
        return []
    limit = COLAB_HOURS * 3600
    lines = [f"this runtime has been up {elapsed(age)}; Colab ends a runtime after at most {COLAB_HOURS} h "
             "(an idle one sooner)"]
    if total is not None and total > limit - age:
        lines.append(f"warning: {stage} will not finish before this runtime is cut (it needs about {elapsed(total)}, "
                     f"the runtime has at most {elapsed(max(limit - age, 0))} left). After the reconnect, run the "
                     "notebook again: it continues where it was cut (finished trials, epochs and seeds are kept)")
    return lines


def has_assessor(lab: Lab, stage: str) -> bool:
    """Whether the stage's experiment stops trials early (its estimate is then the most it takes)."""
    if stage not in EXPERIMENT_STAGES:
        return False
    exp = getattr(lab.budget, stage)
    if "assessor" in exp.overrides:
        return exp.overrides["assessor"] is not None
    return bool(yaml.safe_load((REPO_ROOT / exp.config).read_text()).get("assessor"))
