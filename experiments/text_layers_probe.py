"""Would stage 2 read colour as stage 1 does if it saw the frozen text tower's last layer too?

With the stills-pretrained encoder the index caches the text tower's *input* embeddings
(`encoder.text_tokens: auto`): its last layer keeps colour and shape but all but drops region
and direction words. Stage 1 reads colour from the tower's sentence embedding at 98 to 99%,
stage 2 from its own training captions at 92 to 94%. This runs `two_stage.py` with the
re-ranker's caption tokens replaced by [input embeddings ; last layer] (or the last layer
alone), computed here by the frozen tower; stage 1 and the training lists come from
`two_stage.py`'s cache, so run `two_stage.py` once first on the same config. `--drop P`
hides the last-layer half of P of the training captions at each step (set to its mean).

    CROSSTVR_HOME=.crosstvr .venv/bin/python experiments/text_layers_probe.py --mode both \
        --set reranker.ensemble_size=1 --tag both
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from crosstvr_core import pipeline
from crosstvr_core.models.reranker import CrossTVRReranker

sys.path.insert(0, str(Path(__file__).parent))
import two_stage  # noqa: E402  (this folder's script, not a package)


def last_layer_tokens(cfg, texts: list[str], length: int, chunk: int = 256) -> torch.Tensor:
    """The frozen text tower's last-layer token features [N, length, Wt], fp16: what the
    index caches with encoder.text_tokens=last, through the same encoder path."""
    encoder = pipeline.load_encoder(
        cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"text_tokens": "last"})}))
    return torch.cat([encoder.encode_captions(texts[start: start + chunk])[1][:, :length].half()
                      for start in range(0, len(texts), chunk)])


def patch(mode: str, drop: float) -> None:
    banks_as_read = pipeline.reranker_banks

    def reranker_banks(cfg, index, *banks):
        banks = banks_as_read(cfg, index, *banks)
        texts = index.caption_texts()
        for bank in banks:
            if bank is not None:
                last = last_layer_tokens(cfg, [texts[c] for c in bank.caption_ids],
                                         bank.text_tokens.shape[1])
                bank.text_tokens = (torch.cat([bank.text_tokens, last], -1) if mode == "both"
                                    else last).contiguous()
        return banks

    build = pipeline.build_reranker

    def build_reranker(cfg, shapes):
        shapes = dict(shapes)
        if mode == "both":
            shapes["text_width"] = 2 * shapes["text_width"]
        return build(cfg, shapes)

    pipeline.reranker_banks, pipeline.build_reranker = reranker_banks, build_reranker
    if mode == "both" and drop > 0:
        encode_text = CrossTVRReranker.encode_text

        def dropped(self, text_tokens, text_mask, *args, **kwargs):
            if self.training:
                half = text_tokens.shape[-1] // 2
                hidden = torch.rand(text_tokens.shape[0]) < drop
                if hidden.any():
                    text_tokens = text_tokens.clone()
                    text_tokens[hidden, :, half:] = self.text_mean[half:].to(text_tokens)
            return encode_text(self, text_tokens, text_mask, *args, **kwargs)

        CrossTVRReranker.encode_text = dropped


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--mode", choices=("both", "last"), default="both")
    parser.add_argument("--drop", type=float, default=0.0)
    args, rest = parser.parse_known_args()
    patch(args.mode, args.drop)
    sys.argv = [sys.argv[0], *rest]
    two_stage.main()
