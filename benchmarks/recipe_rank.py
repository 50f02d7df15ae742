"""Do two trial recipes rank an HPO space's configurations differently? Kendall's tau between the rankings.

Every configuration of a grid space (default: hpo/config_quick.yml's 2 lr x 4 optimizers x 2
models = 16) is trained once under each recipe by the HPO trial itself (``hpo/trial.py``'s config
resolution and :func:`hpo.trial.run_trial`, outside NNI), on the same images, epochs and seed, and
scored by its validation accuracy. The two rankings are compared with Kendall's tau-b and its
p-value (``scipy.stats.kendalltau``). The baseline measured in the same run is the noise floor:
the first recipe trained again with another seed (``--control-seed``), so a tau between recipes
can be read against the tau that a change of seed alone gives. The same control measures the
seed-to-seed standard deviation of one configuration's accuracy (pooled over the configurations,
``report.stats.seed_spread``); the configurations tied with each recipe's best are those within two
of the larger of it and the binomial standard error (``result.json``'s ``noise``), and a best at
chance is said to be so.

A recipe is ``default`` (the trial's defaults: hpo/config.yml's recipe, weight decay 5e-4 and a
cosine schedule) or a YAML of trial options (``configs/recipe_nni_example.yml``: NNI's example, no
weight decay, constant lr). Progress is kept in ``OUT/trials.json`` after every trial: run the same
command again to continue a killed measurement (finished trials are not redone); ``OUT/result.json``
holds the table and the taus at the end.

    python benchmarks/recipe_rank.py --data /abs/path/cifar10-jpeg.tar.gz          # the measurement
    python benchmarks/recipe_rank.py --data fake --subset 200 --val-subset 100 --batch-size 8 \
        --max-batches 1 --epochs 1 --limit 3 --out /tmp/recipe_rank_smoke                  # seconds: smoke

The default measurement is 48 trials (16 configurations x 2 recipes + the 16-trial seed control) of
2,000 training images x 2 epochs and 1,000 validation images, the size of hpo/config_quick.yml's
trials; expected, from those trials' measured 30-40 s each: 20-30 minutes on a quiet 2-core CPU
(docs/hpo.md).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from core.files import atomic_write_text
from core.config import read_json, read_text
from core.errors import ArgumentParser, UserError, cli_main
from experiments.nni_trial import NniTrial
from core.paths import REPO_ROOT, default_data, default_data_root, default_out_dir, resolve
from core.run_folder import RESULT_FILE
from core.run_training import load_splits
from core.words import count
from hpo import PARAM_KEYS
from hpo import trial as hpo_trial
from report import stats

DEFAULT_SPACE = REPO_ROOT / "hpo" / "config_quick.yml"
DEFAULT_RECIPES = ("default", str(REPO_ROOT / "configs" / "recipe_nni_example.yml"))
TRIALS_FILE, SETTINGS_FILE = "trials.json", "settings.json"


def read_space(path: str | Path) -> dict[str, Any]:
    """The search space of an nnictl config (``searchSpace`` or ``searchSpaceFile``) or of a
    search-space JSON file."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_json(path, "--space")
    try:
        config = yaml.safe_load(read_text(path, "--space"))
    except yaml.YAMLError as exc:
        raise UserError(f"--space {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"--space {str(path)!r} is neither an nnictl config nor a search-space JSON")
    if isinstance(config.get("searchSpace"), dict):
        return config["searchSpace"]
    if config.get("searchSpaceFile"):
        return read_json(path.parent / config["searchSpaceFile"], "--space searchSpaceFile")
    raise UserError(f"--space {str(path)!r} has no searchSpace or searchSpaceFile")


def grid(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configuration of a space of ``choice`` parameters (the HPO keys), in a fixed order."""
    if set(space) != set(PARAM_KEYS):
        raise UserError(f"--space: its parameters are {', '.join(sorted(space))}; a recipe comparison needs "
                        f"exactly {', '.join(PARAM_KEYS)}")
    values = []
    for key in PARAM_KEYS:
        spec = space[key]
        if not isinstance(spec, dict) or spec.get("_type") != "choice" or not spec.get("_value"):
            raise UserError(f"--space: {key} is not a 'choice' parameter; the rankings need a grid of configurations")
        values.append(spec["_value"])
    return [dict(zip(PARAM_KEYS, combo)) for combo in itertools.product(*values)]


def config_name(params: dict[str, Any]) -> str:
    return " ".join(str(params[k]) for k in PARAM_KEYS)


def recipe_name(recipe: str) -> str:
    return "default" if recipe == "default" else Path(recipe).stem


def trial_argv(args: argparse.Namespace, recipe: str, seed: int, runs: Path) -> list[str]:
    """The trial's command line: the same images, epochs and seed for every recipe; the recipe's
    YAML (``--config``) sets the rest (flags win over it, so the sizes here hold for both)."""
    argv = ["--data", args.data, "--data-root", args.data_root, "--subset", str(args.subset),
            "--val-subset", str(args.val_subset), "--val-fraction", "0.1", "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--max-batches", str(args.max_batches), "--seed", str(seed),
            "--threads", str(args.threads), "--device", args.device, "--no-final-test", "--no-progress",
            "--out-dir", str(runs)]
    return argv + ([] if recipe == "default" else ["--config", recipe])


def kendall(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Kendall's tau-b and its two-sided p-value (scipy, through the reports' ``report.stats.kendall``);
    ``None`` when undefined (a ranking all tied)."""
    k = stats.kendall(x, y)
    return {"tau": None if k is None else round(k.tau, 4), "p": None if k is None else round(k.p, 6), "n": len(x)}


def noise_summary(acc: dict[tuple[str, int], list[float]], names: list[str], n_val: int | None,
                  classes: int | None = None) -> dict[str, Any]:
    """What a difference between two configurations must exceed to count: the larger of one
    accuracy's binomial standard error (``n_val`` validation images) and, when the first recipe was
    trained again with another seed (the third column of ``acc``), the seed-to-seed standard
    deviation of one configuration (pooled over the configurations); per column, the
    configurations tied with its best (within 2 of that noise) and whether its best is at chance."""
    columns = list(acc)
    first = columns[0]
    se = max((stats.binomial_se(v, n_val) or 0.0 for v in acc[first]), default=0.0) if n_val else None
    spread = stats.seed_spread([[x, y] for x, y in zip(acc[first], acc[columns[2]])]) if len(columns) > 2 else None
    noise = stats.Noise(se, spread[0] if spread else None, spread[1] if spread else 0)
    out: dict[str, Any] = {"binomial_se": se, "seed_sd": spread[0] if spread else None, "noise": noise.value,
                           "counts": noise.text(), "tied_with_best": {}, "best_at_chance": {}}
    for col in columns:
        values = acc[col]
        top = max(values)
        label = f"{col[0]} seed {col[1]}"
        out["tied_with_best"][label] = [n for n, v in zip(names, values)
                                        if noise.value is not None and top - v <= stats.TIE_SE * noise.value + 1e-12]
        out["best_at_chance"][label] = stats.at_chance(top, n_val, classes)
    return out


def format_tau(label: str, k: dict[str, Any]) -> str:
    if k["tau"] is None:
        return f"{label}: undefined (one ranking is all ties), n = {k['n']}"
    return f"{label}: {k['tau']:+.3f} (p = {k['p']:.3g}, n = {k['n']})"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python benchmarks/recipe_rank.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="as for every command: cifar10, fake, or an image folder / "
                        ".tar.gz (env CIFAR_AUTOML_DATA)")
    parser.add_argument("--data-root", default=None, help="download and decode cache (env CIFAR_AUTOML_DATA_ROOT)")
    parser.add_argument("--space", default=str(DEFAULT_SPACE), help="nnictl config or search-space JSON whose "
                        "choice parameters lr, optimizer, model are the grid (default: hpo/config_quick.yml)")
    parser.add_argument("--recipes", nargs=2, default=list(DEFAULT_RECIPES), metavar=("A", "B"),
                        help="two recipes: 'default' or a YAML of trial options (default: default "
                        "configs/recipe_nni_example.yml)")
    parser.add_argument("--control-seed", type=int, default=1, help="train recipe A again with this seed: the "
                        "noise floor of tau (default 1; -1: no control)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of both recipes' trials (default 0)")
    parser.add_argument("--subset", type=int, default=2000, help="training images per trial (default 2000)")
    parser.add_argument("--val-subset", type=int, default=1000, help="validation images per trial (default 1000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="training batch (default 64, as hpo/config_quick.yml)")
    parser.add_argument("--max-batches", type=int, default=0, help="batches per epoch and evaluation (0: all; "
                        "a smoke run)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N configurations (0: all; a smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", default=None, help="folder of this measurement (default: <runs>/recipe_rank); "
                        "the same command again continues it")
    return parser


def settings_of(args: argparse.Namespace, configs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("data", "space", "recipes", "control_seed", "seed", "subset", "val_subset", "epochs", "batch_size",
            "max_batches", "device")
    return {**{k: getattr(args, k) for k in keys}, "configurations": configs}


def open_out(out: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials already measured in ``out`` (with the same settings), or a new folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {str(out)!r} is a file, not a folder")
    saved = out / SETTINGS_FILE
    if saved.exists():
        previous = read_json(saved, "--out settings")
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise UserError(f"--out: {str(out)!r} holds a measurement with other settings ({', '.join(changed)}); "
                            "give another folder, or the same options to continue it")
        done = read_json(out / TRIALS_FILE, "--out trials") if (out / TRIALS_FILE).exists() else []
        return done if isinstance(done, list) else []
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out: {str(out)!r} is not empty and holds no measurement; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(settings, indent=2) + "\n")
    return []


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    args.data = default_data() if args.data is None else (args.data if args.data in ("cifar10", "fake")
                                                          else resolve(args.data))
    args.data_root = resolve(args.data_root) if args.data_root else default_data_root()
    args.space = resolve(args.space)
    args.recipes = [r if r == "default" else resolve(r) for r in args.recipes]
    for recipe in args.recipes:
        if recipe != "default":
            read_text(recipe, "--recipes")
    if recipe_name(args.recipes[0]) == recipe_name(args.recipes[1]):
        raise UserError(f"--recipes: {args.recipes[0]!r} and {args.recipes[1]!r} have the same name; give two recipes")
    configs = grid(read_space(args.space))
    if args.limit:
        configs = configs[:args.limit]
    if len(configs) < 2:
        raise UserError("--limit: a ranking needs at least 2 configurations")
    runs_plan = [(args.recipes[0], args.seed), (args.recipes[1], args.seed)]
    if args.control_seed >= 0:
        if args.control_seed == args.seed:
            raise UserError(f"--control-seed: {args.control_seed} is the trials' own seed; give another (or -1)")
        runs_plan.append((args.recipes[0], args.control_seed))
    # bad options or data: an error before anything is written (the trial checks every field; the
    # data are decoded once here, into the data root's cache, and the subsets checked)
    checked = [hpo_trial.resolve_config(hpo_trial.build_parser().parse_args(trial_argv(args, recipe, seed, Path("/"))),
                                        configs[0]) for recipe, seed in runs_plan]
    classes = load_splits(checked[0]).num_classes
    out = Path(resolve(args.out)) if args.out else Path(default_out_dir()) / "recipe_rank"
    done = open_out(out, settings_of(args, configs))
    key = lambda recipe, seed, params: (recipe_name(recipe), seed, config_name(params))  # noqa: E731
    measured = {(d["recipe"], d["seed"], d["config"]): d for d in done}

    total, started = len(runs_plan) * len(configs), time.monotonic()
    print(f"{len(configs)} configurations x {len(runs_plan)} runs = {total} trials ({len(measured)} already done) "
          f"in {out}; {args.subset} training / {args.val_subset} validation images, {count(args.epochs, 'epoch')}, "
          f"batch {args.batch_size}, data {args.data}", flush=True)
    for i, ((recipe, seed), params) in enumerate(itertools.product(runs_plan, configs), 1):
        if key(recipe, seed, params) in measured:
            continue
        t0 = time.monotonic()
        trial_args = hpo_trial.build_parser().parse_args(trial_argv(args, recipe, seed, out / "runs"))
        cfg = hpo_trial.resolve_config(trial_args, params)
        final = hpo_trial.run_trial(cfg, NniTrial(active=False))
        row = {"recipe": recipe_name(recipe), "seed": seed, "config": config_name(params), "params": params,
               "val_acc": final["default"], "val_images": final.get("val_images"),
               "diverged": bool(final.get("diverged")),
               "seconds": round(time.monotonic() - t0, 1)}
        measured[key(recipe, seed, params)] = row
        atomic_write_text(out / TRIALS_FILE, json.dumps(list(measured.values()), indent=1) + "\n")
        print(f"[{i}/{total}] {row['recipe']} seed {seed}: {row['config']} -> validation accuracy "
              f"{row['val_acc']:.4f}{' (diverged)' if row['diverged'] else ''} ({row['seconds']:.0f} s; "
              f"{time.monotonic() - started:.0f} s so far)", flush=True)

    columns = [(recipe_name(r), s) for r, s in runs_plan]
    acc = {col: [measured[(col[0], col[1], config_name(p))]["val_acc"] for p in configs] for col in columns}
    a, b = columns[0], columns[1]
    result: dict[str, Any] = {"recipes": kendall(acc[a], acc[b])}
    if len(columns) > 2:
        result["seeds"] = kendall(acc[a], acc[columns[2]])
    counted = [d.get("val_images") for d in measured.values() if isinstance(d.get("val_images"), int)]
    n_val = min(counted) if counted else args.val_subset       # the images really scored (--max-batches: fewer)
    se = max(stats.binomial_se(v, n_val) or 0.0 for v in acc[a]) if n_val else None
    result["noise"] = noise_summary(acc, [config_name(p) for p in configs], n_val or None, classes)
    result["table"] = [{"config": config_name(p), **{f"{c[0]} seed {c[1]}": acc[c][j] for c in columns}}
                       for j, p in enumerate(configs)]
    result["best"] = {f"{c[0]} seed {c[1]}": config_name(configs[max(range(len(configs)), key=lambda j: acc[c][j])])
                      for c in columns}
    width = max(len(config_name(p)) for p in configs)
    header = "  ".join(f"{c[0] + ' seed ' + str(c[1]):>22}" for c in columns)
    lines = [f"{'configuration':{width}}  {header}"]
    for j, p in enumerate(configs):
        lines.append(f"{config_name(p):{width}}  " + "  ".join(f"{acc[c][j]:>22.4f}" for c in columns))
    lines.append(format_tau(f"Kendall's tau, {a[0]} vs {b[0]} (seed {a[1]})", result["recipes"]))
    if "seeds" in result:
        lines.append(format_tau(f"Kendall's tau, {a[0]} seed {a[1]} vs seed {columns[2][1]} (noise floor)",
                                result["seeds"]))
    if se is not None:
        lines.append(f"one accuracy's binomial standard error on {n_val} validation images: up to "
                     f"{100 * se:.1f} points")
    lines.append(f"ties: within {stats.TIE_SE:g} x {result['noise']['noise'] or 0:.4f} of a recipe's best; "
                 f"{result['noise']['counts']}")
    for col, best in result["best"].items():
        if result["noise"]["best_at_chance"].get(col):
            lines.append(f"best under {col}: {best}, at chance (the recipe learned nothing at this budget; no "
                         "configuration is better than another)")
            continue
        tied = [c for c in result["noise"]["tied_with_best"].get(col, []) if c != best]
        lines.append(f"best under {col}: {best}" + (f", tied with {', '.join(tied)}" if tied else ""))
    print("\n".join(lines), flush=True)
    atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
