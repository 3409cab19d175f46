"""Several re-rankers trained apart, from consecutive seeds, whose logits are averaged.

Why: on the generated benchmark one re-ranker's R@1 and its order-twin accuracy move by
several points with the seed alone (what it memorises of its training scenes differs from
seed to seed, what it learned in general does not), and the mean of two or four seeds' logits
is above the mean of its members on every measured pair. Each member is an ordinary
`CrossTVRReranker`, trained, early-stopped and validated on its own; the ensemble then gets
its own fusion weights on validation. Training and scoring cost grow with the member count.
"""

from __future__ import annotations

import torch
from torch import nn

from crosstvr_core.config import RerankerConfig
from crosstvr_core.models.reranker import CrossTVRReranker, FusionWeights
from crosstvr_core.token_bank import TokenBank


class RerankerEnsemble(FusionWeights, nn.Module):
    """The mean logit of `members`; what scoring, search and the gallery read of a
    re-ranker (forward, fusion weights, input statistics) behaves as for one of them."""

    def __init__(self, members: list[CrossTVRReranker]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"RerankerEnsemble: needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self._register_fusion_weights()

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return torch.stack([member(*args, **kwargs) for member in self.members]).mean(0)

    @property
    def has_input_stats(self) -> bool:
        return all(member.has_input_stats for member in self.members)

    def fit_input_stats(self, bank: TokenBank) -> None:
        for member in self.members:
            member.fit_input_stats(bank)

    @property
    def reads_word_embeddings(self) -> bool:
        return any(member.reads_word_embeddings for member in self.members)

    def attention_maps(self, *args, **kwargs):
        """The first member's maps: averaging attention over independently trained models
        would blur two different ways of looking into one that neither uses."""
        return self.members[0].attention_maps(*args, **kwargs)


Reranker = CrossTVRReranker | RerankerEnsemble


def reranker_members(model: Reranker) -> list[CrossTVRReranker]:
    """The models whose logits a re-ranker averages (itself, for a single one)."""
    return list(model.members) if isinstance(model, RerankerEnsemble) else [model]


def new_reranker(cfg: RerankerConfig, seed: int, **shape_kwargs: int) -> Reranker:
    """A fresh re-ranker of cfg.ensemble_size members, member i initialised from seed + i
    (whatever ran before): a one-member config gives exactly the single model of `seed`."""
    members = []
    for i in range(cfg.ensemble_size):
        torch.manual_seed(seed + i)
        members.append(CrossTVRReranker(cfg, **shape_kwargs))
    return members[0] if len(members) == 1 else RerankerEnsemble(members)
