#!/usr/bin/env python3
"""The Python side of `textcraftor bench ops`: the same loops, timed the same way, printed as JSON.

Each measure is the best of --repeats wall-clock timings of a loop, after a warm-up of a tenth of the loop.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--calls", type=int, default=100_000)
p.add_argument("--matmuls", type=int, default=10)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--threads", type=int, default=0)
args = p.parse_args()
if args.threads > 0:
    torch.set_num_threads(args.threads)

g = torch.Generator().manual_seed(0)
a, b = torch.randn(1, generator=g), torch.randn(1, generator=g)
x, w = torch.randn(1, 8, generator=g), torch.randn(8, 8, generator=g)
m1, m2 = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)


def best(n, body):
    for _ in range(max(n // 10, 1)):
        body()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(n):
            body()
        times.append(time.perf_counter() - start)
    return min(times)


with torch.no_grad():
    out = {
        "add_us": best(args.calls, lambda: a + b) / args.calls * 1e6,
        "relu_us": best(args.calls, lambda: a.relu()) / args.calls * 1e6,
        "linear_us": best(args.calls, lambda: F.linear(x, w)) / args.calls * 1e6,
        "matmul_gflops": 2 * 1024**3 * args.matmuls / best(args.matmuls, lambda: m1 @ m2) / 1e9,
    }
print(json.dumps(out))
