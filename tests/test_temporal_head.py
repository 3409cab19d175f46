"""Fast checks of the seqTransf temporal head, dual softmax and the head's training loop."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from bank_fixtures import token_bank

from crosstvr_core.config import Stage1Config
from crosstvr_core.models.temporal_head import TemporalHead, dual_softmax
from crosstvr_core.retrieval.metrics import retrieval_metrics
from crosstvr_core.retrieval.stage1 import mean_pooled_video_embeddings, meanp_similarity
from crosstvr_core.token_bank import TokenBank
from crosstvr_core.training.checkpoint import latest_checkpoint
from crosstvr_core.training.negatives import play_backwards
from crosstvr_core.training.stage1 import (
    contrastive_loss,
    temporal_similarity,
    train_temporal_head,
)

FRAMES, EMBED = 4, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def make_bank(
    video_cls: torch.Tensor,
    frame_mask: torch.Tensor,
    text_eot: torch.Tensor,
    caption_video: torch.Tensor,
) -> TokenBank:
    """A bank with only what stage 1 reads (patch and text tokens are 1-wide dummies)."""
    num_videos, frames = frame_mask.shape
    num_captions = text_eot.shape[0]
    return token_bank(video_cls, torch.zeros(num_videos, frames, 1, 1), frame_mask, text_eot,
                      torch.zeros(num_captions, 1, 1),
                      torch.ones(num_captions, 1, dtype=torch.bool), caption_video)


def random_bank(num_videos: int = 8, captions_per_video: int = 2, seed: int = 0) -> TokenBank:
    gen = torch.Generator().manual_seed(seed)
    frame_mask = torch.ones(num_videos, FRAMES, dtype=torch.bool)
    frame_mask[::2, -1] = False  # every other clip is one frame short
    frame_mask[1, 1:] = False  # and one has a single frame
    return make_bank(
        torch.randn(num_videos, FRAMES, EMBED, generator=gen),
        frame_mask,
        torch.randn(num_videos * captions_per_video, EMBED, generator=gen),
        torch.arange(num_videos).repeat_interleave(captions_per_video),
    )


def order_bank(num_contents: int, seed: int, captions_per_video: int = 2) -> TokenBank:
    """Frame order is the only difference: content k appears as two videos, frames
    [k+a, k+b] ("opening") and [k+b, k+a] ("closing"); a caption is k +/- o. The two
    videos of one content mean-pool to the same vector, up to noise, so meanP guesses."""
    dim = 32
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(7)))[0]
    a, b, o, rest = basis[:, 0], basis[:, 1], basis[:, 2], basis[:, 3:]  # orthonormal
    gen = torch.Generator().manual_seed(seed)
    content = F.normalize(torch.randn(num_contents, dim - 3, generator=gen) @ rest.T, dim=-1)
    frames, texts, caption_video = [], [], []
    for k in range(num_contents):
        for opening in (True, False):
            order = (a, b) if opening else (b, a)
            noise = 0.05 * torch.randn(2, dim, generator=gen)
            frames.append(torch.stack([content[k] + order[0], content[k] + order[1]]) + noise)
            for _ in range(captions_per_video):
                noise = 0.05 * torch.randn(dim, generator=gen)
                texts.append(content[k] + (o if opening else -o) + noise)
                caption_video.append(len(frames) - 1)
    return make_bank(
        torch.stack(frames),  # [V, 2, D]
        torch.ones(len(frames), 2, dtype=torch.bool),
        torch.stack(texts),  # [T, D]
        torch.tensor(caption_video),
    )


def perturbed_head(seed: int = 0) -> TemporalHead:
    """A head whose residual branch is on (the untrained one is meanP by construction)."""
    torch.manual_seed(seed)
    head = TemporalHead(EMBED, FRAMES, num_layers=2, num_heads=2).eval()
    with torch.no_grad():
        head.residual_gate.fill_(1.0)
    return head


def small_cfg(**overrides) -> Stage1Config:
    values = {"num_layers": 1, "num_heads": 2, "epochs": 3, "batch_size": 8, "lr": 3e-3,
              "patch_branch": False, "reversed_negatives": False}
    return Stage1Config(**{**values, **overrides})


def test_shapes_and_unit_norm() -> None:
    bank = random_bank()
    head = perturbed_head()
    out = head(bank.video_cls.float(), bank.frame_mask)
    assert out.shape == (bank.num_videos, EMBED) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(bank.num_videos))
    sim = temporal_similarity(head, bank, batch_size=3)  # batches of 3 videos
    assert sim.shape == (bank.num_captions, bank.num_videos)
    with pytest.raises(ValueError, match="frames"):
        head(torch.randn(2, FRAMES + 1, EMBED), torch.ones(2, FRAMES + 1, dtype=torch.bool))


def test_padded_frames_do_not_change_the_embedding() -> None:
    head = perturbed_head()
    frames = torch.randn(3, FRAMES, EMBED)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    garbage = frames.clone()
    garbage[~mask] = 100.0 * torch.randn(int((~mask).sum()), EMBED)
    with torch.no_grad():
        out = head(frames, mask)
        torch.testing.assert_close(head(garbage, mask), out)
        # and padding == simply not having the frames
        torch.testing.assert_close(head(frames[:1, :2], mask[:1, :2]), out[:1])
        # a clip without a single real frame stays finite
        assert torch.isfinite(head(frames[:1], torch.zeros(1, FRAMES, dtype=torch.bool))).all()


def test_untrained_head_is_meanp() -> None:
    bank = random_bank()
    head = TemporalHead.from_config(small_cfg(num_layers=2), EMBED, FRAMES)
    with torch.no_grad():
        out = head(bank.video_cls.float(), bank.frame_mask)
    torch.testing.assert_close(out, mean_pooled_video_embeddings(bank), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        temporal_similarity(head, bank), meanp_similarity(bank), atol=1e-6, rtol=1e-5
    )


def test_from_config_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    one = TemporalHead.from_config(small_cfg(seed=3), EMBED, FRAMES)
    two = TemporalHead.from_config(small_cfg(seed=3), EMBED, FRAMES)
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(one.parameters(), two.parameters(), strict=True):
        assert torch.equal(p, q)


def test_dual_softmax_demotes_a_hub_video() -> None:
    # video 0 is close to every caption; captions 1 and 2 belong to videos 1 and 2
    sim = torch.tensor([[0.90, 0.10, 0.10], [0.90, 0.80, 0.20], [0.90, 0.20, 0.80]])
    assert sim.argmax(dim=1).tolist() == [0, 0, 0]
    out = dual_softmax(sim, temperature=0.05)
    assert out.shape == sim.shape
    assert out.argmax(dim=1).tolist() == [0, 1, 2]
    assert retrieval_metrics(out)["t2v"]["R1"] == 100.0 > retrieval_metrics(sim)["t2v"]["R1"]


def test_contrastive_loss_with_two_captions_of_one_video() -> None:
    text = F.normalize(torch.randn(4, EMBED), dim=-1)
    video = F.normalize(torch.randn(3, EMBED), dim=-1)  # the batch's distinct videos
    caption_video = torch.tensor([0, 0, 1, 2])  # captions 0 and 1 share video 0
    loss = contrastive_loss(text, video, caption_video, torch.tensor(10.0))
    # text->video: over the 3 distinct videos, no duplicate column
    t2v = F.cross_entropy(10.0 * text @ video.T, caption_video)
    # video->text: video 0 once per caption, the other caption masked out
    by_video = 10.0 * video[caption_video] @ text.T  # [4, 4]
    by_video[0, 1] = by_video[1, 0] = float("-inf")
    v2t = F.cross_entropy(by_video, torch.arange(4))
    torch.testing.assert_close(loss, 0.5 * (t2v + v2t))


def test_contrastive_loss_extra_videos_are_negative_columns_of_text_to_video() -> None:
    text = F.normalize(torch.randn(3, EMBED), dim=-1)
    video = F.normalize(torch.randn(3, EMBED), dim=-1)
    extra = F.normalize(torch.randn(2, EMBED), dim=-1)
    caption_video = torch.tensor([0, 1, 2])
    scale = torch.tensor(10.0)
    loss = contrastive_loss(text, video, caption_video, scale, extra)
    plain = contrastive_loss(text, video, caption_video, scale)
    t2v = F.cross_entropy(10.0 * text @ torch.cat([video, extra]).T, caption_video)
    t2v_plain = F.cross_entropy(10.0 * text @ video.T, caption_video)
    torch.testing.assert_close(loss - plain, 0.5 * (t2v - t2v_plain))


def test_reversed_negatives_teach_order_in_fewer_epochs() -> None:
    """Each order_bank video played backwards is its twin: with time-reversed negatives the
    head separates the two orders on held-out contents where the plain loss does not yet."""
    train, test = order_bank(32, seed=0), order_bank(16, seed=1)
    results = {}
    for reversed_negatives in (False, True):
        cfg = small_cfg(epochs=3, batch_size=32, reversed_negatives=reversed_negatives)
        head = TemporalHead.from_config(cfg, train.video_cls.shape[-1], 2)
        train_temporal_head(head, train, cfg, progress=False)
        sim = temporal_similarity(head, test)
        results[reversed_negatives] = retrieval_metrics(sim, test.caption_video)["t2v"]["R1"]
    assert results[True] > results[False], results


def test_without_frame_positions_the_head_is_blind_to_frame_order() -> None:
    """A trained head without frame positions scores a clip and every reordering of it the
    same: on order_bank it cannot beat a coin flip between the two orders, and it refuses
    reversed negatives (each would equal its positive)."""
    train, test = order_bank(32, seed=0), order_bank(16, seed=1)
    cfg = small_cfg(epochs=8, batch_size=32, frame_positions=False)
    head = TemporalHead.from_config(cfg, train.video_cls.shape[-1], 2)
    assert head.frame_position is None
    with pytest.raises(ValueError, match="reversed_negatives needs stage1.frame_positions"):
        train_temporal_head(head, train, cfg.model_copy(update={"reversed_negatives": True}),
                            progress=False)
    train_temporal_head(head, train, cfg, progress=False)
    assert head.residual_gate.abs().sum() > 0  # the head trained: it is not meanP
    frames, mask = test.video_cls.float(), test.frame_mask
    with torch.no_grad():
        torch.testing.assert_close(head(frames.flip(1), mask), head(frames, mask))
    trained = retrieval_metrics(temporal_similarity(head, test), test.caption_video)["t2v"]["R1"]
    assert trained <= 75.0  # a coin flip between the two orders, where positions reach 95


def object_in_one_patch_bank(num_videos: int, seed: int) -> TokenBank:
    """The caption names a code carried by ONE of 6 patches of each frame (a small object);
    the CLS embeddings are shared noise, so a CLS-only head cannot tell the videos apart."""
    gen = torch.Generator().manual_seed(seed)
    codes = F.normalize(torch.randn(num_videos, EMBED, generator=gen), dim=-1)
    patches = 0.1 * torch.randn(num_videos, FRAMES, 6, EMBED, generator=gen)
    where = torch.randint(0, 6, (num_videos,), generator=gen)
    patches[torch.arange(num_videos), :, where] += codes[:, None]
    bank = make_bank(torch.randn(1, FRAMES, EMBED, generator=gen).expand(num_videos, -1, -1)
                     + 0.01 * torch.randn(num_videos, FRAMES, EMBED, generator=gen),
                     torch.ones(num_videos, FRAMES, dtype=torch.bool),
                     codes + 0.05 * torch.randn(num_videos, EMBED, generator=gen),
                     torch.arange(num_videos))
    bank.video_patches = patches.half()
    return bank


def test_patch_branch_starts_as_meanp_and_finds_a_small_object() -> None:
    bank = object_in_one_patch_bank(24, seed=0)
    cfg = small_cfg(epochs=30, batch_size=8, lr=1e-2, patch_branch=True)
    head = TemporalHead.for_bank(cfg, bank)
    assert head.vision_width == EMBED and head.num_patches == 6
    # zero gates: the untrained head is meanP, whatever the patches say
    torch.testing.assert_close(temporal_similarity(head, bank), meanp_similarity(bank))
    with pytest.raises(ValueError, match="patch branch"):
        head(bank.video_cls[:2], bank.frame_mask[:2])
    train_temporal_head(head, bank, cfg, progress=False)
    with_patches = retrieval_metrics(temporal_similarity(head, bank), bank.caption_video)
    cls_cfg = small_cfg(epochs=30, batch_size=8, lr=1e-2)
    cls_only = TemporalHead.for_bank(cls_cfg, bank)
    assert cls_only.vision_width == 0
    train_temporal_head(cls_only, bank, cls_cfg, progress=False)
    without = retrieval_metrics(temporal_similarity(cls_only, bank), bank.caption_video)
    assert with_patches["t2v"]["R1"] >= 90.0 and without["t2v"]["R1"] <= 20.0


def test_training_learns_frame_order_that_meanp_cannot_see() -> None:
    train, test = order_bank(32, seed=0), order_bank(16, seed=1)
    meanp = retrieval_metrics(meanp_similarity(test), test.caption_video)["t2v"]["R1"]
    head = TemporalHead.from_config(small_cfg(), train.video_cls.shape[-1], 2)
    history = train_temporal_head(head, train, small_cfg(epochs=8, batch_size=32), progress=False)
    trained = retrieval_metrics(temporal_similarity(head, test), test.caption_video)["t2v"]["R1"]
    assert meanp < 75.0  # a coin flip between the two orders
    assert trained >= 95.0  # held-out contents: the head learned order, not the pairs
    assert history[-1]["loss"] < history[0]["loss"]
    assert not head.training


def test_training_is_deterministic_and_reports_each_epoch() -> None:
    bank = random_bank()
    cfg = small_cfg()
    seen: list[int] = []

    def run() -> tuple[list[dict], TemporalHead]:
        head = TemporalHead.from_config(cfg, EMBED, FRAMES)
        history = train_temporal_head(
            head, bank, cfg, progress=False, on_epoch_end=lambda e, r, h: seen.append(e)
        )
        return history, head

    (first, head_one), (second, head_two) = run(), run()
    assert seen == [1, 2, 3, 1, 2, 3]
    assert [r["loss"] for r in first] == [r["loss"] for r in second]
    for p, q in zip(head_one.parameters(), head_two.parameters(), strict=True):
        assert torch.equal(p, q)
    assert {"epoch", "loss", "seconds", "logit_scale", "lr"} <= first[-1].keys()
    assert 0 < first[-1]["logit_scale"] <= 100.0
    assert first[-1]["residual_gate"] > 0  # training moved off meanP


def test_training_reads_only_the_bank() -> None:
    """No encoder in the signature: the head trains on cached embeddings alone."""
    params = set(inspect.signature(train_temporal_head).parameters)
    assert params == {"head", "bank", "cfg", "device", "on_epoch_end", "progress",
                      "checkpoint_dir", "resume"}


class Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path) -> None:
    bank, cfg = random_bank(), small_cfg(epochs=3)

    def train(**kwargs) -> tuple[TemporalHead, list[dict]]:
        head = TemporalHead.from_config(cfg, EMBED, FRAMES)
        return head, train_temporal_head(head, bank, cfg, progress=False, **kwargs)

    straight, straight_history = train()

    def kill_after_second_epoch(epoch: int, record: dict, head: TemporalHead) -> None:
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(checkpoint_dir=tmp_path, on_epoch_end=kill_after_second_epoch)
    assert latest_checkpoint(tmp_path).name == "epoch-0002.pt"
    resumed, history = train(checkpoint_dir=tmp_path, resume=True)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert [r["loss"] for r in history] == [r["loss"] for r in straight_history]
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_text_adapter_ignores_trailing_padding_and_backwards_clips_reuse_frames() -> None:
    """Positions that are padding for every caption are dropped before the text transformer,
    and a clip played backwards pools the same per-frame features in the other order."""
    torch.manual_seed(0)
    head = TemporalHead(EMBED, FRAMES, num_layers=1, num_heads=2, text_width=6,
                        context_length=9, vision_width=5, num_patches=3).eval()
    with torch.no_grad():
        for gate in (head.residual_gate, head.text_gate, head.patch_gate):
            gate.fill_(1.0)
    eot, tokens = torch.randn(3, EMBED), torch.randn(3, 9, 6)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[0, :4], mask[1, :2], mask[2, :5] = True, True, True
    trimmed = head.encode_text(eot, tokens[:, :5], mask[:, :5])
    torch.testing.assert_close(head.encode_text(eot, tokens, mask), trimmed)

    cls, patches = torch.randn(2, FRAMES, EMBED), torch.randn(2, FRAMES, 3, 5)
    frame_mask = torch.ones(2, FRAMES, dtype=torch.bool)
    frame_mask[1, -1] = False
    back = play_backwards({"frame_mask": frame_mask, "video_cls": cls, "video_patches": patches})
    features = play_backwards({"frame_mask": frame_mask, "video_patches": None,
                               "video_cls": head.frame_features(cls, patches)})["video_cls"]
    torch.testing.assert_close(head.pool_frames(features, frame_mask),
                               head(back["video_cls"], frame_mask, back["video_patches"]))
