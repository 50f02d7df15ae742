"""Time a few training steps of registry models in one process (the estimate's probe of HPO trials).

    python -m lab.probe --out TIMES.json --models mobilenet resnet18 -- [python -m core.train_model flags]

Each model trains through ``python -m core.train_model`` (the core's engine, as an HPO trial does)
for the flags given, which should ask for 2 epochs of a few batches (``--epochs 2 --max-batches 3``);
the seconds per step of the second epoch (the first pays for warm-up: cuDNN's search, compilation)
and the seconds spent outside the timed epochs are written to ``TIMES.json`` as
``{model: {"step_s": ..., "other_s": ...}}``. One process for every model: the imports are paid once.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from core.errors import ArgumentParser, cli_main
from core.run_folder import read_metrics


def step_seconds(run_dir: Path) -> tuple[float, float]:
    """Seconds per training step of the last epoch in the run folder's metrics, and the training
    seconds of every epoch added up."""
    lines = read_metrics(run_dir) or []
    if not lines:
        raise ValueError(f"{run_dir}: no epoch finished")
    return float(lines[-1]["step_seconds"]), sum(float(m.get("train_seconds", 0)) for m in lines)


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m lab.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file of the times")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then python -m core.train_model's flags")
    args = parser.parse_args(argv)
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    from core.train_model import main as train_model

    times = {}
    for model in args.models:
        start = time.monotonic()
        result = train_model([*flags, "--model", model, "--run-name", f"probe-{model}"])
        wall = time.monotonic() - start
        step, trained = step_seconds(Path(result["run_dir"]))
        times[model] = {"step_s": step, "other_s": max(wall - trained, 0.0)}
        print(f"probe {model}: {step:.4f} s per step", flush=True)
    Path(args.out).write_text(json.dumps(times, indent=2) + "\n")


if __name__ == "__main__":
    main()
