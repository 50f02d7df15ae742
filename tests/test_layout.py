"""The project's layout holds: dependencies point one way, and every command and every nnictl
trial resolves the same data root and run folder wherever it starts."""
from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.paths import ENV_PREFIX
from tests.conftest import REPO

PACKAGES = ("core", "models", "experiments", "hpo", "classic_nas", "oneshot_darts", "report", "lab")
STAGES = ("hpo", "classic_nas", "oneshot_darts")


def project_imports(package: str) -> dict[str, set[str]]:
    """For every module of ``package``: the project packages it imports (any import statement,
    at module level or inside a function)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names & set(PACKAGES)
    return found


def imports_beyond(package: str, allowed: set[str]) -> dict[str, set[str]]:
    """The modules of ``package`` that import a project package outside ``allowed``, and those packages."""
    return {mod: names - allowed for mod, names in project_imports(package).items() if names - allowed}


def importers(name: str, packages: tuple[str, ...]) -> set[str]:
    """The modules of ``packages`` that import the project package ``name``."""
    return {mod for package in packages for mod, names in project_imports(package).items() if name in names}


def test_models_import_nothing_of_the_project():
    wrong = imports_beyond("models", {"models"})
    assert not wrong, f"models/ must not import the rest of the project: {wrong}"


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another(stage):
    others = set(STAGES) - {stage}
    wrong = {mod: names & others for mod, names in project_imports(stage).items() if names & others}
    assert not wrong, f"{stage}/ imports another stage (share through core/): {wrong}"


def test_the_engine_imports_models_only():
    wrong = imports_beyond("core", {"core", "models"})
    assert not wrong, f"core/ (the training engine) imports only models/: {wrong}"


def test_the_experiment_layer_imports_the_engine_and_models_only():
    wrong = imports_beyond("experiments", {"experiments", "core", "models"})
    assert not wrong, f"experiments/ (the NNI and experiment layer) imports core/ and models/ only: {wrong}"


def test_report_reads_stages_through_core_only_and_nothing_imports_it():
    wrong = imports_beyond("report", {"core", "experiments", "report"})
    assert not wrong, f"report/ reads every stage's outputs, so it imports core/ and experiments/ only: {wrong}"
    users = importers("report", ("core", "models", "experiments", *STAGES, "lab"))
    assert not users, f"report/ is a tool on top; nothing of the project imports it: {users}"


def test_the_lab_driver_runs_the_stages_through_their_commands_and_nothing_imports_it():
    wrong = imports_beyond("lab", {"core", "experiments", "lab"})
    assert not wrong, ("lab/ runs every stage and report as a command (a subprocess), so it imports core/ and "
                       f"experiments/ only: {wrong}")
    users = importers("lab", ("core", "models", "experiments", *STAGES, "report"))
    assert not users, f"lab/ is the driver on top; nothing of the project imports it: {users}"


# --- paths -------------------------------------------------------------------------------------

def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and not k.startswith("NNI_")}
    return env


def _resolved(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    """The config a command resolves (``--print-config``), started in ``cwd``."""
    proc = subprocess.run([*argv, "--print-config"], cwd=cwd, env=env or _clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


EXPECTED = {"data": "cifar10", "data_root": str(REPO / "data"), "out_dir": str(REPO / "runs")}

#: every script that trains, with the arguments it needs to resolve a config
SCRIPTS = [
    ("core", ["-m", "core.train_model"]),
    ("hpo", ["hpo/trial.py"]),
    ("hpo", ["hpo/retrain.py", "--export", "{export}"]),
    ("classic_nas", ["classic_nas/trial.py"]),
    ("classic_nas", ["classic_nas/retrain.py", "--arc", "{arch}"]),
    ("oneshot_darts", ["oneshot_darts/search.py"]),
    ("oneshot_darts", ["oneshot_darts/retrain.py"]),
]


@pytest.mark.parametrize("folder,args", SCRIPTS, ids=[" ".join(a) for _, a in SCRIPTS])
def test_scripts_resolve_the_same_paths_from_the_root_and_their_folder(folder, args, tmp_path):
    export, arch = tmp_path / "export.json", tmp_path / "arch.json"
    export.write_text('[{"trialJobId": "a", "parameter": {"model": "vgg", "optimizer": "Adam", "lr": 0.01}, '
                      '"value": 0.5}]')
    arch.write_text('{"skip1": 1, "skip2": 0, "skip3": 0, "skip4": 0, "skip5": 0, "skip6": 0}')
    args = [a.format(export=export, arch=arch) for a in args]
    from_root = _resolved([sys.executable, *args], REPO)
    if args[0] == "-m":
        from_folder = _resolved([sys.executable, *args], REPO / folder)
    else:
        from_folder = _resolved([sys.executable, Path(args[0]).name, *args[1:]], REPO / folder)
    for key, value in EXPECTED.items():
        assert from_root[key] == from_folder[key] == value, key


def _nnictl_configs() -> list[Path]:
    """Local nnictl configs (the remote ones need an SSH key to load: tests/test_remote.py checks them)."""
    return sorted(p for p in REPO.glob("*/config*.yml") if not p.name.endswith("_remote.yml"))


def _trial_command(config: Path) -> tuple[str, Path]:
    """The trial command of an nnictl config and the folder NNI starts it in (NNI resolves
    ``trialCodeDirectory`` against the config file's folder, wherever `nnictl create` runs)."""
    from nni.experiment.config import ExperimentConfig

    here = os.getcwd()
    try:
        seen = set()
        for start in (REPO, config.parent):     # `nnictl create` from the root and from the stage folder
            os.chdir(start)
            loaded = ExperimentConfig.load(str(config.relative_to(start) if start == REPO else config.name))
            loaded = loaded.canonical_copy()   # what nnictl create does: paths against the file's folder
            seen.add(str(Path(loaded.trial_code_directory).resolve()))
    finally:
        os.chdir(here)
    assert len(seen) == 1, f"{config}: trial folder depends on where nnictl starts: {seen}"
    return loaded.trial_command, Path(seen.pop())


@pytest.mark.parametrize("config", _nnictl_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_nnictl_config_resolves_the_repository_data_and_runs(config):
    command, folder = _trial_command(config)
    assert "${CIFAR_AUTOML_TRIAL_FLAGS:-}" in command, "every config takes extra flags the same way"
    env = _clean_env()
    # nnictl runs the command in a shell inside the trial folder; `python3` is the project's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(["bash", "-c", command + " --print-config"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    expected = dict(EXPECTED)
    if "smoke" in config.name:
        expected["data"] = "fake"
    for key, value in expected.items():
        assert resolved[key] == value, (key, resolved[key])
    # the environment chooses the data for every config alike, and relative user paths become absolute
    env.update({f"{ENV_PREFIX}DATA_ROOT": "/tmp/elsewhere", f"{ENV_PREFIX}TRIAL_FLAGS": "--seed 7"})
    proc = subprocess.run(["bash", "-c", command + " --print-config"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["data_root"] == "/tmp/elsewhere" and resolved["seed"] == 7, proc.stderr


def test_gitignore_covers_the_folders_the_code_creates():
    listed = subprocess.run(["git", "check-ignore", "data/x", "runs/x", "test-artifacts/x"], cwd=REPO,
                            capture_output=True, text=True).stdout.split()
    assert listed == ["data/x", "runs/x", "test-artifacts/x"]


def test_trial_commands_split_cleanly():
    for config in _nnictl_configs():
        command = yaml.safe_load(config.read_text())["trialCommand"]
        assert shlex.split(command)[0] == "python3", config


def test_the_code_and_docs_cite_only_documents_the_repository_holds():
    """A log line, message or page that points the reader to a document (``docs/speed.md``,
    ``README.md``) points to one a user of the repository has."""
    import re

    cited = {}
    for path in subprocess.run(["git", "ls-files", "*.py", "*.md", "*.yml", "*.yaml", "*.toml", "*.ipynb"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split():
        for name in re.findall(r"\b([A-Z][A-Z_]+\.md|docs/[a-z_]+\.md)\b", (REPO / path).read_text(errors="replace")):
            cited.setdefault(name, set()).add(path)
    assert "docs/speed.md" in cited
    missing = {name: sorted(where) for name, where in cited.items() if not (REPO / name).is_file()}
    assert not missing, missing


def test_counts_of_epochs_are_worded_in_the_singular_for_one():
    """'1 epoch', never '1 epochs': no message writes '{n} epochs' by hand; core.words.count does."""
    import re

    from core.words import count, count_of

    assert (count(1, "epoch"), count(2, "epoch"), count(1000, "image")) == ("1 epoch", "2 epochs", "1,000 images")
    assert (count(1, "batch", "batches"), count_of(None, "epoch"), count_of(1, "epoch")) == (
        "1 batch", "None epochs", "1 epoch")
    by_hand = re.compile(r"\{[^{}]+\} epoch(s\b|\(s\))")
    hits = []
    for path in subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.split():
        if not path.startswith("tests/"):
            hits += [f"{path}:{i}" for i, line in enumerate((REPO / path).read_text().splitlines(), 1)
                     if by_hand.search(line)]
    assert not hits, hits


def test_experiment_configs_live_in_their_stage_and_recipes_in_configs():
    """One rule tells an nnictl experiment config from a training recipe: an experiment config
    (a ``trialCommand``) is ``<stage>/config*.yml``; ``configs/`` holds training recipes only (a
    command's ``--config``); every YAML file of the project ends in ``.yml``."""
    tracked = subprocess.run(["git", "ls-files", "*.yml", "*.yaml"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert not [p for p in tracked if p.endswith(".yaml")], "one extension: .yml"
    experiments = {p for p in tracked if "trialCommand" in (yaml.safe_load((REPO / p).read_text()) or {})}
    assert experiments and all(Path(p).parent.name in STAGES and Path(p).name.startswith("config")
                               for p in experiments), sorted(experiments)
    recipes = [p for p in tracked if p.startswith("configs/")]
    assert recipes and not set(recipes) & experiments
    assert not [p for p in tracked if Path(p).parent.name in STAGES and p not in experiments]


def test_the_readme_is_a_short_guide_whose_test_command_is_the_one_ci_runs():
    """README.md is a guide of at most 160 lines (the reference lives in docs/); its first code block
    gives the install, the main job and the test command, and that command is exactly the suite
    ``.ci/run`` runs."""
    import re

    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 160, f"README.md has {len(readme.splitlines())} lines; move details to docs/"
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split(" #")[0].strip() for line in first_block.splitlines() if not line.startswith("#")]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if re.match(r"\s*python -m pytest\b", line)]
    assert len(ci) == 1, ci
    assert ci[0] in commands, (ci[0], commands)
    assert any("pip install -r requirements.txt" in c for c in commands)
    assert "nnictl create --config hpo/config.yml --port 8080" in commands


#: The file names of the formats, each named by the one module that owns its format: a run folder's
#: and a protocol folder's (core/run_folder.py), an experiment's database (experiments/folder.py).
FORMAT_FILES = ("config.yaml", "metrics.jsonl", "result.json", "checkpoint.pt", "train.log", "final_arch.json",
                "arch.json", "protocol.json", "selection.json", "nni.sqlite")


def _file_name_literals(path: Path) -> list[tuple[str, int]]:
    """The format file names ``path`` spells as string literals (a literal that is the name, or a
    path ending in it: ``"db/nni.sqlite"``, ``"*/metrics.jsonl"``), docstrings aside."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for name in FORMAT_FILES:
                if node.value == name or node.value.endswith("/" + name):
                    found.append((name, node.lineno))
    return found


def test_each_format_file_name_is_spelled_in_one_module():
    """Every other module imports the name (core.run_folder's CONFIG_FILE, METRICS_FILE, ...,
    experiments.folder's DB_FILE) rather than spelling it again."""
    where: dict[str, list[str]] = {name: [] for name in FORMAT_FILES}
    for package in ("benchmarks", *PACKAGES):
        for path in sorted((REPO / package).rglob("*.py")):
            for name, line in _file_name_literals(path):
                where[name].append(f"{path.relative_to(REPO)}:{line}")
    modules = {name: sorted({spot.split(":")[0] for spot in spots}) for name, spots in where.items()}
    assert modules == {**{name: ["core/run_folder.py"] for name in FORMAT_FILES},
                       "nni.sqlite": ["experiments/folder.py"]}, where
