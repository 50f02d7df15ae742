"""The DARTS paper's selection protocol in one command (Liu et al. 2019, section 3.2)::

    python oneshot_darts/protocol.py --seeds 0 1 2 3 --select-epochs 100 [--select-config YAML] [search flags]

(``python oneshot_darts/search.py --seeds ...`` runs it too, with the same flags.)

1. one search per seed (the search config with that seed), each in its own run folder
   ``search-seed<S>/``;
2. each derived cell trained from scratch for E epochs (``--select-epochs``) with the paper's retrain
   recipe (:class:`~oneshot_darts.retrain.RetrainConfig`) on the search's data (its ``data``,
   ``subset``, ``val_subset``, ``max_batches``, ...), at the paper's retrain size (C 36, 20 cells) or,
   when the search's supernet is narrower or shallower than the paper's (C 16, 8 cells), that size
   shrunk by the same factors (:func:`scaled_network`); a ``--select-config`` YAML overrides any of
   these fields. The training split has a validation split held out (``val_fraction``, 0.1 unless
   the YAML says otherwise), in ``select-seed<S>/``; every cell with the same seed (the select
   config's), so that only the cell differs. ``--print-config`` with ``--seeds`` prints both configs;
3. the cell whose short retrain ends with the best validation accuracy (the last epoch's; ties: the
   seed listed first) is written to ``final_arch.json``; ``selection.json`` holds every seed's cell,
   search validation accuracy (on the architecture half), whether its search ended with the
   architecture weights still uniform (``arch_uniform``: its cell is arbitrary), short-retrain
   validation accuracy, and the winner.

The test split is never read: the searches measure on their architecture half, the short retrains
on their held-out validation split, and the selection uses nothing else.

It trains nothing itself: each step is :func:`~oneshot_darts.search_trainer.run_search` or
:func:`~oneshot_darts.retrain.run_retrain` (so :func:`core.run_training.train`) in a folder inside the
protocol folder ``<out_dir>/<run_name or darts-protocol>/``. Its progress is recorded in
``protocol.json`` there (the settings, and each step's outcome as it finishes). Killed at any point,
the same command continues where it was (the interrupted run says so, and names the step), by the
rules of :mod:`core.steps` (as ``--top K`` retrains): a step whose folder holds ``result.json`` is not
redone, one with a checkpoint resumes from it, the others start. A protocol folder is continued only
with the settings it was started with (the fields that say how a run runs, such as the device,
aside); otherwise one line names the differences and nothing is written. One process at a time
holds its ``.lock``; it first removes the temporary files a killed write of ``protocol.json``,
``selection.json`` or ``final_arch.json`` left (``.<name>.*.tmp``, nothing else), and a step
folder's on reaching it.

A short retrain that is reused (skipped or resumed) must have trained the cell its search now names
(``select-seed<S>/arch.json`` against ``search-seed<S>/result.json``, say after a hand edit of the
latter): otherwise the selection would pair one cell with another's accuracy, so one line names both
files and nothing is trained (remove ``select-seed<S>/`` to retrain the cell the search names).

Under ``torchrun`` the protocol is refused on every rank before anything is written (rank 0 prints
the line): its searches train in one process only (:class:`~oneshot_darts.search_trainer.DartsSearch`). The
selected cell's retrain runs under ``torchrun`` as any retrain does.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from core import distributed
from core.config import add_config_arguments, config_from_args, from_dict, read_yaml, to_dict
from core.output import print_result
from core.errors import ArgumentParser, Interrupted, UserError, cli_main
from core.files import atomic_write_text, temp_files
from core.paths import absolute_paths
from core.run_folder import (ARCH_FILE, CHECKPOINT_FILE, LOCK_FILE, PROTOCOL_FILE, RESULT_FILE, SEARCH_STEP,
                             SELECT_STEP, SELECTION_FILE, TRAINED_ARCH_FILE, read_protocol, read_result,
                             step_dir_name, write_protocol, write_selection)
from core.steps import lock_folder, run_step
from experiments.top_k import config_differences, read_json_file
from oneshot_darts.genotype import Genotype, parse_arch
from oneshot_darts.network_shape import MIN_LAYERS
from oneshot_darts.retrain import RetrainConfig, run_retrain
from oneshot_darts.search_trainer import SearchConfig, run_search

DEFAULT_NAME = "darts-protocol"
#: The paper's short retrain: 100 epochs.
PAPER_SELECT_EPOCHS = 100
#: The validation split the short retrains hold out of the training split, unless --select-config says.
SELECT_VAL_FRACTION = 0.1
#: Search config fields the short retrains take over (where and how runs run, and the data).
SHARED_FIELDS = ("data", "data_root", "subset", "val_subset", "image_size", "device", "amp", "channels_last",
                 "progress", "max_batches", "eval_batch_size")
#: Retrain fields the protocol sets itself, so a --select-config may not.
PROTOCOL_FIELDS = ("epochs", "arc", "out_dir", "run_name")


def scaled_network(search_cfg: Any) -> dict[str, int]:
    """The short retrains' network when the search's supernet is narrower or shallower than the
    paper's (C 16, 8 cells): the paper's retrain network (C 36, 20 cells) shrunk by the same factors
    (rounded, at least 1 channel and 3 cells); empty (the paper's) otherwise."""
    scaled = {}
    for name, least in (("channels", 1), ("layers", MIN_LAYERS)):
        searched, paper_search, paper_retrain = (getattr(search_cfg, name), getattr(SearchConfig, name),
                                                 getattr(RetrainConfig, name))
        if searched < paper_search:
            scaled[name] = max(least, math.floor(paper_retrain * searched / paper_search + 0.5))
    return scaled


def selection_config(search_cfg: Any, select_epochs: int, values: dict[str, Any], source: str) -> Any:
    """The short retrains' config: the paper's retrain recipe < the search's data and run fields <
    ``values`` (the --select-config YAML) < ``epochs`` = ``select_epochs``."""
    taken = sorted(set(values) & set(PROTOCOL_FIELDS))
    if taken:
        raise UserError(f"{source}: field {taken[0]!r} is set by the protocol (epochs by --select-epochs, the "
                        "architecture by each search, the folders by the protocol folder); leave it out")
    if select_epochs < 1:
        raise UserError(f"--select-epochs: {select_epochs} is not allowed; it must be at least 1")
    merged = {**{k: getattr(search_cfg, k) for k in SHARED_FIELDS}, "val_fraction": SELECT_VAL_FRACTION,
              **scaled_network(search_cfg), **values, "epochs": select_epochs, "out_dir": search_cfg.out_dir}
    cfg = from_dict(RetrainConfig, absolute_paths(merged), source=source)
    if not cfg.val_fraction > 0:
        raise UserError(f"{source}: val_fraction {cfg.val_fraction} is not allowed for the selection; the short "
                        "retrains are compared on a validation split held out of the training split (the test "
                        "split is never read)")
    return cfg


def _check_trained_cell(folder: Path, seed: int, genotype: Genotype) -> None:
    """A short retrain folder that is to be skipped or resumed must hold the cell the protocol now
    takes from the search (``search-seed<S>/result.json``), as it recorded it in ``arch.json`` (or its
    checkpoint): otherwise the selection would pair one cell with another cell's accuracy."""
    select_dir = folder / step_dir_name(SELECT_STEP, seed)
    search_result = folder / step_dir_name(SEARCH_STEP, seed) / RESULT_FILE
    reused = read_result(select_dir) is not None or (select_dir / CHECKPOINT_FILE).is_file()
    if not reused:
        return                                           # started from scratch with the searched cell
    recorded, where = read_json_file(select_dir / TRAINED_ARCH_FILE), select_dir / TRAINED_ARCH_FILE
    if recorded is None and (select_dir / CHECKPOINT_FILE).is_file():
        from core.checkpoint import load_checkpoint

        recorded, where = load_checkpoint(select_dir / CHECKPOINT_FILE).get("arch"), select_dir / CHECKPOINT_FILE
    if recorded is None:
        raise UserError(f"{str(select_dir)!r} holds a short retrain but no {TRAINED_ARCH_FILE}: which cell it trained "
                        f"is unknown; remove that folder to retrain the cell of {str(search_result)!r}")
    trained = parse_arch(recorded, source=str(where))
    if trained != genotype:
        raise UserError(f"{str(where)!r} and {str(search_result)!r} name different cells "
                        f"({_first_difference(trained, genotype)}): the short retrain of seed {seed} never trained "
                        "the cell its search names, so the selection would pair one cell with the other's accuracy; "
                        f"restore the search's result, or remove {str(select_dir)!r} to retrain the cell the search "
                        "names")


def _first_difference(trained: Genotype, searched: Genotype) -> str:
    """``'normal node 3: skip_connect(0)+sep_conv_3x3(1) trained, sep_conv_3x3(0)+sep_conv_3x3(1) searched'``."""
    if trained.n_nodes != searched.n_nodes:
        return f"{trained.n_nodes} nodes trained, {searched.n_nodes} searched"
    show = lambda node: "+".join(f"{op}({inp})" for op, inp in node)  # noqa: E731
    for cell in ("normal", "reduce"):
        for n, (a, b) in enumerate(zip(trained.cell(cell), searched.cell(cell)), start=2):
            if a != b:
                return f"{cell} node {n}: {show(a)} trained, {show(b)} searched"
    return "equal"


def _settings(search_cfg: Any, seeds: Sequence[int], select_epochs: int, select_cfg: Any) -> dict[str, Any]:
    search = to_dict(search_cfg)
    search.pop("seed")                                   # the protocol's seeds replace it
    return {"seeds": list(seeds), "select_epochs": select_epochs, "search": search, "select": to_dict(select_cfg)}


def settings_yaml(search_cfg: Any, seeds: Sequence[int], select_epochs: int, select_values: dict[str, Any],
                  select_source: str = "--select-config") -> str:
    """``--print-config`` with ``--seeds``: the settings the protocol records in ``protocol.json`` (the
    seeds, the search config, the short retrains' config), as YAML."""
    import yaml

    select_cfg = selection_config(search_cfg, select_epochs, select_values, select_source)
    return yaml.safe_dump(_settings(search_cfg, seeds, select_epochs, select_cfg), sort_keys=False)


def _check_same(recorded: dict[str, Any], asked: dict[str, Any], folder: Path) -> None:
    differences = []
    for key in ("seeds", "select_epochs"):
        if recorded.get(key) != asked[key]:
            differences.append(f"{key} {json.dumps(recorded.get(key))} there, {json.dumps(asked[key])} now")
    for part in ("search", "select"):
        differences += [f"{part} {d}" for d in config_differences(recorded.get(part) or {}, asked[part])]
    if differences:
        raise UserError(f"protocol folder {str(folder)!r} was started with other settings ({'; '.join(differences)}); "
                        "run it with its own settings to continue it, or give this protocol another --run-name or "
                        "--out-dir")


def run_protocol(search_cfg: Any, seeds: Sequence[int], select_epochs: int, select_values: dict[str, Any],
                 select_source: str = "--select-config") -> dict[str, Any]:
    """Run (or continue) the protocol (see the module docstring); returns the selection."""
    if distributed.launched():   # every rank refuses (rank 0 alone prints), before anything is written
        raise UserError("--seeds: the protocol does not run under torchrun: its searches train in one process only "
                        "(the DARTS search step is not data-parallel); run it as a plain command, then retrain the "
                        "cell it selects under torchrun (oneshot_darts/retrain.py --arc <its final_arch.json>)")
    if not seeds:
        raise UserError("--seeds: give at least one seed (the paper's protocol: four, such as --seeds 0 1 2 3)")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise UserError(f"--seeds: seed {repeated[0]} is given twice; each search needs its own seed")
    configs = {s: dataclasses.replace(search_cfg, seed=s) for s in seeds}
    for cfg in configs.values():
        cfg.validate()
    select_cfg = selection_config(search_cfg, select_epochs, select_values, select_source)
    folder = Path(search_cfg.out_dir) / (search_cfg.run_name or DEFAULT_NAME)
    settings = _settings(search_cfg, seeds, select_epochs, select_cfg)
    if folder.is_symlink():
        raise UserError(f"{str(folder)!r} is a symbolic link; a protocol folder is never worked in through one "
                        "(remove the link, or give the real folder with --out-dir)")
    record = read_protocol(folder)
    if record is not None:
        _check_same(record["settings"], settings, folder)
    elif folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{str(folder)!r} exists and is not a protocol folder (no {PROTOCOL_FILE}); give the protocol "
                        "another --run-name or --out-dir")
    folder.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(folder, busy=f"protocol folder {str(folder)!r}: another process is running this protocol (it "
                                    f"holds {LOCK_FILE} there); wait for it, or stop it and run this command again")
    try:
        # what a killed write of the protocol's own files left (this process holds the folder's lock)
        left = [t for name in (PROTOCOL_FILE, SELECTION_FILE, ARCH_FILE) for t in temp_files(folder / name)
                if t.is_file() and not t.is_symlink()]
        for path in left:
            path.unlink(missing_ok=True)
        if left:
            print(f"removed {len(left)} temporary file(s) a killed protocol left: {', '.join(p.name for p in left)}",
                  flush=True)
        for s in seeds:   # the searches finished before: their short retrains checked before anything is written
            search_dir = folder / step_dir_name(SEARCH_STEP, s)
            searched = read_result(search_dir)
            if searched is not None:
                _check_trained_cell(folder, s, parse_arch(searched.get("arch"), source=f"{search_dir / RESULT_FILE}"))
        record = {"settings": settings, "steps": (record or {}).get("steps", {})}

        def note(name: str, outcome: dict[str, Any]) -> None:
            record["steps"][name] = outcome
            write_protocol(folder, record)
        write_protocol(folder, record)
        shrunk = sorted(set(scaled_network(search_cfg)) - set(select_values))
        print(f"DARTS protocol: {len(seeds)} searches (seeds {', '.join(map(str, seeds))}), then a {select_epochs}-epoch "
              f"retrain of each cell (C={select_cfg.channels}, {select_cfg.layers} cells"
              + (f": {' and '.join(shrunk)} scaled from the paper's C=36, 20 cells as the search's C={search_cfg.channels}"
                 f", {search_cfg.layers} cells are from its C=16, 8 cells" if shrunk else "")
              + f", validation split {select_cfg.val_fraction:g}); folder {folder}", flush=True)
        rows = []
        for s in seeds:
            name = step_dir_name(SEARCH_STEP, s)
            result = run_step(folder / name, f"[seed {s}] search", lambda d, s=s: run_search(configs[s], run_dir=d),
                           lambda ck, s=s: run_search(configs[s], resume=ck))
            note(name, {"seed": s, "val_acc": result["val_acc"], "arch": result["arch"],
                        "arch_uniform": result.get("arch_uniform")})
        genotypes = {}
        for s in seeds:   # every reused short retrain checked before any is trained
            searched = record["steps"][step_dir_name(SEARCH_STEP, s)]
            genotypes[s] = parse_arch(searched["arch"], source=f"{folder / step_dir_name(SEARCH_STEP, s) / RESULT_FILE}")
            _check_trained_cell(folder, s, genotypes[s])
        for s in seeds:
            searched, genotype = record["steps"][step_dir_name(SEARCH_STEP, s)], genotypes[s]
            name = step_dir_name(SELECT_STEP, s)
            result = run_step(folder / name, f"[seed {s}] short retrain",
                           lambda d, g=genotype: run_retrain(select_cfg, g, run_dir=str(d), eval_test=False),
                           lambda ck, g=genotype: run_retrain(select_cfg, g, resume=str(ck), eval_test=False))
            note(name, {"seed": s, "val_acc": result["val_acc"], "params": result.get("params_without_auxiliary")})
            rows.append({"seed": s, "search_run": step_dir_name(SEARCH_STEP, s), "search_val_acc": searched["val_acc"],
                         "cell": genotype.describe(), "genotype": genotype.to_json(), "select_run": name,
                         "select_val_acc": result["val_acc"], "params": result.get("params_without_auxiliary"),
                         "arch_uniform": searched.get("arch_uniform")})
        winner = max(rows, key=lambda r: r["select_val_acc"])    # the first of equal maxima: the seed listed first
        selection = {"rule": "the cell with the best validation accuracy after its short retrain (the last epoch's); "
                             "ties: the seed listed first; the test split is never read",
                     "select_epochs": select_epochs, "seeds": rows,
                     "winner": {k: winner[k] for k in ("seed", "select_val_acc", "search_val_acc", "cell", "genotype",
                                                       "arch_uniform")}}
        atomic_write_text(folder / ARCH_FILE, parse_arch(winner["genotype"]).dumps())
        write_selection(folder, selection)
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(interrupted_message(folder, seeds)) from None
    finally:
        lock.release()
    for r in rows:
        print(f"seed {r['seed']}: search val_acc {r['search_val_acc']:.4f}, short retrain val_acc "
              f"{r['select_val_acc']:.4f}" + ("  <- selected" if r is winner else ""), flush=True)
    uniform = [r["seed"] for r in rows if (r["arch_uniform"] or {}).get("uniform")]
    if uniform:
        several = len(uniform) > 1
        print(f"seed{'s' if several else ''} {', '.join(map(str, uniform))}: the search{'es' if several else ''} ended "
              f"with the architecture weights still uniform, so {'their cells are' if several else 'its cell is'} "
              "arbitrary" + ("; the selected cell is one of them" if several and winner["seed"] in uniform else
                             "; it is the selected cell" if winner["seed"] in uniform else ""), flush=True)
    print(f"wrote {folder / SELECTION_FILE} and {folder / ARCH_FILE}; retrain the selected cell with: "
          f"python oneshot_darts/retrain.py --arc {folder / ARCH_FILE}", flush=True)
    return {**selection, "folder": str(folder)}


def interrupted_message(folder: Path, seeds: Sequence[int]) -> str:
    """Where an interrupted protocol stopped, and that the same command continues all of it (a
    step's own ``--resume`` would continue that step alone)."""
    steps = [step_dir_name(kind, s) for kind in (SEARCH_STEP, SELECT_STEP) for s in seeds]
    step = next((name for name in steps if not (folder / name / RESULT_FILE).is_file()), None)
    where = "" if step is None else f" in {step}"
    resumes = "" if step is None else (
        f", {step} resumes from its last checkpoint" if (folder / step / CHECKPOINT_FILE).is_file() else
        f", {step} starts again (it saved no epoch)")
    command = ("python " + shlex.join(sys.argv) if sys.argv and Path(sys.argv[0]).name in ("protocol.py", "search.py")
               else "the command that started it")
    return (f"protocol interrupted{where}; to continue the whole protocol, run the same command again (finished "
            f"steps are skipped{resumes}): {command}")


# --- the command ---------------------------------------------------------------------------------

def add_protocol_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """``--seeds`` (``required`` in this command; in ``search.py`` it chooses the protocol),
    ``--select-epochs`` and ``--select-config``."""
    group = parser.add_argument_group("the paper's protocol (oneshot_darts/protocol.py)")
    group.add_argument("--seeds", type=int, nargs="+", metavar="SEED", required=required,
                       help="run one search per seed, retrain each derived cell for --select-epochs on a validation "
                            "split and keep the best (the DARTS paper: --seeds 0 1 2 3); run the same command again to "
                            "continue it")
    group.add_argument("--select-epochs", type=int, metavar="E",
                       help=f"epochs of each short retrain (default: the paper's {PAPER_SELECT_EPOCHS})")
    group.add_argument("--select-config", metavar="YAML",
                       help="retrain fields for the short retrains (default: the paper's retrain recipe on the "
                            "search's data, its C 36 x 20 cells shrunk as far as the search's supernet is from C 16 x 8, "
                            f"val_fraction {SELECT_VAL_FRACTION}; --print-config shows it)")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol as the parsed flags ask (the search config's flags, ``--seeds``, ``--select-*``,
    ``--print-config``: both configs as YAML, nothing run)."""
    if "seed" in vars(args):
        raise UserError("--seed: not allowed with --seeds, which gives each search its seed")
    print_protocol = args.print_config
    args.print_config = False            # the protocol prints its searches' and short retrains' configs below
    cfg = config_from_args(SearchConfig, args)
    values = read_yaml(args.select_config) if args.select_config else {}
    epochs = PAPER_SELECT_EPOCHS if args.select_epochs is None else args.select_epochs
    source = f"--select-config {args.select_config!r}"
    if print_protocol:
        print(settings_yaml(cfg, args.seeds, epochs, values, source), end="")
        raise SystemExit(0)
    return run_protocol(cfg, args.seeds, epochs, values, source)


def build_protocol_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python oneshot_darts/protocol.py",
                            description=__doc__.splitlines()[0].rstrip(":"))
    add_config_arguments(parser, SearchConfig)
    add_protocol_arguments(parser, required=True)
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    result = run_from_args(build_protocol_parser().parse_args(argv))
    print_result(result)
    return result


if __name__ == "__main__":
    main()
