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
