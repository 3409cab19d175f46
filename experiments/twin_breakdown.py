"""Which part of a trained re-ranker tells a test video from its one-factor twin, per factor
and per caption pattern (generated benchmark only).

Reads a model saved by `experiments/two_stage.py --save-model PATH` and scores every test
caption against its own video and each twin video (t2v), and every video against its own
caption and the twin's caption (v2t). Besides the full logit it scores with one additive
term switched off at a time, so each term's own twin accuracy is the accuracy of
(full - without it):

    CROSSTVR_HOME=<indexed home> .venv/bin/python experiments/twin_breakdown.py PATH
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from crosstvr_core import pipeline
from crosstvr_core.config import load_config
from crosstvr_core.models.word_embeddings import attach_word_embeddings
from crosstvr_core.retrieval.pair_scoring import score_pairs
from crosstvr_core.storage import TokenIndex
from crosstvr_core.synthetic import video_key

# caption wording -> events pattern (crosstvr_core.synthetic.grammar's templates)
_THEN = (" then ", "replaced by", "followed by", "comes after")
_CHANGE = ("turns from", "changes colour", "goes from", "at first", "switches from")


def pattern(caption: str, kind: str) -> str:
    if kind != "events":
        return kind
    if any(word in caption for word in _THEN):
        return "events/then"
    if any(word in caption for word in _CHANGE):
        return "events/change"
    return "events/single"


@contextmanager
def without(model: torch.nn.Module, attribute: str):
    """The model with one optional term's module set to None (the forward skips it)."""
    saved = getattr(model, attribute)
    setattr(model, attribute, None)
    try:
        yield model
    finally:
        setattr(model, attribute, saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved", type=Path)
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    torch.set_num_threads(cfg.train.torch_threads)
    saved = torch.load(args.saved, weights_only=False)
    model = saved["model"]
    index = TokenIndex.open_existing(cfg.lance_uri)
    test = index.load_token_bank(cfg.data.eval_split, cfg.index.token_memory_gb)
    metas = index.caption_meta(test.caption_ids)
    texts = index.caption_texts()
    if model.reads_word_embeddings:  # the word-timing / word-presence terms read them
        test = attach_word_embeddings(test, pipeline.load_encoder(cfg), texts)
    row_of = {video_key(v): j for j, v in enumerate(test.video_ids)}
    first_caption = {}
    for i, v in enumerate(test.caption_video.tolist()):
        first_caption.setdefault(v, i)

    # (direction, factor, pattern) -> own pair, twin pair
    own_t, own_v, twin_t, twin_v, keys = [], [], [], [], []
    for i, meta in enumerate(metas):
        video = int(test.caption_video[i])
        kind = pattern(texts[test.caption_ids[i]], meta.get("variant", ""))
        for name, value in meta.items():
            if not name.startswith("twin_") or not value:
                continue
            twin = row_of[video_key(value)]
            factor = name.removeprefix("twin_")
            own_t.append(i), own_v.append(video), twin_t.append(i), twin_v.append(twin)
            keys.append(("t2v", factor, kind))
            if twin in first_caption:
                own_t.append(i), own_v.append(video)
                twin_t.append(first_caption[twin]), twin_v.append(video)
                keys.append(("v2t", factor, kind))
    rows = [torch.tensor(r) for r in (own_t, own_v, twin_t, twin_v)]

    def margins() -> np.ndarray:
        own = score_pairs(model, test, rows[0], test, rows[1], 256, precision=cfg.train.precision)
        twin = score_pairs(model, test, rows[2], test, rows[3], 256,
                           precision=cfg.train.precision)
        return (own - twin).numpy()

    full = margins()
    parts = {"full": full}
    for term, attribute in (("grounding", "ground_text"), ("match", "match_scale"),
                            ("word timing", "word_when"), ("word presence", "word_presence")):
        if getattr(model, attribute, None) is not None:
            with without(model, attribute):
                parts[term] = full - margins()
    parts["rest"] = full - sum(v for k, v in parts.items() if k != "full")
    sim = saved["test_sim"].float().numpy()
    parts["stage 1"] = sim[rows[0].numpy(), rows[1].numpy()] - sim[rows[2].numpy(),
                                                                    rows[3].numpy()]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for n, key in enumerate(keys):
        groups[key].append(n)
    table = []
    for key in sorted(groups):
        n = np.array(groups[key])
        row = {"dir": key[0], "factor": key[1], "captions": key[2], "n": len(n)}
        row.update({name: round(float(100 * np.mean(values[n] > 0)), 1)
                    for name, values in parts.items()})
        table.append(row)
    columns = list(table[0])
    print(" | ".join(columns))
    for row in table:
        print(" | ".join(str(row[c]) for c in columns))
    print(json.dumps({"scale": {name: round(float(np.std(values)), 3)
                                for name, values in parts.items()}}))


if __name__ == "__main__":
    main()
