"""Running one stage of the lab: start it, continue it after a cut, or read it when it finished.

Every stage is its own command, run as a subprocess in the repository with the lab's environment
(:meth:`lab.state.Lab.env`): the lab's data, data root and runs folder.

- ``hpo``, ``classic_nas``: ``nnictl create`` on a config written into the lab (the shipped config
  with the budget's trial count, concurrency and duration, paths made absolute,
  ``experimentWorkingDirectory`` the lab's ``nni-experiments/``); the trials' sizes come through
  ``CIFAR_AUTOML_TRIAL_FLAGS``, and classic NAS's winner through ``CIFAR_AUTOML_FROM_HPO``. The
  experiment id is recorded as soon as ``nnictl create`` prints it. Cut mid-way, the next run finds
  the experiment's manager still answering on the port (the same runtime: it waits for it again) or
  runs ``nnictl resume ID --experiment_dir`` (a new runtime): finished trials stay, the trials that
  were running are lost and rerun. At DONE the experiment is stopped (``nnictl stop``), which frees
  the port for the next one.
- ``hpo_retrain``: ``hpo/retrain.py --experiment DIR --top 1`` (run again, it skips a finished
  retrain and continues a killed one from its checkpoint).
- ``darts_protocol``: ``oneshot_darts/protocol.py --seeds ...`` into ``runs/darts-protocol`` (run
  again, it continues from its record and checkpoints).
- ``darts_retrain``: ``oneshot_darts/retrain.py --arc runs/darts-protocol/final_arch.json`` in
  ``runs/darts-retrain/``, or ``--resume`` from the checkpoint a cut one left (:func:`retrain_command`).
- ``study``: ``python -m report --study`` of the four sources.

Each stage then writes its report (``python -m report SOURCE -o reports/STAGE``) and is recorded done.
While a stage runs, the working folder is mirrored to the lab folder every few seconds and whenever
a trial ends (:meth:`lab.state.Lab.sync`).
"""
from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError
from core.paths import REPO_ROOT
from core.run_folder import ARCH_FILE, CHECKPOINT_FILE, RESULT_FILE
from experiments.folder import ENVIRONMENTS_DIR, is_experiment_dir, manager_log
from lab.plan import EXPERIMENT_STAGES, NEEDS, STAGES, TITLES, Experiment
from lab.state import Lab, now

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FINAL = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")
#: Paths an nnictl config resolves against its own folder (NNI's rule), made absolute in the lab's copy.
PATH_KEYS = ("trialCodeDirectory", "searchSpaceFile")
ALGORITHMS = ("tuner", "assessor", "advisor")
#: How long the manager may not answer before the stage stops waiting.
UNREACHABLE_S = 120
PROTOCOL = "darts-protocol"
DARTS_RETRAIN = "darts-retrain"


def say(message: str) -> None:
    print(message, flush=True)


def elapsed(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


# --- commands ------------------------------------------------------------------------------------

def python() -> str:
    return sys.executable


def nnictl() -> str:
    beside = Path(sys.executable).parent / "nnictl"
    found = str(beside) if beside.is_file() else shutil.which("nnictl")
    if not found:
        raise UserError("nnictl: not found beside this Python or on PATH; install the project (pip install -e .)")
    return found


def run_command(lab: Lab, argv: list[Any], env: dict[str, str], what: str) -> str:
    """Run ``argv`` in the repository, printing its output as it comes and mirroring the lab while
    it runs; returns the output (colour codes removed). A non-zero exit is a :class:`UserError`."""
    argv = [str(a) for a in argv]
    say("$ " + " ".join(argv))
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out: list[str] = []
    try:
        ended = False
        while not ended:
            try:
                line = lines.get(timeout=lab.budget.poll)
                while True:
                    if line is None:
                        ended = True
                        break
                    print(line, end="", flush=True)
                    out.append(line)
                    line = lines.get_nowait()
            except queue.Empty:
                pass
            lab.sync()
        code = proc.wait()
    except BaseException:
        if proc.poll() is None:       # interrupted (Ctrl-C, the notebook's stop button): the command too
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    text = ANSI.sub("", "".join(out))
    if code:
        raise UserError(f"{what}: `{' '.join(argv)}` exited with status {code} (its output is above)")
    return text


# --- nnictl experiments --------------------------------------------------------------------------

def write_config(lab: Lab, stage: str) -> Path:
    """The stage's nnictl config for this lab: the shipped one with the budget's values, its paths
    absolute and its experiments in the lab's ``nni-experiments/``."""
    exp: Experiment = getattr(lab.budget, stage)
    src = REPO_ROOT / exp.config
    config = yaml.safe_load(src.read_text())
    for key, value in exp.config_values().items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    for key in PATH_KEYS:
        if isinstance(config.get(key), str):
            config[key] = str((src.parent / config[key]).resolve())
    for key in ALGORITHMS:
        algo = config.get(key)
        if isinstance(algo, dict) and isinstance(algo.get("codeDirectory"), str):
            algo["codeDirectory"] = str((src.parent / algo["codeDirectory"]).resolve())
    config["experimentWorkingDirectory"] = str(lab.experiments)
    out = lab.configs / f"{stage}.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {stage} of the lab ({lab.budget.name} budget): {exp.config} with the budget's values\n"
                   + yaml.safe_dump(config, sort_keys=False))
    return out


def rest(port: int, path: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/{path}", timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def port_owner(port: int) -> str | None:
    """The id of the NNI experiment answering on ``port``, or None when nothing listens there."""
    try:
        profile = rest(port, "experiment", timeout=5)
    except urllib.error.HTTPError as exc:
        raise UserError(f"port {port}: something that is not an NNI manager answers there (HTTP {exc.code}); "
                        "choose another PORT") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None
    except ValueError:
        raise UserError(f"port {port}: something that is not an NNI manager answers there; choose another PORT") \
            from None
    return str(profile.get("id")) if isinstance(profile, dict) and profile.get("id") else None


def _experiment_env(lab: Lab, stage: str) -> dict[str, str]:
    exp: Experiment = getattr(lab.budget, stage)
    from_hpo = lab.path(lab.stage("hpo")["experiment_dir"]) if stage == "classic_nas" else None
    return lab.env(trial_flags=exp.size.flags(), from_hpo=from_hpo)


def start_experiment(lab: Lab, stage: str, port: int) -> str:
    """Create the stage's experiment, or resume it, or find it running; returns its id."""
    rec = lab.stage(stage)
    env = _experiment_env(lab, stage)
    exp_id = rec.get("experiment")
    owner = port_owner(port)
    if exp_id and owner == exp_id:
        say(f"{stage}: experiment {exp_id} is running (port {port}); waiting for it")
        return exp_id
    if owner is not None:
        ours = {s.get("experiment") for s in lab.record["stages"].values()}
        if owner not in ours:
            raise UserError(f"port {port}: NNI experiment {owner}, not one of this lab's, is running there; stop it "
                            f"(nnictl stop {owner}) or choose another PORT")
        say(f"port {port}: stopping this lab's experiment {owner}, left running there")
        run_command(lab, [nnictl(), "stop", owner], env, "nnictl stop")
    if exp_id:
        folder = lab.experiments / exp_id
        if not is_experiment_dir(folder):
            raise UserError(f"{stage}: the record names experiment {exp_id} but {str(folder)!r} holds no database; "
                            "the lab folder lost it")
        rec["attempts"] = rec.get("attempts", 1) + 1
        say(f"{stage}: resuming experiment {exp_id} where it was cut (nnictl resume; attempt {rec['attempts']}): "
            "its finished trials stay, the trials that were running start again")
        run_command(lab, [nnictl(), "resume", exp_id, "--port", port, "--experiment_dir", lab.experiments], env,
                    "nnictl resume")
        lab.save()
        return exp_id
    config = write_config(lab, stage)
    from experiments.nni_config import check_experiment_config

    check_experiment_config(config)
    out = run_command(lab, [nnictl(), "create", "--config", config, "--port", port], env, "nnictl create")
    match = re.search(r"Experiment ID: (\w+)", out)
    if not match:
        raise UserError("nnictl create printed no experiment id")
    exp_id = match.group(1)
    rec.update(status="running", experiment=exp_id, experiment_dir=lab.relative(lab.experiments / exp_id),
               config=lab.relative(config), started=now(), attempts=1)
    lab.save()
    say(f"{stage}: experiment {exp_id} started: {getattr(lab.budget, stage).config} ({lab.budget.name} budget), "
        f"data {lab.record['data']}, web UI on port {port}")
    return exp_id


def wait_experiment(lab: Lab, stage: str, exp_id: str, port: int) -> dict[str, int]:
    """Wait for the experiment to end, printing a line whenever its trials change and mirroring the
    lab; then stop it. Returns its trials by status."""
    start, last, last_finished, unreachable = time.monotonic(), None, -1, None
    counts: dict[str, int] = {}
    while True:
        try:
            status = rest(port, "check-status")["status"]
            trials = rest(port, "trial-jobs")
            unreachable = None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, KeyError, ValueError):
            unreachable = unreachable or time.monotonic()
            if time.monotonic() - unreachable > UNREACHABLE_S:
                raise UserError(f"{stage}: the NNI manager of experiment {exp_id} stopped answering on port {port} "
                                f"(its log: {manager_log(lab.experiments / exp_id)}); run this again "
                                "to resume it") from None
            time.sleep(lab.budget.poll)
            continue
        counts = {}
        for trial in trials:
            counts[trial["status"]] = counts.get(trial["status"], 0) + 1
        finished = sum(n for s, n in counts.items() if s in FINAL)
        line = f"{status}: " + (", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trial yet")
        if line != last:
            say(f"[{elapsed(time.monotonic() - start):>10}] {line}")
            last = line
        lab.sync(force=finished != last_finished)
        last_finished = finished
        active = counts.get("RUNNING", 0) + counts.get("WAITING", 0)
        if status == "ERROR":
            raise UserError(f"{stage}: experiment {exp_id} ended in ERROR; see {lab.experiments / exp_id / 'log'}")
        if status == "STOPPED":
            raise UserError(f"{stage}: experiment {exp_id} was stopped from outside the lab; run this again to "
                            "resume it")
        if status == "DONE" or (status == "TUNER_NO_MORE_TRIAL" and not active):
            break
        time.sleep(lab.budget.poll)
    run_command(lab, [nnictl(), "stop", exp_id], _experiment_env(lab, stage), "nnictl stop")
    if not counts.get("SUCCEEDED"):
        raise UserError(f"{stage}: no trial of experiment {exp_id} succeeded; see the trials' trial.stderr under "
                        f"{lab.experiments / exp_id / ENVIRONMENTS_DIR}")
    return counts


# --- run-folder stages ---------------------------------------------------------------------------

def retrain_command(lab: Lab) -> tuple[list[str], str]:
    """The DARTS retrain's command: a new retrain of the protocol's cell, or ``--resume`` from the
    checkpoint of the one a cut left; and what it does, in words."""
    base = lab.runs / DARTS_RETRAIN
    folders = sorted(p for p in base.glob(f"{DARTS_RETRAIN}-*") if p.is_dir()) if base.is_dir() else []
    resumable = [p for p in folders if (p / CHECKPOINT_FILE).is_file() and not (p / RESULT_FILE).is_file()]
    if resumable:
        ckpt = resumable[-1] / CHECKPOINT_FILE
        return ([python(), "oneshot_darts/retrain.py", "--resume", str(ckpt)],
                f"continuing the retrain in {resumable[-1].name} from its last checkpoint")
    arc = lab.runs / PROTOCOL / ARCH_FILE
    return ([python(), "oneshot_darts/retrain.py", *lab.budget.retrain.flags(), "--arc", str(arc),
             "--out-dir", str(base), "--run-name", DARTS_RETRAIN], "a new retrain of the protocol's cell")


def finished_retrain(lab: Lab) -> Path | None:
    base = lab.runs / DARTS_RETRAIN
    done = sorted(p for p in base.glob(f"{DARTS_RETRAIN}-*") if (p / RESULT_FILE).is_file()) if base.is_dir() else []
    return done[-1] if done else None


def train_stage(lab: Lab, stage: str) -> str:
    """Run (or continue) a stage that is not an experiment; returns its run folder, relative."""
    rec = lab.stage(stage)
    rec["attempts"] = rec.get("attempts", 0) + 1
    rec.setdefault("started", now())
    rec["status"] = "running"
    lab.save()
    if rec["attempts"] > 1:
        say(f"{stage}: attempt {rec['attempts']}: the command continues what the cut one left (finished runs are "
            "kept, a cut one resumes from its checkpoint)")
    env = lab.env()
    b = lab.budget
    if stage == "hpo_retrain":
        hpo = lab.path(lab.stage("hpo")["experiment_dir"])
        run_command(lab, [python(), "hpo/retrain.py", "--experiment", hpo, "--top", "1", *b.hpo_retrain.flags()],
                    env, "the HPO retrain")
        done = sorted(p.parent for p in lab.runs.glob(f"hpo_retrain-{hpo.name}-*/{RESULT_FILE}"))
        if not done:
            raise UserError(f"hpo_retrain: no finished retrain under {lab.runs}")
        return lab.relative(done[0])
    if stage == "darts_protocol":
        run_command(lab, [python(), "oneshot_darts/protocol.py", *b.protocol_flags(), "--out-dir", lab.runs], env,
                    "the DARTS protocol")
        folder = lab.runs / PROTOCOL
        if not (folder / ARCH_FILE).is_file():
            raise UserError(f"darts_protocol: {str(folder)!r} holds no {ARCH_FILE} after the protocol")
        return lab.relative(folder)
    if stage == "darts_retrain":
        if finished_retrain(lab) is None:
            argv, what = retrain_command(lab)
            say(f"darts_retrain: {what}")
            run_command(lab, argv, env, "the DARTS retrain")
        folder = finished_retrain(lab)
        if folder is None:
            raise UserError(f"darts_retrain: no finished retrain under {lab.runs / DARTS_RETRAIN}")
        return lab.relative(folder)
    raise ValueError(stage)


# --- reports -------------------------------------------------------------------------------------

def report_sources(lab: Lab, stage: str) -> list[Path]:
    if stage == "study":
        return [lab.path(lab.stage(s)["source"]) for s in ("hpo", "classic_nas", "darts_protocol", "darts_retrain")]
    return [lab.path(lab.stage(stage)["source"])]


def write_report(lab: Lab, stage: str) -> None:
    out = lab.report_dir(stage)
    study = ["--study"] if stage == "study" else []
    run_command(lab, [python(), "-m", "report", *study, *report_sources(lab, stage), "-o", out], lab.env(),
                f"the {stage} report")
    rec = lab.stage(stage)
    rec.update(status="done", report=lab.relative(out), finished=now())
    lab.save()


# --- one stage -----------------------------------------------------------------------------------

def check_ready(lab: Lab, stage: str) -> None:
    missing = [s for s in NEEDS[stage] if lab.status(s) != "done"]
    if missing:
        raise UserError(f"{stage}: needs {', '.join(missing)} finished first (the lab's order: {' -> '.join(STAGES)})")


def run_stage(lab: Lab, stage: str, port: int, *, wait: bool = True) -> None:
    """Run, continue or read ``stage`` (module doc). ``wait`` False: start an experiment stage and
    return while it runs (``python -m lab start``). The record's ``seconds`` add up the time of the
    commands that trained the stage and wrote its report (not that of a cut attempt)."""
    rec = lab.stage(stage)
    if rec.get("status") == "done":
        say(f"{stage}: finished earlier ({rec.get('finished')}); read from {lab.path(rec['report'])}, not run again")
        return
    check_ready(lab, stage)
    t0 = time.monotonic()
    if rec.get("status") != "trained":
        say(f"{stage}: {TITLES[stage]}")
        if stage in EXPERIMENT_STAGES:
            exp_id = start_experiment(lab, stage, port)
            if not wait:
                return
            rec.update(trials=wait_experiment(lab, stage, exp_id, port), source=rec["experiment_dir"])
        elif stage != "study":
            rec["source"] = train_stage(lab, stage)
        rec["status"] = "trained"
        lab.save()
    elif not wait:
        return
    write_report(lab, stage)
    rec["seconds"] = round(rec.get("seconds", 0) + time.monotonic() - t0, 1)
    lab.save()
    say(f"{stage}: done; report {lab.path(rec['report']) / 'report.md'}")
