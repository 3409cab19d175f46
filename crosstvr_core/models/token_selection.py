"""TS2-Net-style patch token selection: keep the M most informative patches of each frame.

A frozen ViT gives P patch tokens per frame (49 for ViT-B/32, 256 for ViT-G/14); attending
to all of them per candidate pair is what makes a cross-attention re-ranker expensive.
CrossTVR keeps M (paper: 4) per frame, chosen by a small scorer (TS2-Net's MLP over each
patch concatenated with the frame's mean, then a softmax over the frame's patches).

Top-M is not differentiable, so training uses the perturbed-maximum estimator (Berthet et
al. 2020, as in TS2-Net): the selection is the average of top-M one-hot indicators of the
scores plus Gaussian noise, and its gradient is E[indicator x noise] / sigma. At eval the
selection is the hard top-M. Selected patches keep their spatial order (sorted indices).
"""

from __future__ import annotations

import torch
from torch import nn


class _PerturbedTopK(torch.autograd.Function):
    """scores [N, P] -> soft indicators [N, M, P] (rows of M sorted top-M one-hots, averaged
    over `num_samples` noisy draws). Memory is O(N * samples * M), never a dense one-hot."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, num_samples: int, sigma: float):
        n, p = scores.shape
        noise = torch.randn(n, num_samples, p, dtype=scores.dtype, device=scores.device)
        perturbed = scores.unsqueeze(1) + sigma * noise  # [N, S, P]
        chosen = perturbed.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # [N, S, M]
        chosen = chosen.transpose(1, 2)  # [N, M, S]
        indicators = scores.new_zeros(n, k, p)
        indicators.scatter_add_(2, chosen, scores.new_ones(chosen.shape))
        indicators /= num_samples  # [N, M, P]
        # gradient estimate E[one_hot x noise] / sigma, [N, M, P], built the same way
        picked_noise = _noise_at(noise, chosen)  # [N, M, S]
        expected = scores.new_zeros(n, k, p)
        expected.scatter_add_(2, chosen, picked_noise)
        ctx.save_for_backward(expected / (num_samples * sigma))
        return indicators

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (expected,) = ctx.saved_tensors
        grad_scores = (grad_output * expected).sum(dim=1)  # [N, P]
        return grad_scores, None, None, None


def _noise_at(noise: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """noise [N, S, P] at the chosen patches chosen [N, M, S] -> [N, M, S]."""
    by_sample = noise.gather(2, chosen.transpose(1, 2))  # [N, S, M]
    return by_sample.transpose(1, 2)


def hard_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores [N, P] -> one-hot indicators [N, M, P] of the top M, in patch order."""
    chosen = scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # [N, M]
    return torch.zeros(*chosen.shape, scores.shape[-1], dtype=scores.dtype,
                       device=scores.device).scatter_(2, chosen.unsqueeze(-1), 1.0)


class PatchScorer(nn.Module):
    """TS2-Net's score predictor: each patch with its frame's mean context -> one score.

    tokens [N, P, W] -> softmax scores over the P patches of each frame [N, P]; `hidden` is
    the scorer's own width (it runs on every patch, so it is kept narrow).
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        half = max(2, hidden // 2)
        self.local = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * half), nn.GELU())
        self.out = nn.Sequential(
            nn.Linear(2 * half, half), nn.GELU(), nn.Linear(half, half // 2), nn.GELU(),
            nn.Linear(half // 2, 1),
        )
        self.half = half

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.local(tokens)  # [N, P, 2 * half]
        local = x[..., : self.half]  # [N, P, half]
        context = x[..., self.half :].mean(dim=1, keepdim=True)  # [N, 1, half]
        x = torch.cat([local, context.expand_as(local)], dim=-1)  # [N, P, 2 * half]
        return torch.softmax(self.out(x).squeeze(-1), dim=-1)  # [N, P]


class PatchTokenSelector(nn.Module):
    """Keep `num_selected` of P patch tokens per frame; `None` keeps all (the ablation).

    tokens [N, P, W] -> selection indicators [N, M, P]: rows of (soft) one-hots, applied by
    the caller to the tokens and to anything aligned with them (their position embeddings),
    so only the M kept tokens need projecting. Training: perturbed top-M with
    `num_samples` noisy draws at noise scale `sigma` (differentiable); eval: hard top-M.
    """

    def __init__(self, width: int, num_selected: int | None, num_samples: int, sigma: float,
                 scorer_hidden: int) -> None:
        super().__init__()
        self.num_selected = num_selected
        self.num_samples = num_samples
        self.sigma = sigma
        self.scorer = PatchScorer(width, scorer_hidden) if num_selected is not None else None

    def output_count(self, num_patches: int) -> int:
        """M: how many tokens per frame come out for P patches in."""
        if self.num_selected is None:
            return num_patches
        if self.num_selected > num_patches:
            raise ValueError(
                f"token selection: keeps {self.num_selected} patches per frame, the tokens "
                f"have only {num_patches} (set reranker.num_selected_patches to at most "
                f"{num_patches}, or 'all')"
            )
        return self.num_selected

    def indicators(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """tokens [N, P, W] -> [N, M, P], or None when every patch is kept (identity)."""
        count = self.output_count(tokens.shape[1])
        if self.scorer is None or count == tokens.shape[1]:
            return None
        scores = self.scorer(tokens).float()  # [N, P]
        if self.training:
            return _PerturbedTopK.apply(scores, count, self.num_samples, self.sigma)
        return hard_top_k(scores, count)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, P, W] -> the kept tokens [N, M, W]."""
        chosen = self.indicators(tokens)
        if chosen is None:
            return tokens
        return torch.einsum("nmp,npw->nmw", chosen.to(tokens.dtype), tokens)
