"""The frozen image-text encoder: one loader, tokens by asking for them.

CrossTVR keeps the CLIP encoders frozen, so their tokens are computed once and cached.
`load_frozen_encoder` is the one entry point: an open_clip model name plus a pretrained
tag, a local checkpoint file, or nothing (a seeded random init that is saved to disk and
loaded back through the same checkpoint path as real weights). Tokens come from open_clip's
public `forward_intermediates`, never from forward hooks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def register_bundled_model_configs() -> list[str]:
    """Make the JSON model configs shipped with crosstvr known to open_clip."""
    names = []
    for path in sorted(MODEL_CONFIG_DIR.glob("*.json")):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)
        names.append(path.stem)
    return names


class EncoderError(ValueError):
    """An encoder that cannot be loaded or used as asked; the message names it."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints can be GBs)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def random_init_checkpoint(name: str, seed: int, weights_dir: str | Path) -> Path:
    """Save a seeded random init of `name` once; later calls reuse the file.

    This is the embedded default: no pretrained weights can be fetched on an offline
    machine, but the checkpoint still goes through open_clip's local-file loading path.
    """
    register_bundled_model_configs()
    weights_dir = Path(weights_dir)
    # the architecture is part of the name: an edited model config never loads stale weights
    config = json.dumps(open_clip.get_model_config(name), sort_keys=True).encode()
    path = weights_dir / f"{name}-{hashlib.sha256(config).hexdigest()[:8]}-random-seed{seed}.pt"
    if path.is_file():
        return path
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: a killed run never leaves half a checkpoint
    return path


@dataclass(frozen=True)
class EncoderSpec:
    """Which frozen encoder: open_clip name + (pretrained tag | checkpoint path | None)."""

    name: str
    pretrained: str | None = None
    precision: str = "fp32"
    # which caption token features are cached for stage 2: "last" (the text tower's last
    # layer, after ln_final) or "embedding" (its input: token + position embeddings)
    text_tokens: str = "last"


def image_size(model: torch.nn.Module) -> int:
    """The side of the square images an open_clip model takes (its preprocess config)."""
    size = model.visual.preprocess_cfg["size"]
    return int(size[0] if isinstance(size, tuple | list) else size)


class FrozenEncoder:
    """An open_clip model in eval mode with gradients off, plus what callers need to know.

    `encoder_id` identifies the exact weights (name, tag or checkpoint hash, input size);
    it is stored with every cached token so tokens of two encoders never mix.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, spec: EncoderSpec, weights_id: str):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        cfg = model.visual.preprocess_cfg
        self.image_size = image_size(model)
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        # tokens of another text layer are other tokens: they must never share a table
        layer = "" if spec.text_tokens == "last" else f"|text={spec.text_tokens}"
        self.encoder_id = f"{spec.name}|{weights_id}|{self.image_size}px{layer}"
        probe = self._probe_shapes()
        self.embed_dim, self.vision_width, self.num_patches, self.text_width = probe
        self.context_length = int(getattr(model, "context_length", tokenizer.context_length))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> FrozenEncoder:
        self.model.to(device)
        return self

    def _probe_shapes(self) -> tuple[int, int, int, int]:
        image = torch.zeros(1, 3, self.image_size, self.image_size)
        with torch.no_grad():
            cls, patches = self._image_tokens(image)
            _, tokens, _ = self.encode_captions(["probe"])
        return cls.shape[-1], patches.shape[-1], patches.shape[1], tokens.shape[-1]

    def _autocast(self):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.spec.precision)
        enabled = dtype is not None and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled)

    def _image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), self._autocast():
            out = self.model.forward_intermediates(
                image=images.to(self.device),
                image_indices=1,
                normalize=False,
                normalize_intermediates=True,  # final LayerNorm, as the model's own output
                image_output_fmt="NLC",
            )
        # projected pooled embedding == encode_image; last block's patch tokens after ln_post
        return out["image_features"].float(), out["image_intermediates"][-1].float()

    def _image_tokens_with_cls_attention(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like `_image_tokens`, plus how much the CLS token attends to each patch [N, P].

        The last block's attention is recomputed from its input (the second-to-last
        intermediate): open_clip does not return attention maps, and hooks would tie us
        to its internals more than its public blocks do.
        """
        visual = self.model.visual
        block = visual.transformer.resblocks[-1]
        attn = getattr(block, "attn", None)
        if not isinstance(attn, torch.nn.MultiheadAttention) or getattr(block, "ln_1", None) is None:
            raise EncoderError(
                f"encoder '{self.spec.name}': patch selection by CLS attention needs a ViT "
                "whose last block uses nn.MultiheadAttention (set index.keep_patches=null)"
            )
        with torch.no_grad(), self._autocast():
            out = self.model.forward_intermediates(
                image=images.to(self.device), image_indices=2, normalize=False,
                normalize_intermediates=False, image_output_fmt="NLC",
                image_output_extra_tokens=True,
            )
            # block input = prefix (CLS) + patches of the second-to-last intermediate
            x = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], 1)
            y = block.ln_1(x)  # [N, 1 + P, W]
            w, b = attn.in_proj_weight, attn.in_proj_bias
            width, heads = y.shape[-1], attn.num_heads
            q = torch.nn.functional.linear(y[:, :1], w[:width], None if b is None else b[:width])
            k = torch.nn.functional.linear(
                y, w[width:2 * width], None if b is None else b[width:2 * width]
            )
            q = q.view(len(y), 1, heads, -1).transpose(1, 2)  # [N, H, 1, W/H]
            k = k.view(len(y), -1, heads, width // heads).transpose(1, 2)  # [N, H, 1+P, W/H]
            weights = (q @ k.transpose(-1, -2) / (width // heads) ** 0.5).softmax(-1)
            cls_attention = weights.mean(1)[:, 0, 1:]  # [N, P]: heads averaged, CLS row
            patches = visual.ln_post(out["image_intermediates"][-1])
        return out["image_features"].float(), patches.float(), cls_attention.float()

    def encode_frames_selected(
        self, frames: np.ndarray | torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames -> (CLS [N, D], the `keep` patches the CLS attends to most [N, M, Wv],
        their indices in the patch grid [N, M], ascending so spatial order is kept)."""
        if not 1 <= keep <= self.num_patches:
            raise EncoderError(f"keep_patches={keep}: must be in 1..{self.num_patches}")
        cls, patches, attention = self._image_tokens_with_cls_attention(
            self.preprocess_frames(frames)
        )
        index = attention.topk(keep, dim=-1).indices.sort(dim=-1).values  # [N, M]
        chosen = patches.gather(1, index[..., None].expand(-1, -1, patches.shape[-1]))
        return cls, chosen, index

    def preprocess_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [N, S, S, 3] frames at the encoder's size -> normalised float [N, 3, S, S]."""
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise EncoderError(f"frames: expected [N, H, W, 3] uint8, got {tuple(frames.shape)}")
        if frames.shape[1:3] != (self.image_size, self.image_size):
            raise EncoderError(
                f"frames: expected {self.image_size}x{self.image_size} (decode at the encoder's "
                f"size), got {frames.shape[1]}x{frames.shape[2]}"
            )
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def encode_frames(self, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames [N, S, S, 3] -> (CLS embedding [N, D] projected, patches [N, P, Wv])."""
        return self._image_tokens(self.preprocess_frames(frames))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_captions(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """texts -> (EOT embedding [N, D] projected, token features [N, L, Wt], lengths [N])."""
        ids = self.tokenize(list(texts)).to(self.device)
        with torch.no_grad(), self._autocast():
            out = self.model.forward_intermediates(
                text=ids, text_indices=1, normalize=False, normalize_intermediates=True
            )
        tokens = out["text_intermediates"][-1].float()
        if self.spec.text_tokens == "embedding":
            tokens = self._input_embeddings(ids)
        return out["text_features"].float(), tokens, self._text_lengths(ids)

    def _input_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """The text tower's input: token + position embeddings [N, L, Wt]."""
        text = getattr(self.model, "text", self.model)  # CustomTextCLIP keeps them in .text
        embedding, positions = text.token_embedding, text.positional_embedding
        with torch.no_grad():
            return (embedding(ids) + positions[: ids.shape[1]]).float()

    def _text_lengths(self, ids: torch.Tensor) -> torch.Tensor:
        if getattr(self.model, "text_pool_type", "argmax") == "argmax":
            # CLIP BPE: the EOT token has the highest id; everything after it is padding
            return (ids.argmax(dim=-1) + 1).cpu()
        pad_id = getattr(self.tokenizer, "pad_token_id", 0) or 0
        return (ids != pad_id).sum(dim=-1).clamp(min=1).cpu()


def load_frozen_encoder(
    spec: EncoderSpec, *, init_seed: int = 0, weights_dir: str | Path | None = None,
    device: str = "cpu",
) -> FrozenEncoder:
    """open_clip name + pretrained tag / local checkpoint / None (seeded random init on disk)."""
    register_bundled_model_configs()
    if spec.name not in open_clip.list_models():
        raise EncoderError(
            f"encoder '{spec.name}': unknown open_clip model (see open_clip.list_models())"
        )
    pretrained = spec.pretrained
    if pretrained is None:
        if weights_dir is None:
            raise EncoderError(f"encoder '{spec.name}': random init needs a weights_dir")
        pretrained = str(random_init_checkpoint(spec.name, init_seed, weights_dir))
    path = Path(pretrained).expanduser()
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or path.exists():
        if not path.is_file():
            raise EncoderError(f"encoder '{spec.name}': checkpoint '{path}' not found")
        weights_id = f"sha256:{file_sha256(path)[:16]}"
        pretrained = str(path)
    else:
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        if pretrained not in tags:
            raise EncoderError(
                f"encoder '{spec.name}': pretrained '{pretrained}' is neither a file nor one of "
                f"its open_clip tags {tags}"
            )
        weights_id = f"tag:{pretrained}"
    try:
        model = open_clip.create_model(spec.name, pretrained=pretrained, device=device)
    except (RuntimeError, OSError) as exc:
        raise EncoderError(f"encoder '{spec.name}': cannot load '{pretrained}': {exc}") from exc
    tokenizer = open_clip.get_tokenizer(spec.name)
    return FrozenEncoder(model, tokenizer, spec, weights_id)

