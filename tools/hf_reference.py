#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for make_model's tiny presets.

Needs torch + transformers (a GPU host; the dev machine has neither). Usage:

    deno task make-model --preset tiny-llama --out /tmp/m/tiny-llama
    deno task make-model --preset tiny-mistral --out /tmp/m/tiny-mistral
    deno task make-model --preset tiny-qwen2 --out /tmp/m/tiny-qwen2
    deno task make-model --preset tiny-qwen3 --out /tmp/m/tiny-qwen3
    python3 tools/hf_reference.py /tmp/m/tiny-llama /tmp/m/tiny-mistral /tmp/m/tiny-qwen2 /tmp/m/tiny-qwen3

For each folder it writes tests/fixtures/hf_ref/<preset>.json (<preset>-<dtype>.json for a non-f32 folder;
or --out DIR):
    {preset, seed, dtype, prompts: [[ids]], positions: [[pos]], logits_f32: [prompt][position][vocab]}
Logits come from a float32 CPU run with eager attention, rounded to 5 decimals, for positions
0, n//2 and n-1 of each prompt (keeps files small). With CUDA it also runs float16 and prints how far it
lands from float32, as a guide for the tolerance of the engine's f16 path.
"""

import argparse
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

PROMPT_LENGTHS = (5, 11, 17)
FIRST_ID = 3  # the tiny presets keep ids 0..2 for special tokens


def fixed_prompts(vocab_size):
    """Fixed, spread-out token ids; no randomness so fixtures never drift."""
    span = vocab_size - FIRST_ID
    return [[FIRST_ID + (i * 37 + p * 101 + 7) % span for i in range(n)] for p, n in enumerate(PROMPT_LENGTHS)]


def positions_for(n):
    return sorted({0, n // 2, n - 1})


def load(path, dtype, device):
    # transformers 5 renamed torch_dtype to dtype; 4.x silently ignores an unknown "dtype".
    major = int(transformers.__version__.split(".")[0])
    kw = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **kw)
    return model.to(device).eval()


@torch.no_grad()
def run(model, prompts, device):
    out = []
    for ids in prompts:
        logits = model(torch.tensor([ids], device=device)).logits[0].float().cpu()
        out.append(logits[positions_for(len(ids))])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="model folders written by tools/make_model.ts")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "hf_ref"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    for folder in args.folders:
        info = {}
        info_path = os.path.join(folder, "make_model.json")
        if os.path.exists(info_path):
            with open(info_path) as f:
                info = json.load(f)
        preset = info.get("preset") or os.path.basename(os.path.normpath(folder))
        with open(os.path.join(folder, "config.json")) as f:
            vocab = json.load(f)["vocab_size"]
        prompts = fixed_prompts(vocab)

        ref = run(load(folder, torch.float32, "cpu"), prompts, "cpu")
        max_abs = max(float(t.abs().max()) for t in ref)
        print(f"{preset}: vocab {vocab}, prompts {[len(p) for p in prompts]}, max |logit| f32 = {max_abs:.4f}")

        if torch.cuda.is_available():
            for dt, name in ((torch.float32, "f32"), (torch.float16, "f16")):
                got = run(load(folder, dt, "cuda"), prompts, "cuda")
                diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
                print(f"  cuda {name} vs cpu f32: max abs diff {diff:.6f}")
        else:
            print("  (no CUDA: skipped the float16 comparison)")

        doc = {
            "preset": preset,
            "seed": info.get("seed"),
            "dtype": info.get("dtype"),
            "prompts": prompts,
            "positions": [positions_for(len(p)) for p in prompts],
            "logits_f32": [[[round(float(x), 5) for x in row] for row in t] for t in ref],
        }
        # A non-default dtype (e.g. --dtype bf16) gets its own file instead of overwriting the f32 one.
        suffix = "" if info.get("dtype") in (None, "f32") else f"-{info['dtype']}"
        path = os.path.join(args.out, f"{preset}{suffix}.json")
        with open(path, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        print(f"  wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
