#!/usr/bin/env python3
"""Peer benchmark: the ragtime bench workload through Hugging Face transformers.

The workload comes from `deno task bench --dump-workload PATH` (same flags and seed as the HTTP run),
so both sides see identical prompts and output lengths. Every request must produce exactly its
output length (EOS is disabled); the script checks that and reports any mismatch.

Modes:
  cb               transformers' continuous batching (init/context manager + add_request with a
                   per-request max_new_tokens; falls back to generate_batch grouped by output length
                   when the installed version has no per-request limit).
  generate-static  model.generate on static batches (default 32) in workload order, left padded,
                   each batch run to its longest output. Throughput counts the requested tokens only.

Timing is offline: all requests are submitted at t0 (like --rate inf), with no HTTP or tokenizer
in the loop, after a warm-up on the workload's warmup requests.

  python3 bench/peer/hf_cb.py --model DIR --workload W.json [--mode cb] [--result-json OUT.json]
"""

import argparse
import inspect
import json
import math
import platform
import sys
import time


def percentile(sorted_vals, p):
    """Linear interpolation between closest ranks (numpy's default), as bench/lib/stats.ts."""
    if not sorted_vals:
        return None
    rank = p / 100 * (len(sorted_vals) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (rank - lo)


def summarize(vals):
    s = sorted(vals)
    if not s:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
    return {
        "n": len(s),
        "mean": sum(s) / len(s),
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "min": s[0],
        "max": s[-1],
    }


def load_workload(path):
    with open(path) as f:
        doc = json.load(f)
    if doc.get("format") != "ragtime-bench-workload" or doc.get("version") != 1:
        sys.exit(f"{path}: not a ragtime bench workload (write one with `deno task bench --dump-workload`)")
    return doc


def to_ids(items, tokenizer):
    """[(prompt ids, output length)]; text prompts are tokenized like the server does (with BOS)."""
    out = []
    for it in items:
        if "prompt_ids" in it:
            ids = list(it["prompt_ids"])
        else:
            if tokenizer is None:
                sys.exit("workload has text prompts but the model folder has no tokenizer")
            ids = tokenizer(it["prompt"], add_special_tokens=True)["input_ids"]
        out.append((ids, int(it["output_len"])))
    return out


def environment(torch, transformers, device):
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def load_model(args, torch):
    from transformers import AutoModelForCausalLM

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    attn = args.attn_implementation
    if args.mode == "generate-static" and attn.startswith("paged|"):
        # Plain generate() has no paged cache; use the same kernel family without paging.
        attn = attn[len("paged|"):]
    kw = {"attn_implementation": attn}
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, **kw)
    except TypeError:
        # Older releases name it torch_dtype.
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype, **kw)
    device = torch.device(args.device)
    return model.to(device).eval(), device, attn


def eos_ids(model):
    for src in (getattr(model, "generation_config", None), model.config):
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if v is not None:
            return v
    return None


def filter_kwargs(fn, kwargs):
    """Only the keyword arguments `fn` accepts (for API drift across transformers releases)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def cb_config(args):
    from transformers import ContinuousBatchingConfig

    overrides = {}
    if args.block_size is not None:
        overrides["block_size"] = args.block_size
    if args.num_blocks is not None:
        overrides["num_blocks"] = args.num_blocks
    if args.max_batch_tokens is not None:
        overrides["max_batch_tokens"] = args.max_batch_tokens
    if args.max_memory_percent is not None:
        overrides["max_memory_percent"] = args.max_memory_percent
    if args.cuda_graph != "auto":
        overrides["use_cuda_graph"] = args.cuda_graph == "on"
    if args.compile_level:
        overrides["default_compile_level"] = args.compile_level
    return ContinuousBatchingConfig(**overrides), overrides


def run_cb(model, warm, reqs, args, torch, notes):
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching import ContinuousBatchingManager

    max_out = max(n for _, n in warm + reqs)
    # eos_token_id=None becomes -1 (disabled) in init_continuous_batching; every request also passes -1.
    gen_cfg = GenerationConfig(max_new_tokens=max_out, do_sample=False, eos_token_id=None)
    cfg, overrides = cb_config(args)
    add_params = inspect.signature(ContinuousBatchingManager.add_request).parameters
    per_request = "max_new_tokens" in add_params and hasattr(model, "continuous_batching_context_manager")
    info = {"per_request_max_new_tokens": per_request, "cb_config_overrides": overrides}
    if not per_request:
        notes.append(
            "no per-request max_new_tokens: generate_batch per output length, one group after another; "
            "each group's manager setup is inside the timed region, so this understates transformers"
        )
        return run_cb_grouped(model, warm, reqs, gen_cfg, cfg, args, torch, info)

    cm_kwargs = {
        "generation_config": gen_cfg,
        "continuous_batching_config": cfg,
        "block": True,
        "timeout": 30,
        "warmup": True,
    }
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints

        all_items = warm + reqs
        cm_kwargs["workload_hints"] = WorkloadHints(
            max_prompt_length=max(len(p) for p, _ in all_items),
            max_generated_length=max_out,
            num_requests=max(len(warm), len(reqs)),
        )
    except ImportError:
        notes.append("no WorkloadHints in this transformers; the cache is sized by defaults")
    cm_kwargs = filter_kwargs(model.continuous_batching_context_manager, cm_kwargs)

    def submit(manager, items, prefix):
        ids = []
        for i, (prompt, n) in enumerate(items):
            kw = filter_kwargs(
                manager.add_request,
                {"request_id": f"{prefix}{i}", "max_new_tokens": n, "eos_token_id": -1, "record_timestamps": True},
            )
            rid = manager.add_request(prompt, **kw)
            if rid is None:
                raise RuntimeError(f"request {prefix}{i} was refused by the manager")
            ids.append(rid)
        return ids

    def collect(manager, ids, deadline):
        pending, done = set(ids), {}
        while pending:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{len(pending)} requests unfinished at the --timeout deadline")
            res = manager.get_result(timeout=1)
            if res is None:
                if not manager.is_running():
                    raise RuntimeError(f"generation thread stopped with {len(pending)} requests unfinished")
                continue
            if res.request_id in pending and res.is_finished():
                pending.discard(res.request_id)
                done[res.request_id] = res
        return [done[i] for i in ids]

    deadline = time.perf_counter() + args.timeout
    t_setup = time.perf_counter()
    with model.continuous_batching_context_manager(**cm_kwargs) as manager:
        info["manager_setup_s"] = time.perf_counter() - t_setup  # includes CUDA graph capture
        if warm:
            t = time.perf_counter()
            collect(manager, submit(manager, warm, "warm"), deadline)
            info["warmup_s"] = time.perf_counter() - t
        sync(torch)
        t0 = time.perf_counter()
        ids = submit(manager, reqs, "req")
        outs = collect(manager, ids, deadline)
        sync(torch)
        t1 = time.perf_counter()

    per_req = []
    for (prompt, n), o in zip(reqs, outs):
        gen = len(o.generated_tokens)
        row = {"prompt_tokens": len(prompt), "expected": n, "generated": gen, "error": o.error}
        ts = getattr(o, "timestamps", None)
        if ts:
            row["ttft_ms"] = (ts[0] - o.created_time) * 1000
        if o.lifespan and o.lifespan[1] > 0:
            row["e2e_ms"] = (o.lifespan[1] - o.created_time) * 1000
        per_req.append(row)
    return t1 - t0, per_req, info


def run_cb_grouped(model, warm, reqs, gen_cfg, cfg, args, torch, info):
    groups = {}
    for i, (_, n) in enumerate(reqs):
        groups.setdefault(n, []).append(i)

    def batch(items, n):
        gc = gen_cfg.__class__(max_new_tokens=n, do_sample=False, eos_token_id=None)
        kw = filter_kwargs(model.generate_batch, {"generation_config": gc, "continuous_batching_config": cfg, "progress_bar": False})
        res = model.generate_batch(inputs=[p for p, _ in items], **kw)
        return list(res.values())

    if warm:
        batch(warm, max(n for _, n in warm))
    sync(torch)
    t0 = time.perf_counter()
    outs = [None] * len(reqs)
    for n, idx in groups.items():
        for i, o in zip(idx, batch([reqs[i] for i in idx], n)):
            outs[i] = o
    sync(torch)
    t1 = time.perf_counter()
    info["groups"] = len(groups)
    per_req = [
        {
            "prompt_tokens": len(p),
            "expected": n,
            "generated": len(o.generated_tokens) if o is not None else 0,
            "error": o.error if o is not None else "missing result",
        }
        for (p, n), o in zip(reqs, outs)
    ]
    return t1 - t0, per_req, info


def run_static(model, warm, reqs, args, torch, device, notes):
    from transformers import GenerationConfig

    pad = model.config.pad_token_id
    pad = 0 if pad is None else (pad[0] if isinstance(pad, list) else pad)
    eos = eos_ids(model)
    bs = args.static_batch_size

    def gen_batch(items):
        width = max(len(p) for p, _ in items)
        m = max(n for _, n in items)
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, (p, _) in enumerate(items):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        # min_new_tokens == max_new_tokens masks EOS, so every row runs exactly m steps.
        gc = GenerationConfig(max_new_tokens=m, min_new_tokens=m, do_sample=False, pad_token_id=pad, eos_token_id=eos)
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gc)
        return out.shape[1] - width, m

    if warm:
        for s in range(0, len(warm), bs):
            gen_batch(warm[s:s + bs])
    sync(torch)
    t0 = time.perf_counter()
    per_req, computed, batches = [], 0, 0
    for s in range(0, len(reqs), bs):
        chunk = reqs[s:s + bs]
        got, m = gen_batch(chunk)
        batches += 1
        computed += got * len(chunk)
        for p, n in chunk:
            # A row keeps its first n tokens; it "generated" n if the batch ran at least that far.
            per_req.append({"prompt_tokens": len(p), "expected": n, "generated": n if got >= n else got, "error": None})
        if got != m:
            notes.append(f"batch {batches}: generated {got} steps, expected {m}")
    sync(torch)
    t1 = time.perf_counter()
    info = {"static_batch_size": bs, "batches": batches, "computed_output_tokens": computed}
    return t1 - t0, per_req, info


def sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face model folder (config.json + safetensors)")
    ap.add_argument("--workload", required=True, help="JSON from `deno task bench --dump-workload`")
    ap.add_argument("--mode", choices=["cb", "generate-static"], default="cb")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--attn-implementation", default="paged|sdpa",
                    help="paged|sdpa by default: transformers would otherwise probe for flash-attn kernels")
    ap.add_argument("--static-batch-size", type=int, default=32)
    ap.add_argument("--num-prompts", type=int, default=None, help="Use only the first N requests")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--num-blocks", type=int, default=None)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--max-memory-percent", type=float, default=None)
    ap.add_argument("--cuda-graph", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--compile-level", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="Seconds before giving up")
    ap.add_argument("--result-json", default=None)
    args = ap.parse_args()

    import torch
    import transformers

    doc = load_workload(args.workload)
    tokenizer = None
    if any("prompt" in it for it in doc["requests"] + doc["warmup"]):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
    reqs = to_ids(doc["requests"], tokenizer)
    if args.num_prompts is not None:
        reqs = reqs[: args.num_prompts]
    warm = [] if args.no_warmup else to_ids(doc["warmup"], tokenizer)
    if not warm and not args.no_warmup:
        # Something must compile kernels before the clock starts.
        warm = [(p, min(n, 16)) for p, n in reqs[:8]]

    torch.manual_seed(0)
    t = time.perf_counter()
    model, device, attn = load_model(args, torch)
    load_s = time.perf_counter() - t
    env = environment(torch, transformers, device)
    print(f"model {args.model} loaded in {load_s:.1f}s on {env['gpu'] or env['device']} "
          f"(torch {env['torch']}, transformers {env['transformers']}, attn {attn})", file=sys.stderr)

    notes = []
    if args.mode == "cb":
        duration, per_req, info = run_cb(model, warm, reqs, args, torch, notes)
    else:
        duration, per_req, info = run_static(model, warm, reqs, args, torch, device, notes)

    failed = [r for r in per_req if r["error"]]
    ok = [r for r in per_req if not r["error"]]
    mismatched = [i for i, r in enumerate(per_req) if not r["error"] and r["generated"] != r["expected"]]
    out_tokens = sum(r["generated"] for r in ok)
    in_tokens = sum(r["prompt_tokens"] for r in ok)
    result = {
        "tool": "ragtime-bench-peer-hf",
        "mode": args.mode,
        "model": args.model,
        "dtype": args.dtype,
        "attn_implementation": attn,
        "environment": env,
        "workload": {"path": args.workload, "spec": doc.get("spec"), "requests": len(reqs), "warmup": len(warm)},
        "load_s": load_s,
        "duration_s": duration,
        "requests": len(per_req),
        "completed": len(ok),
        "failed": len(failed),
        "errors": sorted({str(r["error"]) for r in failed}),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "requested_output_tokens": sum(r["expected"] for r in per_req),
        "output_length_mismatches": len(mismatched),
        "mismatch_examples": [
            {"index": i, "expected": per_req[i]["expected"], "generated": per_req[i]["generated"]} for i in mismatched[:10]
        ],
        "request_throughput": len(ok) / duration if duration > 0 else 0,
        "output_throughput": out_tokens / duration if duration > 0 else 0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration > 0 else 0,
        "ttft_ms": summarize([r["ttft_ms"] for r in ok if "ttft_ms" in r]),
        "e2e_ms": summarize([r["e2e_ms"] for r in ok if "e2e_ms" in r]),
        "info": info,
        "notes": notes,
    }

    rows = [
        ("Mode", args.mode),
        ("GPU", env["gpu"] or env["device"]),
        ("torch / transformers", f"{env['torch']} / {env['transformers']}"),
        ("Requests (ok/failed)", f"{len(ok)}/{len(failed)}"),
        ("Duration (s)", f"{duration:.3f}"),
        ("Output tokens (requested)", f"{out_tokens} ({result['requested_output_tokens']})"),
        ("Output length mismatches", str(len(mismatched))),
        ("Request throughput (req/s)", f"{result['request_throughput']:.3f}"),
        ("Output token throughput (tok/s)", f"{result['output_throughput']:.2f}"),
        ("Total token throughput (tok/s)", f"{result['total_token_throughput']:.2f}"),
    ]
    if result["ttft_ms"]["n"]:
        rows.append(("TTFT mean/p99 (ms)", f"{result['ttft_ms']['mean']:.2f} / {result['ttft_ms']['p99']:.2f}"))
    if result["e2e_ms"]["n"]:
        rows.append(("E2E mean/p99 (ms)", f"{result['e2e_ms']['mean']:.2f} / {result['e2e_ms']['p99']:.2f}"))
    w = max(len(k) for k, _ in rows)
    print(f"==================== hf {args.mode} ====================")
    for k, v in rows:
        print(f"{k.ljust(w)}  {v}")
    for n in notes:
        print(f"! {n}")
    for e in result["errors"][:10]:
        print(f"! error: {e}")

    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {args.result_json}", file=sys.stderr)
    return 1 if failed or mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
