"""Does a stills-pretrained encoder tell a caption's region (or colour) from a swapped one?

Scores stills-pretrained checkpoints on one fixed set of held-out stills (drawn as
pretraining draws its own, never a test scene): image->text top-1 within batches of 256,
and per factor the share of stills whose own caption scores above the same caption with one
object's region (colour) swapped; 50 is blind. Each `--config` is one pretraining config
whose checkpoint must exist under CROSSTVR_HOME (`crosstvr pretrain` with the same settings).

    CROSSTVR_HOME=.crosstvr .venv/bin/python experiments/encoder_probe.py \
        --config "" --config "pretrain.moved_pairs=0.5 pretrain.pair_loss=1"
"""

from __future__ import annotations

import argparse
import json

import open_clip

from crosstvr_core.config import load_config
from crosstvr_core.models.encoder import image_size, register_bundled_model_configs
from crosstvr_core.training.encoder_pretraining import (
    build_stills,
    excluded_test_scenes,
    resolve_pretrained,
    still_accuracies,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[],
                        help="space-separated overrides of one pretraining config (repeat)")
    parser.add_argument("--stills", type=int, default=2048, help="held-out stills scored")
    parser.add_argument("--seed", type=int, default=777, help="seed of the held-out stills")
    args = parser.parse_args()
    register_bundled_model_configs()
    held_out = None
    for overrides in args.config or [""]:
        cfg = load_config(None, overrides.split())
        model = open_clip.create_model(cfg.encoder.name, pretrained=resolve_pretrained(cfg))
        tokenizer = open_clip.get_tokenizer(cfg.encoder.name)
        if held_out is None:
            held_out = build_stills(args.stills, image_size(model), tokenizer, args.seed,
                                    excluded_test_scenes(cfg.data.num_test_groups,
                                                         cfg.data.seed))
        scores = still_accuracies(model.eval(), held_out, tokenizer)
        print(json.dumps({"config": overrides, **{k: round(v, 1) for k, v in scores.items()}}))


if __name__ == "__main__":
    main()
