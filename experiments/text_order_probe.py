"""Can the re-ranker's text side say which of two named things happens first, when told?

For captions of the generated benchmark that name two things in time order ("X turns from
C1 to C2", "A, then B", "B comes after A", ...): the re-ranker's text pathway (projection,
positions, text layers, exactly as configured) plus one linear read-out is trained on the
training split's captions to put the earlier thing's colour word before the later one's,
then scored on the test split's captions. Nothing else is trained and no video is read.

If this reaches ~100% on test captions, the text side can represent "named first / seen
first" and a re-ranker that does not learn it is missing the signal, not the capacity.

    CROSSTVR_HOME=<indexed home> .venv/bin/python experiments/text_order_probe.py [--steps 400]
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from twin_breakdown import pattern

from crosstvr_core.config import load_config
from crosstvr_core.models.encoder import register_bundled_model_configs
from crosstvr_core.pipeline import build_reranker
from crosstvr_core.storage import TokenIndex

CHANGE = re.compile(r"(?:from|is) (\w+) (?:to|at first and) (\w+)")
# "a <size> <colour> <shape>": the then-templates name two such phrases
NOUN = re.compile(r"\ba (?:small|tiny|little|big|large) (\w+)")


def first_then_second(text: str, kind: str) -> tuple[int, int] | None:
    """Character offsets of (the colour seen first, the colour seen second), or None."""
    if kind == "events/change":
        found = CHANGE.search(text)
        return (found.start(1), found.start(2)) if found else None
    if kind == "events/then":
        phrases = list(NOUN.finditer(text))
        main = [p for p in phrases if " sits " not in text[p.end(): p.end() + 40]]
        if len(main) < 2:
            return None
        a, b = main[0].start(1), main[1].start(1)
        return (b, a) if "comes after" in text else (a, b)
    return None


def items_of(index: TokenIndex, split: str, tokenizer, texts: dict) -> tuple[object, list]:
    bank = index.load_token_bank(split)
    metas = index.caption_meta(bank.caption_ids)

    def position(text: str, char: int) -> int:
        return int((tokenizer([text[:char].rstrip()])[0] != 0).sum()) - 1

    items = []
    for row, caption_id in enumerate(bank.caption_ids):
        text = texts[caption_id]
        kind = pattern(text, metas[row].get("variant", ""))
        found = first_then_second(text, kind)
        if found:
            items.append((row, position(text, found[0]), position(text, found[1]), kind))
    return bank, items


def accuracy(model, head, bank, items) -> dict[str, float]:
    right: dict[str, list[float]] = {}
    with torch.inference_mode():
        for start in range(0, len(items), 256):
            chunk = items[start: start + 256]
            rows = torch.tensor([r for r, *_ in chunk])
            text = bank.text_batch(rows)
            time = head(model.encode_text(text["text_tokens"], text["text_mask"])).squeeze(-1)
            for i, (_, first, second, kind) in enumerate(chunk):
                right.setdefault(kind, []).append(float(time[i, first] < time[i, second]))
    return {kind: 100 * float(np.mean(v)) for kind, v in sorted(right.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(None, args.set)
    torch.manual_seed(0)
    torch.set_num_threads(cfg.train.torch_threads)
    register_bundled_model_configs()
    tokenizer = open_clip.get_tokenizer(cfg.encoder.name)
    index = TokenIndex.open_existing(cfg.lance_uri)
    texts = index.caption_texts()
    train_bank, train_items = items_of(index, "train", tokenizer, texts)
    test_bank, test_items = items_of(index, "test", tokenizer, texts)
    print(f"captions: {len(train_items)} train, {len(test_items)} test")
    model = build_reranker(cfg, index.shapes.__dict__)
    model.fit_input_stats(train_bank)
    head = torch.nn.Linear(cfg.reranker.hidden_size, 1)
    params = [p for n, p in model.named_parameters()
              if n.startswith(("text_proj", "text_encoder", "text_recurrent"))]
    optimizer = torch.optim.AdamW(params + list(head.parameters()), lr=args.lr)
    generator = torch.Generator().manual_seed(0)
    print(f"before training: test {accuracy(model, head, test_bank, test_items)}")
    for step in range(args.steps):
        pick = torch.randint(len(train_items), (args.batch,), generator=generator)
        chunk = [train_items[i] for i in pick]
        text = train_bank.text_batch(torch.tensor([r for r, *_ in chunk]))
        time = head(model.encode_text(text["text_tokens"], text["text_mask"])).squeeze(-1)
        rows = torch.arange(len(chunk))
        gap = (time[rows, torch.tensor([s for _, _, s, _ in chunk])]
               - time[rows, torch.tensor([f for _, f, _, _ in chunk])])
        loss = F.softplus(-gap).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {loss.item():.3f} "
                  f"train {accuracy(model, head, train_bank, train_items[:400])} "
                  f"test {accuracy(model, head, test_bank, test_items)}")


if __name__ == "__main__":
    main()
