#!/usr/bin/env bash
# The GPU checks, as one short script (under 10 minutes on one H100), run from the repository root:
#   bash bench/gpu_check.sh            (WINNOW_BENCH_RESULTS=DIR to keep the committed CPU figures as they are)
# 1. import parity on CUDA in bf16: Winnow's imported SmolLM2 against transformers' on the same GGUF;
# 2. LoRA SFT on SmolLM2 (r 16, every projection, the same alpaca rows, length, batch and steps):
#    `winnow train sft` against TRL's SFTTrainer with PEFT: tokens per second and peak GPU memory
#    (both sampled the same way, from nvidia-smi);
# 3. generation: bench/generate_vs_hf.py on CUDA (batch 1 and 16, greedy, against transformers' generate);
# 4. pretraining MFU of the 124M GPT-2 shape: bench/train_vs_hf.py on CUDA.
# Every figure goes to bench/results/gpu_*.json (or the benchmark's own file) with the device named.
set -euo pipefail
PY=${PY:-.venv/bin/python}
RESULTS=${WINNOW_BENCH_RESULTS:-bench/results}
WORK=${WINNOW_BENCH_WORK:-bench/work}/gpu_check
mkdir -p "$RESULTS" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the heredocs and $WORK/trl_lora.py import bench/ and train/
DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "device: $DEVICE"

# peak MiB used on the GPU while a command runs (nvidia-smi every 200 ms)
peak_mib() {
  local log="$WORK/mem.$$"; : > "$log"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$log" & local smi=$!
  "$@"; local rc=$?
  kill "$smi" 2>/dev/null || true; wait "$smi" 2>/dev/null || true
  PEAK=$(sort -n "$log" | tail -1); rm -f "$log"; return $rc
}

test -f "$WORK/smollm2/checkpoint.pt" || .venv/bin/winnow import smollm2-135m-instruct --out "$WORK/smollm2"

echo "== 1. import parity, CUDA bf16"
DEVICE="$DEVICE" WORK="$WORK" RESULTS="$RESULTS" $PY - <<'EOF'
import json, os, torch
from bench.generate_vs_hf import smollm2
from train.checkpoint import load_model
hf, tok = smollm2()
hf = hf.to("cuda", torch.bfloat16)
ours, _ = load_model(f"{os.environ['WORK']}/smollm2", "cuda")
ours = ours.to(torch.bfloat16)
texts = ["The capital of France is", "def fibonacci(n):", "Common Crawl is a non-profit that"]
diffs, agree, total = [], 0, 0
with torch.no_grad():
    for t in texts:
        ids = torch.tensor([tok(t)["input_ids"]], device="cuda")
        a, b = hf(ids).logits.float(), ours(ids)[0].float()
        diffs.append((a - b).abs().max().item())
        agree += (a.argmax(-1) == b.argmax(-1)).sum().item(); total += ids.numel()
out = {"device": os.environ["DEVICE"], "dtype": "bfloat16", "max_abs_logit_diff": max(diffs),
       "top1_agreement": agree / total, "positions": total}
print(out)
open(f"{os.environ['RESULTS']}/gpu_import_parity.json", "w").write(json.dumps(out, indent=1) + "\n")
EOF

echo "== 2. LoRA SFT: winnow against TRL + PEFT"
STEPS=40; SEQ=512; MB=8
$PY - <<EOF
import json
rows = json.load(open("../shared/data/sft/llamafactory-demo/alpaca_en_demo.json"))
open("$WORK/alpaca.json", "w").write(json.dumps(rows))
EOF
cat > "$WORK/sft-lora.yaml" <<EOF
out_dir: $WORK/winnow-lora
init_from: $WORK/smollm2
lora: {r: 16, alpha: 32, dropout: 0.0, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
sft: {data: [$WORK/alpaca.json], template: model, packing: true, val_fraction: 0.0}
seq_len: $SEQ
micro_batch: $MB
max_steps: $STEPS
optimizer: {lr: 2.0e-4, weight_decay: 0.0}
schedule: {kind: cosine, warmup_steps: 2, min_lr_frac: 0.1}
eval_every: 0
log_every: 10
EOF
rm -rf "$WORK/winnow-lora"
peak_mib .venv/bin/winnow train sft "$WORK/sft-lora.yaml"; WINNOW_PEAK=$PEAK
cat > "$WORK/trl_lora.py" <<'EOF'
import json, sys, time, torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer
from bench.generate_vs_hf import smollm2
work, steps, seq, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, tok = smollm2()
rows = json.load(open(f"{work}/alpaca.json"))
data = Dataset.from_list([{"messages": [{"role": "user", "content": r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")},
                                        {"role": "assistant", "content": r["output"]}]} for r in rows])
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 2: torch.cuda.synchronize(); self.t = time.perf_counter()
clock = Clock()
cfg = SFTConfig(output_dir=f"{work}/trl-lora", max_steps=steps, per_device_train_batch_size=mb, max_length=seq,
                packing=True, assistant_only_loss=False, completion_only_loss=True, learning_rate=2e-4, bf16=True,
                logging_steps=10, save_strategy="no", report_to=[], lr_scheduler_type="cosine", warmup_steps=2)
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                  "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora, callbacks=[clock])
trainer.train(); torch.cuda.synchronize()
tok_s = (steps - 2) * mb * seq / (time.perf_counter() - clock.t)
json.dump({"tok_per_s": tok_s}, open(f"{work}/trl.json", "w"))
EOF
peak_mib $PY "$WORK/trl_lora.py" "$WORK" $STEPS $SEQ $MB; TRL_PEAK=$PEAK
DEVICE="$DEVICE" WORK="$WORK" RESULTS="$RESULTS" WINNOW_PEAK=$WINNOW_PEAK TRL_PEAK=$TRL_PEAK $PY - <<EOF
import json, os
log = [json.loads(l) for l in open("$WORK/winnow-lora/log.jsonl") if '"tok_per_s"' in l]
ours, trl = log[-1]["tok_per_s"], json.load(open("$WORK/trl.json"))["tok_per_s"]
out = {"device": os.environ["DEVICE"], "model": "SmolLM2-135M-Instruct", "lora": "r16 alpha32, all projections",
       "steps": $STEPS, "seq_len": $SEQ, "micro_batch": $MB, "winnow_tok_s": ours, "trl_peft_tok_s": trl,
       "ratio": ours / trl, "winnow_peak_mib": int(os.environ["WINNOW_PEAK"]), "trl_peft_peak_mib": int(os.environ["TRL_PEAK"]),
       "note": "peak memory: nvidia-smi's memory.used, sampled every 200 ms, the same for both"}
print(out)
open("$RESULTS/gpu_lora_vs_peft.json", "w").write(json.dumps(out, indent=1) + "\n")
EOF

echo "== 3. generation against transformers' generate"
$PY bench/generate_vs_hf.py --device cuda --new-tokens 256 --batch 16 --single 4

echo "== 4. 124M pretraining MFU"
$PY bench/train_vs_hf.py --device cuda --layers 12 --heads 12 --width 768 --vocab 50304 --seq-len 1024 \
    --batch 16 --steps 30 --warmup 5 --sft-examples 256
echo "done: $RESULTS/gpu_import_parity.json gpu_lora_vs_peft.json generate_vs_hf.json train_vs_hf.json"
