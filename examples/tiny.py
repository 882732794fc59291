"""Tiny stand-ins the examples run on when no checkpoint is given: a 2-block BERT saved with
`save_pretrained` (so the real `from_pretrained` path runs) and a learnable sentiment toy task.
Nothing is downloaded. Pass `--model bert-base-uncased` (or any encoder) to run on a real one."""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE = ["good", "great", "fine", "happy", "nice", "superb", "lovely", "bright"]
NEGATIVE = ["bad", "awful", "poor", "sad", "nasty", "grim", "dull", "dark"]
FILLER = ["the", "a", "movie", "food", "day", "was", "is", "very", "and", "it", "this", "that", "we", "they"]


def tiny_bert(folder: str | Path) -> str:
    """A 2-block BERT with a word-level vocabulary of the toy task, saved in `folder`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=64)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def sentiment(n: int, seed: int = 0) -> dict[str, list]:
    """{"text": [...], "label": [...]}: the label says whether positive or negative words dominate."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = rng.choices(POSITIVE if label else NEGATIVE, k=3) + rng.choices(FILLER, k=5)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return {"text": texts, "label": labels}
