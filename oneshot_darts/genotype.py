"""DARTS architectures as data: four file formats read into one :class:`Genotype`, strictly.

A DARTS architecture names, for the normal and the reduction cell, each intermediate node's two
incoming edges: which earlier node feeds it (0 and 1 are the cell's two inputs, the outputs of the
two previous cells; node ``n`` >= 2 is the ``n - 2``-th intermediate node) and which operation
of :data:`oneshot_darts.ops.OP_NAMES` it applies (a node may take the same input on both edges, as
several published cells do). Four formats are read:

1. this project's own (what ``search.py`` writes to ``final_arch.json``)::

       {"normal": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], ...one list per node...],
        "reduce": [...]}

2. NNI 3.0's exported dict (``strategy.DARTS`` / ``export_top_models(formatter='dict')``)::

       {"normal/op_2_0": "sep_conv_3x3", "normal/input_2_0": [0], "normal/op_2_1": ..., ...}

3. NNI 1.x's DARTS export: for node ``n`` keys ``{cell}_n{n}_p{i}`` for every earlier node ``i``
   (an op name such as ``sepconv3x3``, or ``[]``) and ``{cell}_n{n}_switch``, the two ``p`` keys
   chosen.

4. a ``Genotype(...)`` expression as the DARTS code bases print and publish their cells
   (quark0/darts and PC-DARTS ``genotypes.py``: a flat list of two (op, input) pairs per node;
   khanrc/pt.darts: one list of pairs per node)::

       Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5],
                reduce=[...], reduce_concat=range(2, 6))

   optionally as an assignment (``DARTS_V1 = Genotype(...)``) and with ``#`` comments around it.
   It is parsed, never evaluated: only that call of the bare name ``Genotype`` (no
   ``module.Genotype``) with literal lists, tuples, strings, integers and ``range(a, b)`` is
   accepted (:func:`parse_genotype_text`). The concatenated nodes must be all
   intermediate nodes, as in every DARTS-space cell (this project's cells concatenate all of them).

Anything else is a :class:`ArchError` (a :class:`~core.errors.UserError`) naming the key and
what is allowed: the commands print it as one line and write nothing.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import read_json, read_text
from core.errors import UserError
from oneshot_darts.ops import OP_NAMES

CELLS = ("normal", "reduce")
EDGES_PER_NODE = 2
FIRST_NODE = 2  # nodes 0 and 1 are the cell's inputs

#: NNI 1.x DARTS op names -> ours.
NNI1_OP_NAMES = {
    "maxpool": "max_pool_3x3",
    "avgpool": "avg_pool_3x3",
    "skipconnect": "skip_connect",
    "sepconv3x3": "sep_conv_3x3",
    "sepconv5x5": "sep_conv_5x5",
    "dilconv3x3": "dil_conv_3x3",
    "dilconv5x5": "dil_conv_5x5",
}

Edge = tuple[str, int]          # (operation, input node)
Node = tuple[Edge, Edge]
_NNI3_KEY = re.compile(r"^(normal|reduce)/(op|input)_(\d+)_(\d+)$")
_NNI1_KEY = re.compile(r"^(normal|reduce)_n(\d+)_(?:p(\d+)|switch)$")


class ArchError(UserError):
    """A malformed architecture file or dict."""


@dataclass(frozen=True)
class Genotype:
    """The internal architecture: per cell type, one pair of (op, input) edges per node, ordered
    by input (:func:`canonical_node`)."""

    normal: tuple[Node, ...]
    reduce: tuple[Node, ...]

    @property
    def n_nodes(self) -> int:
        return len(self.normal)

    def cell(self, name: str) -> tuple[Node, ...]:
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        """This project's format (format 1), as written to ``final_arch.json``."""
        return {c: [[[op, inp] for op, inp in node] for node in self.cell(c)] for c in CELLS}

    def to_nni(self) -> dict[str, Any]:
        """NNI 3.0's architecture dict (format 2): the sample ``model_context`` freezes a space with."""
        sample: dict[str, Any] = {}
        for c in CELLS:
            for n, node in enumerate(self.cell(c), start=FIRST_NODE):
                for k, (op, inp) in enumerate(node):
                    sample[f"{c}/op_{n}_{k}"] = op
                    sample[f"{c}/input_{n}_{k}"] = [inp]
        return sample

    def dumps(self) -> str:
        """:meth:`to_json` as JSON text, one node per line."""
        lines = []
        for c in CELLS:
            nodes = ",\n".join("    " + json.dumps([[op, inp] for op, inp in node]) for node in self.cell(c))
            lines.append(f'  "{c}": [\n{nodes}\n  ]')
        return "{\n" + ",\n".join(lines) + "\n}\n"

    def describe(self) -> str:
        """One line: ``normal: 2<-sep_conv_3x3(0)+sep_conv_3x3(1) ... | reduce: ...``."""
        parts = []
        for c in CELLS:
            nodes = " ".join(f"{n}<-" + "+".join(f"{op}({inp})" for op, inp in node)
                             for n, node in enumerate(self.cell(c), start=FIRST_NODE))
            parts.append(f"{c}: {nodes}")
        return " | ".join(parts)


# --- reading -------------------------------------------------------------------------------------

def load_arch(path: str | Path, what: str = "--arc") -> Genotype:
    """Read an architecture file in any of the four formats (a ``Genotype(...)`` text or JSON)."""
    source = f"{what} {str(path)!r}"
    text = read_text(path, what)
    if is_genotype_text(text):
        return parse_genotype_text(text, source)
    return parse_arch(read_json(path, what), source=source)


def parse_arch(data: Any, source: str = "architecture") -> Genotype:
    """Recognise the format of ``data`` and read it into a :class:`Genotype`."""
    if not isinstance(data, dict) or not data:
        raise ArchError(f"{source}: must be a JSON object in one of the three DARTS formats " + _FORMATS_HINT)
    keys = [str(k) for k in data]
    if set(keys) & set(CELLS):
        genotype = _parse_own(data, source)
    elif any(_NNI3_KEY.match(k) for k in keys):
        genotype = _parse_nni3(data, source)
    elif any(_NNI1_KEY.match(k) for k in keys):
        genotype = _parse_nni1(data, source)
    else:
        raise ArchError(f"{source}: unrecognised keys (first: {keys[0]!r}); expected " + _FORMATS_HINT)
    if genotype.n_nodes != len(genotype.reduce):
        raise ArchError(f"{source}: the normal cell has {genotype.n_nodes} nodes but the reduction cell "
                        f"{len(genotype.reduce)}; both cells must have the same number of nodes")
    return genotype


_FORMATS_HINT = ("(keys 'normal' and 'reduce' as search.py writes them; NNI 3.0's 'normal/op_2_0', "
                 "'normal/input_2_0', ...; or NNI 1.x's 'normal_n2_p0', 'normal_n2_switch', ...), or a text file "
                 "holding a Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...) expression")


def _check_op(key: str, value: Any, source: str, names: dict[str, str] | None = None) -> str:
    """An op name (translated by ``names`` when given); otherwise an error naming ``key``."""
    allowed = list(names) if names else list(OP_NAMES)
    if isinstance(value, str) and value in allowed:
        return names[value] if names else value
    raise ArchError(f"{source}: key {key!r}: {value!r} is not an operation; allowed: {', '.join(allowed)}")


def _check_input(key: str, value: Any, node: int, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ArchError(f"{source}: key {key!r}: input {value!r} is not a node index; "
                        f"node {node} takes inputs 0..{node - 1}")
    if value >= node:
        raise ArchError(f"{source}: key {key!r}: input {value} points forward; node {node} takes inputs "
                        f"0..{node - 1} (0 and 1 are the cell's inputs, 2.. the earlier nodes)")
    if value < 0:
        raise ArchError(f"{source}: key {key!r}: input {value} is negative; node {node} takes inputs 0..{node - 1}")
    return value


def canonical_node(edges: list[Edge] | tuple[Edge, ...]) -> Node:
    """A node's two edges in a fixed order (by input, then op): the sum does not depend on it, so
    the same cell written in any order becomes the same genotype (and the same network)."""
    first, second = sorted(edges, key=lambda e: (e[1], e[0]))
    return (first, second)


def _node_count(cell: str, found: set[int], source: str, first_key: str) -> int:
    """Nodes must be numbered 2..N without gaps; N is the largest found."""
    if not found:
        raise ArchError(f"{source}: missing key {first_key!r}: the {cell} cell has no nodes")
    bad = min(found)
    if bad < FIRST_NODE:
        raise ArchError(f"{source}: {cell} node {bad} is not allowed; nodes 0 and 1 are the cell's inputs, "
                        f"intermediate nodes are numbered from {FIRST_NODE}")
    return max(found) - FIRST_NODE + 1


def _parse_own(data: dict[str, Any], source: str) -> Genotype:
    unknown = sorted(set(data) - set(CELLS))
    if unknown:
        raise ArchError(f"{source}: unknown key {unknown[0]!r}; allowed keys: 'normal', 'reduce'")
    cells = {}
    for c in CELLS:
        if c not in data:
            raise ArchError(f"{source}: missing key {c!r}; allowed keys: 'normal', 'reduce' (both required)")
        nodes = data[c]
        if not isinstance(nodes, list) or not nodes:
            raise ArchError(f"{source}: key {c!r}: must be a non-empty list with one entry per node, each "
                            "[[op, input], [op, input]]")
        parsed = []
        for n, node in enumerate(nodes, start=FIRST_NODE):
            where = f"key {c!r}, node {n}"
            if not isinstance(node, list) or len(node) != EDGES_PER_NODE:
                got = f"{len(node)} inputs" if isinstance(node, list) else repr(node)
                raise ArchError(f"{source}: {where}: has {got}; a node takes exactly two, "
                                "as [[op, input], [op, input]]")
            edges = []
            for k, edge in enumerate(node):
                if not isinstance(edge, list) or len(edge) != 2:
                    raise ArchError(f"{source}: {where}: edge {edge!r} must be a pair [op, input]")
                key = f"{c}[{n - FIRST_NODE}][{k}]"
                edges.append((_check_op(key, edge[0], source), _check_input(key, edge[1], n, source)))
            parsed.append(canonical_node(edges))
        cells[c] = tuple(parsed)
    return Genotype(**cells)


def _parse_nni3(data: dict[str, Any], source: str) -> Genotype:
    nodes: dict[str, set[int]] = {c: set() for c in CELLS}
    for key in data:
        m = _NNI3_KEY.match(str(key))
        if not m:
            raise ArchError(f"{source}: unknown key {key!r}; NNI 3.0 keys are '<cell>/op_<node>_<k>' and "
                            "'<cell>/input_<node>_<k>' with cell 'normal' or 'reduce', node >= 2, k 0 or 1")
        cell, _, node, k = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
        if k >= EDGES_PER_NODE:
            raise ArchError(f"{source}: key {key!r}: node {node} would take more than two inputs; "
                            "a node takes exactly two (k = 0 and 1)")
        nodes[cell].add(node)
    cells = {}
    for c in CELLS:
        count = _node_count(c, nodes[c], source, f"{c}/op_{FIRST_NODE}_0")
        parsed = []
        for n in range(FIRST_NODE, FIRST_NODE + count):
            edges = []
            for k in range(EDGES_PER_NODE):
                op_key, in_key = f"{c}/op_{n}_{k}", f"{c}/input_{n}_{k}"
                for key in (op_key, in_key):
                    if key not in data:
                        raise ArchError(f"{source}: missing key {key!r} (node {n} of the {c} cell needs "
                                        f"'{c}/op_{n}_0', '{c}/input_{n}_0', '{c}/op_{n}_1', '{c}/input_{n}_1')")
                op = _check_op(op_key, data[op_key], source)
                value = data[in_key]
                if not isinstance(value, list) or len(value) != 1:
                    raise ArchError(f"{source}: key {in_key!r}: {value!r} must be a list of exactly one input "
                                    f"node such as [0]; node {n} takes inputs 0..{n - 1}")
                edges.append((op, _check_input(in_key, value[0], n, source)))
            parsed.append(canonical_node(edges))
        cells[c] = tuple(parsed)
    return Genotype(**cells)


def _parse_nni1(data: dict[str, Any], source: str) -> Genotype:
    nodes: dict[str, set[int]] = {c: set() for c in CELLS}
    for key in data:
        m = _NNI1_KEY.match(str(key))
        if not m:
            raise ArchError(f"{source}: unknown key {key!r}; NNI 1.x keys are '<cell>_n<node>_p<input>' and "
                            "'<cell>_n<node>_switch' with cell 'normal' or 'reduce'")
        cell, node, inp = m.group(1), int(m.group(2)), m.group(3)
        if inp is not None:
            _check_input(key, int(inp), node, source)
        nodes[cell].add(node)
    unchosen = ("none", *NNI1_OP_NAMES)
    cells = {}
    for c in CELLS:
        count = _node_count(c, nodes[c], source, f"{c}_n{FIRST_NODE}_switch")
        parsed = []
        for n in range(FIRST_NODE, FIRST_NODE + count):
            p_keys = [f"{c}_n{n}_p{i}" for i in range(n)]
            switch_key = f"{c}_n{n}_switch"
            for key in (*p_keys, switch_key):
                if key not in data:
                    raise ArchError(f"{source}: missing key {key!r} (node {n} of the {c} cell needs "
                                    f"{', '.join(repr(k) for k in p_keys)} and {switch_key!r})")
            switch = data[switch_key]
            if not isinstance(switch, list) or len(switch) != EDGES_PER_NODE:
                got = f"{len(switch)} inputs" if isinstance(switch, list) else repr(switch)
                raise ArchError(f"{source}: key {switch_key!r}: has {got}; a node takes exactly two: "
                                f"a list of two of {', '.join(repr(k) for k in p_keys)}")
            edges = []
            for chosen in switch:
                if chosen not in p_keys:
                    m = _NNI1_KEY.match(chosen) if isinstance(chosen, str) else None
                    if m and m.group(1) == c and int(m.group(2)) == n and m.group(3) is not None:
                        _check_input(switch_key, int(m.group(3)), n, source)
                    raise ArchError(f"{source}: key {switch_key!r}: {chosen!r} is not an input of node {n}; "
                                    f"allowed: {', '.join(repr(k) for k in p_keys)}")
                edges.append((_check_op(chosen, data[chosen], source, NNI1_OP_NAMES), int(chosen.rsplit("p", 1)[1])))
            for key in p_keys:
                value = data[key]
                if key not in switch and value != [] and value not in unchosen:
                    raise ArchError(f"{source}: key {key!r}: {value!r} is not an operation; allowed: "
                                    f"{', '.join(unchosen)}, or [] for an input not chosen")
            parsed.append(canonical_node(edges))
        cells[c] = tuple(parsed)
    return Genotype(**cells)


# --- format 4: Genotype(...) text ----------------------------------------------------------------

GENOTYPE_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")  # the namedtuple's field order
_GENOTYPE_CALL = re.compile(r"\bGenotype\s*\(")


def is_genotype_text(text: str) -> bool:
    """Whether a file's text is meant as a ``Genotype(...)`` expression (format 4) rather than JSON:
    it names ``Genotype(`` and does not start like a JSON object or list."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return bool(lines) and lines[0][0] not in "{[" and bool(_GENOTYPE_CALL.search(text))


def parse_genotype_text(text: str, source: str = "architecture") -> Genotype:
    """Read a ``Genotype(...)`` expression (format 4, see the module docstring) without evaluating
    it: the syntax tree must be one call of the bare name ``Genotype`` (optionally assigned to a name) whose
    arguments are literals (:func:`ast.literal_eval` of each) or ``range(a, b)`` for a concat."""
    try:
        tree = ast.parse(text, mode="exec")
    except SyntaxError as exc:
        raise ArchError(f"{source}: not a valid Genotype(...) expression (line {exc.lineno}: {exc.msg})") from None
    statements = tree.body
    call = None
    if len(statements) == 1:
        stmt = statements[0]
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            call = stmt.value
        elif isinstance(stmt, ast.Expr):
            call = stmt.value
    func = getattr(call, "func", None)
    if isinstance(call, ast.Call) and not isinstance(func, ast.Name):
        raise ArchError(f"{source}: {ast.unparse(func)[:60]!r} is not allowed; only a bare Genotype(...) call (as the "
                        "DARTS code bases print cells), optionally as 'NAME = Genotype(...)'")
    if not isinstance(call, ast.Call) or func.id != "Genotype":
        raise ArchError(f"{source}: must hold exactly one Genotype(normal=[...], normal_concat=[...], reduce=[...], "
                        "reduce_concat=[...]) expression (optionally 'NAME = Genotype(...)'), and nothing else")
    if len(call.args) > len(GENOTYPE_FIELDS) or any(isinstance(a, ast.Starred) for a in call.args):
        raise ArchError(f"{source}: Genotype takes at most {len(GENOTYPE_FIELDS)} arguments: "
                        f"{', '.join(GENOTYPE_FIELDS)}")
    args = dict(zip(GENOTYPE_FIELDS, call.args))
    for kw in call.keywords:
        if kw.arg not in GENOTYPE_FIELDS:
            raise ArchError(f"{source}: Genotype argument {kw.arg or '**'!r} is not allowed; allowed: "
                            f"{', '.join(GENOTYPE_FIELDS)}")
        if kw.arg in args:
            raise ArchError(f"{source}: Genotype argument {kw.arg!r} is given twice")
        args[kw.arg] = kw.value
    cells = {}
    for c in CELLS:
        if c not in args:
            raise ArchError(f"{source}: Genotype has no {c!r} argument; both 'normal' and 'reduce' are required")
        cells[c] = _genotype_cell(c, _literal(args[c], c, source), source)
        concat_key = f"{c}_concat"
        if concat_key in args:
            concat = _concat(args[concat_key], concat_key, source)
            every = list(range(FIRST_NODE, FIRST_NODE + len(cells[c])))
            if concat != every:
                raise ArchError(f"{source}: {concat_key} {concat} is not supported; this project's cells concatenate "
                                f"every intermediate node ({every}, i.e. range({FIRST_NODE}, {every[-1] + 1}), "
                                "for this cell)")
    genotype = Genotype(**cells)
    if genotype.n_nodes != len(genotype.reduce):
        raise ArchError(f"{source}: the normal cell has {genotype.n_nodes} nodes but the reduction cell "
                        f"{len(genotype.reduce)}; both cells must have the same number of nodes")
    return genotype


def _literal(node: ast.AST, key: str, source: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ArchError(f"{source}: {key}: {ast.unparse(node)[:60]!r} is not a literal (a list of (op, input) "
                        "pairs, or for a concat a list of nodes or range(a, b))") from None


def _concat(node: ast.AST, key: str, source: str) -> list[int]:
    """A concat: a literal list/tuple of node indices, or ``range(a, b)`` with literal integers."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range" and not node.keywords \
            and 1 <= len(node.args) <= 2:
        bounds = [_literal(a, key, source) for a in node.args]
        if all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 1000 for b in bounds):
            return list(range(*bounds))
        raise ArchError(f"{source}: {key}: range() takes small non-negative integers, got {ast.unparse(node)!r}")
    value = _literal(node, key, source)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ArchError(f"{source}: {key}: {value!r} must be a list of node indices or range(a, b)")


def _genotype_cell(cell: str, value: Any, source: str) -> tuple[Node, ...]:
    """A cell's edges: a flat list of (op, input) pairs, two per node (quark0/darts, PC-DARTS), or a
    list of per-node lists of pairs (khanrc/pt.darts)."""
    shape_hint = "a list of (op, input) pairs, two per node, such as [('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...]"
    if not isinstance(value, (list, tuple)) or not value:
        raise ArchError(f"{source}: {cell}: must be {shape_hint}")
    if all(isinstance(v, (list, tuple)) and v and all(isinstance(e, (list, tuple)) for e in v) for v in value):
        nodes = [list(v) for v in value]                               # pt.darts: one list per node
    else:
        if len(value) % EDGES_PER_NODE:
            raise ArchError(f"{source}: {cell}: has {len(value)} edges; a node takes exactly two, so the number of "
                            "edges must be even")
        nodes = [list(value[i:i + EDGES_PER_NODE]) for i in range(0, len(value), EDGES_PER_NODE)]
    parsed = []
    for n, edges in enumerate(nodes, start=FIRST_NODE):
        if len(edges) != EDGES_PER_NODE:
            raise ArchError(f"{source}: {cell} node {n}: has {len(edges)} inputs; a node takes exactly two")
        checked = []
        for k, edge in enumerate(edges):
            key = f"{cell}[{2 * (n - FIRST_NODE) + k}]"
            if not isinstance(edge, (list, tuple)) or len(edge) != 2:
                raise ArchError(f"{source}: {key}: {edge!r} must be a pair (op, input)")
            checked.append((_check_op(key, edge[0], source), _check_input(key, edge[1], n, source)))
        parsed.append(canonical_node(checked))
    return tuple(parsed)
