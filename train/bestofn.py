"""`winnow bestofn CKPT --prompts FILE --out DIR`: rejection sampling and preference pairs from a model.

For every prompt it samples N answers from the checkpoint, scores each with a judge and writes
- `sft.jsonl`: the best answer as a chat example (`messages`), for another round of SFT;
- `pairs.jsonl`: best against worst as `{prompt, chosen, rejected}` for `winnow train dpo`;
- `samples.jsonl`: every answer with its score, to audit the judge;
- `stats.json`: prompts read, skipped (with the reason), pairs written, and the score spread.

Judges:
- `--judge-checkpoint CKPT`: the mean log-probability of the answer's tokens under another
  checkpoint (for instance a larger or later model), in the template that model was tuned with;
- `--judge-endpoint URL --judge-model NAME`: an OpenAI-compatible server, through the same client
  as the synthetic-data stage (the `llmclient` package), asked for a score from 1 to 10.

Prompts with fewer than two distinct answers, or whose best and worst scores tie, give SFT data
but no pair: a pair must tell the model something.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

JUDGE_PROMPT = ("Rate the assistant's answer to the user's request for helpfulness, correctness and clarity. "
                "Reply with a single integer from 1 (useless) to 10 (excellent).\n\nRequest:\n{prompt}\n\n"
                "Answer:\n{answer}\n\nScore:")


class JudgeFailed(RuntimeError):
    """The judge gave no score at all: writing empty files would look like a finished run."""


def read_prompts(paths: list[str]) -> tuple[list[list[dict[str, str]]], list[str]]:
    """Conversations to answer (each ending with a user turn), and what was skipped and why.
    Rows: `prompt` (text or messages), alpaca (`instruction`, `input`), chat (`messages`: a final
    assistant turn is dropped), or plain text lines in a .txt file."""
    from train.prefdata import messages
    from train.sft import read_examples, read_text

    out, skipped = [], []
    for path in paths:
        if path.endswith(".txt"):
            out += [[{"role": "user", "content": line}] for line in read_text(Path(path)).splitlines() if line.strip()]
            continue
        for k, row in enumerate(read_examples([path])):
            try:
                if "prompt" in row:
                    turns = messages(row["prompt"])
                elif "instruction" in row:
                    turns = [{"role": "user", "content": row["instruction"]
                              + (f"\n\n{row['input']}" if row.get("input") else "")}]
                else:
                    turns = messages(row.get("messages", row.get("conversations")))
                    while turns and turns[-1]["role"] == "assistant":
                        turns = turns[:-1]
                if not turns or not all(isinstance(t["content"], str) for t in turns):
                    raise ValueError("no prompt text")
                out.append(turns)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                skipped.append(f"{path}: row {k}: {exc}")
    return out, skipped


def judge_logprob(judge: str, prompts: list[list[dict[str, str]]], answers: list[list[str]], device: str
                  ) -> list[list[float]]:
    """Mean log-probability per answer token under the judge checkpoint."""
    import torch

    from train.chat import resolve_template
    from train.checkpoint import load_model, prompt_template
    from train.sft import prompt_ids
    from train.tokenizer import load_vocab

    model, ckpt = load_model(judge, device)
    vocab = load_vocab(ckpt["tokenizer"])
    template = resolve_template(vocab, prompt_template(ckpt))  # `auto` as training resolved it
    closing = vocab.end_of_turn_id if template == "chat" else vocab.eos_id
    scores = []
    with torch.no_grad():
        for turns, group in zip(prompts, answers, strict=True):
            prompt = prompt_ids(vocab, template, messages=turns)
            row = []
            for answer in group:
                body = [*vocab.encode(answer), closing]
                ids = (prompt + body)[-model.cfg.max_seq_len - 1:]
                n = min(len(body), len(ids) - 1)
                x = torch.tensor([ids[:-1]], device=device)
                logits, _ = model(x)
                logp = torch.log_softmax(logits[0, -n:].float(), -1).gather(-1, torch.tensor(ids[-n:], device=device)
                                                                            [:, None])
                row.append(logp.mean().item())
            scores.append(row)
    return scores


def judge_endpoint(client: Any, prompts: list[list[dict[str, str]]], answers: list[list[str]]
                   ) -> tuple[list[list[float | None]], int]:
    """A 1-10 score per answer from an OpenAI-compatible judge; None where it failed or gave no number."""
    flat = [(p, a) for p, group in zip(prompts, answers, strict=True) for a in group]
    requests = [[{"role": "user", "content": JUDGE_PROMPT.format(prompt=p[-1]["content"], answer=a)}] for p, a in flat]
    replies = client.chat_many(requests, temperature=0.0, max_tokens=8)
    values: list[float | None] = []
    for reply in replies:
        found = re.search(r"\b(10|[1-9])\b", reply or "")
        values.append(float(found.group(1)) if found else None)
    it = iter(values)
    return [[next(it) for _ in group] for group in answers], sum(v is None for v in values)


def best_of_n(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from train.checkpoint import load_model, prompt_template
    from train.generate import SamplingParams, generate
    from train.sft import prompt_ids
    from train.tokenizer import load_vocab

    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)  # checked by the rules winnow serve applies, before any work
    prompts, skipped = read_prompts(args.prompts)
    if args.limit:
        prompts = prompts[:args.limit]
    if not prompts:
        raise ValueError(f"no prompts in {', '.join(args.prompts)} ({len(skipped)} rows skipped)")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    model, ckpt = load_model(args.checkpoint, device)
    vocab = load_vocab(ckpt["tokenizer"])
    template = prompt_template(ckpt)
    room = [len(prompt_ids(vocab, template, messages=p)) < model.cfg.max_seq_len - 1 for p in prompts]
    skipped += [f"prompt {k}: longer than the model's context ({model.cfg.max_seq_len} tokens)"
                for k, fits in enumerate(room) if not fits]
    prompts = [p for p, fits in zip(prompts, room, strict=True) if fits]
    if not prompts:
        raise ValueError(f"every prompt is longer than the model's context ({model.cfg.max_seq_len} tokens)")
    answers: list[list[str]] = []
    for start in range(0, len(prompts), args.batch):
        chunk = prompts[start:start + args.batch]
        ids = [prompt_ids(vocab, template, messages=p) for p in chunk for _ in range(args.n)]
        # One generator for the whole batch: the N copies of a prompt draw different samples.
        done = generate(model, vocab, ids, SamplingParams(**{**params.__dict__, "seed": args.seed + start}), device)
        answers += [[c.text for c in done[k * args.n:(k + 1) * args.n]] for k in range(len(chunk))]
    del model
    failed = 0
    if args.judge_endpoint:
        from llmclient import LLMClient

        client = LLMClient(base_url=args.judge_endpoint, model=args.judge_model or "judge")
        scores, failed = judge_endpoint(client, prompts, answers)
        if failed == sum(len(group) for group in answers):
            raise JudgeFailed(f"the judge at {args.judge_endpoint} scored none of {failed:,} answers (unreachable, "
                              "or no 1-10 number in its replies): nothing written to " + args.out
                              + "; check --judge-endpoint and --judge-model")
    else:
        scores = judge_logprob(args.judge_checkpoint, prompts, answers, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_pairs, spreads = 0, []
    with (out / "sft.jsonl").open("w") as sft, (out / "pairs.jsonl").open("w") as pairs, \
            (out / "samples.jsonl").open("w") as samples:
        for turns, group, values in zip(prompts, answers, scores, strict=True):
            samples.write(json.dumps({"prompt": turns, "answers": group, "scores": values}) + "\n")
            scored = [(s, a) for s, a in zip(values, group, strict=True) if s is not None and a.strip()]
            if not scored:
                continue
            scored.sort(key=lambda item: -item[0])
            (best_score, best), (worst_score, worst) = scored[0], scored[-1]
            sft.write(json.dumps({"messages": [*turns, {"role": "assistant", "content": best}],
                                  "score": best_score}) + "\n")
            if best_score > worst_score and best != worst:
                pairs.write(json.dumps({"prompt": turns, "chosen": best, "rejected": worst,
                                        "chosen_score": best_score, "rejected_score": worst_score}) + "\n")
                n_pairs += 1
                spreads.append(best_score - worst_score)
    stats = {"prompts": len(prompts), "samples_per_prompt": args.n, "skipped_rows": len(skipped),
             "skipped_examples": skipped[:5], "judge_failures": failed, "pairs": n_pairs,
             "mean_score_spread": round(sum(spreads) / len(spreads), 4) if spreads else None,
             "judge": args.judge_endpoint or args.judge_checkpoint}
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def cmd_bestofn(args: argparse.Namespace) -> int:
    from train.sampling import SamplingError

    if bool(args.judge_checkpoint) == bool(args.judge_endpoint):
        print("winnow bestofn: give one judge: --judge-checkpoint CKPT or --judge-endpoint URL", file=sys.stderr)
        return 2
    if args.n < 1:
        print(f"winnow bestofn: -n should be at least 1 (got {args.n})", file=sys.stderr)
        return 2
    try:
        stats = best_of_n(args)
    except SamplingError as exc:
        print(f"winnow bestofn: {exc.option} {exc.problem}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"winnow bestofn: {exc}", file=sys.stderr)
        return 2
    except JudgeFailed as exc:
        print(f"winnow bestofn: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bestofn", help="sample N answers per prompt, judge them: best as SFT data, "
                                       "best vs worst as DPO pairs")
    p.add_argument("checkpoint", help="the model to sample from (a training out_dir or checkpoint.pt)")
    p.add_argument("--prompts", action="append", required=True, help="JSON, JSONL, Parquet or .txt (repeatable)")
    p.add_argument("--out", required=True, help="folder for sft.jsonl, pairs.jsonl and stats.json")
    p.add_argument("-n", "--n", type=int, default=4, help="answers per prompt (default 4)")
    p.add_argument("--judge-checkpoint", help="score by mean answer log-prob under this checkpoint")
    p.add_argument("--judge-endpoint", help="score 1-10 by an OpenAI-compatible server, e.g. http://host:8000/v1")
    p.add_argument("--judge-model", help="the model name the judge endpoint expects")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0, help="0 to 2 (default 1.0); below 1e-5: greedy")
    p.add_argument("--top-p", type=float, default=0.95, help="in (0, 1], at least the top token (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="prompts sampled together")
    p.add_argument("--limit", type=int, help="at most this many prompts")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=cmd_bestofn)
