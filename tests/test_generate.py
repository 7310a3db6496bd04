"""Batched generation: a row decodes what it would alone, stop strings cut where they start even
across token boundaries, each row keeps its own sampling parameters, and finished rows leave the batch.
Sampling parameters follow one set of rules (train/sampling.py) in the engine and in `winnow generate`."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.tiny_model import WIKI
from train.generate import SamplingParams, TextTail, generate
from train.model import GPT, ModelConfig
from train.sampling import GREEDY_BELOW, SamplingError
from train.tokenizer import load_vocab, train_tokenizer

GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    pq.write_table(pa.table({"text": [a for a in WIKI.read_text().splitlines() if a.strip()][:20]}),
                   root / "wiki.parquet")
    vocab = load_vocab(str(train_tokenizer([str(root / "wiki.parquet")], 512, str(root / "tokenizer.json"))))
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=vocab.size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=128))
    with torch.no_grad():  # larger weights than at initialisation: greedy tokens vary, as a trained model's do
        for p in model.parameters():
            p.mul_(4.0)
    model.eval()
    texts = ["Anarchism", "The history of the city of", "In mathematics, a group is a set with an operation that",
             "A", "Paris is the capital and most populous city of France, with an estimated population of"]
    return model, vocab, [[vocab.bos_id, *vocab.encode(t)] for t in texts]


def test_a_batch_of_different_lengths_decodes_what_each_prompt_decodes_alone(tiny):
    model, vocab, prompts = tiny
    assert len({len(p) for p in prompts}) == len(prompts)
    batched = generate(model, vocab, prompts, GREEDY, stop_ids=set())
    for prompt, out in zip(prompts, batched, strict=True):
        alone = generate(model, vocab, [prompt], GREEDY, stop_ids=set())[0]
        assert out.tokens == alone.tokens and len(out.tokens) == 24 and out.finish_reason == "length"
        ids = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(24):  # no cache, no padding: the reference
                ids = torch.cat([ids, model(ids)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
        assert out.tokens == ids[0, len(prompt):].tolist()


def test_a_stop_string_across_a_token_boundary_cuts_the_text_where_it_starts(tiny):
    model, vocab, prompts = tiny
    longer = SamplingParams(max_new_tokens=64, temperature=0.0)
    full = generate(model, vocab, prompts[:2], longer, stop_ids=set())
    for prompt, out in zip(prompts[:2], full, strict=True):
        pieces = [vocab.decode(out.tokens[:k]) for k in range(len(out.tokens) + 1)]

        def plain(a: str, b: str) -> bool:  # b extends a by at least 2 plain characters
            return b.startswith(a) and len(b) - len(a) >= 2 and b[len(a):].isascii() and b[len(a):].isprintable()
        # a boundary between two tokens of plain text: the stop string spans it
        k = next(k for k in range(2, len(pieces) - 1) if plain(pieces[k - 1], pieces[k])
                 and plain(pieces[k], pieces[k + 1]))
        stop = pieces[k + 1][len(pieces[k]) - 2:len(pieces[k]) + 2]
        first = out.text.find(stop)
        cut = generate(model, vocab, [prompt],
                       SamplingParams(max_new_tokens=64, temperature=0.0, stop=["never there", stop]),
                       stop_ids=set())[0]
        assert cut.text == out.text[:first] and cut.finish_reason == "stop"
        assert cut.tokens == out.tokens[:len(cut.tokens)]
        assert vocab.decode(cut.tokens[:-1]).find(stop) < 0 <= vocab.decode(cut.tokens).find(stop)


def test_text_tail_waits_for_split_characters_and_finds_stops_spanning_tokens(tiny):
    _, vocab, _ = tiny
    text = "Zürich liegt am 日本語 See; the end."
    ids = vocab.encode(text)
    assert len(ids) > len(text.encode()) / 3  # a 512-token vocabulary splits the multi-byte characters
    tail = TextTail(vocab, ["本語 S", "end"])
    hits = [tail.add(t) for t in ids]
    first = next(i for i, h in enumerate(hits) if h is not None)
    assert hits[first] == text.index("本語 S")
    assert "本語 S" in vocab.decode(ids[:first + 1]) and "本語 S" not in vocab.decode(ids[:first])
    assert tail.text == text


def test_each_row_keeps_its_own_sampling_parameters(tiny):
    model, vocab, prompts = tiny
    greedy = generate(model, vocab, prompts[:4], GREEDY, stop_ids=set())
    rows = [GREEDY,
            SamplingParams(max_new_tokens=24, temperature=1.5, top_k=1, seed=3),  # top-1: the greedy tokens
            SamplingParams(max_new_tokens=5, temperature=0.0),  # its own token limit
            SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.9, min_p=0.05, seed=7)]
    out = generate(model, vocab, prompts[:4], rows, stop_ids=set())
    assert out[0].tokens == greedy[0].tokens
    assert out[1].tokens == greedy[1].tokens
    assert out[2].tokens == greedy[2].tokens[:5] and out[2].finish_reason == "length"
    assert out[3].tokens != greedy[3].tokens
    # a row with its own seed draws the same tokens alone or beside others
    alone = generate(model, vocab, [prompts[3]], [rows[3]], stop_ids=set())[0]
    assert alone.tokens == out[3].tokens
    other_seed = SamplingParams(**{**rows[3].__dict__, "seed": 8})
    assert generate(model, vocab, [prompts[3]], [other_seed], stop_ids=set())[0].tokens != out[3].tokens


def test_finished_rows_leave_the_batch(tiny):
    model, vocab, prompts = tiny
    order = [prompts[1], prompts[0], prompts[2]]
    free = [generate(model, vocab, [p], GREEDY, stop_ids=set())[0].tokens for p in order]
    # a stop token for the middle row, at its 4th token or later, that no other row draws before its limit
    k, stop_token = next((k, t) for k, t in enumerate(free[1]) if k >= 3 and t not in free[1][:k]
                         and t not in free[0][:2] and t not in free[2][:10])
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args, kwargs: sizes.append(args[0].shape[0]),
                                           with_kwargs=True)
    try:
        rows = [SamplingParams(max_new_tokens=2, temperature=0.0), GREEDY,
                SamplingParams(max_new_tokens=10, temperature=0.0)]
        out = generate(model, vocab, order, rows, stop_ids={stop_token})
    finally:
        hook.remove()
    assert [o.tokens for o in out] == [free[0][:2], free[1][:k], free[2][:10]]
    assert [o.finish_reason for o in out] == ["length", "stop", "length"]
    # the prompt pass, then one forward per step over the rows still going: a row that ends leaves
    steps = max(2, k + 1, 10)
    assert sizes == [3] + [3 if s < 2 else 2 if s < min(k + 1, 10) else 1 for s in range(1, steps)]


# Values outside the rules, and the option that sets each: the server refuses the same (tests/test_serve.py).
BAD_SAMPLING = [("temperature", -1.0), ("temperature", 2.5), ("temperature", float("nan")),
                ("temperature", float("inf")), ("top_p", 0.0), ("top_p", 1.5), ("top_p", float("nan")),
                ("top_k", -2), ("min_p", -0.1), ("min_p", 1.5), ("seed", -1), ("seed", 2**63),
                ("max_new_tokens", -1), ("best_of", 0)]
OPTIONS = {"max_new_tokens": "--max-tokens"}


@pytest.mark.parametrize("field,value", BAD_SAMPLING)
def test_sampling_parameters_outside_the_rules_are_refused_naming_the_field(field, value):
    with pytest.raises(SamplingError) as error:
        SamplingParams(**{field: value})
    assert error.value.field == field and error.value.option == OPTIONS.get(field, "--" + field.replace("_", "-"))


def test_extreme_but_valid_temperature_and_top_p_decode_the_greedy_tokens(tiny):
    """A temperature that rounds to 0 in float32 (or just below GREEDY_BELOW) is greedy, not a division
    by zero; a top-p that rounds to 0 keeps the top token, not none: both give the greedy tokens."""
    model, vocab, prompts = tiny
    prompts, steps = prompts[:3], 10
    greedy = [out.tokens for out in generate(model, vocab, prompts, SamplingParams(max_new_tokens=steps, temperature=0),
                                             stop_ids=set())]
    for params in (SamplingParams(max_new_tokens=steps, temperature=5e-324, seed=1),
                   SamplingParams(max_new_tokens=steps, temperature=GREEDY_BELOW / 2, seed=1),
                   SamplingParams(max_new_tokens=steps, temperature=1.0, top_p=1e-320, seed=1),
                   SamplingParams(max_new_tokens=steps, temperature=2.0, top_p=1e-9, min_p=1e-320, seed=2)):
        outs = generate(model, vocab, prompts, params, stop_ids=set())
        assert [out.tokens for out in outs] == greedy, params
        assert all(out.score == out.score and out.score <= 0 for out in outs), params  # no NaN


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.tiny_model import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("generate-cli"), steps=2))


@pytest.mark.parametrize("field,value", BAD_SAMPLING)
def test_winnow_generate_refuses_a_bad_sampling_option_in_one_line(checkpoint, capsys, field, value):
    from pipeline.cli import main

    option = OPTIONS.get(field, "--" + field.replace("_", "-"))
    assert main(["generate", checkpoint, "--prompt", "Hi", "--device", "cpu", f"{option}={value}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"winnow generate: {option} ")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_winnow_generate_with_a_denormal_temperature_or_top_p_prints_the_greedy_text(checkpoint, capsys):
    import json

    from pipeline.cli import main

    def text(*options: str) -> str:
        assert main(["generate", checkpoint, "--prompt", "The", "--max-tokens", "8", "--device", "cpu", "--json",
                     "--seed", "3", *options]) == 0
        row = json.loads(capsys.readouterr().out)
        assert row["score"] == row["score"]  # not NaN
        return row["text"]

    greedy = text("--temperature", "0")
    assert text("--temperature", "5e-324") == greedy
    assert text("--temperature", "1", "--top-p", "1e-320") == greedy
