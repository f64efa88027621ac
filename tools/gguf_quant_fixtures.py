#!/usr/bin/env python3
"""Writes tests/fixtures/gguf_quants.json: random blocks of each GGML quantized type ragtime can load, with
the values that the `gguf` Python package (llama.cpp's own gguf-py, `pip install gguf`) dequantizes them to.
The test (tests/engine/model/gguf_quants_test.ts) checks ragtime's TypeScript dequantizers against these values.

    python3 tools/gguf_quant_fixtures.py [--seed 0] [--blocks 4]
"""
import argparse
import base64
import importlib.metadata
import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# Byte offsets of each type's f16 scale fields inside a block: random bytes there could be NaN or inf.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/gguf_quants.json"))
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    out = {"generator": f"tools/gguf_quant_fixtures.py --seed {a.seed} --blocks {a.blocks}",
           "gguf_py": importlib.metadata.version("gguf"), "types": {}}
    for qtype, fields in F16_FIELDS.items():
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(a.blocks, block_bytes), dtype=np.uint8)
        for off in fields:
            scale = (rng.uniform(1e-3, 0.1, size=a.blocks) * rng.choice([-1, 1], size=a.blocks)).astype(np.float16)
            raw[:, off:off + 2] = scale.view(np.uint8).reshape(a.blocks, 2)
        values = dequantize(raw.reshape(-1), qtype).astype(np.float32).reshape(-1)
        assert values.size == a.blocks * block_elems and np.isfinite(values).all()
        out["types"][qtype.name] = {
            "type": int(qtype),
            "elements": int(values.size),
            "blocks": base64.b64encode(raw.tobytes()).decode(),
            "values": base64.b64encode(values.astype("<f4").tobytes()).decode(),
        }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}: {', '.join(out['types'])}")


if __name__ == "__main__":
    main()
