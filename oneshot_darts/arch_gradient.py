"""The architecture-gradient rules of the DARTS search step (Liu et al. 2019, section 2.3), chosen by
``SearchConfig.order`` inside :meth:`oneshot_darts.search_trainer.DartsSearch.train_step`.

The search minimises the validation loss L_val(w*(alpha), alpha) over the architecture weights alpha,
where w*(alpha) are the network weights trained on L_train. Both rules leave the gradient in every
``alpha.grad`` for the architecture optimizer, and return the validation loss they evaluated.

- **First order** (:func:`first_order`, the paper's xi = 0): grad_alpha L_val(w, alpha), the weights
  taken as they are. NNI 3.0's ``strategy.DARTS`` step.
- **Second order** (:func:`second_order`, the paper's eqs. 7-8; quark0/darts ``architect.py`` with
  ``--unrolled``): the weights after one virtual step w' = w - xi * (momentum * m + grad_w L_train(w,
  alpha) + weight_decay * w), i.e. the SGD step the weight optimizer would take next (xi is its current
  learning rate, m its momentum buffer), then

      grad_alpha L_val(w', alpha) - xi * [grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)] / (2 eps)

  with w+- = w +- eps * grad_w' L_val(w', alpha) and eps = 0.01 / ||grad_w' L_val(w', alpha)||: the
  Hessian-vector product of the chain rule by central finite differences.

The second-order rule always computes in float32: the finite difference moves every weight by about
0.01 / ||w|| of its size, which 16-bit autocast would round away. ``tests/test_darts.py`` checks it
against the exact gradient (autograd through the virtual step, double backward).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

Batch = tuple[torch.Tensor, torch.Tensor]

#: The paper's finite-difference step: eps = FD_SCALE / ||grad_w' L_val(w', alpha)||.
FD_SCALE = 0.01


def _loss(model: nn.Module, batch: Batch, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    x, y = batch
    logits = model(x) if params is None else functional_call(model, params, (x,))
    return nn.functional.cross_entropy(logits, y)


def _grads(loss: torch.Tensor, inputs: Sequence[torch.Tensor], **kwargs) -> list[torch.Tensor]:
    """d loss / d inputs, zeros for inputs the loss does not depend on."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads)]


def _accumulate(alphas: Sequence[nn.Parameter], grads: Sequence[torch.Tensor]) -> None:
    for a, g in zip(alphas, grads):
        a.grad = g.detach() if a.grad is None else a.grad + g.detach()


def first_order(model: nn.Module, alphas: Sequence[nn.Parameter], val: Batch,
                autocast: contextlib.AbstractContextManager, scale=lambda loss: loss) -> torch.Tensor:
    """grad_alpha L_val(w, alpha) into ``alphas``' grads (no weight gradient is computed); ``scale``
    multiplies the loss before the backward pass (a gradient scaler's, for fp16)."""
    with autocast:
        loss = _loss(model, val)
    scale(loss).backward(inputs=list(alphas))
    return loss.detach()


def virtual_step(weights: Sequence[nn.Parameter], grads: Sequence[torch.Tensor],
                 optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The weights after the SGD step ``optimizer`` would take with ``grads`` (its learning rate,
    momentum buffers and weight decay; no gradient clipping, as in the paper's code). Differentiable
    in ``grads`` (the exact check in the tests takes it through autograd)."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(f"the virtual step is SGD's; the weight optimizer is {type(optimizer).__name__}")
    group = optimizer.param_groups[0]
    lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
    stepped = []
    for w, g in zip(weights, grads):
        direction = g + decay * w.detach()
        buffer = optimizer.state.get(w, {}).get("momentum_buffer")
        if momentum and buffer is not None:
            direction = direction + momentum * buffer
        stepped.append(w.detach() - lr * direction)
    return stepped


def second_order(model: nn.Module, alphas: Sequence[nn.Parameter], weights: Sequence[nn.Parameter],
                 train: Batch, val: Batch, optimizer: torch.optim.Optimizer,
                 fd_scale: float = FD_SCALE) -> torch.Tensor:
    """The unrolled architecture gradient (see the module docstring) into ``alphas``' grads;
    returns L_val(w', alpha). The weights are left exactly as they were."""
    names = {p: name for name, p in model.named_parameters()}
    xi = optimizer.param_groups[0]["lr"]
    # w' = the next SGD step of the weights
    stepped = virtual_step(weights, _grads(_loss(model, train), weights), optimizer)
    # L_val(w', alpha): the weights replaced functionally, BatchNorm statistics on copies (discarded,
    # as quark0's unrolled network copy discards them)
    stepped = [s.requires_grad_() for s in stepped]
    params = {names[w]: s for w, s in zip(weights, stepped)}
    params.update({name: b.clone() for name, b in model.named_buffers()})
    val_loss = _loss(model, val, params)
    grads = _grads(val_loss, [*alphas, *stepped])
    d_alpha, d_weights = grads[:len(alphas)], grads[len(alphas):]
    # the Hessian-vector product by central differences around w, along grad_w' L_val
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in d_weights))
    eps = fd_scale / max(float(norm), 1e-12)
    saved = [w.detach().clone() for w in weights]
    sides = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for w, w0, v in zip(weights, saved, d_weights):
                w.copy_(w0).add_(v, alpha=sign * eps)
            with torch.enable_grad():
                sides.append(_grads(_loss(model, train), alphas))
        for w, w0 in zip(weights, saved):
            w.copy_(w0)
    hvp = [(p - n) / (2 * eps) for p, n in zip(*sides)]
    _accumulate(alphas, [d - xi * h for d, h in zip(d_alpha, hvp)])
    return val_loss.detach()
