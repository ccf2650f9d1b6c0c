"""Matrix-multiply rate of this machine: float32 and bfloat16 GFLOP/s at 1 and 2 threads.

    python -m bench.matmul [--sizes 1024 2048] [--threads-list 1 2] [--json OUT]
    python -m bench.matmul --pick-precision      # prints bf16 or fp32: the faster training precision on this CPU

GFLOP/s uses the wall clock; "per CPU-second" divides by the CPU time of this process instead (at one thread,
roughly what an idle machine gives when other jobs share the cores). The measured float32 rate is the denominator
of the model FLOP utilisation (MFU) that `train_speed` reports: it calls `measured_matmul_flops(threads)` in its own
process, so that the rate and the model are measured on the same machine under the same load (`gpu_bench` times
the card's bf16 matmul with `time_matmul` the same way).
A square n x n matmul costs 2 n^3 floating-point operations (one multiply and one add per term).
Knows nothing of the model.
"""

from __future__ import annotations

import torch

from bench.common import Timing, base_parser, machine_info, measure, report, set_threads

REFERENCE_SIZE = 2048  # n of the n x n float32 matmul whose rate is the MFU denominator on CPU
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def time_matmul(size: int, dtype: torch.dtype, warmup: int = 2, repeats: int = 5,
                device: str | torch.device = "cpu") -> Timing:
    """Timing of an n x n by n x n matmul on `device` (with the torch threads currently set)."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    right = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    return measure(lambda: torch.mm(left, right), warmup, repeats, synchronize)


def measured_matmul_flops(threads: int, size: int = REFERENCE_SIZE, dtype: torch.dtype = torch.float32,
                          clock: str = "wall") -> float:
    """FLOP/s of the reference matmul at `threads` threads, by the wall clock or by this process's CPU time;
    torch's thread count is restored afterwards."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock={clock!r}: expected 'wall' or 'cpu'")
    previous = torch.get_num_threads()
    set_threads(threads)
    try:
        timing = time_matmul(size, dtype)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / (timing.seconds if clock == "wall" else timing.cpu_seconds)


def faster_precision(size: int = 1024) -> str:
    """'bf16' when a bfloat16 matmul beats float32 per CPU-second on this machine (one thread), else 'fp32': CPUs
    differ by several times either way (those with AMX or AVX512-BF16 units are faster in bfloat16)."""
    rates = {name: measured_matmul_flops(1, size, DTYPES[name], clock="cpu") for name in DTYPES}
    return "bf16" if rates["bfloat16"] > rates["float32"] else "fp32"


def main(argv: list[str] | None = None) -> dict | None:
    parser = base_parser(__doc__.splitlines()[0], warmup=2, repeats=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, REFERENCE_SIZE], help="matrix sides n")
    parser.add_argument("--threads-list", type=int, nargs="+", default=[1, 2], help="thread counts to measure")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--pick-precision", action="store_true",
                        help="only print the faster training precision here, bf16 or fp32 (the demo's choice)")
    args = parser.parse_args(argv)
    if args.pick_precision:
        print(faster_precision())
        return None
    rows = []
    for threads in args.threads_list:
        set_threads(threads)
        for name in args.dtypes:
            for size in args.sizes:
                timing = time_matmul(size, DTYPES[name], args.warmup, args.repeats)
                flops = 2 * size**3
                rows.append({"threads": threads, "dtype": name, "n": size, "GFLOP/s": flops / timing.seconds / 1e9,
                             "GFLOP/s per CPU-second": flops / timing.cpu_seconds / 1e9})
    set_threads(args.threads)
    for row in rows:  # bfloat16 relative to float32 at the same threads and size
        float32 = [r for r in rows if r["dtype"] == "float32" and (r["threads"], r["n"]) == (row["threads"], row["n"])]
        row["vs float32"] = row["GFLOP/s"] / float32[0]["GFLOP/s"] if float32 else float("nan")
    machine = machine_info()
    machine["threads"] = args.threads_list
    return report("matmul", "matmul rate (median of repeats)", rows, args.json,
                  {"sizes": args.sizes, "threads": args.threads_list, "warmup": args.warmup,
                   "repeats": args.repeats}, machine)


if __name__ == "__main__":
    main()
