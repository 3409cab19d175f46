"""Golden checks: our cached tokens equal open_clip's own encode_image / encode_text."""

import numpy as np
import open_clip
import pytest
import torch

from crosstvr_core.models.encoder import (
    EncoderError,
    EncoderSpec,
    load_frozen_encoder,
    random_init_checkpoint,
)


def test_random_init_goes_through_the_checkpoint_file(session_home, tiny_encoder):
    path = random_init_checkpoint("crosstvr-tiny-vit", 0, session_home / "weights")
    assert path.is_file()
    assert tiny_encoder.encoder_id.startswith("crosstvr-tiny-vit|sha256:")
    assert tiny_encoder.encoder_id.endswith("|64px")
    assert not any(p.requires_grad for p in tiny_encoder.model.parameters())
    assert not tiny_encoder.model.training


def test_frame_tokens_equal_open_clip_encode_image(tiny_encoder, session_home):
    # reference model: open_clip loading the same file through its own API
    path = random_init_checkpoint("crosstvr-tiny-vit", 0, session_home / "weights")
    reference = open_clip.create_model("crosstvr-tiny-vit", pretrained=str(path)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    cls, patches = tiny_encoder.encode_frames(frames)
    x = tiny_encoder.preprocess_frames(frames)
    with torch.no_grad():
        expected = reference.encode_image(x)
        reference.visual.output_tokens = True
        _, expected_tokens = reference.visual(x)
    torch.testing.assert_close(cls, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patches, expected_tokens, rtol=1e-5, atol=1e-5)
    assert patches.shape == (5, tiny_encoder.num_patches, tiny_encoder.vision_width)


def test_preprocessing_matches_open_clip_transform(tiny_encoder):
    from PIL import Image

    _, _, preprocess = open_clip.create_model_and_transforms("crosstvr-tiny-vit")
    frame = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ours = tiny_encoder.preprocess_frames(frame[None])[0]
    theirs = preprocess(Image.fromarray(frame))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_caption_tokens_equal_open_clip_encode_text(tiny_encoder):
    texts = ["a red circle moves left along the top", "first a blue square, then a cat"]
    eot, tokens, lengths = tiny_encoder.encode_captions(texts)
    ids = tiny_encoder.tokenize(texts)
    with torch.no_grad():
        expected = tiny_encoder.model.encode_text(ids)
    torch.testing.assert_close(eot, expected, rtol=1e-5, atol=1e-5)
    assert tokens.shape == (2, tiny_encoder.context_length, tiny_encoder.text_width)
    # length = position of the EOT token + 1 (SOT ... EOT)
    assert lengths.tolist() == [int((row != 0).sum()) for row in ids]


def test_wrong_frame_size_is_refused(tiny_encoder):
    with pytest.raises(EncoderError, match="64x64"):
        tiny_encoder.encode_frames(np.zeros((1, 32, 32, 3), np.uint8))


def test_bad_specs_are_named(tmp_path):
    with pytest.raises(EncoderError, match="unknown open_clip model"):
        load_frozen_encoder(EncoderSpec("no-such-model"), weights_dir=tmp_path)
    with pytest.raises(EncoderError, match="not found"):
        load_frozen_encoder(EncoderSpec("crosstvr-tiny-vit", str(tmp_path / "nope.pt")))
    with pytest.raises(EncoderError, match="neither a file nor"):
        load_frozen_encoder(EncoderSpec("crosstvr-tiny-vit", "not-a-tag"))


def test_other_weights_give_another_encoder_id(tmp_path, tiny_encoder):
    other = load_frozen_encoder(EncoderSpec("crosstvr-tiny-vit"), init_seed=1, weights_dir=tmp_path)
    assert other.encoder_id != tiny_encoder.encoder_id


def _reference_cls_attention(encoder, x: torch.Tensor) -> torch.Tensor:
    """The last block's CLS->patch attention as torch's own MultiheadAttention returns it."""
    visual = encoder.model.visual
    with torch.no_grad():
        tokens = visual._embeds(x)
        for block in visual.transformer.resblocks[:-1]:
            tokens = block(tokens)
        last = visual.transformer.resblocks[-1]
        y = last.ln_1(tokens)
        _, weights = last.attn(y, y, y, need_weights=True, average_attn_weights=True)
    return weights[:, 0, 1:]  # [N, P]


def test_selected_patches_are_the_most_cls_attended(tiny_encoder):
    frames = np.random.default_rng(3).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    cls_all, patches_all = tiny_encoder.encode_frames(frames)
    cls, kept, where = tiny_encoder.encode_frames_selected(frames, 5)
    attention = _reference_cls_attention(tiny_encoder, tiny_encoder.preprocess_frames(frames))
    expected = attention.topk(5, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(where, expected)
    torch.testing.assert_close(cls, cls_all)
    torch.testing.assert_close(kept, patches_all.gather(1, where[..., None].expand(-1, -1, 128)))
    with pytest.raises(EncoderError, match="keep_patches=17"):
        tiny_encoder.encode_frames_selected(frames, 17)


def test_vit_b32_tokens_equal_open_clip_on_a_checkpoint_file(tmp_path):
    """The real CLIP architecture (random init saved to disk, as a user's checkpoint would
    be): CLS path == encode_image, EOT == encode_text, patch tokens == visual(x) tokens."""
    encoder = load_frozen_encoder(EncoderSpec("ViT-B-32"), init_seed=0, weights_dir=tmp_path)
    assert encoder.encoder_id.startswith("ViT-B-32|sha256:") and encoder.image_size == 224
    assert (encoder.embed_dim, encoder.num_patches, encoder.vision_width) == (512, 49, 768)
    checkpoint = random_init_checkpoint("ViT-B-32", 0, tmp_path)
    reference = open_clip.create_model("ViT-B-32", pretrained=str(checkpoint)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    cls, patches = encoder.encode_frames(frames)
    texts = ["a dog runs across the park", "two people cook pasta in a kitchen"]
    eot, _, lengths = encoder.encode_captions(texts)
    x = encoder.preprocess_frames(frames)
    with torch.no_grad():
        torch.testing.assert_close(cls, reference.encode_image(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(eot, reference.encode_text(encoder.tokenize(texts)),
                                   rtol=1e-4, atol=1e-5)
        reference.visual.output_tokens = True
        _, tokens = reference.visual(x)
    torch.testing.assert_close(patches, tokens, rtol=1e-4, atol=1e-5)
    ids = encoder.tokenize(texts)
    assert lengths.tolist() == [int((row != 0).sum()) for row in ids]
    _, kept, where = encoder.encode_frames_selected(frames, 4)
    assert kept.shape == (2, 4, 768) and where.shape == (2, 4)


def test_embedding_text_tokens_are_the_towers_input_and_another_encoder(tmp_path, tiny_encoder):
    """encoder.text_tokens=embedding caches open_clip's token + position embeddings, keeps
    the EOT embedding, and is another encoder id (its tokens never share a table)."""
    spec = EncoderSpec("crosstvr-tiny-vit", text_tokens="embedding")
    embedded = load_frozen_encoder(spec, init_seed=0, weights_dir=tmp_path)
    texts = ["a red circle moves left along the top", "a red circle moves right along the top"]
    eot, tokens, lengths = embedded.encode_captions(texts)
    ids = embedded.tokenize(texts)
    model = embedded.model
    with torch.no_grad():
        expected = model.token_embedding(ids) + model.positional_embedding
        torch.testing.assert_close(eot, model.encode_text(ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens, expected)
    last = load_frozen_encoder(EncoderSpec("crosstvr-tiny-vit"), init_seed=0, weights_dir=tmp_path)
    assert embedded.encoder_id == last.encoder_id + "|text=embedding"
