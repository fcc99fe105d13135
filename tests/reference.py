"""Brute-force evaluations of the mask definitions, one weight at a time: the references the engine is checked against."""

import torch


def brute_per_row(scores, sparsity):
    mask = torch.zeros_like(scores, dtype=torch.bool)
    k = int(scores.shape[1] * sparsity)
    for r in range(scores.shape[0]):
        for c in sorted(range(scores.shape[1]), key=lambda c: float(scores[r, c]))[:k]:
            mask[r, c] = True
    return mask


def brute_per_layer(scores, sparsity):
    flat = scores.flatten().tolist()
    k = int(len(flat) * sparsity)
    mask = torch.zeros(len(flat), dtype=torch.bool)
    for i in sorted(range(len(flat)), key=flat.__getitem__)[:k]:
        mask[i] = True
    return mask.view_as(scores)


def brute_nm(scores, n, m):
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for r in range(scores.shape[0]):
        for g in range(0, scores.shape[1], m):
            for c in sorted(range(g, g + m), key=lambda c: float(scores[r, c]))[: m - n]:
                mask[r, c] = True
    return mask


def gptq_textbook(W, H, grid, group_size, pruned=None, dampening=0.01, static=False):
    """GPTQ as the paper states it, in float64: columns in order, each rounded onto its group's grid (fitted on
    the group's current weights when its first column comes, or on the weights before the sweep if
    `static`), the error spread over the later columns by
    the OBS update with the explicit inverse Hessian of the columns not yet done, that inverse updated by
    eliminating the column (Gaussian elimination), with no Cholesky factor and no lazy batching."""
    W = W.double().clone()
    H = H.double().clone()
    H += dampening * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    rows, cols = W.shape
    scale = zero = None
    original = W.clone()
    for j in range(cols):
        if j % group_size == 0:
            keep = None if pruned is None else ~pruned[:, j:j + group_size]
            scale, zero = grid.fit((original if static else W)[:, j:j + group_size], keep)
            scale, zero = scale[:, 0], zero[:, 0]
        q = (torch.clamp(torch.round(W[:, j] / scale) + zero, grid.qmin, grid.qmax) - zero) * scale
        if pruned is not None:
            q[pruned[:, j]] = 0
        err = (W[:, j] - q) / Hinv[j, j]
        W[:, j + 1:] -= torch.outer(err, Hinv[j, j + 1:])
        W[:, j] = q
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return W
