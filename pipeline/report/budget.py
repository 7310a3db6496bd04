"""What a run's output is worth and what producing it costs, with every assumption explicit.

- Training budget: D tokens train a compute-optimal model of N = D / 20 parameters (Chinchilla,
  Hoffmann et al. 2022: about 20 tokens per parameter). Training costs C = 6·N·D FLOPs. At a
  model FLOPs utilization (MFU) of u on GPUs of peak throughput P, that is C / (u·P) GPU-seconds;
  total cost = price per GPU-hour × GPUs × wall hours.
- Crawl cost: each stage's measured documents per CPU-second, applied to the share of a full
  Common Crawl dump that would reach that stage at this run's survival rates.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# English web text averages about 4 characters per token with GPT-2-style byte-level BPE
# tokenizers of 32k-100k entries; used only when no project tokenizer is given.
CHARS_PER_TOKEN = 4.0
TOKENS_PER_PARAMETER = 20


class Assumptions(BaseModel):
    """The numbers the cost and budget sections rest on; `winnow report` options set them."""

    model_config = ConfigDict(extra="forbid")
    gpu: str = "H100 SXM"
    gpu_peak_tflops: float = Field(989.0, gt=0)  # dense BF16
    mfu: float = Field(0.40, gt=0, le=1)
    gpu_hour_usd: float = Field(2.50, ge=0)
    gpus: int = Field(8, ge=1)
    cpu_hour_usd: float = Field(0.04, ge=0)  # one vCPU-hour on a cloud spot/on-demand mix
    dump_pages: float = Field(2.5e9, gt=0)  # HTML pages in one recent Common Crawl dump


def train_cost(tokens: float, params: float, a: Assumptions) -> dict[str, Any]:
    flops = 6 * params * tokens
    gpu_hours = flops / (a.mfu * a.gpu_peak_tflops * 1e12) / 3600
    return {"tokens": tokens, "params": params, "flops": flops, "gpu_hours": gpu_hours,
            "wall_hours": gpu_hours / a.gpus, "cost_usd": a.gpu_hour_usd * a.gpus * (gpu_hours / a.gpus)}


def training_budget(tokens: int, docs_in: int, a: Assumptions) -> dict[str, Any]:
    """Compute-optimal training on this output, and on a full dump run through the same pipeline."""
    this_run = train_cost(tokens, tokens / TOKENS_PER_PARAMETER, a)
    tokens_per_page = tokens / docs_in if docs_in else 0.0
    dump_tokens = tokens_per_page * a.dump_pages
    full_dump = train_cost(dump_tokens, dump_tokens / TOKENS_PER_PARAMETER, a)
    return {"this_run": this_run, "full_dump": full_dump, "tokens_per_input_page": tokens_per_page}


def crawl_cost(stages: list[dict[str, Any]], a: Assumptions) -> dict[str, Any]:
    """Per stage: wall and CPU time, documents per second per core, and a full dump's CPU cost."""
    first_in = stages[0]["docs_in"] if stages else 0
    rows, total_core_hours = [], 0.0
    for stage in stages:
        rate = stage["docs_in"] / stage["cpu_s"] if stage["cpu_s"] else None
        share = stage["docs_in"] / first_in if first_in else 0.0
        core_hours = a.dump_pages * share / rate / 3600 if rate else 0.0
        total_core_hours += core_hours
        rows.append({"stage": stage["stage"], "wall_s": stage["wall_s"], "cpu_s": stage["cpu_s"],
                     "reused": stage.get("reused", False),
                     "docs_in": stage["docs_in"], "docs_per_s_core": rate, "dump_share": share,
                     "dump_core_hours": core_hours, "dump_cost_usd": core_hours * a.cpu_hour_usd})
    return {"stages": rows, "wall_s": sum(s["wall_s"] for s in stages), "cpu_s": sum(s["cpu_s"] for s in stages),
            "dump_core_hours": total_core_hours, "dump_cost_usd": total_core_hours * a.cpu_hour_usd}
