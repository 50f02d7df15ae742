"""Where an NNI experiment's files are: its folder, its database, its manager's log and its trials'
folders; and finding an experiment's folder from an id, a folder or its database.

An experiment folder (NNI 3.0, ``experimentWorkingDirectory``/``<id>``) holds::

    db/nni.sqlite                         the database: the profile (config), trial events, metrics
    log/nnimanager.log                    the manager's log
    environments/<env>/trials/<trial>/    where the local training service runs a trial (its run folder)
    trials/<trial>/                       where the web UI looks for a trial's output

nnictl lists the experiments it started in ``~/nni-experiments/.experiment`` (each with its
``logDir``, the ``experimentWorkingDirectory``).
"""
from __future__ import annotations

import os
from pathlib import Path

from core.config import DuplicateKeyError, parse_json, read_text
from core.errors import UserError

#: the experiment's database, under :data:`DB_DIR` in its folder
DB_FILE = "nni.sqlite"
DB_DIR = "db"
#: the database as the messages name it
DB_PATH = f"{DB_DIR}/{DB_FILE}"
TRIALS_DIR = "trials"
ENVIRONMENTS_DIR = "environments"


def db_path(exp_dir: str | os.PathLike) -> Path:
    """The database of the experiment in ``exp_dir``."""
    return Path(exp_dir) / DB_DIR / DB_FILE


def is_experiment_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an experiment folder (it holds the database)."""
    return db_path(path).is_file()


def is_db_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an experiment's database file itself."""
    path = Path(path)
    return path.is_file() and path.name == DB_FILE


def exp_dir_of_db(db: str | os.PathLike) -> Path:
    """The experiment folder of a database file."""
    return Path(db).resolve().parent.parent


def manager_log(exp_dir: str | os.PathLike) -> Path:
    """The NNI manager's log of the experiment in ``exp_dir``."""
    return Path(exp_dir) / "log" / "nnimanager.log"


def trial_output_dir(exp_dir: str | os.PathLike, trial_id: str) -> Path:
    """``<exp>/trials/<trial>``: where NNI's web UI looks for a trial's output."""
    return Path(exp_dir) / TRIALS_DIR / trial_id


def exp_dir_of_trial(run_dir: str | os.PathLike) -> Path | None:
    """The experiment folder of a trial folder ``<exp>/environments/<env>/trials/<trial>``; None for
    any other folder."""
    run_dir = Path(run_dir)
    parts = run_dir.parts
    if len(parts) < 4 or parts[-2] != TRIALS_DIR or parts[-4] != ENVIRONMENTS_DIR:
        return None
    return run_dir.parents[3]


def experiment_dir(exp_id: str, experiments_dir: str | os.PathLike | None = None) -> Path:
    """The folder of experiment ``exp_id``: under ``experiments_dir`` when given; else where nnictl's
    list ``~/nni-experiments/.experiment`` puts it (so a custom ``experimentWorkingDirectory`` is
    found), else ``~/nni-experiments/<id>``."""
    candidates: list[Path] = []
    if experiments_dir is not None:
        candidates.append(Path(experiments_dir).expanduser() / exp_id)
    else:
        home = Path.home() / "nni-experiments"
        registry = home / ".experiment"
        if registry.is_file():
            try:
                listed = parse_json(read_text(registry, "nnictl's experiment list"))
            except DuplicateKeyError as exc:
                raise UserError(f"nnictl's experiment list {str(registry)!r} repeats the key {exc.args[0]!r}") from None
            except ValueError:   # being rewritten by nnictl: look in the default place
                listed = {}
            entry = (listed.get(exp_id) if isinstance(listed, dict) else None) or {}
            if entry.get("logDir"):
                log_dir = Path(entry["logDir"])
                candidates += [log_dir / exp_id, log_dir]
        candidates.append(home / exp_id)
    for candidate in candidates:
        if is_experiment_dir(candidate):
            return candidate
    raise UserError(f"experiment {exp_id!r}: no folder with {DB_PATH} found (looked in "
                    f"{', '.join(str(c) for c in candidates)}); pass the experiment folder or an export file")


def not_an_experiment(path: str | os.PathLike) -> UserError:
    """The error for a folder that is not an experiment folder."""
    return UserError(f"{str(path)!r} is not an NNI experiment folder (no {DB_PATH})")


def not_found(source: str | os.PathLike) -> UserError:
    """The error for a source that is neither a file, a folder nor an experiment id."""
    return UserError(f"experiment {str(source)!r}: no such file or folder, and not an experiment id")


def is_experiment_id(source: str | os.PathLike) -> bool:
    """Whether ``source`` (not a file or folder) may be an experiment id."""
    return os.sep not in str(source) and str(source).isalnum()


def find_experiment(source: str | os.PathLike, experiments_dir: str | os.PathLike | None = None) -> Path:
    """The folder (holding ``db/nni.sqlite``) of an experiment given by id, folder or database."""
    path = Path(source).expanduser()
    if is_db_file(path):
        return exp_dir_of_db(path)
    if path.is_dir():
        if not is_experiment_dir(path):
            raise not_an_experiment(path)
        return path.resolve()
    if not is_experiment_id(source):
        raise not_found(source)
    return experiment_dir(str(source), experiments_dir)
