"""Per-layer statistics of the calibration inputs, accumulated by forward hooks.

Wanda needs the squared norm of every input column, sum_t X[t, j]^2; SparseGPT the
Hessian of the layer-wise squared error, H = 2 XᵀX / n (float32). Layers that receive
the very same input tensor (q, k, v; gate, up) share one computation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

COLUMN_NORMS = "column_norms"
HESSIAN = "hessian"


@dataclass
class LayerStats:
    tokens: int = 0
    column_sq_norms: torch.Tensor | None = None   # [in], sum over tokens of X[:, j]^2
    xtx: torch.Tensor | None = None               # [in, in], sum over tokens of XᵀX
    cache: dict = field(default_factory=dict, repr=False)  # what methods derive from these sums (SparseGPT's U)
    disposable: bool = False   # the owner allows a method to consume `xtx` in place once it has what it needs

    @property
    def column_norms(self) -> torch.Tensor:
        return self.column_sq_norms.sqrt()

    @property
    def hessian(self) -> torch.Tensor:
        return self.xtx * (2.0 / max(self.tokens, 1))


class StopBlock(Exception):
    """Raised by a collector once the last hooked layer has its input: nothing after it is needed."""


class StatsCollector:
    """Hooks the given linear layers (on their inputs); after the block has run forward, `close()` returns their stats.

    Layers fed the same tensor object within one forward (q/k/v after the same norm) are
    found on the first call and share one `LayerStats`: the sums are computed once.
    After `stop_after_last()`, each later forward ends (with `StopBlock`) as soon as the layer that
    came last in the first forward has its input recorded: a Llama block's statistics pass then skips
    its down projection, about a quarter of the block's matmul work, with identical statistics.
    """

    def __init__(self, layers: dict[str, nn.Module], needs: set[str]):
        self._needs = needs
        self._own: dict[str, LayerStats] = {}
        self._leader: dict[str, str] = {}
        self._last: tuple[torch.Tensor, str] | None = None
        self._stop_at: str | None = None
        self._handles = [layer.register_forward_pre_hook(self._hook(name)) for name, layer in layers.items()]

    def _hook(self, name: str):
        def hook(module, inputs):
            self._record(name, inputs[0])
            if name == self._stop_at:
                raise StopBlock
        return hook

    def stop_after_last(self) -> None:
        """From now on, stop each forward at the layer that was called last so far."""
        if self._last is not None:
            self._stop_at = self._last[1]

    def _record(self, name: str, inp: torch.Tensor) -> None:
        if name not in self._leader:
            shares = self._last is not None and self._last[0] is inp
            self._leader[name] = self._leader[self._last[1]] if shares else name
        self._last = (inp, name)
        if self._leader[name] != name:
            return
        stats = self._own.setdefault(name, LayerStats())
        x = inp.detach().reshape(-1, inp.shape[-1]).float()
        stats.tokens += x.shape[0]
        if COLUMN_NORMS in self._needs:
            sq = (x * x).sum(0)
            stats.column_sq_norms = sq if stats.column_sq_norms is None else stats.column_sq_norms.add_(sq)
        if HESSIAN in self._needs:
            stats.xtx = add_upper_gram(stats.xtx, x)

    def close(self) -> dict[str, LayerStats]:
        for handle in self._handles:
            handle.remove()
        self._last = None
        for stats in self._own.values():
            if stats.xtx is not None:
                stats.xtx = symmetrize_upper(stats.xtx)
        return {name: self._own[leader] for name, leader in self._leader.items()}


def add_upper_gram(acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """acc += XᵀX on and above the diagonal blocks only (about 56-62% of the full product's work).

    Column chunks of X form block rows; each block row is multiplied from its diagonal block on.
    Entries below the diagonal blocks stay as they were: `symmetrize_upper` fills them at the end.
    """
    d = x.shape[1]
    if acc is None:
        acc = torch.zeros(d, d, dtype=x.dtype, device=x.device)
    chunk = max(128, -(-d // 8))
    for a in range(0, d, chunk):
        b = min(a + chunk, d)
        acc[a:b, a:].addmm_(x[:, a:b].t(), x[:, a:])
    return acc


def symmetrize_upper(acc: torch.Tensor) -> torch.Tensor:
    """The full symmetric matrix whose upper triangle is `acc`'s."""
    upper = torch.triu(acc)
    return upper + torch.triu(acc, diagonal=1).t()
