"""Gradient checkpointing meets our processors.

Checkpointing recomputes each block during backward with whatever processor is installed *then*,
and checks that the recomputation saves the same tensors in the same order as the forward did. So:
- a backward that runs inside the `apply` block recomputes with our processors: always consistent;
- a backward after the block has exited recomputes with the stock processors; the fast path saves
  exactly what the stock processors save, so calls no technique changed still work (a call a
  technique changed cannot be recomputed by the stock processor: keep backward inside the block).
"""

from __future__ import annotations

import pytest
import torch

from attn_processors.core import Passthrough, apply
from attn_processors.testing.tiny import denoiser_inputs, tiny_denoiser

FAMILIES = ("sd15", "sd3", "cogvideox", "wan", "flux")


def _loss(net: torch.nn.Module, inputs: dict) -> torch.Tensor:
    out = net(**inputs)
    out = out[0] if isinstance(out, tuple) else out.sample
    return out.float().pow(2).mean()


def _grads(net: torch.nn.Module) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    net.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_after_the_block_matches_stock(family):
    net = tiny_denoiser(family)
    net.train()
    net.enable_gradient_checkpointing()
    inputs = denoiser_inputs(family, net)
    _loss(net, inputs).backward()
    stock = _grads(net)
    with apply(net, Passthrough()):
        loss = _loss(net, inputs)
    loss.backward()  # recomputed with the stock processors: same saved tensors, same gradients
    ours = _grads(net)
    assert len(ours) == len(stock) > 0
    for a, b in zip(ours, stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ("sd15", "wan"))
def test_backward_inside_the_block_with_the_explicit_path(family):
    net = tiny_denoiser(family)
    net.train()
    net.enable_gradient_checkpointing()
    inputs = denoiser_inputs(family, net)
    _loss(net, inputs).backward()
    stock = _grads(net)
    with apply(net, Passthrough(path="explicit")):
        _loss(net, inputs).backward()
    for a, b in zip(_grads(net), stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
