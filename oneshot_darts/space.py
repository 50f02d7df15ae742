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
candidates plus 'none' on every edge, one set of weights per cell type).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from core.errors import UserError
from nni.nas.nn.pytorch import Cell, ModelSpace
from nni.nas.space import current_model, model_context
from oneshot_darts.arch import EDGES_PER_NODE, Genotype
from oneshot_darts.common import check_network_shape
from oneshot_darts.ops import OP_NAMES, AuxiliaryHead, DropPath, FactorizedReduce, ReLUConvBN, make_op

CELL_INPUTS = 2


class CellInputs(nn.Module):
    """Bring the two previous cells' outputs to ``channels`` channels and the same resolution."""

    def __init__(self, c_pprev: int, c_prev: int, channels: int, reduction_prev: bool, affine: bool):
        super().__init__()
        self.pre0 = (FactorizedReduce(c_pprev, channels, affine=affine) if reduction_prev
                     else ReLUConvBN(c_pprev, channels, 1, 1, 0, affine=affine))
        self.pre1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine=affine)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        s0, s1 = inputs
        return [self.pre0(s0), self.pre1(s1)]


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
    fixed network, with affine batch norms, drop path and, if asked, the auxiliary head."""

    def __init__(self, channels: int = 16, layers: int = 8, n_nodes: int = 4, stem_multiplier: int = 3,
                 num_classes: int = 10, auxiliary: bool = False):
        super().__init__()
        check_network_shape(layers, channels=channels, n_nodes=n_nodes, stem_multiplier=stem_multiplier)
        self.fixed = current_model() is not None
        self.init_kwargs = dict(channels=channels, layers=layers, n_nodes=n_nodes, stem_multiplier=stem_multiplier,
                                num_classes=num_classes, auxiliary=auxiliary)
        if auxiliary and not self.fixed:
            raise UserError("auxiliary: the auxiliary head belongs to the fixed network, not the supernet")
        affine = self.fixed
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pprev, c_prev, c_cur = c_stem, c_stem, channels
        reductions = reduction_indices(layers)
        self.aux_index = reductions[1]
        reduction_prev = False
        c_aux = 0
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_cur *= 2
            ops = {name: partial(_edge_op, name=name, channels=c_cur, reduction=reduction, search=not self.fixed)
                   for name in OP_NAMES}
            cell = Cell(ops, n_nodes, num_ops_per_node=EDGES_PER_NODE, num_predecessors=CELL_INPUTS, merge_op="all",
                        preprocessor=CellInputs(c_pprev, c_prev, c_cur, reduction_prev, affine),
                        label="reduce" if reduction else "normal")
            self.cells.append(cell)
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
    """The softmax of NNI's mixed edges, whose weights come out in the autocast dtype when autocast
    is on (NNI 3.0 fix). NNI multiplies every op output by its float32 softmax weight, so under
    autocast a 16-bit op output times it is float32, and so is every node state after it: twice
    the memory and bandwidth. The softmax itself still runs in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = super().forward(x)
        kind = x.device.type
        return weights.to(torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else weights


def build_supernet(channels: int = 16, layers: int = 8, n_nodes: int = 4, stem_multiplier: int = 3,
                   num_classes: int = 10) -> DartsSpace:
    """The space mutated by NNI's :class:`nni.nas.strategy.DARTS` into the differentiable supernet
    (in place): every cell becomes NNI's ``DifferentiableMixedCell``, with :class:`AutocastSoftmax`."""
    from nni.nas.strategy import DARTS

    class Darts(DARTS):
        def configure_softmax(self) -> nn.Module:
            return AutocastSoftmax(dim=-1)

    space = DartsSpace(channels=channels, layers=layers, n_nodes=n_nodes, stem_multiplier=stem_multiplier,
                       num_classes=num_classes)
    return Darts().mutate_model(space)


def arch_parameters(supernet: nn.Module) -> list[nn.Parameter]:
    """The architecture weights (alphas), each once, in a fixed order (module order), so that
    optimizer states saved in one process load in another."""
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
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell

    result: dict[str, dict[str, torch.Tensor]] = {}
    for module in supernet.modules():
        if isinstance(module, DifferentiableMixedCell) and module.label not in result:
            if tuple(module.op_names) != OP_NAMES:
                raise ValueError(f"cell {module.label} has ops {module.op_names}, expected {OP_NAMES}")
            prefix = module.label + "/"
            result[module.label] = {k[len(prefix):]: v.detach() for k, v in module._arch_alpha.items()}
    return result
