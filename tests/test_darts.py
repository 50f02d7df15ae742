"""One-shot DARTS: the architecture formats (published Genotype texts too), bad files, the published
cells' parameter counts, cutout against the reference, the supernet NNI's strategy builds and PC-DARTS's
cell, the derivation and P-DARTS's guard, the second-order gradient against the exact one, the search
variants and their collapse counts, a search whose final_arch.json retrains, resume, the paper's
protocol (its kill-and-resume, its test split never read, its report), the benchmark, and per-rank
drop-path masks under torchrun."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.errors import Interrupted
from core.run_folder import Run
from oneshot_darts.genotype import ArchError, load_arch, parse_arch
from oneshot_darts.ops import OP_NAMES
from tests.conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore:.*is found to be not a nn.Module")

DARTS_V2_FILE = REPO / "oneshot_darts" / "archs" / "darts_v2.json"

#: DARTS-V2 as NNI 3.0 exports it (the dict of nni.nas.hub.pytorch.DARTS.load_searched_model('darts-v2')).
DARTS_V2_NNI3 = {
    "normal/op_2_0": "sep_conv_3x3", "normal/input_2_0": [0], "normal/op_2_1": "sep_conv_3x3", "normal/input_2_1": [1],
    "normal/op_3_0": "sep_conv_3x3", "normal/input_3_0": [0], "normal/op_3_1": "sep_conv_3x3", "normal/input_3_1": [1],
    "normal/op_4_0": "sep_conv_3x3", "normal/input_4_0": [1], "normal/op_4_1": "skip_connect", "normal/input_4_1": [0],
    "normal/op_5_0": "skip_connect", "normal/input_5_0": [0], "normal/op_5_1": "dil_conv_3x3", "normal/input_5_1": [2],
    "reduce/op_2_0": "max_pool_3x3", "reduce/input_2_0": [0], "reduce/op_2_1": "max_pool_3x3", "reduce/input_2_1": [1],
    "reduce/op_3_0": "skip_connect", "reduce/input_3_0": [2], "reduce/op_3_1": "max_pool_3x3", "reduce/input_3_1": [1],
    "reduce/op_4_0": "max_pool_3x3", "reduce/input_4_0": [0], "reduce/op_4_1": "skip_connect", "reduce/input_4_1": [2],
    "reduce/op_5_0": "skip_connect", "reduce/input_5_0": [2], "reduce/op_5_1": "max_pool_3x3", "reduce/input_5_1": [1],
}

#: DARTS-V2 in NNI 1.x's DARTS export format (our own transcription).
DARTS_V2_NNI1 = {
    "normal_n2_p0": "sepconv3x3", "normal_n2_p1": "sepconv3x3", "normal_n2_switch": ["normal_n2_p0", "normal_n2_p1"],
    "normal_n3_p0": "sepconv3x3", "normal_n3_p1": "sepconv3x3", "normal_n3_p2": [],
    "normal_n3_switch": ["normal_n3_p0", "normal_n3_p1"],
    "normal_n4_p0": "skipconnect", "normal_n4_p1": "sepconv3x3", "normal_n4_p2": [], "normal_n4_p3": [],
    "normal_n4_switch": ["normal_n4_p1", "normal_n4_p0"],
    "normal_n5_p0": "skipconnect", "normal_n5_p1": [], "normal_n5_p2": "dilconv3x3", "normal_n5_p3": [],
    "normal_n5_p4": [], "normal_n5_switch": ["normal_n5_p0", "normal_n5_p2"],
    "reduce_n2_p0": "maxpool", "reduce_n2_p1": "maxpool", "reduce_n2_switch": ["reduce_n2_p0", "reduce_n2_p1"],
    "reduce_n3_p0": [], "reduce_n3_p1": "maxpool", "reduce_n3_p2": "skipconnect",
    "reduce_n3_switch": ["reduce_n3_p2", "reduce_n3_p1"],
    "reduce_n4_p0": "maxpool", "reduce_n4_p1": [], "reduce_n4_p2": "skipconnect", "reduce_n4_p3": [],
    "reduce_n4_switch": ["reduce_n4_p0", "reduce_n4_p2"],
    "reduce_n5_p0": [], "reduce_n5_p1": "maxpool", "reduce_n5_p2": "skipconnect", "reduce_n5_p3": [],
    "reduce_n5_p4": [], "reduce_n5_switch": ["reduce_n5_p2", "reduce_n5_p1"],
}

#: A second, different cell in NNI 1.x's format, with unchosen inputs naming ops (as some exports do).
OTHER_NNI1 = {
    "normal_n2_p0": "dilconv5x5", "normal_n2_p1": "avgpool", "normal_n2_switch": ["normal_n2_p0", "normal_n2_p1"],
    "normal_n3_p0": "none", "normal_n3_p1": "sepconv5x5", "normal_n3_p2": "dilconv5x5",
    "normal_n3_switch": ["normal_n3_p2", "normal_n3_p1"],
    "normal_n4_p0": [], "normal_n4_p1": [], "normal_n4_p2": "maxpool", "normal_n4_p3": "skipconnect",
    "normal_n4_switch": ["normal_n4_p2", "normal_n4_p3"],
    "normal_n5_p0": "sepconv3x3", "normal_n5_p1": [], "normal_n5_p2": [], "normal_n5_p3": [],
    "normal_n5_p4": "dilconv3x3", "normal_n5_switch": ["normal_n5_p0", "normal_n5_p4"],
    "reduce_n2_p0": "sepconv5x5", "reduce_n2_p1": "dilconv3x3", "reduce_n2_switch": ["reduce_n2_p0", "reduce_n2_p1"],
    "reduce_n3_p0": "avgpool", "reduce_n3_p1": [], "reduce_n3_p2": "sepconv3x3",
    "reduce_n3_switch": ["reduce_n3_p0", "reduce_n3_p2"],
    "reduce_n4_p0": [], "reduce_n4_p1": "skipconnect", "reduce_n4_p2": [], "reduce_n4_p3": "dilconv5x5",
    "reduce_n4_switch": ["reduce_n4_p1", "reduce_n4_p3"],
    "reduce_n5_p0": [], "reduce_n5_p1": [], "reduce_n5_p2": "maxpool", "reduce_n5_p3": "avgpool",
    "reduce_n5_p4": [], "reduce_n5_switch": ["reduce_n5_p3", "reduce_n5_p2"],
}

#: Tiny sizes for every run here (the machine has two shared CPU cores).
TINY_SEARCH = ["--data", "fake", "--channels", "4", "--layers", "3", "--n-nodes", "2", "--batch-size", "8",
               "--eval-batch-size", "100", "--max-batches", "2", "--device", "cpu", "--no-progress"]
TINY_RETRAIN = ["--data", "fake", "--channels", "4", "--layers", "3", "--batch-size", "8", "--eval-batch-size", "100",
                "--max-batches", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture
def one_thread():
    """One intra-op thread: far faster on this shared two-core machine, and the same float order
    in this process as in the subprocesses (run with OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.endswith("seconds") and k != "images_per_s"} for m in metrics]


# --- architecture files -------------------------------------------------------------------------

def test_three_formats_read_into_the_same_genotype(tmp_path):
    own = load_arch(DARTS_V2_FILE)
    assert parse_arch(DARTS_V2_NNI3) == own
    assert parse_arch(DARTS_V2_NNI1) == own
    assert own.n_nodes == 4
    assert own.normal[3] == (("skip_connect", 0), ("dil_conv_3x3", 2))
    # round trips: our file format and NNI 3.0's dict
    assert parse_arch(own.to_json()) == own and parse_arch(own.to_nni()) == own
    assert parse_arch(json.loads(own.dumps())) == own
    assert own.to_nni() == {k: v for k, v in own.to_nni().items()}
    assert {k: v for k, v in own.to_nni().items() if k.startswith("normal/op_5")} == {
        "normal/op_5_0": "skip_connect", "normal/op_5_1": "dil_conv_3x3"}
    other = parse_arch(OTHER_NNI1)
    assert other != own and other.normal[1] == (("sep_conv_5x5", 1), ("dil_conv_5x5", 2))


#: DARTS_V2 exactly as quark0/darts cnn/genotypes.py prints it.
DARTS_V2_GENOTYPE = (
    "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def test_genotype_text_in_every_published_spelling(tmp_path):
    """quark0's flat list (assigned, with comments), the printed namedtuple with range() concats,
    positional arguments, and pt.darts' per-node lists: all the same DARTS-V2 genotype."""
    own = load_arch(DARTS_V2_FILE)
    g = own.to_json()
    flat = {c: [(op, i) for node in g[c] for op, i in node] for c in ("normal", "reduce")}
    texts = {
        "quark0.txt": "# the paper's cell\n" + DARTS_V2_GENOTYPE + "  # second order\n",
        "printed.txt": f"Genotype(normal={flat['normal']}, normal_concat=range(2, 6), reduce={flat['reduce']}, "
                       "reduce_concat=range(2, 6))",
        "positional.txt": f"Genotype({flat['normal']}, [2, 3, 4, 5], {flat['reduce']}, (2, 3, 4, 5))",
        "ptdarts.txt": "Genotype(normal=" + repr([[tuple(e) for e in node] for node in g["normal"]])
                       + ", normal_concat=range(2, 6), reduce=" + repr([[tuple(e) for e in node] for node in g["reduce"]])
                       + ", reduce_concat=range(2, 6))",
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
        assert load_arch(tmp_path / name) == own, name


@pytest.mark.parametrize("text", ["genotypes.Genotype(normal={n}, reduce={n})",
                                  "DARTS = x.Genotype(normal={n}, reduce={n})",
                                  "Genotype(normal={n}, reduce={n})(normal={n}, reduce={n})"],
                         ids=["attribute", "assigned-attribute", "called-result"])
def test_genotype_text_is_only_a_bare_genotype_call(tmp_path, text):
    """docs/darts.md documents a bare Genotype(...) call (optionally assigned to a name): any other
    callee is refused with one line, even with cells that would be valid."""
    cell = "[('sep_conv_3x3', 0), ('skip_connect', 1)]"
    (tmp_path / "g.txt").write_text(text.format(n=cell))
    with pytest.raises(ArchError, match="is not allowed; only a bare Genotype\\(...\\) call"):
        load_arch(tmp_path / "g.txt")
    (tmp_path / "g.txt").write_text(f"DARTS = Genotype(normal={cell}, reduce={cell})")
    assert load_arch(tmp_path / "g.txt").normal == ((("sep_conv_3x3", 0), ("skip_connect", 1)),)


def _published_table() -> list[tuple[str, int, int]]:
    rows = []
    for line in (REPO / "oneshot_darts" / "archs" / "README.md").read_text().splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 7 and cols[0].startswith("`"):
            rows.append((cols[0].strip("`"), int(cols[5].replace(",", "")), int(cols[6].replace(",", ""))))
    return rows


def test_published_cells_have_their_stated_parameter_counts():
    """Every cell shipped in oneshot_darts/archs/ (DARTS_V1, DARTS_V2, PC-DARTS) builds at C=36, 20
    cells with the parameter counts its README row states (quark0's NetworkCIFAR's counts)."""
    from oneshot_darts.space import DartsSpace, count_parameters

    rows = _published_table()
    assert {r[0] for r in rows} == {p.name for p in (REPO / "oneshot_darts" / "archs").iterdir() if p.name != "README.md"}
    expected = {"darts_v1.txt": (3_169_414, 3_645_840), "darts_v2.json": (3_349_342, 3_825_768),
                "pc_darts.txt": (3_634_678, 4_111_104)}
    assert {name: (a, b) for name, a, b in rows} == expected
    for name, without, with_aux in rows:
        net = DartsSpace.fixed_network(load_arch(REPO / "oneshot_darts" / "archs" / name), channels=36, layers=20,
                                       auxiliary=True)
        assert (count_parameters(net), count_parameters(net, exclude_auxiliary=False)) == (without, with_aux), name
    assert parse_arch(load_arch(REPO / "oneshot_darts" / "archs" / "darts_v1.txt").to_json()).normal[3] == (
        ("sep_conv_3x3", 0), ("skip_connect", 2))


def test_a_node_may_take_one_input_on_both_edges(tmp_path, one_thread):
    """Several published cells feed both edges of a node from the same input: read in every
    format, built, and run."""
    from oneshot_darts.space import DartsSpace

    data = json.loads(DARTS_V2_FILE.read_text())
    data["normal"][0] = [["sep_conv_5x5", 0], ["skip_connect", 0]]
    genotype = parse_arch(data)
    assert genotype.normal[0] == (("sep_conv_5x5", 0), ("skip_connect", 0))
    assert parse_arch(genotype.to_nni()) == genotype
    (tmp_path / "g.txt").write_text("Genotype(normal=[('skip_connect', 0), ('sep_conv_5x5', 0)] + [], reduce=[])")
    with pytest.raises(ArchError, match="is not a literal"):
        load_arch(tmp_path / "g.txt")
    net = DartsSpace.fixed_network(genotype, channels=4, layers=3)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


#: A hand-written cell pair: the normal cell never reads its input 0 (the cell before the previous
#: one), the reduction cell never its input 1 (the previous cell).
ONE_INPUT_CELLS = {"normal": [[["sep_conv_3x3", 1], ["skip_connect", 1]], [["sep_conv_3x3", 2], ["max_pool_3x3", 1]]],
                   "reduce": [[["sep_conv_3x3", 0], ["max_pool_3x3", 0]], [["skip_connect", 2], ["dil_conv_3x3", 0]]]}


@pytest.mark.parametrize("layers", [3, 5, 6])
def test_a_cell_that_never_reads_an_input_leaves_no_parameter_without_gradient(one_thread, layers):
    """The fixed network has only what its output depends on: no preprocessing of an input its cell
    never reads, no cell whose output nothing reads (here the normal cell's input 0 and the reduction
    cell's input 1; at 5 cells the first and the third are read by no one). So one training step
    gives every parameter a gradient, as DistributedDataParallel requires; a cell that reads both
    inputs keeps both preprocessings."""
    from oneshot_darts.space import DartsSpace, UnusedCell

    torch.manual_seed(0)
    net = DartsSpace.fixed_network(parse_arch(ONE_INPUT_CELLS), channels=4, layers=layers, auxiliary=True)
    logits, aux = net(torch.randn(4, 3, 32, 32))
    (logits.sum() + aux.sum()).backward()
    assert [name for name, p in net.named_parameters() if p.grad is None] == []
    kinds = ["unused" if isinstance(c, UnusedCell) else c.label for c in net.cells]
    assert kinds == {3: ["normal", "unused", "reduce"], 5: ["unused", "reduce", "unused", "reduce", "normal"],
                     6: ["normal", "unused", "reduce", "unused", "reduce", "normal"]}[layers]
    for cell in net.cells:
        if not isinstance(cell, UnusedCell):
            pre = cell.preprocessor
            assert (pre.pre0 is None, pre.pre1 is None) == ((True, False) if cell.label == "normal" else (False, True))
    net.eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    full = DartsSpace.fixed_network(load_arch(DARTS_V2_FILE), channels=4, layers=layers)
    assert all(c.preprocessor.pre0 is not None and c.preprocessor.pre1 is not None for c in full.cells)


def test_nni_hub_builds_the_same_darts_v2():
    """NNI's own DARTS-V2 (hub) and ours: the same parameter count, 3,349,342 without the
    auxiliary head, the paper's 3.3M (quark0/darts prints 3.349342 MB for it)."""
    from nni.nas.hub.pytorch import DARTS as HubDarts

    from oneshot_darts.space import DartsSpace, count_parameters

    ours = DartsSpace.fixed_network(load_arch(DARTS_V2_FILE), channels=36, layers=20, auxiliary=True)
    assert count_parameters(ours) == 3_349_342
    assert count_parameters(ours, exclude_auxiliary=False) - count_parameters(ours) == 476_426
    hub = HubDarts.load_searched_model("darts-v2")
    assert sum(p.numel() for p in hub.parameters()) == 3_349_342
    # NNI's own freeze path (space.freeze(sample)) gives the same network
    space = DartsSpace(channels=8, layers=3)
    frozen = space.freeze(load_arch(DARTS_V2_FILE).to_nni())
    assert count_parameters(frozen) == count_parameters(
        DartsSpace.fixed_network(load_arch(DARTS_V2_FILE), channels=8, layers=3))


BAD_FILES = {
    # name: (content, expected part of the message)
    "not_json": ("{'normal': [}", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2"),
    "empty": ({}, "must be a JSON object in one of the three DARTS formats"),
    "unknown_format": ({"cells": []}, "unrecognised keys (first: 'cells'); expected (keys 'normal' and 'reduce'"),
    "own_unknown_op": ("own", lambda d: d["normal"][1].__setitem__(0, ["conv_9x9", 0]),
                       "key 'normal[1][0]': 'conv_9x9' is not an operation; allowed: max_pool_3x3, avg_pool_3x3, "
                       "skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5"),
    "own_three_inputs": ("own", lambda d: d["reduce"][0].append(["skip_connect", 1]),
                         "key 'reduce', node 2: has 3 inputs; a node takes exactly two"),
    "own_forward": ("own", lambda d: d["normal"][0].__setitem__(1, ["sep_conv_3x3", 2]),
                    "key 'normal[0][1]': input 2 points forward; node 2 takes inputs 0..1"),
    "own_missing": ("own", lambda d: d.pop("reduce"), "missing key 'reduce'; allowed keys: 'normal', 'reduce'"),
    "own_extra_key": ("own", lambda d: d.__setitem__("normal_concat", [2, 3]), "unknown key 'normal_concat'"),
    "nni3_unknown_op": ("nni3", lambda d: d.__setitem__("normal/op_3_1", "sepconv3x3"),
                        "key 'normal/op_3_1': 'sepconv3x3' is not an operation; allowed: max_pool_3x3,"),
    "nni3_three_inputs": ("nni3", lambda d: d.update({"normal/op_2_2": "skip_connect", "normal/input_2_2": [0]}),
                          "node 2 would take more than two inputs; a node takes exactly two (k = 0 and 1)"),
    "nni3_two_in_one": ("nni3", lambda d: d.__setitem__("normal/input_3_0", [0, 1]),
                        "key 'normal/input_3_0': [0, 1] must be a list of exactly one input node such as [0]"),
    "nni3_forward": ("nni3", lambda d: d.__setitem__("reduce/input_4_1", [4]),
                     "key 'reduce/input_4_1': input 4 points forward; node 4 takes inputs 0..3"),
    "nni3_missing": ("nni3", lambda d: d.pop("reduce/op_3_1"), "missing key 'reduce/op_3_1'"),
    "nni3_bad_key": ("nni3", lambda d: d.__setitem__("normal/op2_0", "skip_connect"),
                     "unknown key 'normal/op2_0'; NNI 3.0 keys are '<cell>/op_<node>_<k>'"),
    "nni1_unknown_op": ("nni1", lambda d: d.__setitem__("reduce_n4_p2", "identity"),
                        "key 'reduce_n4_p2': 'identity' is not an operation; allowed: maxpool, avgpool, skipconnect, "
                        "sepconv3x3, sepconv5x5, dilconv3x3, dilconv5x5"),
    "nni1_three_inputs": ("nni1", lambda d: d["normal_n4_switch"].append("normal_n4_p2"),
                          "key 'normal_n4_switch': has 3 inputs; a node takes exactly two"),
    "nni1_forward": ("nni1", lambda d: d.__setitem__("normal_n3_p3", "maxpool"),
                     "key 'normal_n3_p3': input 3 points forward; node 3 takes inputs 0..2"),
    "nni1_missing": ("nni1", lambda d: d.pop("normal_n5_switch"), "missing key 'normal_n5_switch'"),
    "nni1_chosen_empty": ("nni1", lambda d: d.__setitem__("normal_n2_p1", []),
                          "key 'normal_n2_p1': [] is not an operation; allowed: maxpool,"),
    "nni1_node_mismatch": ("nni1", lambda d: [d.pop(k) for k in list(d) if k.startswith("reduce_n5")],
                           "the normal cell has 4 nodes but the reduction cell 3"),
    # format 4, Genotype(...) text: parsed, never evaluated
    "genotype_call_inside": ("Genotype(normal=__import__('os').system('touch PWNED'), reduce=[])",
                             "normal: \"__import__('os').system('touch PWNED')\" is not a literal"),
    "genotype_two_statements": ("import os\nGenotype(normal=[], reduce=[])", "must hold exactly one Genotype("),
    "genotype_other_call": ("Genome(normal=[('skip_connect', 0), ('skip_connect', 1)])", "not valid JSON"),
    "genotype_unknown_op": ("Genotype(normal=[('sep_conv_7x7', 0), ('skip_connect', 1)], "
                            "reduce=[('skip_connect', 0), ('skip_connect', 1)])",
                            "key 'normal[0]': 'sep_conv_7x7' is not an operation; allowed: max_pool_3x3,"),
    "genotype_odd_edges": ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 2)], "
                           "reduce=[('skip_connect', 0), ('skip_connect', 1)])", "normal: has 3 edges"),
    "genotype_forward": ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 2)], "
                         "reduce=[('skip_connect', 0), ('skip_connect', 1)])",
                         "key 'normal[1]': input 2 points forward; node 2 takes inputs 0..1"),
    "genotype_concat_subset": ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), "
                               "('skip_connect', 2)], normal_concat=[3], reduce=[('skip_connect', 0), "
                               "('skip_connect', 1), ('skip_connect', 0), ('skip_connect', 2)])",
                               "normal_concat [3] is not supported; this project's cells concatenate every "
                               "intermediate node ([2, 3], i.e. range(2, 4)"),
    "genotype_no_reduce": ("X = Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)])",
                           "Genotype has no 'reduce' argument"),
    "genotype_unknown_argument": ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], cells=3)",
                                  "Genotype argument 'cells' is not allowed; allowed: normal, normal_concat,"),
    "genotype_syntax": ("Genotype(normal=[('skip_connect', 0)", "not a valid Genotype(...) expression (line 1:"),
}


def _bad_file(tmp_path: Path, case: str) -> tuple[Path, str]:
    spec = BAD_FILES[case]
    path = tmp_path / f"{case}.json"
    if len(spec) == 2:
        content, expected = spec
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path, expected
    base, edit, expected = spec
    data = copy.deepcopy({"own": json.loads(DARTS_V2_FILE.read_text()), "nni3": DARTS_V2_NNI3,
                          "nni1": DARTS_V2_NNI1}[base])
    edit(data)
    path.write_text(json.dumps(data))
    return path, expected


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_arch_file_is_one_clear_error_and_writes_nothing(tmp_path, capsys, case):
    from oneshot_darts.retrain import main

    path, expected = _bad_file(tmp_path, case)
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        main(["--arc", str(path), "--out-dir", str(out), *TINY_RETRAIN])
    assert exc.value.code == 2
    assert not (REPO / "PWNED").exists() and not Path("PWNED").exists()   # nothing in the file was run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --arc {str(path)!r}: "), err
    assert expected in err[0], err[0]
    assert not out.exists()


def test_bad_input_from_the_command_line(tmp_path):
    """Through the real script: one line on stderr, exit 2, no traceback, no run folder."""
    out = tmp_path / "runs"
    bad, _ = _bad_file(tmp_path, "nni1_forward")
    cases = [
        (["oneshot_darts/retrain.py", "--arc", str(bad)], "error: --arc"),
        (["oneshot_darts/retrain.py", "--arc", str(tmp_path / "none.json")], "does not exist"),
        (["oneshot_darts/retrain.py", "--data", "fake"], "error: --arc: required"),
        (["oneshot_darts/search.py", "--val-fraction", "0"], "error: val_fraction: 0 is not allowed for the search"),
        (["oneshot_darts/search.py", "--resume", str(tmp_path / "x.pt"), "--lr", "0.1"],
         "error: --lr: not allowed with --resume"),
        (["oneshot_darts/search.py", "--nni"], "error: --nni: this is not an NNI trial"),
    ]
    for args, expected in cases:
        res = subprocess.run([sys.executable, *args, "--out-dir", str(out)], cwd=REPO, capture_output=True, text=True,
                             timeout=120, env=subprocess_env())
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, res.stderr)
        assert "Traceback" not in res.stdout + res.stderr
    assert not out.exists()


# --- recipe fidelity ----------------------------------------------------------------------------

def reference_cutout(img: torch.Tensor, length: int, y: int, x: int) -> torch.Tensor:
    """quark0/darts ``utils.Cutout.__call__`` (transcribed; its random centre passed in), which the
    DARTS training transform applies after ``Normalize``: the square is multiplied by 0."""
    import numpy as np

    h, w = img.size(1), img.size(2)
    mask = np.ones((h, w), np.float32)
    y1, y2 = np.clip(y - length // 2, 0, h), np.clip(y + length // 2, 0, h)
    x1, x2 = np.clip(x - length // 2, 0, w), np.clip(x + length // 2, 0, w)
    mask[y1: y2, x1: x2] = 0.
    img *= torch.from_numpy(mask).expand_as(img)
    return img


def test_cutout_fills_the_mean_colour_as_the_reference_does():
    """The loader's cutout equals quark0's Cutout applied to the normalised batch: the square is 0
    there (the mean colour), not the -mean/std a raw-pixel 0 would become."""
    from core.data import make_splits
    from core.loader import BatchLoader

    s = make_splits("fake", "unused", val_fraction=0, subset=64)
    kw = dict(batch_size=16, device=torch.device("cpu"), mean=s.mean, std=s.std, train=True, crop_padding=0,
              flip=False, seed=7)
    gen = torch.Generator().manual_seed(7)     # replays the loader's draws: the order, then two centres a batch
    torch.randperm(64, generator=gen)
    holes = 0
    for (x, y), (plain, plain_y) in zip(BatchLoader(s.train, cutout=16, **kw), BatchLoader(s.train, cutout=0, **kw)):
        assert torch.equal(y, plain_y)
        cy, cx = torch.randint(0, 32, (16,), generator=gen), torch.randint(0, 32, (16,), generator=gen)
        expected = torch.stack([reference_cutout(img.clone(), 16, int(a), int(b)) for img, a, b in zip(plain, cy, cx)])
        assert torch.equal(x, expected)
        holes += int((x != plain).sum())
    assert holes > 64 * 3 * 16    # squares were cut (about 3 x 16 x 16 values an image, less at the border)


# --- the supernet and the derivation ------------------------------------------------------------

def test_supernet_is_nni_darts_mutation_with_shared_alphas(one_thread):
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell

    from oneshot_darts.space import arch_parameters, build_supernet, edge_alphas

    net = build_supernet(channels=4, layers=4, n_nodes=3)
    cells = [m for m in net.cells]
    assert all(isinstance(c, DifferentiableMixedCell) for c in cells)
    assert [c.label for c in cells] == ["normal", "reduce", "reduce", "normal"]
    # one set of alphas per cell type, shared by all its cells: 2 types x (2 + 3 + 4) edges x (7 ops + none)
    alphas = arch_parameters(net)
    assert len(alphas) == 2 * 9 and all(a.shape == (len(OP_NAMES) + 1,) for a in alphas)
    assert cells[0]._arch_alpha["normal/3_1"] is cells[3]._arch_alpha["normal/3_1"]
    assert set(edge_alphas(net)["reduce"]) == {"2_0", "2_1", "3_0", "3_1", "3_2", "4_0", "4_1", "4_2", "4_3"}
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pc_darts_cell_is_partial_shuffled_and_edge_normalised(one_thread):
    """PC-DARTS's supernet: every cell a PartialChannelCell whose operations see C/K channels, one
    set of alphas and betas per cell type (shared by its cells), betas one per input of each node; a
    node whose betas and alphas pick one input through skip_connect outputs that input shuffled (its
    partial part through the operation, the rest bypassing it)."""
    from oneshot_darts.space import PartialChannelCell, arch_parameters, build_supernet, channel_shuffle, node_betas

    net = build_supernet(channels=4, layers=4, n_nodes=3, partial_channels=2)
    cells = list(net.cells)
    assert all(isinstance(c, PartialChannelCell) for c in cells)
    sep = cells[0].ops[0][0]["sep_conv_3x3"]
    assert sep[0][1].in_channels == 4 // 2                      # the normal cell's C=4, K=2
    assert cells[0]._arch_beta["normal/4"] is cells[3]._arch_beta["normal/4"]
    betas = node_betas(net)
    assert {k: v.shape[0] for k, v in betas["reduce"].items()} == {"2": 2, "3": 3, "4": 4}
    assert len(arch_parameters(net)) == 2 * (9 + 3)             # alphas per edge and betas per node, per type
    x = torch.arange(2 * 8 * 4 * 4, dtype=torch.float32).view(2, 8, 4, 4)
    assert sorted(channel_shuffle(x, 2)[0, :, 0, 0].tolist()) == sorted(x[0, :, 0, 0].tolist())
    assert torch.equal(channel_shuffle(x, 2)[:, 1], x[:, 4])   # groups interleave: 0, 4, 1, 5, ...
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # node 2 with its input 0 chosen (beta) through skip_connect (alpha): the input's channels shuffled
    cell = cells[0]
    with torch.no_grad():
        cell._arch_beta["normal/2"].copy_(torch.tensor([50.0, 0.0]))
        cell._arch_alpha["normal/2_0"].zero_()[OP_NAMES.index("skip_connect")] = 50.0
    s0, s1 = torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8)
    cell.eval()
    with torch.no_grad():
        expected = channel_shuffle(cell.preprocessor([s0, s1])[0], 2)
        assert torch.allclose(cell([s0, s1])[:, :4], expected, atol=1e-5)


def test_derivation_follows_the_paper():
    """Top two inputs by their strongest non-'none' softmax weight, each with that op."""
    from oneshot_darts.derive import derive_genotype

    def edge(**w):
        base = {name: 0.1 for name in (*OP_NAMES, "none")}
        return {**base, **w}
    weights = {}
    for cell in ("normal", "reduce"):
        weights[f"{cell}/2_0"] = edge(none=0.9, skip_connect=0.2)     # 'none' never counts
        weights[f"{cell}/2_1"] = edge(sep_conv_3x3=0.15)
        weights[f"{cell}/3_0"] = edge(max_pool_3x3=0.3)
        weights[f"{cell}/3_1"] = edge(dil_conv_5x5=0.5)
        weights[f"{cell}/3_2"] = edge(avg_pool_3x3=0.4)
    g = derive_genotype(weights, n_nodes=2)
    assert g.normal == ((("skip_connect", 0), ("sep_conv_3x3", 1)), (("dil_conv_5x5", 1), ("avg_pool_3x3", 2)))
    assert g.reduce == g.normal


# --- second order --------------------------------------------------------------------------------

def _hypergradients(partial_channels: int, dtype: torch.dtype, fd_scale: float):
    """On a tiny supernet after one SGD step (so that momentum is in play): the second-order rule's
    architecture gradient, the exact one (autograd through the virtual step, double backward;
    transcribed from the paper's eqs. 6-7, independently of oneshot_darts.arch_gradient), and the
    first term alone (w' taken as constant), each flattened."""
    from torch import nn
    from torch.func import functional_call

    from oneshot_darts.arch_gradient import second_order
    from oneshot_darts.space import arch_parameters, build_supernet

    torch.manual_seed(0)
    net = build_supernet(channels=4, layers=3, n_nodes=2, partial_channels=partial_channels).to(dtype)
    alphas = arch_parameters(net)
    with torch.no_grad():
        for a in alphas:
            a.normal_(0, 0.5)               # an architecture that is not uniform
    ids = {id(a) for a in alphas}
    weights = [p for p in net.parameters() if id(p) not in ids]
    opt = torch.optim.SGD(weights, lr=0.05, momentum=0.9, weight_decay=3e-4)
    gen = torch.Generator().manual_seed(1)

    def batch():
        return torch.randn(8, 3, 32, 32, generator=gen).to(dtype), torch.randint(0, 10, (8,), generator=gen)
    ce = nn.functional.cross_entropy
    x, y = batch()
    ce(net(x), y).backward(inputs=weights)
    opt.step()
    train, val = batch(), batch()
    # exact: w' = w - lr (momentum m + grad L_train + wd w), differentiated through grad L_train
    grads = torch.autograd.grad(ce(net(train[0]), train[1]), weights, create_graph=True)
    g = opt.param_groups[0]
    stepped = [w - g["lr"] * (g["momentum"] * opt.state[w]["momentum_buffer"] + gw + g["weight_decay"] * w)
               for w, gw in zip(weights, grads)]
    names = {p: n for n, p in net.named_parameters()}

    def val_loss(ws):
        params = {**{names[w]: s for w, s in zip(weights, ws)}, **{n: b.clone() for n, b in net.named_buffers()}}
        return ce(functional_call(net, params, (val[0],)), val[1])
    exact = torch.autograd.grad(val_loss(stepped), alphas)
    direct = torch.autograd.grad(val_loss([s.detach() for s in stepped]), alphas)
    before = [w.detach().clone() for w in weights]
    second_order(net, alphas, weights, train, val, opt, fd_scale=fd_scale)
    assert all(torch.equal(w, b) for w, b in zip(weights, before)), "the weights must be left exactly as they were"
    flat = lambda ts: torch.cat([t.flatten() for t in ts])  # noqa: E731
    return flat(a.grad for a in alphas), flat(exact), flat(direct)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("partial_channels", [1, 2], ids=["darts", "pc-darts"])
def test_second_order_matches_the_exact_unrolled_gradient(monkeypatch, one_thread, partial_channels):
    """The paper's finite-difference hypergradient (eq. 8, eps = 0.01 / ||grad||) against the exact
    gradient of L_val(w'(alpha), alpha), to 1e-4 relative in float32 (measured: 1.3e-5 for DARTS,
    7.5e-7 for PC-DARTS), while the second-order term itself is 1-3e-2 of the gradient.

    Central differences are exact to O(eps^2) only where the gradient is smooth in the weights, so
    this part runs the tiny supernet with ReLU as softplus(beta 4) and max pooling as average
    pooling: the real ops' kinks (a unit crossing 0, another pixel becoming the max) put jumps of
    order 1/eps into the difference quotient (0.22 relative on this 8-image batch). The real ops are
    checked next: in float64 with eps 1e-6, where no kink is crossed, to 1e-3 (measured 6e-5)."""
    from torch import nn

    fd, exact, direct = _hypergradients(partial_channels, torch.float64, fd_scale=1e-6)
    assert _relative(fd, exact) < 1e-3
    assert _relative(direct, exact) > 5e-3            # the second-order term matters here
    monkeypatch.setattr(nn.ReLU, "forward", lambda self, x: nn.functional.softplus(x, beta=4))
    monkeypatch.setattr(nn.MaxPool2d, "forward", lambda self, x: nn.functional.avg_pool2d(
        x, self.kernel_size, self.stride, self.padding, count_include_pad=False))
    fd, exact, direct = _hypergradients(partial_channels, torch.float32, fd_scale=0.01)
    assert _relative(fd, exact) < 1e-4
    assert _relative(direct, exact) > 100 * 1e-4


# --- search, retrain, resume --------------------------------------------------------------------

def test_search_writes_final_arch_that_retrains(tmp_path, one_thread):
    from oneshot_darts.retrain import main as retrain
    from oneshot_darts.search import main as search

    result = search([*TINY_SEARCH, "--epochs", "2", "--out-dir", str(tmp_path / "runs")])
    run_dir = Path(result["run_dir"])
    assert {p.name for p in run_dir.iterdir()} >= {"final_arch.json", "arch_weights.json", "checkpoint.pt",
                                                   "metrics.jsonl", "train.log", "config.yaml", "result.json"}
    genotype = load_arch(run_dir / "final_arch.json")
    assert genotype.n_nodes == 2 and genotype.to_json() == result["arch"]
    weights = json.loads((run_dir / "arch_weights.json").read_text())
    assert len(weights) == 2 * (2 + 3)
    assert all(abs(sum(w.values()) - 1) < 1e-5 and set(w) == {*OP_NAMES, "none"} for w in weights.values())
    metrics = Run(run_dir).read_metrics()
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(0 <= m["val_acc"] <= 1 and m["arch"] for m in metrics)
    cfg = load_checkpoint(run_dir / "checkpoint.pt")["config"]
    assert cfg["val_fraction"] == 0.5 and cfg["arch_lr"] == 3e-4 and cfg["lr"] == 0.025

    out = retrain(["--arc", str(run_dir / "final_arch.json"), *TINY_RETRAIN, "--epochs", "1",
                   "--out-dir", str(tmp_path / "retrain")])
    assert 0 <= out["test_acc"] <= 1 and out["epoch"] == 1
    assert json.loads((Path(out["run_dir"]) / "arch.json").read_text()) == genotype.to_json()


@pytest.mark.parametrize("fmt", ["nni3", "nni1", "nni1_other"])
def test_other_formats_retrain(tmp_path, one_thread, fmt):
    from oneshot_darts.retrain import main as retrain

    data = {"nni3": DARTS_V2_NNI3, "nni1": DARTS_V2_NNI1, "nni1_other": OTHER_NNI1}[fmt]
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(data))
    out = retrain(["--arc", str(path), *TINY_RETRAIN, "--epochs", "1", "--max-batches", "1",
                   "--out-dir", str(tmp_path / "runs")])
    assert out["epoch"] == 1 and 0 <= out["test_acc"] <= 1
    assert parse_arch(json.loads((Path(out["run_dir"]) / "arch.json").read_text())) == parse_arch(data)


def test_retrain_defaults_are_the_papers_recipe():
    from oneshot_darts.retrain import RetrainConfig
    from oneshot_darts.search_trainer import SearchConfig

    r = RetrainConfig()
    assert (r.channels, r.layers, r.auxiliary, r.auxiliary_weight, r.drop_path, r.cutout, r.optimizer, r.lr,
            r.scheduler, r.momentum, r.weight_decay, r.epochs, r.batch_size, r.grad_clip, r.amp, r.val_fraction) == (
        36, 20, True, 0.4, 0.2, 16, "SGD", 0.025, "cosine", 0.9, 3e-4, 600, 96, 5.0, True, 0.0)
    s = SearchConfig()
    assert (s.layers, s.channels, s.n_nodes, s.epochs, s.batch_size, s.lr, s.lr_min, s.momentum, s.weight_decay,
            s.arch_lr, s.arch_beta1, s.arch_beta2, s.arch_weight_decay, s.val_fraction) == (
        8, 16, 4, 50, 64, 0.025, 0.001, 0.9, 3e-4, 3e-4, 0.5, 0.999, 1e-3, 0.5)


@pytest.mark.parametrize("variant", ["order2", "pc"])
def test_search_variants_record_their_steps_and_collapse_counts(tmp_path, one_thread, variant):
    """--order 2, and PC-DARTS (--partial-channels 2) with the architecture frozen for the first
    epoch: each epoch records the collapse counts of the derived normal cell; PC-DARTS also its
    edge-normalisation weights, and no architecture step (no arch_loss) in the frozen epoch."""
    from oneshot_darts.search import main as search

    flags = {"order2": ["--order", "2"], "pc": ["--partial-channels", "2", "--arch-warmup-epochs", "1"]}[variant]
    result = search([*TINY_SEARCH, "--epochs", "2", *flags, "--out-dir", str(tmp_path)])
    metrics = Run(result["run_dir"]).read_metrics()
    for m in metrics:
        ops = [op for node in m["arch"]["normal"] for op, _ in node]
        assert m["normal_skip_connect"] == ops.count("skip_connect")
        assert m["normal_param_free"] == sum(op in ("max_pool_3x3", "avg_pool_3x3", "skip_connect") for op in ops)
    log = (Path(result["run_dir"]) / "train.log").read_text()
    if variant == "order2":
        assert all("arch_loss" in m for m in metrics) and "order 2" in log
    else:
        assert "arch_loss" not in metrics[0] and "arch_loss" in metrics[1]
        assert "PC-DARTS K=2" in log and "architecture frozen for 1 epoch)" in log
        inputs = metrics[-1]["input_weights"]
        assert set(inputs) == {"normal/2", "normal/3", "reduce/2", "reduce/3"}
        assert all(len(w) == int(k.split("/")[1]) and abs(sum(w) - 1) < 1e-5 for k, w in inputs.items())
        assert metrics[0]["input_weights"] != inputs      # trained in epoch 2 only
        weights = json.loads((Path(result["run_dir"]) / "arch_weights.json").read_text())
        assert weights["inputs"] == inputs
    assert load_arch(Path(result["run_dir"]) / "final_arch.json").to_json() == metrics[-1]["arch"]


def test_search_step_runs_in_fp16_with_the_gradient_scaler(one_thread):
    """The engine picks fp16 with a gradient scaler on GPUs without bf16; the search's own step
    scales both its losses with it (CPU autocast fp16 stands in for the GPU here): both the
    architecture and the network weights move and the losses stay finite."""
    from core.run_training import load_splits
    from core.speed import Precision
    from core.trainer import seed_everything
    from oneshot_darts.search_trainer import DartsSearch, SearchConfig
    from oneshot_darts.space import build_supernet

    cfg = SearchConfig(data="fake", channels=4, layers=3, n_nodes=2, batch_size=8, max_batches=3, epochs=1,
                       device="cpu", progress=False)
    seed_everything(0)
    search = DartsSearch(build_supernet(channels=4, layers=3, n_nodes=2), cfg, load_splits(cfg))
    assert search.uses_grad_scaler
    search.precision = Precision("fp16", torch.float16, True, "test")
    search.scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0 ** 8)
    alphas, weights = [a.detach().clone() for a in search.alphas], [w.detach().clone() for w in search.parameters()]
    metrics = search.train_epoch(0)
    assert all(map(math.isfinite, (metrics["train_loss"], metrics["arch_loss"])))
    assert any(not torch.equal(a, b) for a, b in zip(alphas, search.alphas))
    assert any(not torch.equal(w, b) for w, b in zip(weights, search.parameters()))


@pytest.mark.parametrize("order", [1, 2])
def test_search_memory_estimate_counts_the_precision_its_step_computes_in(monkeypatch, order):
    """On an fp16 GPU (faked: the estimate runs on the meta device) the first-order step's activations
    are 16-bit, but the second-order architecture step computes in float32: its estimate is float32's."""
    from core import speed, trainer as engine
    from core.run_training import load_splits
    from core.speed import Precision, training_bytes
    from oneshot_darts.search_trainer import DartsSearch, SearchConfig
    from oneshot_darts.space import build_supernet

    cfg = SearchConfig(data="fake", channels=4, layers=3, n_nodes=2, batch_size=8, max_batches=1, epochs=1,
                       device="cpu", progress=False, order=order)
    search = DartsSearch(build_supernet(channels=4, layers=3, n_nodes=2), cfg, load_splits(cfg))
    search.precision = fp16 = Precision("fp16", torch.float16, True, "test: a T4")
    search.device = torch.device("cuda", 0)
    monkeypatch.setattr(engine, "free_memory", lambda device: (15 << 30, 16 << 30))
    counted = speed.activation_bytes(search.model, 8, 32)    # the supernet runs on the meta device
    monkeypatch.setattr(speed, "activation_bytes", lambda *args: counted)   # counted once (seconds)
    need = search._check_memory(search.model)
    fp32 = Precision("fp32", None, False, "test")
    assert need == training_bytes(search.model, 8, 32, fp32 if order == 2 else fp16)
    assert training_bytes(search.model, 8, 32, fp32) > training_bytes(search.model, 8, 32, fp16)
    assert f"(batch 8, {'fp32' if order == 2 else 'fp16'})" in search.choices[-1]


def test_collapse_guard_caps_skip_connects_as_p_darts():
    """P-DARTS's rule on weights where skip_connect is every edge's strongest operation: the
    weakest chosen skip_connects leave until two remain; each such node is derived again without
    that candidate."""
    from oneshot_darts.derive import collapse_counts, derive_genotype

    weights = {}
    for cell in ("normal", "reduce"):
        for n in range(2, 5):
            for j in range(n):
                w = {name: 0.05 for name in (*OP_NAMES, "none")}
                w["skip_connect"] = 0.5 + 0.01 * (n * 10 + j)        # later nodes, later inputs: stronger skips
                w["sep_conv_3x3"] = 0.2 + 0.001 * j
                weights[f"{cell}/{n}_{j}"] = w
    collapsed = derive_genotype(weights, 3)
    assert collapse_counts(collapsed) == {"normal_param_free": 6, "normal_skip_connect": 6}
    guarded = derive_genotype(weights, 3, max_skip_connect=2)
    assert collapse_counts(guarded)["normal_skip_connect"] == 2
    assert guarded.normal[2] == (("skip_connect", 2), ("skip_connect", 3))   # the two strongest skips stay
    assert guarded.normal[0] == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    assert guarded.reduce == collapsed.reduce                                 # the normal cell only
    assert derive_genotype(weights, 3, max_skip_connect=0).normal == (
        (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)), (("sep_conv_3x3", 1), ("sep_conv_3x3", 2)),
        (("sep_conv_3x3", 2), ("sep_conv_3x3", 3)))


def test_search_built_to_collapse_is_seen_and_guarded(tmp_path, one_thread, monkeypatch):
    """A supernet whose normal cell starts collapsed (skip_connect ahead on every edge): every
    epoch's counts show it; with --max-skip-connect 2 the derived cell keeps two skip_connects and
    the metrics say how many the guard replaced."""
    import oneshot_darts.space as space
    from oneshot_darts.search import main as search

    build = space.build_supernet

    def collapsed_supernet(**kwargs):
        net = build(**kwargs)
        with torch.no_grad():
            for cell in net.cells:
                if cell.label == "normal":   # the alphas are shared by the cells of a type
                    for alpha in cell._arch_alpha.values():
                        alpha[OP_NAMES.index("skip_connect")] = 3.0
        return net
    monkeypatch.setattr(space, "build_supernet", collapsed_supernet)
    args = [*TINY_SEARCH, "--n-nodes", "3", "--epochs", "2"]
    plain = Run(search([*args, "--out-dir", str(tmp_path / "plain")])["run_dir"]).read_metrics()
    assert [m["normal_skip_connect"] for m in plain] == [6, 6] and "guard_replaced" not in plain[0]
    guarded = search([*args, "--max-skip-connect", "2", "--out-dir", str(tmp_path / "guarded")])
    metrics = Run(guarded["run_dir"]).read_metrics()
    assert [(m["normal_skip_connect"], m["guard_replaced"]) for m in metrics] == [(6, 4), (6, 4)]
    final = load_arch(Path(guarded["run_dir"]) / "final_arch.json")
    assert sum(op == "skip_connect" for node in final.normal for op, _ in node) == 2
    assert "the guard replaced 4 (max_skip_connect 2)" in (Path(guarded["run_dir"]) / "train.log").read_text()


BAD_SEARCH_FLAGS = {
    "order": (["--order", "3"], "order: 3 is not allowed; it must be in [1, 2] (1 = first order, 2 = second order)"),
    "order_adam": (["--order", "2", "--optimizer", "Adam"], "order: 2 needs optimizer SGD"),
    "partial": (["--partial-channels", "3"], "partial_channels: 3 is not allowed with channels 4"),
    "partial_zero": (["--partial-channels", "0"], "partial_channels: 0 is not allowed; it must be at least 1"),
    "warmup": (["--arch-warmup-epochs", "2", "--epochs", "2"], "arch_warmup_epochs: 2 is not allowed with epochs 2"),
    "warmup_negative": (["--arch-warmup-epochs", "-1"], "arch_warmup_epochs: -1 is not allowed; it must be 0 or more"),
    "guard": (["--max-skip-connect", "-2"], "max_skip_connect: -2 is not allowed; it must be at least -1 (-1 = off)"),
}


@pytest.mark.parametrize("case", sorted(BAD_SEARCH_FLAGS))
def test_bad_search_variant_is_one_line(tmp_path, capsys, case):
    from oneshot_darts.search import main as search

    flags, expected = BAD_SEARCH_FLAGS[case]
    with pytest.raises(SystemExit) as exc:
        search([*TINY_SEARCH, *flags, "--out-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "runs").exists()


def test_search_configs_are_the_published_recipes():
    """configs/darts_search.yml writes out SearchConfig's defaults (the DARTS paper's);
    configs/pcdarts_search.yml is PC-DARTS's published recipe."""
    from core.config import from_dict, read_yaml, to_dict
    from oneshot_darts.search_trainer import SearchConfig

    run_fields = ("data", "data_root", "out_dir")
    darts = to_dict(from_dict(SearchConfig, read_yaml(REPO / "configs" / "darts_search.yml")))
    defaults = to_dict(SearchConfig())
    assert {k: v for k, v in darts.items() if k not in run_fields} == {
        k: v for k, v in defaults.items() if k not in run_fields}
    pc = from_dict(SearchConfig, read_yaml(REPO / "configs" / "pcdarts_search.yml"))
    assert (pc.partial_channels, pc.order, pc.batch_size, pc.lr, pc.lr_min, pc.arch_lr, pc.arch_beta1, pc.arch_beta2,
            pc.arch_weight_decay, pc.epochs, pc.arch_warmup_epochs, pc.weight_decay, pc.channels, pc.layers,
            pc.val_fraction) == (4, 1, 256, 0.1, 0.001, 6e-4, 0.5, 0.999, 1e-3, 50, 15, 3e-4, 16, 8, 0.5)


def test_search_killed_after_first_epoch_resumes_exactly(tmp_path, one_thread):
    """A search process killed (SIGKILL) after its first epoch's checkpoint, resumed from it,
    ends exactly (bit for bit) where an uninterrupted search with the same seed ends."""
    from oneshot_darts.search import main as search

    args = [*TINY_SEARCH, "--epochs", "3", "--max-batches", "3"]
    straight = search([*args, "--out-dir", str(tmp_path / "straight")])

    proc = subprocess.Popen([sys.executable, "oneshot_darts/search.py", *args, "--out-dir", str(tmp_path / "killed")],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not list((tmp_path / "killed").glob("*/checkpoint.pt")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    checkpoint = next((tmp_path / "killed").glob("*/checkpoint.pt"))
    epochs_done = load_checkpoint(checkpoint)["epoch"]
    assert epochs_done < 3, "the process finished before it could be killed: nothing was resumed"

    torch.manual_seed(1234)  # the resumed run must not depend on this process's random state
    resumed = search(["--resume", str(checkpoint)])
    assert resumed["run_dir"] == str(checkpoint.parent)
    a = load_checkpoint(Path(straight["run_dir"]) / "checkpoint.pt")
    b = load_checkpoint(checkpoint)
    assert b["epoch"] == 3 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert untimed(Run(checkpoint.parent).read_metrics()) == untimed(Run(straight["run_dir"]).read_metrics())
    for name in ("final_arch.json", "arch_weights.json"):
        assert (checkpoint.parent / name).read_text() == (Path(straight["run_dir"]) / name).read_text()
    assert "resumed from" in (checkpoint.parent / "train.log").read_text()


def test_search_epoch_trains_every_weight_image_and_cycles_the_architecture_half(tmp_path, one_thread):
    """32 weight images and 8 architecture images, batch 8: every epoch takes 4 steps, trains the
    weights on all 32 and the architecture on the 8 cycled four times (an epoch is not cut to the
    shorter half's 8 weight images), and its log says so; interrupted after its first epoch and
    resumed, the search ends exactly where an uninterrupted one ends."""
    from oneshot_darts.search import main as search
    from oneshot_darts.search_trainer import SearchConfig, run_search

    sizes = {"subset": 32, "val_subset": 8, "epochs": 2}
    flags = [*TINY_SEARCH, "--max-batches", "0", *(f"--{k.replace('_', '-')}={v}" for k, v in sizes.items())]
    straight = search([*flags, "--out-dir", str(tmp_path / "straight")])
    metrics = Run(straight["run_dir"]).read_metrics()
    assert [(m["train_images"], m["arch_images"]) for m in metrics] == [(32, 32), (32, 32)]
    log = (Path(straight["run_dir"]) / "train.log").read_text()
    assert ("32 images for the weights, 8 for the architecture; each epoch 4 steps of 8 images: the weights "
            "train on all 32, the architecture on 32 draws from its 8 (cycled, 4.0 passes)") in log
    assert "train_images=32 arch_images=32" in log

    cfg = SearchConfig(data="fake", channels=4, layers=3, n_nodes=2, batch_size=8, eval_batch_size=100,
                       device="cpu", progress=False, out_dir=str(tmp_path), **sizes)

    def interrupt(m):
        if m["epoch"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted):
        run_search(cfg, run_dir=tmp_path / "killed", on_epoch=interrupt)
    torch.manual_seed(1234)
    search(["--resume", str(tmp_path / "killed" / "checkpoint.pt")])
    a = load_checkpoint(Path(straight["run_dir"]) / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert b["epoch"] == 2 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert untimed(Run(tmp_path / "killed").read_metrics()) == untimed(metrics)


def test_architecture_weights_still_uniform_are_flagged(tmp_path, one_thread):
    """After two steps at the paper's architecture lr every edge's weights are within 1 % of 1/8:
    the search's log, metrics and result.json (beside final_arch.json) say the derived cell is
    arbitrary, and so does its report; weights that moved (a large architecture lr) are not flagged."""
    from oneshot_darts.derive import still_uniform
    from oneshot_darts.search import main as search
    from report.cli import main as report

    ops = (*OP_NAMES, "none")
    assert still_uniform({"normal/2_0": {op: 0.125 * (1 + 0.009 * (-1) ** i) for i, op in enumerate(ops)}})
    assert not still_uniform({"normal/2_0": {op: 0.125 * (1 + 0.02 * (-1) ** i) for i, op in enumerate(ops)}})

    early = search([*TINY_SEARCH, "--epochs", "1", "--out-dir", str(tmp_path / "early")])
    run_dir = Path(early["run_dir"])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["arch_uniform"] == Run(run_dir).read_metrics()[-1]["arch_uniform"]
    assert result["arch_uniform"]["uniform"] is True and result["arch_uniform"]["tolerance"] == 0.01
    low, high = result["arch_uniform"]["weight_range"]
    assert 0.125 * 0.99 <= low < high <= 0.125 * 1.01
    assert "final_arch.json: the architecture weights are still uniform" in (run_dir / "train.log").read_text()
    text = Path(report([str(run_dir), "-o", str(tmp_path / "report")])).read_text()
    assert "still uniform" in text and "arbitrary" in text

    moved = search([*TINY_SEARCH, "--epochs", "1", "--arch-lr", "0.3", "--out-dir", str(tmp_path / "moved")])
    assert moved["arch_uniform"]["uniform"] is False
    assert "uniform" not in (Path(moved["run_dir"]) / "train.log").read_text()


# --- the paper's protocol ---------------------------------------------------------------------

#: The protocol at the tiny sizes: two seeds, 3-epoch searches, 3-epoch short retrains of tiny networks.
TINY_PROTOCOL = [*TINY_SEARCH, "--epochs", "3", "--seeds", "0", "1", "--select-epochs", "3"]


def _protocol_args(tmp_path: Path, out: str) -> list[str]:
    return [*TINY_PROTOCOL, "--select-config", str(REPO / "configs" / "darts_select_smoke.yml"),
            "--out-dir", str(tmp_path / out)]


def _run_until(args: list[str], stop_at: Path) -> None:
    """Run the protocol command in a process and SIGKILL it as soon as ``stop_at`` exists."""
    proc = subprocess.Popen([sys.executable, "oneshot_darts/search.py", *args], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not stop_at.exists():
            assert proc.poll() is None, f"finished before {stop_at.name} appeared: " + proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"no {stop_at} after 300 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


@pytest.mark.e2e   # three processes, two of them killed: about a minute on two shared cores
def test_protocol_killed_twice_resumes_to_the_same_selection(tmp_path, one_thread):
    """The paper's protocol (2 seeds) killed with SIGKILL in its search phase and again in its
    retrain phase, each time continued by the same command, ends with the selection.json and
    final_arch.json of an uninterrupted run, byte for byte; finished steps are not redone."""
    from oneshot_darts.search import main as search

    straight = search(_protocol_args(tmp_path, "straight"))
    args = _protocol_args(tmp_path, "killed")
    folder = tmp_path / "killed" / "darts-protocol"
    _run_until(args, folder / "search-seed1" / "checkpoint.pt")           # seed 0 searched, seed 1 half-way
    assert not (folder / "select-seed0").exists()
    _run_until(args, folder / "select-seed0" / "checkpoint.pt")           # retrain phase, seed 0 half-way
    assert load_checkpoint(folder / "select-seed0" / "checkpoint.pt")["epoch"] < 3
    assert json.loads((folder / "protocol.json").read_text())["steps"].keys() == {"search-seed0", "search-seed1"}
    torch.manual_seed(1234)
    resumed = search(args)
    for name in ("selection.json", "final_arch.json"):
        assert (folder / name).read_bytes() == (Path(straight["folder"]) / name).read_bytes()
    assert resumed["winner"] == straight["winner"]
    for step, resumed_once in (("search-seed0", False), ("search-seed1", True), ("select-seed0", True),
                               ("select-seed1", False)):
        log = (folder / step / "train.log").read_text()
        assert ("resumed from" in log) == resumed_once, step
        assert [m["epoch"] for m in Run(folder / step).read_metrics()] == [1, 2, 3]
    selection = json.loads((folder / "selection.json").read_text())
    assert [r["seed"] for r in selection["seeds"]] == [0, 1]
    assert selection["winner"]["seed"] == max(selection["seeds"], key=lambda r: r["select_val_acc"])["seed"]
    assert load_arch(folder / "final_arch.json").to_json() == selection["winner"]["genotype"]


def test_short_retrains_take_the_search_s_data_and_a_network_scaled_like_it(tmp_path, capsys):
    """The short retrains read the search's data flags; a search narrower or shallower than the
    paper's (C 16, 8 cells) shrinks their network by the same factors from the paper's 36 x 20,
    unless --select-config sets it; --print-config shows both configs and writes nothing."""
    from core.config import from_dict
    from oneshot_darts.protocol import selection_config
    from oneshot_darts.search import main as search
    from oneshot_darts.search_trainer import SearchConfig

    data = {"data": "fake", "subset": 2000, "val_subset": 500, "max_batches": 3}
    small = from_dict(SearchConfig, {**data, "channels": 4, "layers": 3, "out_dir": str(tmp_path)})
    cfg = selection_config(small, 1, {}, "test")
    assert {k: getattr(cfg, k) for k in data} == data
    assert (cfg.channels, cfg.layers, cfg.epochs, cfg.val_fraction) == (9, 8, 1, 0.1)    # 36 x 4/16, 20 x 3/8
    assert (selection_config(small, 1, {"channels": 4}, "test").channels, cfg.layers) == (4, 8)
    for shape, expected in (((16, 8), (36, 20)), ((32, 12), (36, 20)), ((8, 8), (18, 20)), ((1, 3), (2, 8))):
        search_cfg = dataclasses.replace(small, channels=shape[0], layers=shape[1])
        got = selection_config(search_cfg, 1, {}, "test")
        assert (got.channels, got.layers) == expected, shape

    with pytest.raises(SystemExit) as stop:
        search(["--data", "fake", "--channels", "4", "--layers", "3", "--subset", "2000", "--val-subset", "500",
                "--seeds", "0", "1", "--select-epochs", "1", "--print-config", "--out-dir", str(tmp_path / "runs")])
    assert stop.value.code == 0
    import yaml
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seeds"] == [0, 1] and printed["select_epochs"] == 1
    assert (printed["search"]["channels"], printed["search"]["subset"]) == (4, 2000)
    assert {k: printed["select"][k] for k in ("channels", "layers", "subset", "val_subset", "epochs")} == {
        "channels": 9, "layers": 8, "subset": 2000, "val_subset": 500, "epochs": 1}
    assert not (tmp_path / "runs").exists()


#: The two ways into the protocol: its own command, and the search's ``--seeds``.
PROTOCOL_COMMANDS = ["oneshot_darts/protocol.py", "oneshot_darts/search.py"]


def _protocol_main(command: str):
    import oneshot_darts.protocol
    import oneshot_darts.search

    return {"oneshot_darts/protocol.py": oneshot_darts.protocol.main,
            "oneshot_darts/search.py": oneshot_darts.search.main}[command]


@pytest.mark.parametrize("command", PROTOCOL_COMMANDS)
def test_interrupted_protocol_says_to_run_the_same_command_again(tmp_path, one_thread, monkeypatch, capsys, command):
    """Ctrl-C in the protocol's second search: one line that names the step and says to run the
    same command again (the step's own --resume would continue that search alone); run again,
    the protocol continues that search from its checkpoint and finishes. Through either way in."""
    import oneshot_darts.protocol as protocol_module

    main = _protocol_main(command)
    args = [*_protocol_args(tmp_path, "runs"), "--epochs", "2", "--select-epochs", "1", "--max-batches", "1"]
    run_search = protocol_module.run_search

    def interrupted_in_seed1(cfg, **kwargs):
        def stop(metrics):
            if cfg.seed == 1:
                raise KeyboardInterrupt
        return run_search(cfg, **kwargs, on_epoch=stop)
    monkeypatch.setattr(protocol_module, "run_search", interrupted_in_seed1)
    monkeypatch.setattr(sys, "argv", [command, *args])
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" not in err[0], err
    assert err[0].startswith("error: protocol interrupted in search-seed1; to continue the whole protocol, run the "
                             "same command again (finished steps are skipped, search-seed1 resumes from its last "
                             f"checkpoint): python {command} --data fake"), err
    monkeypatch.setattr(protocol_module, "run_search", run_search)
    done = main(args)
    folder = Path(done["folder"])
    assert "resumed from" in (folder / "search-seed1" / "train.log").read_text()
    assert [r["seed"] for r in done["seeds"]] == [0, 1]


def test_protocol_command_has_help_and_one_line_for_bad_flags(tmp_path, capsys):
    """``python oneshot_darts/protocol.py``: --help prints its usage (the search's flags and the
    protocol's); a mistake is one ``error:`` line and nothing is written."""
    from oneshot_darts.protocol import main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.startswith("usage: python oneshot_darts/protocol.py")
    assert all(flag in out for flag in ("--seeds", "--select-epochs", "--select-config", "--channels", "--order"))
    out_dir = ["--out-dir", str(tmp_path / "runs")]
    for flags, expected in (([], "the following arguments are required: --seeds"),
                            (["--seeds", "0", "--bogus"], "unrecognized arguments: --bogus"),
                            (["--seeds", "0", "--seed", "3"], "--seed: not allowed with --seeds"),
                            (["--seeds", "1", "1"], "--seeds: seed 1 is given twice"),
                            (["--seeds", "0", "--select-epochs", "0"], "--select-epochs: 0 is not allowed"),
                            (["--seeds", "0", "--resume", "x.pt"], "unrecognized arguments: --resume")):
        with pytest.raises(SystemExit) as stop:
            main([*flags, *out_dir])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], \
            (flags, err)
    assert not (tmp_path / "runs").exists()


class _Unreadable:
    """A test split that fails the test as soon as anything looks at it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self):
        raise AssertionError("the test split was read (len)")


def test_protocol_never_reads_the_test_split_and_continues_only_itself(tmp_path, one_thread, monkeypatch, capsys):
    """The protocol's searches, short retrains and selection run with a test split that fails on
    any access; run again it redoes nothing; run with other settings in the same folder it stops
    with one line naming them; its flags are refused where they make no sense."""
    import core.run_training
    from oneshot_darts.search import main as search

    make_splits = core.run_training.make_splits
    monkeypatch.setattr(core.run_training, "make_splits", lambda *a, **k: dataclasses.replace(make_splits(*a, **k),
                                                                                          test=_Unreadable()))
    args = [*_protocol_args(tmp_path, "runs"), "--epochs", "1", "--select-epochs", "1", "--max-batches", "1"]
    first = search(args)
    folder = Path(first["folder"])
    selection = (folder / "selection.json").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/checkpoint.pt")}
    assert len(stamps) == 4
    capsys.readouterr()
    again = search(args)
    assert capsys.readouterr().out.count("finished before") == 4
    assert again["winner"] == first["winner"] and (folder / "selection.json").read_text() == selection
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/checkpoint.pt")} == stamps
    for flags, expected in (
            (["--lr", "0.1"], "was started with other settings (search lr 0.025 there, 0.1 now)"),
            (["--seeds", "0", "2"], "(seeds [0, 1] there, [0, 2] now)"),
            (["--seed", "3"], "--seed: not allowed with --seeds"),
            (["--seeds", "1", "1"], "--seeds: seed 1 is given twice"),
            (["--nni"], "--nni: not allowed with --seeds")):
        with pytest.raises(SystemExit):
            search([*args, *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (flags, err)
    (tmp_path / "bad.yaml").write_text("epochs: 5\n")
    for flags, expected in ((["--select-config", str(tmp_path / "bad.yaml")], "field 'epochs' is set by the protocol"),
                            (["--select-config", str(tmp_path / "zero.yaml")], "does not exist")):
        with pytest.raises(SystemExit):
            search([*args, *flags])
        assert expected in capsys.readouterr().err
    (tmp_path / "zero.yaml").write_text("val_fraction: 0\n")
    with pytest.raises(SystemExit):
        search([*args, "--select-config", str(tmp_path / "zero.yaml"), "--out-dir", str(tmp_path / "other")])
    assert "val_fraction 0.0 is not allowed for the selection" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search([*TINY_SEARCH, "--select-epochs", "3", "--out-dir", str(tmp_path / "other")])
    assert "--select-epochs: only with --seeds" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()

    # the reports: the protocol's (every seed's cell, the selection) and one of its searches' (step, collapse)
    from report.cli import main as report
    from tests.test_report import check_report

    text = check_report(report([str(folder)]), ["Report: DARTS protocol", "**Selected: the cell of seed",
                                                "seed0_cell_normal.png", "seed1_cell_reduce.png", "selection.png",
                                                "search_vs_select.png", "collapse.png", "Seed 1"])
    winner = json.loads(selection)["winner"]
    assert f"**Selected: the cell of seed {winner['seed']}**" in text
    # one architecture step each: every seed's weights are still uniform, and both the record and the report say so
    assert winner["arch_uniform"]["uniform"] and all(r["arch_uniform"]["uniform"] for r in json.loads(selection)["seeds"])
    assert "**Arbitrary cells:** the searches of seeds 0, 1 ended with the architecture weights still uniform" in text
    text = check_report(report([str(folder / "search-seed0")]), ["## Search step", "first order", "no collapse guard",
                                                                 "## Collapse watch", "collapse.png",
                                                                 "**The derived cell is arbitrary:**"])


def test_protocol_rerun_cleans_its_temporary_files_and_checks_the_cell_each_short_retrain_trained(
        tmp_path, one_thread, capsys):
    """Run again, the protocol removes the temporary files a killed write of its own files left
    (``.<name>.*.tmp`` of protocol.json, selection.json, final_arch.json and in its step folders),
    nothing else; a search result edited by hand so that it names another cell than its short
    retrain trained (select-seed0/arch.json, or its checkpoint) is one line naming both files, and
    nothing is written or trained; with that retrain removed, the edited cell is retrained and selected."""
    from oneshot_darts.search import main as search

    args = [*_protocol_args(tmp_path, "runs"), "--seeds", "0", "--epochs", "1", "--select-epochs", "1",
            "--max-batches", "1"]
    folder = Path(search(args)["folder"])
    ours = [folder / ".selection.json.k1.tmp", folder / ".protocol.json.k2.tmp", folder / ".final_arch.json.k3.tmp",
            folder / "select-seed0" / ".result.json.k4.tmp", folder / "search-seed0" / ".arch_weights.json.k5.tmp"]
    foreign = [folder / ".notes.txt.k6.tmp", folder / ".selection.json.tmp", folder / "selection.json.k7.tmp"]
    for path in ours + foreign:
        path.write_text("{")
    capsys.readouterr()
    search(args)
    assert [p for p in ours if p.exists()] == [] and all(p.exists() for p in foreign)
    assert "removed 3 temporary file(s) a killed protocol left" in capsys.readouterr().out

    result_file, trained_file = folder / "search-seed0" / "result.json", folder / "select-seed0" / "arch.json"
    searched = json.loads(result_file.read_text())
    node = searched["arch"]["normal"][0]
    edited = [["avg_pool_3x3", 0], ["avg_pool_3x3", 1]]
    searched["arch"]["normal"][0] = edited if sorted(map(tuple, node)) != sorted(map(tuple, edited)) else \
        [["max_pool_3x3", 0], ["max_pool_3x3", 1]]
    result_file.write_text(json.dumps(searched))
    kept = {p: p.read_bytes() for p in (folder / "selection.json", folder / "protocol.json", folder / "final_arch.json",
                                        folder / "select-seed0" / "checkpoint.pt")}
    for removed in ([], ["result.json", "arch.json"]):      # skipped, then resumed from its checkpoint
        for name in removed:
            (folder / "select-seed0" / name).unlink()
        with pytest.raises(SystemExit) as exc:
            search(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        named = trained_file if not removed else folder / "select-seed0" / "checkpoint.pt"
        assert len(err) == 1 and f"{str(named)!r} and {str(result_file)!r} name different cells (normal node 2:" in err[0]
        assert "never trained the cell its search names" in err[0], err
        assert {p: p.read_bytes() for p in kept} == kept               # nothing written, nothing trained

    import shutil

    shutil.rmtree(folder / "select-seed0")                            # as the line says: retrain the edited cell
    again = search(args)
    assert again["winner"]["genotype"] == parse_arch(searched["arch"]).to_json()
    assert parse_arch(json.loads(trained_file.read_text())) == parse_arch(searched["arch"])


def test_retrain_interrupted_after_first_epoch_resumes_exactly(tmp_path, one_thread):
    """Drop path (random), the auxiliary head and cutout on: an interrupted-then-resumed retrain
    equals an uninterrupted one bit for bit, and logs the test accuracy of every epoch."""
    from oneshot_darts.genotype import load_arch
    from oneshot_darts.retrain import RetrainConfig, main as retrain, run_retrain

    genotype = load_arch(DARTS_V2_FILE)
    cfg = RetrainConfig(data="fake", channels=4, layers=3, batch_size=8, eval_batch_size=100, max_batches=2,
                        epochs=3, drop_path=0.3, device="cpu", progress=False, arc=str(DARTS_V2_FILE))
    straight = run_retrain(cfg, genotype, run_dir=str(tmp_path / "straight"))

    def interrupt(metrics):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted, match="the last checkpoint is .*killed/checkpoint.pt \\(after epoch 1\\)"):
        run_retrain(cfg, genotype, run_dir=str(tmp_path / "killed"), on_epoch=interrupt)
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"] == 1
    torch.manual_seed(1234)
    resumed = retrain(["--resume", str(tmp_path / "killed" / "checkpoint.pt")])
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = untimed(Run(tmp_path / "killed").read_metrics())
    assert metrics == untimed(Run(tmp_path / "straight").read_metrics())
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and all("test_acc" in m for m in metrics)
    assert resumed["test_acc"] == straight["test_acc"] == metrics[-1]["test_acc"]


# --- the benchmark ---------------------------------------------------------------------------------

@pytest.mark.e2e   # four benchmark processes (each imports torch and NNI): about a minute on two shared cores
def test_bench_darts_prints_order_and_partial_channel_ratios():
    """benchmarks/bench_darts.py at a smoke size: order 2 vs order 1 and K 2 vs K 1, each variant in
    its own process, one table row each with its ratio to the baseline."""
    res = subprocess.run([sys.executable, "benchmarks/bench_darts.py", "--compare", "order", "partial", "--channels", "4",
                          "--layers", "3", "--nodes", "2", "--batch-size", "8", "--steps", "1", "--warmup", "1",
                          "--repeats", "1", "--partial-channels", "2", "--device", "cpu", "--threads", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert res.returncode == 0, res.stderr[-3000:]
    row = r"\s+[\d.]+\s+[\d.]+x\s+[\d.]+\s+[\d.]+x\s+[\d.]+$"
    for label in ("order 1", "order 2", "K 1", "K 2"):
        assert re.search(rf"^{label}{row}", res.stdout, re.M), res.stdout
    assert re.search(rf"^order 1\s+[\d.]+\s+1.00x", res.stdout, re.M)


# --- data-parallel drop path ------------------------------------------------------------------------

DROP_PATH_PROBE = """\
import json, sys, torch
from core import distributed
from core.trainer import seed_everything
from oneshot_darts.ops import DropPath
distributed.setup(torch.device("cpu"))
seed_everything(0)
drop = DropPath()
drop.p = 0.5
n, r = distributed.world_size(), distributed.rank()
masks = [drop(torch.ones(16, 1, 1, 1).tensor_split(n)[r]).flatten().gt(0).tolist() for _ in range(4)]
with open(f"{sys.argv[1]}/rank{r}-of-{n}.json", "w") as fh:
    json.dump(masks, fh)
"""


@pytest.mark.e2e   # a real torchrun process group (gloo)
def test_data_parallel_ranks_draw_their_share_of_the_one_process_drop_path_masks(tmp_path):
    """Under torchrun (2 processes, gloo) each rank gets its own drop-path masks for its half of
    the global batch, and together they are the masks one process draws for the whole batch: the
    data-parallel DARTS retrain step is the one-process step (docs/design.md)."""
    probe = tmp_path / "probe.py"
    probe.write_text(DROP_PATH_PROBE)
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}
    torchrun = Path(sys.executable).parent / "torchrun"
    for command in ([sys.executable, str(probe), str(tmp_path)],
                    [str(torchrun), "--standalone", "--nproc_per_node=2", str(probe), str(tmp_path)]):
        res = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads((tmp_path / "rank0-of-1.json").read_text())
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}-of-2.json").read_text()) for r in (0, 1))
    assert rank0 != rank1                                                  # per-rank masks
    assert [a + b for a, b in zip(rank0, rank1)] == one                    # = the one-process masks
    assert 0 < sum(map(sum, one)) < 4 * 16                                 # some dropped, some kept


def _torchrun(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2`` (gloo on the CPU) of a project command."""
    torchrun = Path(sys.executable).parent / "torchrun"
    return subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**subprocess_env(), "PYTHONPATH": str(REPO)}, **kwargs)


@pytest.mark.e2e   # real torchrun process groups (gloo)
def test_under_torchrun_the_protocol_and_the_search_are_one_line_and_leave_nothing(tmp_path):
    """The DARTS search trains in one process only: under torchrun the protocol (``--seeds``) is
    refused on every rank before anything is written, and so is a plain search (by its trainer):
    rank 0 alone prints the one ``error:`` line, no rank prints a traceback, no folder is left."""
    cases = {"protocol": ([*_protocol_args(tmp_path, "protocol"), "--epochs", "1", "--select-epochs", "1"],
                          "error: --seeds: the protocol does not run under torchrun: its searches train in one process"),
             "search": ([*TINY_SEARCH, "--epochs", "1", "--out-dir", str(tmp_path / "search")],
                        "error: DartsSearch trains in one process only")}
    for name, (args, expected) in cases.items():
        res = _torchrun(["oneshot_darts/search.py", *args])
        assert res.returncode != 0 and res.stdout == "", (name, res.stdout[-2000:])
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(expected), (name, res.stderr[-3000:])
        assert not any(line.startswith("[rank") for line in res.stderr.splitlines()), (name, res.stderr[-3000:])
        assert not (tmp_path / name).exists(), name


@pytest.mark.e2e   # a real torchrun process group (gloo)
def test_a_cell_that_never_reads_an_input_retrains_under_torchrun(tmp_path):
    """DistributedDataParallel (find_unused_parameters off) needs a gradient for every parameter in
    every step: a hand-written cell that never reads one of its inputs retrains under a 2-process
    torchrun, two steps an epoch, to its result."""
    arc = tmp_path / "one_input.json"
    arc.write_text(json.dumps(ONE_INPUT_CELLS))
    res = _torchrun(["oneshot_darts/retrain.py", "--arc", str(arc), *TINY_RETRAIN, "--epochs", "2",
                     "--out-dir", str(tmp_path / "runs")])
    assert res.returncode == 0, res.stderr[-3000:]
    [run] = list((tmp_path / "runs").iterdir())
    assert [m["epoch"] for m in Run(run).read_metrics()] == [1, 2] and (run / "result.json").is_file()
    assert "2 processes (data-parallel)" in (run / "train.log").read_text()
