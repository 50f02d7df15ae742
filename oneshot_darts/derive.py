"""From the search's architecture weights to a cell: the softmax weights, the paper's derivation
rule (with PC-DARTS's edge normalisation), the collapse counts and P-DARTS's guard against it.

- **Derivation** (Liu et al. 2019, section 2.4): for every node keep the two incoming edges whose
  strongest operation ('none' excluded) weighs most, each with that operation. With PC-DARTS's edge
  normalisation (Xu et al. 2020, section 3.3) an edge's operation weights are multiplied by the
  softmax weight of its input among the node's inputs before edges are compared.
- **Collapse** (Zela et al. 2020, "RobustDARTS"; Liang et al. 2019, "DARTS+"; Chen et al. 2019,
  "P-DARTS"): long searches drift to parameter-free operations in the normal cell, skip_connect
  first. :func:`collapse_counts` counts them in a derived cell; the search records them every epoch.
- **Still uniform** (:func:`still_uniform`): while every edge's operation weights lie within
  :data:`UNIFORM_TOLERANCE` of 1/8, the derivation ranks differences the architecture step has not
  made (NNI starts every alpha at 1e-3 x N(0, 1)): the derived cell is arbitrary, and the search
  says so.
- **Guard** (P-DARTS, Chen, Xie, Wu, Tian, ICCV 2019, section 3.3 "architecture refinement"): keep at
  most M skip_connects in the derived normal cell (the paper's M = 2); while there are more, the
  chosen skip_connect with the smallest weight is taken out of its edge's candidates and the cell is
  derived again (their ``delete_min_sk_prob`` / ``keep_1_on`` / ``keep_2_branches`` loop).
"""
from __future__ import annotations

import torch

from oneshot_darts.genotype import CELLS, FIRST_NODE, Genotype, canonical_node
from oneshot_darts.ops import OP_NAMES, PARAMETER_FREE_OPS

NONE_OP = "none"
SKIP = "skip_connect"
NO_GUARD = -1


def edge_weights(alphas: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Softmax weights of every edge: ``{'normal/3_1': {'max_pool_3x3': w, ..., 'none': w}}``
    (keys as NNI's ``export_probs`` names the cell's edges)."""
    names = (*OP_NAMES, NONE_OP)
    return {f"{cell}/{edge}": dict(zip(names, torch.softmax(alpha.float(), -1).tolist()))
            for cell in CELLS for edge, alpha in alphas[cell].items()}


#: Architecture weights count as still uniform while every operation weight of every edge lies
#: within this fraction of 1/K (K = the edge's candidates, 'none' included; 1 % of 1/8: 0.12375 to
#: 0.12625): ten times the spread NNI's initialisation gives them (alphas 1e-3 x N(0, 1)).
UNIFORM_TOLERANCE = 0.01


def weight_range(weights: dict[str, dict[str, float]]) -> tuple[float, float]:
    """The smallest and largest operation weight over every edge (of :func:`edge_weights`)."""
    values = [w for ops in weights.values() for w in ops.values()]
    return min(values), max(values)


def still_uniform(weights: dict[str, dict[str, float]], tolerance: float = UNIFORM_TOLERANCE) -> bool:
    """Whether every operation weight of every edge lies within ``tolerance`` x 1/K of 1/K (K the
    edge's candidates): the architecture step has not yet separated the operations, so the
    derived cell is arbitrary."""
    return all(abs(w * len(ops) - 1) <= tolerance for ops in weights.values() for w in ops.values())


def input_weights(betas: dict[str, dict[str, torch.Tensor]]) -> dict[str, list[float]]:
    """PC-DARTS's edge-normalisation weights: ``{'normal/3': [w_0, w_1, w_2]}``, the softmax over
    node 3's inputs."""
    return {f"{cell}/{node}": torch.softmax(beta.float(), -1).tolist()
            for cell in CELLS for node, beta in betas.get(cell, {}).items()}


def _derive(weights: dict[str, dict[str, float]], n_nodes: int,
            inputs: dict[str, list[float]] | None) -> Genotype:
    cells = {}
    for cell in CELLS:
        nodes = []
        for n in range(FIRST_NODE, FIRST_NODE + n_nodes):
            scale = (inputs or {}).get(f"{cell}/{n}")
            best = []
            for j in range(n):
                w = weights[f"{cell}/{n}_{j}"]
                op = max(OP_NAMES, key=lambda name: w[name])  # first of equal maxima: table order
                best.append((w[op] * (scale[j] if scale else 1.0), j, op))
            best.sort(key=lambda t: -t[0])  # stable: equal strengths keep the lower input first
            nodes.append(canonical_node([(op, j) for _, j, op in best[:2]]))
        cells[cell] = tuple(nodes)
    return Genotype(**cells)


def derive_genotype(weights: dict[str, dict[str, float]], n_nodes: int, inputs: dict[str, list[float]] | None = None,
                    max_skip_connect: int = NO_GUARD) -> Genotype:
    """The derived cell (see the module docstring): ``weights`` from :func:`edge_weights`,
    ``inputs`` from :func:`input_weights` (PC-DARTS), and with ``max_skip_connect`` >= 0 P-DARTS's
    cap on the normal cell's skip_connects.

    (NNI's ``DifferentiableMixedCell.export`` ranks the raw logits instead of the softmax weights;
    the two differ when edges' softmax normalisers differ, and the paper's is used here.)
    """
    weights = {edge: dict(w) for edge, w in weights.items()}
    while True:
        genotype = _derive(weights, n_nodes, inputs)
        skips = [(weights[f"normal/{n}_{j}"][SKIP], n, j)
                 for n, node in enumerate(genotype.normal, start=FIRST_NODE) for op, j in node if op == SKIP]
        if max_skip_connect < 0 or len(skips) <= max_skip_connect:
            return genotype
        _, n, j = min(skips)
        weights[f"normal/{n}_{j}"][SKIP] = -1.0   # out of that edge's candidates (below every softmax weight)


def collapse_counts(genotype: Genotype) -> dict[str, int]:
    """Parameter-free operations and skip_connects in the normal cell (the collapse signal)."""
    ops = [op for node in genotype.normal for op, _ in node]
    return {"normal_param_free": sum(op in PARAMETER_FREE_OPS for op in ops),
            "normal_skip_connect": sum(op == SKIP for op in ops)}
