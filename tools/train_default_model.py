#!/usr/bin/env python3
"""Trains ragtime's own default model, "ragtime-mini", from the public-domain corpus in ../shared/corpus.

Runs on a GPU host with PyTorch, `tokenizers` and `safetensors` (transformers is optional: it is only
used to check that the saved folder loads and gives the same logits). Usage, from the repo root:

    python3 tools/train_default_model.py --corpus ../shared/corpus --out models/ragtime-mini --minutes 9
    python3 tools/train_default_model.py --smoke        # tiny model, about a minute, writes /tmp/ragtime-smoke

Steps (every one prints progress; --minutes is the wall-clock budget for all of them together):
  1. split each corpus file: the last --val-frac (2%) of its characters, cut at a line start, is held out
  2. train a byte-level BPE tokenizer (vocab --vocab, default 4096) on the training split, with the special
     tokens <|bos|> <|eos|> <|im_start|> <|im_end|>; the post-processor prepends <|bos|>
  3. tokenize; sequences are windows of the training stream that begin at a line start, with <|bos|> put
     in front (as at inference, where the prompt follows <|bos|>)
  4. train a Llama-architecture decoder (GQA, RoPE, RMSNorm, SwiGLU, tied embeddings) in plain PyTorch with
     bf16 autocast, AdamW, dropout and a cosine schedule over --epochs (24) passes, shortened to fit the time
     budget once the first steps are timed (or --steps N); the weights with the best validation loss are kept.
     The corpus is small (~4M tokens) for 7.3M parameters: without dropout the validation loss was best
     after ~4 epochs and then rose; dropout 0.2 over 24 epochs gave the best result we measured (val loss
     3.745 vs 3.861 with dropout 0.1 and 3.901 without, on an H100); the default run takes ~2 minutes
  5. evaluate on the held-out split (loss, perplexity, bits per byte) with the fp16-rounded weights, next
     to an add-one-smoothed unigram baseline with the same tokenizer
  6. save a Hugging Face LlamaForCausalLM folder (fp16 model.safetensors, config.json, tokenizer.json,
     tokenizer_config.json with a ChatML chat template, generation_config.json), train_log.json and
     samples.json (greedy and temperature-0.8 continuations of fixed prompts, fixed seed)
  7. if transformers is importable: reload the folder with it and check logits and tokenization match

Runs are seeded; they are not bit-identical across runs because the step count follows the measured speed
(pass --steps N for a fixed schedule) and some GPU kernels accumulate in a nondeterministic order.
"""

import time

T0 = time.time()  # the --minutes budget counts from here, imports included

import argparse
import glob
import hashlib
import json
import math
import os
import platform
import random
import sys

import numpy as np

SPECIALS = ["<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, IM_START, IM_END = SPECIALS
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROMPTS = ["It is a truth universally acknowledged", "In the beginning", "The hacker"]
NEWLINE_SYMBOL = "\u010a"  # byte 0x0A in the GPT-2 byte-to-symbol table used by ByteLevel
MAX_SAFETENSORS_BYTES = 15_000_000
MAX_FOLDER_BYTES = 32_000_000

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# Corpus and split (standard library only)


def read_corpus(corpus_dir):
    files = sorted(glob.glob(os.path.join(corpus_dir, "*.txt")))
    if not files:
        sys.exit(f"no *.txt files in {corpus_dir} (pass --corpus PATH)")
    docs = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            docs.append((os.path.basename(path), f.read()))
    return docs


def split_text(text, val_frac):
    """(train, val): val is the last val_frac of the characters, starting at the beginning of a line."""
    cut = int(len(text) * (1.0 - val_frac))
    nl = text.find("\n", cut)
    if nl == -1 or nl + 1 >= len(text):
        nl = text.rfind("\n", 0, cut)
    if nl == -1:
        return text[:cut], text[cut:]
    return text[: nl + 1], text[nl + 1 :]


def safe_chunks(text, size=1 << 16):
    """Pieces of about `size` characters for parallel tokenization. A piece ends after a newline that
    follows a non-space and precedes a non-space, where the ByteLevel regex always splits the same way,
    so the pieces tokenize exactly like the whole text."""
    out, start, n = [], 0, len(text)
    while start < n:
        end = min(start + size, n)
        while end < n:
            nl = text.find("\n", end)
            if nl == -1 or nl + 1 >= n:
                end = n
                break
            end = nl + 1
            if not text[end].isspace() and nl > 0 and not text[nl - 1].isspace():
                break
        out.append(text[start:end])
        start = end
    return out


def unigram_eval(train_ids, val_ids, vocab_size):
    """Add-one smoothed unigram model from training-token counts; returns (total nats, tokens)."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64)
    logp = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    return float(-logp[val_ids].sum()), int(len(val_ids))


def param_count(vocab, hidden, layers, heads, kv_heads, head_dim, ffn):
    q, kv = heads * head_dim, kv_heads * head_dim
    per_layer = 2 * hidden + hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * ffn
    return vocab * hidden + layers * per_layer + hidden  # tied lm_head adds nothing


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ---------------------------------------------------------------------------------------------------
# Tokenizer (the `tokenizers` library)


def train_tokenizer(texts, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B:1",
        special_tokens=[(BOS, bos_id)],
    )
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, f"special token {s} should have id {i}"
    return tok


def tokenizer_config(ctx):
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, s in enumerate(SPECIALS)
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": ctx,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


# ---------------------------------------------------------------------------------------------------
# Everything below needs torch


def build_model_classes(torch):
    nn = torch.nn
    F = torch.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            xf = x.float()
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * xf.to(x.dtype)

    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    class Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.nh, self.nkv, self.hd = c["heads"], c["kv_heads"], c["head_dim"]
            self.dropout = c["dropout"]
            h = c["hidden"]
            self.q_proj = nn.Linear(h, self.nh * self.hd, bias=False)
            self.k_proj = nn.Linear(h, self.nkv * self.hd, bias=False)
            self.v_proj = nn.Linear(h, self.nkv * self.hd, bias=False)
            self.o_proj = nn.Linear(self.nh * self.hd, h, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
            k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
            v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
            q = q * cos + rotate_half(q) * sin  # HF Llama's rotate-half RoPE
            k = k * cos + rotate_half(k) * sin
            if self.nh != self.nkv:  # GQA: kv head j serves q heads j*rep .. j*rep+rep-1 (HF repeat_kv)
                rep = self.nh // self.nkv
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))

    class MLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.gate_proj = nn.Linear(c["hidden"], c["ffn"], bias=False)
            self.up_proj = nn.Linear(c["hidden"], c["ffn"], bias=False)
            self.down_proj = nn.Linear(c["ffn"], c["hidden"], bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class DecoderLayer(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.input_layernorm = RMSNorm(c["hidden"], c["eps"])
            self.self_attn = Attention(c)
            self.post_attention_layernorm = RMSNorm(c["hidden"], c["eps"])
            self.mlp = MLP(c)
            self.drop = nn.Dropout(c["dropout"])

        def forward(self, x, cos, sin):
            x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin))
            return x + self.drop(self.mlp(self.post_attention_layernorm(x)))

    class Backbone(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
            self.layers = nn.ModuleList([DecoderLayer(c) for _ in range(c["layers"])])
            self.norm = RMSNorm(c["hidden"], c["eps"])

    class LlamaLM(nn.Module):
        """Parameter names match transformers' LlamaForCausalLM (model.embed_tokens.weight, ...)."""

        def __init__(self, c):
            super().__init__()
            self.c = c
            self.model = Backbone(c)
            self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False)
            self.lm_head.weight = self.model.embed_tokens.weight  # tied
            hd = c["head_dim"]
            inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
            freqs = torch.outer(torch.arange(c["ctx"], dtype=torch.float64), inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.register_buffer("rope_cos", emb.cos().float(), persistent=False)
            self.register_buffer("rope_sin", emb.sin().float(), persistent=False)
            std = 0.02
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    out_proj = name.endswith(("o_proj.weight", "down_proj.weight"))
                    torch.nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * c["layers"]) if out_proj else std)

        def forward(self, idx, targets=None):
            T = idx.shape[1]
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
            x = self.model.embed_tokens(idx)
            for layer in self.model.layers:
                x = layer(x, cos, sin)
            logits = self.lm_head(self.model.norm(x))
            if targets is None:
                return logits
            return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    return LlamaLM


def hf_config(c, bos_id, eos_id):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "hidden_size": c["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": c["ffn"],
        "max_position_embeddings": c["ctx"],
        "mlp_bias": False,
        "num_attention_heads": c["heads"],
        "num_hidden_layers": c["layers"],
        "num_key_value_heads": c["kv_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": c["eps"],
        "rope_scaling": None,
        "rope_theta": c["rope_theta"],
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": c["vocab"],
    }


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=os.path.join(REPO, "..", "shared", "corpus"))
    ap.add_argument("--out", default=None, help="output folder (default models/ragtime-mini, or /tmp/ragtime-smoke)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget for the whole run (default 9)")
    ap.add_argument("--reserve-seconds", type=float, default=None,
                    help="budget kept after training for eval, save, checks and samples (default 45)")
    ap.add_argument("--steps", type=int, default=None, help="fixed number of steps (else fitted to the budget)")
    ap.add_argument("--epochs", type=float, default=None,
                    help="schedule length in passes over the training split (default 24; 0: fit to the budget); "
                         "shortened if the budget is too small")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--smoke", action="store_true", help="tiny model on a corpus subset, about a minute")
    ap.add_argument("--val-frac", type=float, default=0.02)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--ctx", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="sequences per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--log-every", type=int, default=None)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (it costs ~1 min up front)")
    a = ap.parse_args()
    if a.smoke:
        d = dict(out="/tmp/ragtime-smoke", minutes=1.0, reserve_seconds=25, epochs=None, vocab=512, ctx=128, hidden=64,
                 layers=2, heads=4, kv_heads=2, ffn=176, batch=16, log_every=20, eval_every=100)
        a.head_dim = 16
        a.max_new_tokens = 40
    else:
        d = dict(out=os.path.join(REPO, "models", "ragtime-mini"), minutes=9.0, reserve_seconds=45, epochs=24.0,
                 vocab=4096, ctx=512, hidden=256, layers=8, heads=4, kv_heads=2, ffn=768, batch=64, log_every=100,
                 eval_every=250)
    for k, v in d.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def main():
    args = parse_args()
    budget_end = T0 + args.minutes * 60.0
    train_deadline = budget_end - args.reserve_seconds
    random.seed(args.seed)
    np.random.seed(args.seed)

    import torch

    torch.manual_seed(args.seed)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gpu_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    log(f"torch {torch.__version__} on {gpu_name}; budget {args.minutes} min, out {args.out}")

    # ---- model size, checked before anything is trained
    c = dict(vocab=args.vocab, ctx=args.ctx, hidden=args.hidden, layers=args.layers, heads=args.heads,
             kv_heads=args.kv_heads, head_dim=args.head_dim, ffn=args.ffn, eps=1e-5, rope_theta=10000.0,
             dropout=args.dropout)
    assert c["head_dim"] % 16 == 0, "head_dim must be a multiple of 16 (ragtime's attention kernel)"
    assert c["heads"] % c["kv_heads"] == 0, "heads must be a multiple of kv_heads"
    n_params = param_count(c["vocab"], c["hidden"], c["layers"], c["heads"], c["kv_heads"], c["head_dim"], c["ffn"])
    fp16_bytes = 2 * n_params
    log(f"model: {n_params:,} parameters, {fp16_bytes / 1e6:.2f} MB in fp16 "
        f"(limit {MAX_SAFETENSORS_BYTES / 1e6:.0f} MB)")
    assert fp16_bytes + 65536 <= MAX_SAFETENSORS_BYTES, "model too large for the 15 MB budget"

    # ---- corpus, split, tokenizer
    docs = read_corpus(args.corpus)
    splits = []
    for name, text in docs:
        train, val = split_text(text, args.val_frac)
        if args.smoke:  # a subset keeps the smoke run short; the validation split stays the real one
            train = train[: 200_000]
            train = train[: train.rfind("\n") + 1] or train
        splits.append((name, train, val))
    train_chars = sum(len(t) for _, t, _ in splits)
    log(f"corpus: {len(docs)} files, {train_chars:,} training characters, "
        f"{sum(len(v) for _, _, v in splits):,} held out ({args.val_frac:.0%} of each file, at a line start)")

    t = time.time()
    # Small pieces in the smoke run, so that the check below crosses many piece boundaries.
    chunks_per_doc = [safe_chunks(train, 4096 if args.smoke else 1 << 16) for _, train, _ in splits]
    all_chunks = [ch for chunks in chunks_per_doc for ch in chunks]
    tok = train_tokenizer(all_chunks, c["vocab"])
    vocab = tok.get_vocab_size()
    if vocab != c["vocab"]:
        log(f"tokenizer vocab is {vocab}, not {c['vocab']}; the model uses {vocab}")
        c["vocab"] = vocab
        n_params = param_count(vocab, c["hidden"], c["layers"], c["heads"], c["kv_heads"], c["head_dim"], c["ffn"])
    bos_id, eos_id, im_end_id = tok.token_to_id(BOS), tok.token_to_id(EOS), tok.token_to_id(IM_END)
    tok_time = time.time() - t
    log(f"tokenizer: byte-level BPE, {vocab} tokens, trained in {tok_time:.1f}s")

    # ---- tokenize: training stream (each file followed by <|eos|>) and held-out streams
    t = time.time()
    train_parts, data_stats = [], []
    for (name, train, val), chunks in zip(splits, chunks_per_doc):
        ids = [i for enc in tok.encode_batch(chunks, add_special_tokens=False) for i in enc.ids]
        train_parts.append(np.asarray(ids + [eos_id], dtype=np.int64))
        data_stats.append({"file": name, "train_bytes": len(train.encode("utf-8")), "train_tokens": len(ids)})
    train_ids = np.concatenate(train_parts)
    if args.smoke:  # pieces must tokenize exactly like whole files
        for (name, train, _), part in zip(splits, train_parts):
            assert tok.encode(train, add_special_tokens=False).ids == part[:-1].tolist(), f"chunking changed {name}"
        log("check: piecewise tokenization equals whole-file tokenization")
    val_streams, val_bytes = [], 0
    for (name, _, val), st in zip(splits, data_stats):
        ids = np.asarray(tok.encode(val, add_special_tokens=False).ids, dtype=np.int64)
        val_streams.append(ids)
        st["val_bytes"] = len(val.encode("utf-8"))
        st["val_tokens"] = int(len(ids))
        val_bytes += st["val_bytes"]
    val_ids = np.concatenate(val_streams)
    train_bytes = sum(s["train_bytes"] for s in data_stats)
    log(f"tokens: {len(train_ids):,} train ({train_bytes / len(train_ids):.2f} bytes/token), "
        f"{len(val_ids):,} val, in {time.time() - t:.1f}s")

    # Windows start at line starts (a token after one that ends with a newline, or after <|eos|>).
    ends_line = np.zeros(vocab, dtype=bool)
    for i in range(vocab):
        s = tok.id_to_token(i)
        ends_line[i] = s is not None and i >= len(SPECIALS) and s.endswith(NEWLINE_SYMBOL)
    ends_line[eos_id] = True
    ctx = c["ctx"]
    starts = np.concatenate([[0], np.nonzero(ends_line[train_ids[:-1]])[0] + 1])
    starts = starts[starts + ctx <= len(train_ids)]
    assert len(starts) > 0, "training split shorter than one window"

    unigram_nats, unigram_n = unigram_eval(train_ids, val_ids, vocab)
    unigram = {"loss": unigram_nats / unigram_n, "ppl": math.exp(unigram_nats / unigram_n),
               "bits_per_byte": unigram_nats / math.log(2) / val_bytes}
    log(f"unigram baseline on val: loss {unigram['loss']:.4f}, ppl {unigram['ppl']:.1f}, "
        f"{unigram['bits_per_byte']:.4f} bits/byte")

    # Held-out sequences: <|bos|> + up to ctx-1 tokens of context, non-overlapping, padded (ignored targets).
    vx, vy = [], []
    for ids in val_streams:
        for s in range(0, len(ids), ctx):
            w = ids[s : s + ctx]
            x = np.full(ctx, eos_id, dtype=np.int64)
            y = np.full(ctx, -100, dtype=np.int64)
            x[0] = bos_id
            x[1 : len(w)] = w[:-1]
            y[: len(w)] = w
            vx.append(x)
            vy.append(y)
    val_x = torch.from_numpy(np.stack(vx)).to(dev)
    val_y = torch.from_numpy(np.stack(vy)).to(dev)
    assert int((val_y != -100).sum()) == len(val_ids)

    # ---- model
    LlamaLM = build_model_classes(torch)
    model = LlamaLM(c).to(dev)
    real = sum(p.numel() for p in model.parameters())
    assert real == n_params, f"parameter count {real} != computed {n_params}"

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt_kw = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    if cuda:
        opt_kw["fused"] = True
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], **opt_kw
    )

    train_gpu = torch.from_numpy(train_ids).to(dev)
    starts_gpu = torch.from_numpy(starts).to(dev)
    offs = torch.arange(ctx, device=dev)
    bos_col = torch.full((args.batch, 1), bos_id, dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)

    def get_batch():
        pick = torch.randint(len(starts), (args.batch,), device=dev, generator=gen)
        y = train_gpu[starts_gpu[pick][:, None] + offs]
        return torch.cat([bos_col, y[:, :-1]], dim=1), y

    def autocast():
        if cuda:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return torch.autocast(device_type="cpu", enabled=False)

    @torch.no_grad()
    def evaluate(use_autocast=True, batch=64):
        model.eval()
        nats = torch.zeros((), dtype=torch.float64, device=dev)
        for i in range(0, len(val_x), batch):
            if use_autocast:
                with autocast():
                    logits = model(val_x[i : i + batch])
            else:
                logits = model(val_x[i : i + batch])
            nats += torch.nn.functional.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), val_y[i : i + batch].reshape(-1),
                ignore_index=-100, reduction="sum",
            ).double()
        model.train()
        return float(nats) / len(val_ids)

    fwd = model
    compiled = False
    if not args.no_compile and cuda:
        fwd = torch.compile(model)
        compiled = True

    # ---- training
    tokens_per_step = args.batch * ctx
    fit_to_time = args.steps is None
    total_steps = args.steps
    if total_steps is None and args.epochs:
        total_steps = max(1, math.ceil(args.epochs * len(train_ids) / tokens_per_step))
    warmup = args.warmup if total_steps is None else min(args.warmup, max(1, total_steps // 10))
    min_lr = args.lr * args.min_lr_frac

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        if total_steps is None:
            return args.lr
        prog = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr + 0.5 * (args.lr - min_lr) * (1.0 + math.cos(math.pi * prog))

    log(f"training: schedule {total_steps or 'fitted to the budget'} steps, batch {args.batch} x {ctx} = "
        f"{tokens_per_step:,} tokens/step, lr {args.lr}, warmup {warmup}, dropout {args.dropout}, "
        f"compile {compiled}; training stops at {train_deadline - T0:.0f}s at the latest")
    curve, val_curve = [], []
    best = {"loss": float("inf"), "step": 0, "state": None}
    loss_sum = torch.zeros((), device=dev)
    loss_n = 0
    step = 0
    t_train = time.time()
    t_window, tokens_window = time.time(), 0
    t_first_step = None
    timing_from = None  # (step, time) where the speed measurement starts
    eval_seconds = 0.0

    def do_eval(step):
        nonlocal eval_seconds
        te = time.time()
        vl = evaluate()
        eval_seconds += time.time() - te
        val_curve.append({"step": step, "tokens": step * tokens_per_step, "elapsed": round(time.time() - T0, 1),
                          "val_loss": round(vl, 5)})
        tag = ""
        if vl < best["loss"]:
            best.update(loss=vl, step=step, state={k: v.detach().clone() for k, v in model.state_dict().items()})
            tag = " (best)"
        log(f"step {step:6d} | val loss {vl:.4f} ppl {math.exp(vl):.2f}{tag}")

    while True:
        if total_steps is not None and step >= total_steps:
            break
        if step >= 20 and time.time() >= train_deadline:
            log(f"time budget reached at step {step}")
            break
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch()
        try:
            with autocast():
                loss = fwd(x, y)
            loss.backward()
        except Exception as e:  # a compile failure must not cost the run
            if not compiled or step > 0:
                raise
            log(f"torch.compile failed ({type(e).__name__}: {e}); continuing without it")
            opt.zero_grad(set_to_none=True)
            fwd, compiled = model, False
            with autocast():
                loss = fwd(x, y)
            loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        loss_n += 1
        step += 1
        tokens_window += tokens_per_step

        if step == 1:
            if cuda:
                torch.cuda.synchronize()
            t_first_step = time.time() - t_train
            log(f"first step done in {t_first_step:.1f}s (includes compilation), loss {loss.item():.4f}")
            t_window, tokens_window = time.time(), 0
        if step == 10:
            if cuda:
                torch.cuda.synchronize()
            timing_from = (step, time.time())
        # Fit the schedule to the budget once the speed is known (during warmup, so no jump in lr).
        if fit_to_time and timing_from is not None and step == timing_from[0] + 40:
            if cuda:
                torch.cuda.synchronize()
            now = time.time()
            sec_per_step = (now - timing_from[1]) / (step - timing_from[0])
            est_eval = 0.5  # seconds per evaluation, corrected below once one has run
            left = train_deadline - now
            fitted = step + max(1, int(left / (sec_per_step + est_eval / args.eval_every) * 0.97))
            msg = f"{sec_per_step * 1000:.1f} ms/step ({tokens_per_step / sec_per_step:,.0f} tokens/s): "
            if total_steps is None or fitted < total_steps:
                total_steps = fitted
                warmup = min(warmup, max(1, total_steps // 10))
                msg += "schedule fitted to the budget: "
            else:
                msg += f"{(train_deadline - now) - (total_steps - step) * sec_per_step:.0f}s to spare; schedule kept: "
            log(msg + f"{total_steps} steps ({total_steps * tokens_per_step / len(train_ids):.1f} epochs)")
        if step % args.log_every == 0:
            if cuda:
                torch.cuda.synchronize()
            now = time.time()
            avg = float(loss_sum) / loss_n
            tps = tokens_window / max(1e-9, now - t_window)
            curve.append({"step": step, "tokens": step * tokens_per_step, "elapsed": round(now - T0, 1),
                          "train_loss": round(avg, 5), "lr": lr, "tokens_per_s": round(tps)})
            log(f"step {step:6d} | loss {avg:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s | "
                f"epoch {step * tokens_per_step / len(train_ids):.1f}")
            loss_sum.zero_()
            loss_n = 0
            t_window, tokens_window = now, 0
        if step % args.eval_every == 0:
            do_eval(step)
            t_window, tokens_window = time.time(), 0

    if cuda:
        torch.cuda.synchronize()
    train_seconds = time.time() - t_train
    if not val_curve or val_curve[-1]["step"] != step:
        do_eval(step)
    log(f"trained {step} steps, {step * tokens_per_step:,} tokens in {train_seconds:.1f}s; "
        f"best val loss {best['loss']:.4f} at step {best['step']}")
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    else:
        log("PROBLEM: no finite validation loss; keeping the last weights")

    # ---- final evaluation with the weights as saved (fp16), computed in fp32
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    final_loss = evaluate(use_autocast=False)
    final = {"loss": final_loss, "ppl": math.exp(final_loss),
             "bits_per_byte": final_loss * len(val_ids) / math.log(2) / val_bytes}
    log(f"val (fp16 weights, fp32 math): loss {final['loss']:.4f}, ppl {final['ppl']:.2f}, "
        f"{final['bits_per_byte']:.4f} bits/byte | unigram ppl {unigram['ppl']:.1f}, {unigram['bits_per_byte']:.4f} bits/byte")

    # ---- save
    from safetensors.torch import save_file

    out = args.out
    os.makedirs(out, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()
               if k != "lm_head.weight"}
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(out, "config.json"), hf_config(c, bos_id, eos_id))
    write_json(os.path.join(out, "generation_config.json"), {
        "bos_token_id": bos_id, "eos_token_id": [eos_id, im_end_id], "pad_token_id": eos_id,
        "do_sample": True, "temperature": 0.8, "top_p": 0.95,
    })
    tok.save(os.path.join(out, "tokenizer.json"))
    write_json(os.path.join(out, "tokenizer_config.json"), tokenizer_config(ctx))
    st_bytes = os.path.getsize(os.path.join(out, "model.safetensors"))
    log(f"saved {out}: model.safetensors {st_bytes / 1e6:.2f} MB")

    # ---- samples (fixed seed), from the saved fp16 weights in fp32 math
    @torch.no_grad()
    def generate(ids, n, temperature, top_p, g):
        seq = list(ids)
        for _ in range(min(n, ctx - len(seq))):
            logits = model(torch.tensor([seq], device=dev))[0, -1].double().cpu()
            if temperature == 0:
                nxt = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                sp, si = torch.sort(probs, descending=True)
                keep = (torch.cumsum(sp, 0) - sp) < top_p
                sp = torch.where(keep, sp, torch.zeros_like(sp))
                nxt = int(si[torch.multinomial(sp / sp.sum(), 1, generator=g)])
            seq.append(nxt)
            if nxt in (eos_id, im_end_id):
                break
        return seq

    model.eval()
    g = torch.Generator().manual_seed(args.seed)
    samples = []
    for prompt in PROMPTS:
        ids = tok.encode(prompt, add_special_tokens=True).ids
        for mode, temp in (("greedy", 0.0), ("temperature 0.8, top_p 0.95", 0.8)):
            seq = generate(ids, args.max_new_tokens, temp, 0.95, g)
            samples.append({"prompt": prompt, "mode": mode, "prompt_ids": ids,
                            "completion": tok.decode(seq[len(ids):], skip_special_tokens=True),
                            "text": tok.decode(seq, skip_special_tokens=True)})
            log(f"sample [{mode}] {samples[-1]['text']!r}")
    write_json(os.path.join(out, "samples.json"), {
        "note": "Generated by tools/train_default_model.py right after training, unedited; the prompt is "
                "encoded with <|bos|> first; sampling uses torch.Generator seeded with the run's seed.",
        "seed": args.seed, "max_new_tokens": args.max_new_tokens, "samples": samples,
    })

    # ---- checks with transformers (if present): the folder loads and matches
    checks = {}
    try:
        import transformers
        from transformers import AutoTokenizer, LlamaForCausalLM

        checks["transformers"] = transformers.__version__
        major = int(transformers.__version__.split(".")[0])
        kw = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
        hf = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager", **kw).to(dev).eval()
        check_ids = samples[0]["prompt_ids"] + tok.encode(samples[0]["completion"], add_special_tokens=False).ids
        ids = torch.tensor([check_ids[:ctx]], device=dev)
        with torch.no_grad():
            ours = model(ids).float()
            theirs = hf(ids).logits.float()
        diff = float((ours - theirs).abs().max())
        checks["logits_max_abs_diff"] = diff
        checks["logits_match"] = diff < 1e-3
        hf_tok = AutoTokenizer.from_pretrained(out)
        tok_ok = all(hf_tok(p)["input_ids"] == tok.encode(p, add_special_tokens=True).ids for p in PROMPTS)
        checks["tokenizer_match"] = tok_ok and hf_tok.bos_token_id == bos_id and hf_tok.eos_token_id == eos_id
        rendered = hf_tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                              add_generation_prompt=True)
        checks["chat_template_render"] = rendered
        checks["chat_template_ok"] = rendered == f"{BOS}{IM_START}user\nHello{IM_END}\n{IM_START}assistant\n"
        del hf
    except ImportError as e:
        checks["skipped"] = f"transformers not importable: {e}"
    except Exception as e:  # report, don't lose the run
        checks["error"] = f"{type(e).__name__}: {e}"
    failed = [k for k in ("logits_match", "tokenizer_match", "chat_template_ok") if checks.get(k) is False]
    if "error" in checks:
        failed.append("error")
    log(f"checks: {json.dumps({k: v for k, v in checks.items() if k != 'chat_template_render'})}")

    # ---- train_log.json
    folder_bytes = None  # filled after the log itself is written
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("tokenizers", "safetensors", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    train_log = {
        "model": "ragtime-mini",
        "script": "tools/train_default_model.py",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "smoke": args.smoke,
        "seed": args.seed,
        "hyperparameters": {k: getattr(args, k) for k in (
            "minutes", "reserve_seconds", "steps", "epochs", "batch", "lr", "min_lr_frac", "warmup", "weight_decay",
            "dropout", "grad_clip", "val_frac", "log_every", "eval_every")} | {
            "optimizer": "AdamW(betas=(0.9, 0.95), eps=1e-8), weight decay on matrices and embeddings only",
            "schedule": "linear warmup, cosine decay to min_lr_frac * lr over --epochs (or --steps), shortened "
                        "to fit the time budget once the speed is measured",
            "precision": "bf16 autocast, fp32 master weights" if cuda else "fp32",
            "compile": compiled, "effective_warmup": warmup, "scheduled_steps": total_steps,
        },
        "architecture": {**c, "params": n_params, "tied_embeddings": True},
        "data": {
            "corpus": os.path.abspath(args.corpus),
            "split": f"last {args.val_frac:.0%} of each file's characters (from the next line start) held out",
            "sequences": "windows of ctx tokens from the training stream, starting at line starts, <|bos|> first",
            "files": data_stats,
            "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)),
            "train_bytes": train_bytes, "val_bytes": val_bytes,
        },
        "tokenizer": {"type": "byte-level BPE (tokenizers library)", "vocab_size": vocab, "specials": SPECIALS,
                      "train_seconds": round(tok_time, 1),
                      "sha256": sha256_file(os.path.join(out, "tokenizer.json"))},
        "training": {
            "steps": step, "tokens_seen": step * tokens_per_step,
            "epochs": round(step * tokens_per_step / len(train_ids), 2),
            "train_seconds": round(train_seconds, 1), "first_step_seconds": round(t_first_step or 0, 1),
            "eval_seconds": round(eval_seconds, 1),
            "tokens_per_second_after_first_step": round(
                (step - 1) * tokens_per_step / max(1e-9, train_seconds - (t_first_step or 0) - eval_seconds)),
            "best_step": best["step"], "best_val_loss_bf16": round(best["loss"], 5),
        },
        "curve": curve,
        "val_curve": val_curve,
        "val": {k: round(v, 5) for k, v in final.items()},
        "unigram_baseline": {k: round(v, 5) for k, v in unigram.items()},
        "eval_note": "val: held-out split, non-overlapping windows of ctx tokens each after <|bos|>, weights "
                     "rounded to fp16 and computed in fp32; unigram: training-token frequencies, add-one "
                     "smoothing, same tokens; bits_per_byte = total nats / ln 2 / UTF-8 bytes of the held-out text",
        "checks": checks,
        "safetensors_bytes": st_bytes,
        "gpu": gpu_name,
        "versions": versions,
        "wall_seconds": None,
    }
    log_path = os.path.join(out, "train_log.json")
    train_log["wall_seconds"] = round(time.time() - T0, 1)
    write_json(log_path, train_log)
    folder_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                       if os.path.isfile(os.path.join(out, f)))
    log(f"done in {time.time() - T0:.1f}s (budget {args.minutes * 60:.0f}s); folder {folder_bytes / 1e6:.2f} MB")
    problems = []
    if st_bytes > MAX_SAFETENSORS_BYTES:
        problems.append(f"model.safetensors is {st_bytes} bytes (> {MAX_SAFETENSORS_BYTES})")
    if folder_bytes > MAX_FOLDER_BYTES:
        problems.append(f"the folder is {folder_bytes} bytes (> {MAX_FOLDER_BYTES})")
    problems += [f"check failed: {k}" for k in failed]
    for p in problems:
        log(f"PROBLEM: {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
