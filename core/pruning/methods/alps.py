"""ALPS (Meng et al., 2024): the layer-wise ℓ0-constrained reconstruction solved by ADMM, then a
preconditioned conjugate-gradient refit of the kept weights on the final support.

As the reference implementation (github mazumder-lab/ALPS, `alps.py`) does it:

- H = XᵀX + λI with λ = `ridge` · mean(diag XᵀX); the problem is rescaled by diag(H)^-½, so the
  rescaled Hessian Hs has a unit diagonal and the rescaled weights B = W·diag(H)^½ are what the
  sparsity set ranks: for unstructured sparsity the largest |B| of the *whole layer* are kept (one
  budget per layer, not per row), for N:M the N largest of every M consecutive inputs of a row.
- ADMM over (B, D, V) from the dense weights, min tr((B − B₀) Hs (B − B₀)ᵀ) s.t. D sparse, B = D:
  B ← (B₀Hs − V + ρD)(Hs + ρI)⁻¹, D ← Π(B + V/ρ), V ← V + ρ(B − D). One eigendecomposition
  Hs = QΛQᵀ serves every ρ: (Hs + ρI)⁻¹ = Q diag(1/(λ + ρ)) Qᵀ.
- Every `update_every` iterations the support of D is compared with the last one: ρ grows by 1.3 when
  more than 10 % of the k kept positions changed, by 1.2 above 0.5 %, by 1.1 for any change; with no
  change it stops. Until ρ has grown once, a small change instead means ρ₀ was too large: ρ /= 5 (and
  restart from the dense weights when something changed). ρ is capped at 1e6. After 30 iterations it
  also stops once fewer than 0.03 % of k positions change.
- The final support is the projection of the last B; `refit_steps` steps of conjugate gradient on
  B Hs = B₀Hs restricted to that support (the residual projected onto it every step). In the rescaled
  problem diag(Hs) = 1, so the identity preconditioner there is the Jacobi preconditioner diag(H) of
  the original problem.

The pruned weights are exactly zero: every iterate of the refit lives on the support.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import UserError
from ...patterns import Pattern
from ..masks import nm_mask
from .base import MethodResult
from .sparsegpt import NotPositiveDefinite

# The reference's constants that are not options here (its `switch_iter`, the 0.0003 stall fraction,
# the ρ cap and the conjugate-gradient tolerance `rtol`).
SWITCH_ITERATIONS = 30
STALL_FRACTION = 3e-4
MAX_RHO = 1e6
MIN_RHO = 1e-8         # not in the reference: keeps 1/(λ + ρ) finite when ρ keeps shrinking without a ridge
REFIT_RTOL = 1e-4


@dataclass(frozen=True)
class Options:
    rho: float = 0.1                # initial ADMM penalty ρ₀
    max_iterations: int = 300       # ADMM iterations at most (it stops earlier once the support is stable)
    update_every: int = 3           # ρ grows every this many iterations, by a factor set by the support change
    refit_steps: int = 10           # preconditioned conjugate-gradient steps on the final support
    ridge: float = 0.01             # ridge added to XᵀX, as a fraction of its mean diagonal


def check_pattern(pattern: Pattern) -> None:
    """ALPS projects onto an ℓ0 or N:M set; whole rows, columns or blocks are not written yet."""
    if pattern.whole_units:
        raise UserError(f"pattern {pattern} is not supported yet for ALPS; use magnitude, wanda or sparsegpt.")


@torch.no_grad()
def prune(weight: torch.Tensor, stats, sparsity: float, pattern: Pattern, options: Options | None = None) -> MethodResult:
    # Callers that hand every method the same options object (another method's, or None) get the defaults.
    options = options if isinstance(options, Options) else Options()
    check_pattern(pattern)
    dense = weight.float()
    if not pattern.structured and sparsity <= 0:
        return MethodResult(dense.clone(), torch.zeros_like(dense, dtype=torch.bool), None, {"iterations": 0})
    Hs, Q, lam, scale, dead = _factor(stats, dense.device, options)
    B0 = dense * scale.reshape(1, -1)            # the rescaled weights (a new tensor)
    B0[:, dead] = 0                             # inputs that were always zero: nothing to preserve
    score = B0.abs()                            # |W|·√H_jj, what the first projection ranks
    numel = B0.numel()
    kept = numel * pattern.n // pattern.m if pattern.structured else numel - min(int(numel * sparsity), numel)
    if kept == 0:
        mask = torch.ones_like(dense, dtype=torch.bool)
        return MethodResult(torch.zeros_like(dense), mask, score, {"iterations": 0})
    project = _projector(pattern, numel - kept)

    G = B0 @ Hs                                 # the right-hand side B₀Hs, computed once
    B, notes = admm(B0, G, Q, lam, project, kept, options)
    pruned = project(B)
    B, steps = refit(B, ~pruned, Hs, G, options.refit_steps)
    notes.update(refit_steps=steps, error=relative_error(B, B0, G, Hs))
    W = B.div_(scale.reshape(1, -1))
    W.masked_fill_(pruned, 0)                   # already zero; made explicit for -0.0 and the like
    return MethodResult(W, pruned, score, notes)


def _factor(stats, device, options: Options):
    """(Hs, Q, λ, scale, dead) for this layer's input, computed once per statistics object: layers fed
    the same input (q/k/v, gate/up) share it. Hs = D⁻½(XᵀX + ridge·mean(diag)·I)D⁻½ with D its diagonal,
    Hs = Q diag(λ) Qᵀ, scale = √D, dead = the inputs whose diagonal was 0."""
    key = ("alps", str(device), options.ridge)
    if key not in stats.cache:
        xtx = stats.xtx
        if stats.disposable and xtx.device == device and xtx.dtype == torch.float32:
            H, stats.xtx = xtx, None             # nobody needs the sums once Hs exists: rescaled in place
        else:
            H = xtx.to(device, torch.float32)
            if H is xtx:
                H = H.clone()
        diagonal = H.diagonal()
        dead = diagonal == 0
        diagonal.add_(options.ridge * diagonal.mean())
        diagonal.masked_fill_(diagonal <= 0, 1.0)  # no ridge (or nothing but dead inputs): any positive value
        scale = diagonal.sqrt()
        H.div_(scale.reshape(-1, 1)).div_(scale.reshape(1, -1))
        if not bool(torch.isfinite(H).all()):
            raise NotPositiveDefinite("the layer's input statistics are not finite: check that it saw calibration tokens")
        lam, Q = torch.linalg.eigh(H)           # (reads one triangle: rounding asymmetry does not matter)
        stats.cache[key] = (H, Q, lam.clamp_min_(0), scale, dead)
    return stats.cache[key]


def _projector(pattern: Pattern, prune_count: int):
    """Π: the pruned positions (True) of the nearest point of the sparsity set, for a [out, in] matrix:
    the smallest |Z| of every N:M group, or the `prune_count` smallest |Z| of the whole layer."""
    if pattern.structured:
        return lambda Z: lowest_in_groups(Z.abs(), pattern)
    return lambda Z: lowest_in_layer(Z.abs(), prune_count)


def lowest_in_layer(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the k lowest scores of the whole tensor, ties taken in memory order (as `masks.lowest_k`
    does for a flattened tensor). The k-th value comes from numpy's introselect on the CPU, about seven
    times faster there than `torch.kthvalue` on a layer-sized tensor; elsewhere from `kthvalue`."""
    flat = scores.reshape(-1)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= flat.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    if flat.device.type == "cpu":
        threshold = flat.new_tensor(np.partition(flat.numpy(), k - 1)[k - 1])
    else:
        threshold = flat.kthvalue(k).values
    mask = flat <= threshold
    excess = int(torch.count_nonzero(mask)) - k
    if excess > 0:                   # ties at the threshold: keep only the first ones needed
        ties = flat == threshold
        mask = (flat < threshold) | (ties & (ties.cumsum(0) <= int(torch.count_nonzero(ties)) - excess))
    return mask.view_as(scores)


def lowest_in_groups(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """`masks.nm_mask`: True at the M − N lowest scores of every M consecutive inputs of a row. The
    (M − N)-th smallest of each group comes from an odd-even transposition network (elementwise minima
    and maxima over the M columns of the [groups, M] view), two to three times faster than `topk` over
    groups of 4 or 8; groups with ties at that value are left to `nm_mask`."""
    m, drop = pattern.m, pattern.m - pattern.n
    if scores.shape[-1] % m or m > 16:
        return nm_mask(scores, pattern)
    groups = scores.reshape(-1, m)
    column = list(groups.unbind(1))
    for round_ in range(m):
        for j in range(round_ % 2, m - 1, 2):
            column[j], column[j + 1] = torch.minimum(column[j], column[j + 1]), torch.maximum(column[j], column[j + 1])
    mask = groups <= column[drop - 1].unsqueeze(1)
    if int(torch.count_nonzero(mask)) != drop * groups.shape[0]:
        return nm_mask(scores, pattern)
    return mask.view_as(scores)


class _Inverse:
    """R ↦ R(Hs + ρI)⁻¹ through the eigenbasis: two products with Q per call, or one with the explicit
    inverse Q diag(1/(λ+ρ)) Qᵀ, formed once per ρ, when that is fewer operations (an [in, in] product per
    ρ against one [out, in]·[in, in] product saved per iteration)."""

    def __init__(self, Q, lam, rows, iterations_per_rho):
        self.Q, self.lam = Q, lam
        self.explicit = Q.shape[0] < rows * iterations_per_rho
        self.rho = None

    def set_rho(self, rho):
        if rho != self.rho:
            self.rho = rho
            inv = (self.lam + rho).reciprocal_()
            self.op = (self.Q * inv) @ self.Q.t() if self.explicit else inv

    def __call__(self, R):
        if self.explicit:
            return R @ self.op
        return (R @ self.Q).mul_(self.op) @ self.Q.t()


def admm(B0, G, Q, lam, project, kept: int, options: Options):
    """The ADMM iterations; returns the last B (dense) and notes."""
    rho = float(options.rho)
    inverse = _Inverse(Q, lam, B0.shape[0], options.update_every)
    inverse.set_rho(rho)
    previous = project(B0)
    D0 = B0.masked_fill(previous, 0)
    D, V = D0.clone(), torch.zeros_like(B0)
    B = B0
    grown, change, iterations = False, None, 0
    for i in range(options.max_iterations):
        iterations = i + 1
        R = torch.add(G, D, alpha=rho).sub_(V)         # B₀Hs − V + ρD
        B = inverse(R)
        Z = torch.add(B, V, alpha=1.0 / rho)           # B + V/ρ
        pruned = project(Z)
        D = Z * ~pruned                                # (a product: masked_fill is 3× slower on the CPU)
        V = Z.sub_(D).mul_(rho)                        # V + ρ(B − D) = ρ(Z − D): ρZ on the pruned positions
        if iterations % options.update_every:
            continue
        change = int(torch.count_nonzero(pruned != previous))
        previous = pruned
        if change > 0.1 * kept:
            grown, rho = True, rho * 1.3
        elif change > 0.005 * kept:
            grown, rho = True, rho * 1.2
        elif change > 0:
            if grown:
                rho *= 1.1
            else:                                       # ρ₀ too large: start again with a smaller one
                rho /= 5
                B, D, V = B0, D0.clone(), torch.zeros_like(B0)
        elif grown:
            break
        else:
            rho /= 5
        rho = min(max(rho, MIN_RHO), MAX_RHO)
        inverse.set_rho(rho)
        if iterations >= SWITCH_ITERATIONS and change < STALL_FRACTION * kept:
            break
    notes = {"iterations": iterations, "rho": rho}
    if change is not None:
        notes["support_change"] = change
        notes["support_change_fraction"] = change / kept
    return B.clone() if B is B0 else B, notes


def refit(B: torch.Tensor, support: torch.Tensor, Hs: torch.Tensor, G: torch.Tensor, steps: int,
          rtol: float = REFIT_RTOL):
    """Conjugate gradient on X·Hs = G, one system per row, restricted to `support` (True = kept): the
    residual is projected onto the support at every step, so every iterate is zero off it. Starts from
    B (zero off the support; updated in place) and returns it with the number of steps run."""
    keep = support.to(B.dtype)
    X = B.mul_(keep)
    if steps <= 0:
        return X, 0
    Rk = (G - X @ Hs).mul_(keep)
    target = (G * keep).norm(dim=1).mul_(rtol)
    P = Rk.clone()
    rz = (Rk * Rk).sum(1, keepdim=True)
    done = 0
    for _ in range(steps):
        if bool((Rk.norm(dim=1) <= target).all()):
            break
        AP = (P @ Hs).mul_(keep)
        pap = (P * AP).sum(1, keepdim=True)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(torch.finfo(pap.dtype).tiny), torch.zeros_like(pap))
        X.addcmul_(alpha, P)
        Rk.addcmul_(alpha, AP, value=-1)
        rz_next = (Rk * Rk).sum(1, keepdim=True)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(torch.finfo(rz.dtype).tiny), torch.zeros_like(rz))
        P = P.mul_(beta).add_(Rk)
        rz = rz_next
        done += 1
    return X, done


def relative_error(B, B0, G, Hs) -> float:
    """tr((B − B₀)Hs(B − B₀)ᵀ) / tr(B₀HsB₀ᵀ): the reconstruction error of the (ridge) problem, relative."""
    E = B - B0
    total = float((B0 * G).sum())
    return float(((E @ Hs) * E).sum()) / total if total > 0 else 0.0
