"""Golden checks: our cached tokens equal open_clip's own encode_image / encode_text."""

import numpy as np
import open_clip
import pytest
import torch

from crosstvr_core.encoder import (
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
