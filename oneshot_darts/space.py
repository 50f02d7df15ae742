"""The DARTS search space (Liu et al. 2019) as one NNI 3.0 ``ModelSpace``: the supernet, or, built
under ``model_context(arch)``, the fixed network of that architecture.

A stem convolution from 3 to ``stem_multiplier x C`` channels; ``layers`` cells, the ones at one and
two thirds of the depth reduction cells (stride 2, channels doubled); each cell reads the outputs of
the two previous cells and has ``n_nodes`` intermediate nodes, each summing two edges that pick an
earlier node and an operation of :data:`oneshot_darts.ops.OP_NAMES`; the cell output concatenates
its intermediate nodes; global average pooling and a linear classifier. The cells are NNI's
:class:`~nni.nas.nn.pytorch.Cell` labelled ``normal`` and ``reduce`` (all cells of a type share
one architecture), so the labels are NNI's own (``normal/op_2_0``, ``normal/input_2_0``) and
``strategy.DARTS``'s mutation turns every cell into NNI's differentiable cell (a softmax over the
candidates plus 'none' on every edge, one set of weights per cell type), or, with partial channels
K > 1, into :class:`PartialChannelCell` (PC-DARTS).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from core.errors import UserError
from nni.nas.nn.pytorch import Cell, ModelSpace
from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell
from nni.nas.space import current_model, model_context
from oneshot_darts.genotype import EDGES_PER_NODE, Genotype
from oneshot_darts.network_shape import check_network_shape
from oneshot_darts.ops import OP_NAMES, AuxiliaryHead, DropPath, FactorizedReduce, ReLUConvBN, make_op

CELL_INPUTS = 2


class CellInputs(nn.Module):
    """Bring the two previous cells' outputs to ``channels`` channels and the same resolution; only
    the inputs in ``read`` (0, 1) are built and computed, the others are None (a fixed cell whose
    nodes never read an input)."""

    def __init__(self, c_pprev: int, c_prev: int, channels: int, reduction_prev: bool, affine: bool,
                 read: frozenset[int] = frozenset(range(CELL_INPUTS))):
        super().__init__()
        self.pre0 = ((FactorizedReduce(c_pprev, channels, affine=affine) if reduction_prev
                      else ReLUConvBN(c_pprev, channels, 1, 1, 0, affine=affine)) if 0 in read else None)
        self.pre1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine=affine) if 1 in read else None

    def forward(self, inputs: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        s0, s1 = inputs
        return [None if self.pre0 is None else self.pre0(s0), None if self.pre1 is None else self.pre1(s1)]


class UnusedCell(nn.Module):
    """Where a fixed network has a cell whose output nothing reads: no parameters, no output."""

    def forward(self, inputs: list[torch.Tensor | None]) -> None:
        return None


def inputs_read(sample: dict, label: str, n_nodes: int) -> frozenset[int]:
    """The cell inputs (0, 1) that the nodes of the ``label`` cells of an NNI 3.0 architecture dict
    read (both where the dict does not say)."""
    read = set()
    for n in range(CELL_INPUTS, CELL_INPUTS + n_nodes):
        for k in range(EDGES_PER_NODE):
            chosen = sample.get(f"{label}/input_{n}_{k}", list(range(CELL_INPUTS)))
            read.update(chosen if isinstance(chosen, (list, tuple)) else [chosen])
    return frozenset(i for i in read if isinstance(i, int) and i < CELL_INPUTS)


def live_cells(labels: list[str], read: dict[str, frozenset[int]], aux_index: int | None) -> list[bool]:
    """Which cells' outputs reach the classifier (or the auxiliary head at ``aux_index``): cell ``i``
    is input 1 of cell ``i + 1`` and input 0 of cell ``i + 2``; the last cell feeds the classifier."""
    live = [False] * len(labels)
    for i in reversed(range(len(labels))):
        live[i] = (i == len(labels) - 1 or i == aux_index
                   or (i + 1 < len(labels) and live[i + 1] and 1 in read[labels[i + 1]])
                   or (i + 2 < len(labels) and live[i + 2] and 0 in read[labels[i + 2]]))
    return live


def _edge_op(node_index: int, op_index: int, input_index: int | None, *, name: str, channels: int,
             reduction: bool, search: bool) -> nn.Module:
    """The Cell's op factory: edges leaving the cell's inputs of a reduction cell have stride 2."""
    stride = 2 if reduction and (input_index is None or input_index < CELL_INPUTS) else 1
    return make_op(name, channels, stride, search=search)


def reduction_indices(layers: int) -> tuple[int, int]:
    """Cells at one and two thirds of the depth are reduction cells."""
    return layers // 3, 2 * layers // 3


class DartsSpace(ModelSpace):
    """The DARTS space. Built plainly it is the space NNI's DARTS strategy mutates into the
    supernet (:func:`build_supernet`); built under ``model_context`` (:meth:`fixed`) it is the
    fixed network, with affine batch norms, drop path and, if asked, the auxiliary head. The fixed
    network has only the parts its output depends on: a cell whose nodes never read one of its
    two inputs has no preprocessing for it, and a cell whose output no later cell reads (nor the
    classifier or the auxiliary head) is an :class:`UnusedCell`, so that every parameter gets a
    gradient (DistributedDataParallel requires it) and the parameter count is what is trained."""

    def __init__(self, channels: int = 16, layers: int = 8, n_nodes: int = 4, stem_multiplier: int = 3,
                 num_classes: int = 10, auxiliary: bool = False, partial_channels: int = 1):
        super().__init__()
        check_network_shape(layers, channels=channels, n_nodes=n_nodes, stem_multiplier=stem_multiplier,
                            partial_channels=partial_channels)
        self.fixed = current_model() is not None
        self.init_kwargs = dict(channels=channels, layers=layers, n_nodes=n_nodes, stem_multiplier=stem_multiplier,
                                num_classes=num_classes, auxiliary=auxiliary)
        if auxiliary and not self.fixed:
            raise UserError("auxiliary: the auxiliary head belongs to the fixed network, not the supernet")
        if partial_channels > 1 and self.fixed:
            raise UserError("partial_channels: partial channels belong to the supernet, not the fixed network")
        affine = self.fixed
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pprev, c_prev, c_cur = c_stem, c_stem, channels
        reductions = reduction_indices(layers)
        self.aux_index = reductions[1]
        reduction_prev = False
        c_aux = 0
        self.cells = nn.ModuleList()
        labels = ["reduce" if i in reductions else "normal" for i in range(layers)]
        sample = current_model() if self.fixed else None
        read = {label: inputs_read(sample, label, n_nodes) if sample is not None else frozenset(range(CELL_INPUTS))
                for label in ("normal", "reduce")}
        live = live_cells(labels, read, self.aux_index if auxiliary else None)
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_cur *= 2
            # PC-DARTS: an edge's operations see 1/K of its channels (the supernet only; K = 1 otherwise)
            ops = {name: partial(_edge_op, name=name, channels=c_cur // partial_channels, reduction=reduction,
                                 search=not self.fixed) for name in OP_NAMES}
            if live[i]:
                self.cells.append(Cell(ops, n_nodes, num_ops_per_node=EDGES_PER_NODE, num_predecessors=CELL_INPUTS,
                                       merge_op="all", label=labels[i],
                                       preprocessor=CellInputs(c_pprev, c_prev, c_cur, reduction_prev, affine,
                                                               read[labels[i]])))
            else:
                self.cells.append(UnusedCell())
            reduction_prev = reduction
            c_pprev, c_prev = c_prev, n_nodes * c_cur
            if i == self.aux_index:
                c_aux = c_prev
        self.auxiliary_head = AuxiliaryHead(c_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits; in training with the auxiliary head, (logits, auxiliary logits)."""
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell([s0, s1])
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, aux) if aux is not None else logits

    # --- the fixed network --------------------------------------------------------------------
    @classmethod
    def fixed_network(cls, genotype: Genotype, **kwargs) -> "DartsSpace":
        """The network of ``genotype`` (its node count overrides ``n_nodes``)."""
        with model_context(genotype.to_nni()):
            return cls(**{**kwargs, "n_nodes": genotype.n_nodes})

    def freeze(self, sample: dict) -> "DartsSpace":
        """NNI's interface: the fixed network of an NNI 3.0 architecture dict."""
        with model_context(sample):
            return type(self)(**self.init_kwargs)

    def set_drop_path(self, p: float) -> None:
        """Set the drop-path probability of every operation (the fixed network only)."""
        for module in self.modules():
            if isinstance(module, DropPath):
                module.p = p


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Parameters of ``model``, without the auxiliary head's by default (as the paper counts them)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (exclude_auxiliary and name.startswith("auxiliary_head.")))


# --- the supernet --------------------------------------------------------------------------------

class AutocastSoftmax(nn.Softmax):
    """The softmax of NNI's mixed edges, with its weights in the autocast dtype when autocast is on.
    NNI multiplies every op output by its edge's softmax weight; with NNI 3.0's float32 weights a
    16-bit op output times its weight would be float32 under autocast, and so would every node
    state after it: twice the memory and bandwidth. The softmax itself still runs in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = super().forward(x)
        kind = x.device.type   # 'meta' (the memory estimate counts on it) has no autocast
        autocast = torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
        return weights.to(torch.get_autocast_dtype(kind)) if autocast else weights


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` blocks of channels (ShuffleNet's shuffle, as PC-DARTS uses it)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class PartialChannelCell(DifferentiableMixedCell):
    """PC-DARTS's cell (Xu et al. 2020, "PC-DARTS: Partial Channel Connections for Memory-Efficient
    Architecture Search", ICLR 2020) on NNI 3.0's differentiable cell, as in its authors' code
    (yuhuixu1993/PC-DARTS ``model_search.py``):

    - partial channels: on every edge only the first 1/K of the input's channels go through the
      mixed operation (whose candidates were built for C/K channels); the rest bypass it (max-pooled
      2x2 where the edge halves the resolution), and the two parts are concatenated and
      channel-shuffled in K groups, so the next edge samples other channels;
    - edge normalisation: each node weighs its incoming edges by a softmax over its own weights
      beta (one per input, kept in ``_arch_beta`` beside NNI's ``_arch_alpha``, shared by all cells
      of a type as the alphas are); the derived cell ranks edges by alpha x beta
      (:mod:`oneshot_darts.derive`).

    The 'none' candidate is NNI's: a zero tensor appended to the candidates' outputs.
    """

    _arch_parameter_names: list[str] = ["_arch_alpha", "_arch_beta"]

    def __init__(self, *args, partial_channels: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.partial_channels = partial_channels
        self.bypass_pool = nn.MaxPool2d(2, 2)
        memo = kwargs.get("memo", args[7] if len(args) > 7 else {})
        self._arch_beta = nn.ParameterDict()
        for i in range(self.num_predecessors, self.num_nodes + self.num_predecessors):
            key = f"{self.label}/{i}"
            memo_label = f"{key}/inputs/in_cell"
            if memo_label not in memo:  # the first cell of this type creates them, the others share them
                memo[memo_label] = nn.Parameter(torch.randn(i) * 1e-3)
            self._arch_beta[key] = memo[memo_label]

    @classmethod
    def mutate_with(cls, partial_channels: int):
        """The mutation hook that turns each DARTS :class:`Cell` into this cell (NNI's hook
        signature: module, name, memo, mutate_kwargs)."""
        def hook(module, name, memo, mutate_kwargs):
            if type(module) is Cell and module.op_candidates_factory is not None:
                return cls(module.op_candidates_factory, module.num_nodes, module.num_ops_per_node,
                           module.num_predecessors, module.preprocessor, module.postprocessor, module.concat_dim,
                           memo, mutate_kwargs, module.label, partial_channels=partial_channels)
            return None
        return hook

    def forward(self, *inputs):
        processed_inputs = preprocess_cell_inputs(self.num_predecessors, *inputs)
        states: list[torch.Tensor] = self.preprocessor(processed_inputs)
        k = self.partial_channels
        for i, ops in enumerate(self.ops, start=self.num_predecessors):
            betas = self._softmax(self._arch_beta[f"{self.label}/{i}"])
            node = []
            for j in range(i):
                x = states[j]
                part, bypass = x[:, :x.shape[1] // k], x[:, x.shape[1] // k:]
                outputs = torch.stack([op(part) for op in ops[j].values()])
                weights = self._softmax(self._arch_alpha[f"{self.label}/{i}_{j}"])
                if weights.size(0) == outputs.size(0) + 1:  # 'none'
                    outputs = torch.cat((outputs, torch.zeros_like(outputs[:1])), 0)
                mixed = torch.sum(outputs * weights.view(-1, 1, 1, 1, 1), 0)
                if mixed.shape[2] != x.shape[2]:
                    bypass = self.bypass_pool(bypass)
                node.append(betas[j] * channel_shuffle(torch.cat([mixed, bypass], 1), k))
            states.append(sum(node))
        return self.postprocessor(torch.cat(states[self.num_predecessors:], self.concat_dim), processed_inputs)


def build_supernet(channels: int = 16, layers: int = 8, n_nodes: int = 4, stem_multiplier: int = 3,
                   num_classes: int = 10, partial_channels: int = 1) -> DartsSpace:
    """The space mutated by NNI's :class:`nni.nas.strategy.DARTS` into the differentiable supernet
    (in place): every cell becomes NNI's ``DifferentiableMixedCell``, with :class:`AutocastSoftmax`, or
with ``partial_channels`` K > 1 a :class:`PartialChannelCell` (PC-DARTS)."""
    from nni.nas.strategy import DARTS

    class Darts(DARTS):
        def configure_softmax(self) -> nn.Module:
            return AutocastSoftmax(dim=-1)

    space = DartsSpace(channels=channels, layers=layers, n_nodes=n_nodes, stem_multiplier=stem_multiplier,
                       num_classes=num_classes, partial_channels=partial_channels)
    hooks = [PartialChannelCell.mutate_with(partial_channels)] if partial_channels > 1 else []
    return Darts(mutation_hooks=hooks).mutate_model(space)


def arch_parameters(supernet: nn.Module) -> list[nn.Parameter]:
    """The architecture weights (alphas, and PC-DARTS's betas), each once, in a fixed order (module
    order), so that optimizer states saved in one process load in another."""
    from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

    seen: dict[int, nn.Parameter] = {}
    for module in supernet.modules():
        if isinstance(module, BaseSuperNetModule) and hasattr(module, "arch_parameters"):
            for p in module.arch_parameters():
                seen.setdefault(id(p), p)
    if not seen:
        raise ValueError("no architecture parameters: the model is not a DARTS supernet")
    return list(seen.values())


def edge_alphas(supernet: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """``{cell type: {'<node>_<input>': alpha}}`` read from the first differentiable cell of each type;
    each alpha has one entry per op of :data:`OP_NAMES` and a last one for 'none'."""
    result: dict[str, dict[str, torch.Tensor]] = {}
    for module in supernet.modules():
        if isinstance(module, DifferentiableMixedCell) and module.label not in result:
            if tuple(module.op_names) != OP_NAMES:
                raise ValueError(f"cell {module.label} has ops {module.op_names}, expected {OP_NAMES}")
            prefix = module.label + "/"
            result[module.label] = {k[len(prefix):]: v.detach() for k, v in module._arch_alpha.items()}
    return result


def node_betas(supernet: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """PC-DARTS's edge-normalisation weights ``{cell type: {'<node>': beta}}`` (one entry per input of
    the node), read from the first :class:`PartialChannelCell` of each type; empty for plain DARTS."""
    result: dict[str, dict[str, torch.Tensor]] = {}
    for module in supernet.modules():
        if isinstance(module, PartialChannelCell) and module.label not in result:
            prefix = module.label + "/"
            result[module.label] = {k[len(prefix):]: v.detach() for k, v in module._arch_beta.items()}
    return result
