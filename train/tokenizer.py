"""The project tokenizer: byte-level BPE trained with Hugging Face `tokenizers` on curated shards.

Byte-level means every string encodes, whatever its script, with no unknown token. Special tokens
mark document boundaries (BOS, EOS), padding, and the chat roles the SFT template uses. Any other
`tokenizer.json` works too. When a `tokenizer_config.json` sits beside it (an imported model's, in
Hugging Face's format), its `bos_token`, `eos_token` and `pad_token` are the special tokens and its
`chat_template` comes along; otherwise `Vocab` looks them up by name and falls back to what the
tokenizer has (GPT-2's `<|endoftext|>` serves as both BOS and EOS; Llama's `<s>` and `</s>`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end|>"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLES.values(), END_OF_TURN]
# Other tokenizers' names for the same tokens: GPT-2's one token for both ends, Llama's pair.
BOS_FALLBACKS = ("<|endoftext|>", "<s>", "<|begin_of_text|>")
EOS_FALLBACKS = ("<|endoftext|>", "</s>", "<|end_of_text|>")


def parquet_inputs(paths: list[str]) -> list[str]:
    """Parquet files from files, folders and run directories (their `output/`), in a stable order."""
    files: list[str] = []
    for path in paths:
        p = Path(path)
        if (p / "run.yaml").exists():
            p = p / "output"
        found = sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else [str(p)] if p.exists() else []
        if not found:
            raise FileNotFoundError(f"{path}: no Parquet files")
        files += found
    return files


def iter_texts(files: list[str], max_docs: int | None = None, column: str = "text") -> Iterator[str]:
    data = ds.dataset(files, format="parquet")
    seen = 0
    for batch in data.to_batches(columns=[column], batch_size=1024):
        for text in batch.column(column).to_pylist():
            if max_docs is not None and seen >= max_docs:
                return
            if text:
                seen += 1
                yield text


def train_tokenizer(files: list[str], vocab_size: int, out: str, max_docs: int | None = None,
                    min_frequency: int = 2) -> Path:
    """Trains and saves `tokenizer.json`; the same inputs give the same file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(iter_texts(files, max_docs), trainer=trainer)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tokenizer.save(str(tmp))
    tmp.replace(path)
    return path


@dataclass
class Vocab:
    """A loaded tokenizer and the ids of the special tokens the trainer needs."""

    tokenizer: object
    path: str
    bos_id: int
    eos_id: int
    pad_id: int
    role_ids: dict[str, int]
    end_of_turn_id: int
    chat_template: str | None = None  # the model's own Jinja chat template (imported models)
    stop_ids: tuple[int, ...] = ()  # every token that ends an answer: EOS, end of turn, and the model's own

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def token_name(value: object) -> str | None:
    """A special token as `tokenizer_config.json` writes it: a string, or an added token's dict."""
    return value.get("content") if isinstance(value, dict) else value  # type: ignore[return-value]


def tokenizer_settings(path: str) -> dict:
    """The `tokenizer_config.json` beside a tokenizer, or {}; a list of named chat templates
    (an older Hugging Face layout) becomes the one named `default`."""
    p = Path(path).with_name(TOKENIZER_CONFIG)
    if not p.exists():
        return {}
    settings = json.loads(p.read_text())
    template = settings.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template}
        settings["chat_template"] = named.get("default")
    return settings


def tokenizer_file(path: str) -> str:
    """A tokenizer.json, or a checkpoint folder (an imported model's, or a training run's) holding one."""
    p = Path(path)
    if p.is_dir():
        if not (p / "tokenizer.json").exists():
            raise FileNotFoundError(f"{path}: a folder without tokenizer.json; name a tokenizer.json or a checkpoint "
                                    "folder")
        return str(p / "tokenizer.json")
    return path


def load_vocab(path: str) -> Vocab:
    from tokenizers import Tokenizer

    path = tokenizer_file(path)
    tokenizer = Tokenizer.from_file(path)
    settings = tokenizer_settings(path)
    if settings:
        return declared_vocab(tokenizer, path, settings)

    def find(*names: str) -> int | None:
        for name in names:
            token_id = tokenizer.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    bos = find(BOS, *BOS_FALLBACKS)
    if bos is None:
        raise ValueError(f"{path}: no BOS token ({BOS} or one of {BOS_FALLBACKS}); add one to the tokenizer")
    eos = find(EOS, *EOS_FALLBACKS)
    eos = bos if eos is None else eos
    pad = find(PAD)
    pad = eos if pad is None else pad
    roles = {role: find(token) for role, token in ROLES.items()}
    end = find(END_OF_TURN)
    end = eos if end is None else end
    return Vocab(tokenizer, path, bos, eos, pad, {k: v for k, v in roles.items() if v is not None}, end,
                 stop_ids=tuple(sorted({eos, end})))


def declared_vocab(tokenizer: object, path: str, settings: dict) -> Vocab:
    """The special tokens a model's `tokenizer_config.json` declares, not guessed from names. With no
    BOS declared (Qwen's), a document starts with EOS, as it follows one in their pretraining."""
    where = Path(path).with_name(TOKENIZER_CONFIG)

    def lookup(key: str) -> int | None:
        name = token_name(settings.get(key))
        if name is None:
            return None
        token_id = tokenizer.token_to_id(name)
        if token_id is None:
            raise ValueError(f"{where}: {key} {name!r} is not a token of {path}; fix the file or re-import the model")
        return token_id

    eos = lookup("eos_token")
    if eos is None:
        raise ValueError(f"{where}: no eos_token; a model needs one to end its answers")
    bos = lookup("bos_token")
    pad = lookup("pad_token")
    stops = {eos, *(i for i in map(tokenizer.token_to_id, settings.get("stop_tokens", [])) if i is not None)}
    return Vocab(tokenizer, path, eos if bos is None else bos, eos, eos if pad is None else pad, {}, eos,
                 chat_template=settings.get("chat_template"), stop_ids=tuple(sorted(stops)))


def tokenizer_digest(path: str) -> str:
    """A short hash of the tokenizer's content, recorded with token shards and checkpoints."""
    import hashlib

    path = tokenizer_file(path)
    data = json.loads(Path(path).read_text())
    settings = tokenizer_settings(path)
    if settings:  # declared special tokens change how documents are framed
        data = {"tokenizer": data, "special": [settings.get(f"{k}_token") for k in ("bos", "eos", "pad")]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
