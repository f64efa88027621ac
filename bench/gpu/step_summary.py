#!/usr/bin/env python3
"""Summarises a server log written with --debug-steps: tokens and sequences per step, step time
split into CPU dispatch and time blocked on readback (the rest is overlap with the next dispatch)."""
import json
import statistics
import sys

steps = []
for line in open(sys.argv[1], errors="replace"):
    i = line.find("step {")
    if i >= 0:
        steps.append(json.loads(line[i + 5:]))
if not steps:
    sys.exit("no step lines (start the server with --debug-steps)")


def row(key):
    v = [s.get(key, 0) for s in steps]
    return f"{key:14s} mean {statistics.mean(v):9.2f}  p50 {statistics.median(v):9.2f}  max {max(v):9.2f}"


print(f"steps {len(steps)}; preemptions {sum(s['preemptions'] for s in steps)}")
for k in ("tokens", "seqs", "prefillTokens", "decodeTokens", "stepMs", "dispatchMs", "readMs", "processMs",
          "blocksUsed"):
    print(row(k))
