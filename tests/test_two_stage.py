import torch

from crosstvr_core.retrieval.two_stage import fuse_top_k, rerank_text_to_video, rerank_video_to_text


def _order(row: torch.Tensor) -> list[int]:
    return torch.argsort(row, descending=True).tolist()


def test_fusion_reorders_only_the_top_k_and_keeps_them_first():
    torch.manual_seed(0)
    sim = torch.randn(6, 20)
    k = 5
    # stage 2 reverses the stage-1 order of the candidates
    def scorer(t, v):
        return -10.0 * sim[t, v]

    fused, stage2 = rerank_text_to_video(sim, k, scorer, weight=1.0)
    assert stage2.shape == (6, k)
    for row in range(6):
        s1 = _order(sim[row])
        s2 = _order(fused[row])
        assert set(s2[:k]) == set(s1[:k])  # the same candidates stay on top
        assert s2[:k] == s1[:k][::-1]  # re-ranked by the fused score
        assert s2[k:] == s1[k:]  # the rest keeps stage 1's order


def test_zero_weight_keeps_stage1_order():
    sim = torch.randn(4, 9)
    fused, _ = rerank_text_to_video(sim, 3, lambda t, v: torch.randn(len(t)), weight=0.0)
    for row in range(4):
        assert _order(fused[row]) == _order(sim[row])


def test_video_to_text_reranks_per_video_column():
    torch.manual_seed(1)
    sim = torch.randn(12, 5)
    calls = []

    def scorer(t, v):
        calls.append((t.clone(), v.clone()))
        return torch.zeros(len(t))

    fused, stage2 = rerank_video_to_text(sim, 4, scorer)
    assert fused.shape == sim.shape and stage2.shape == (5, 4)
    t_rows, v_rows = calls[0]
    # every video scored against its own top-4 captions
    for video in range(5):
        picked = t_rows[v_rows == video]
        assert set(picked.tolist()) == set(torch.topk(sim[:, video], 4).indices.tolist())
        assert _order(fused[:, video]) == _order(sim[:, video])


def test_fuse_handles_large_stage2_scores():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.0]])
    top = torch.tensor([[0, 1]])
    fused = fuse_top_k(sim, top, torch.tensor([[-100.0, 50.0]]), 1.0)
    assert _order(fused[0]) == [1, 0, 2, 3]
