#!/usr/bin/python3
"""Dense matrix-multiply rate of this device, the yardstick for a training
step's achieved FLOP/s (bench/trainer_throughput.sh reports the step as a
fraction of it).

Times --iters products of two --size x --size matrices in --dtype after
--warmup untimed ones (CUDA: between synchronizations) and prints one JSON line:
{"device", "dtype", "size", "tflops", "seconds"} where tflops = 2 n^3 iters / seconds / 1e12.
The best of --repeats timings is reported: the question is what the card can do,
not what it did while something else ran.

  python3 bench/reference/matmul_peak.py --device cuda --dtype bf16
"""

import argparse
import json
import sys
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.size < 1 or args.iters < 1 or args.repeats < 1 or args.warmup < 0:
        sys.exit("matmul_peak.py: --size, --iters and --repeats must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("matmul_peak.py: --device cuda: no GPU visible")
    dev = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(args.size, args.size, device=dev, generator=gen).to(dtype)
    b = torch.randn(args.size, args.size, device=dev, generator=gen).to(dtype)
    out = torch.empty(args.size, args.size, device=dev, dtype=dtype)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        torch.mm(a, b, out=out)
    sync()
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.iters):
            torch.mm(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - t0)
    flops = 2.0 * args.size ** 3 * args.iters
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "dtype": args.dtype, "size": args.size, "iters": args.iters,
              "seconds": best, "tflops": flops / best / 1e12, "torch": torch.__version__}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
