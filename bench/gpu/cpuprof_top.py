#!/usr/bin/env python3
"""Prints the functions with the most self time in a V8 .cpuprofile (deno run --cpu-prof)."""
import collections
import json
import sys

prof = json.load(open(sys.argv[1]))
nodes = {n["id"]: n for n in prof["nodes"]}
self_time = collections.Counter()
for sample, dt in zip(prof["samples"], prof["timeDeltas"]):
    cf = nodes[sample]["callFrame"]
    self_time[f"{cf['functionName'] or '(anon)'} {cf['url'].split('/')[-1]}:{cf['lineNumber']}"] += dt
total = sum(prof["timeDeltas"])
for name, t in self_time.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 25):
    print(f"{100 * t / total:5.1f}% {name}")
