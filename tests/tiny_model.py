"""A tiny real model for the serving and evaluation tests: a byte-level BPE tokenizer trained on
Wikipedia articles from ../shared/data and a 2-layer GPT trained on them for a few dozen steps on CPU."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tests.conftest import SHARED
from train import checkpoint
from train.model import GPT, ModelConfig
from train.tokenizer import load_vocab, train_tokenizer

WIKI = SHARED / "pretrain-text" / "wiki-demo" / "wiki_demo.txt"


def build_tiny_checkpoint(root: Path, steps: int = 40, max_seq_len: int = 128) -> Path:
    """The checkpoint folder (with its tokenizer.json next to it)."""
    articles = [line for line in WIKI.read_text().splitlines() if line.strip()]
    pq.write_table(pa.table({"text": articles[:20]}), root / "wiki.parquet")
    tokenizer = train_tokenizer([str(root / "wiki.parquet")], 512, str(root / "tokenizer.json"))
    vocab = load_vocab(str(tokenizer))
    ids = torch.tensor([t for a in articles[:20] for t in (vocab.bos_id, *vocab.encode(a[:4000]))])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=vocab.size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                            max_seq_len=max_seq_len))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=generator)
        batch = torch.stack([ids[s:s + 65] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = root / "tiny"
    checkpoint.save(str(out), model.eval(), None, steps, {"tokenizer": str(tokenizer)})
    checkpoint.keep_tokenizer(str(tokenizer), str(out))
    return out
