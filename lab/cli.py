"""``python -m lab``: the whole lab, stage by stage, resumable (what notebooks/colab.ipynb runs).

    python -m lab --lab-dir DIR --budget smoke plan            # the stages, their sizes, which finished
    python -m lab --lab-dir DIR estimate hpo                   # how long it will take here, from timed steps
    python -m lab --lab-dir DIR --port 8080 start hpo          # an experiment stage: start (or resume) it, return
    python -m lab --lab-dir DIR --port 8080 run hpo            # run (or continue, or read) a stage to its end
    python -m lab --lab-dir DIR show hpo                       # its table, and its key figures as `figure: PATH`

Stages, in order: hpo, hpo_retrain, classic_nas, darts_protocol, darts_retrain, study. ``--budget``
(smoke, quick, lab) and ``--data`` are fixed by the first command in a lab folder; later ones may
leave them out, and other values are refused. A stage that finished is read, not run again; one
that was cut continues (``lab.stages``). ``--work-dir``: where the stages work when the lab folder
is on a FUSE mount such as Google Drive (default: a folder under ``~/cifar-automl-lab-work``); the
lab folder is then a mirror of it (``lab.mirror``).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from core.errors import ArgumentParser, UserError, cli_main
from lab import plan
from lab.state import Lab

COMMANDS = ("plan", "estimate", "start", "run", "show")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0])
    parser.add_argument("--lab-dir", required=True, help="the lab folder: everything the lab writes, its record")
    parser.add_argument("--work-dir", help="where the stages work when the lab folder is on a FUSE mount (Drive)")
    parser.add_argument("--budget", choices=tuple(plan.BUDGETS), help="the stages' sizes (fixed by the first command)")
    parser.add_argument("--data", help="cifar10 (downloaded), or an image folder / .tar.gz of CIFAR-10; smoke: fake")
    parser.add_argument("--port", type=int, default=8080, help="the NNI web UI / REST port of the experiments")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("stage", nargs="?", choices=plan.STAGES)
    return parser


def plan_lines(lab: Lab) -> list[str]:
    b = lab.budget
    where = f"{lab.lab_dir}" + (f" (working locally in {lab.work}, mirrored there)" if lab.mirrored else "")
    lines = [f"lab folder {where}", f"budget {b.name}: {b.notes}; data {lab.record['data']}"]
    for i, stage in enumerate(plan.STAGES, 1):
        rec = lab.stage(stage)
        status = rec.get("status") or "not started"
        if status == "done" and rec.get("seconds") is not None:
            status += f" in {rec['seconds']:.0f} s" + (f" over {rec['attempts']} runs" if rec.get("attempts", 1) > 1
                                                       else "")
        lines.append(f"{i}. {stage} [{status}]: {plan.describe(b, stage)}")
    return lines


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in ("estimate", "start", "run", "show") and not args.stage:
        raise UserError(f"{args.command}: name a stage ({', '.join(plan.STAGES)})")
    if args.command == "start" and args.stage not in plan.EXPERIMENT_STAGES:
        raise UserError(f"start: only the experiment stages ({', '.join(plan.EXPERIMENT_STAGES)}) start in the "
                        "background; run the others with `run`")
    with Lab(args.lab_dir, args.work_dir).open(args.budget, args.data) as lab:
        if args.command == "plan":
            print("\n".join(plan_lines(lab)), flush=True)
        elif args.command == "estimate":
            from lab.estimate import estimate

            print("\n".join(estimate(lab, args.stage)[1]), flush=True)
        elif args.command in ("start", "run"):
            from lab.stages import run_stage

            run_stage(lab, args.stage, args.port, wait=args.command == "run")
        else:
            from lab.show import show

            print(show(lab, args.stage), flush=True)
