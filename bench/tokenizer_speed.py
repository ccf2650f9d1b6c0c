"""Frame tokenizer throughput: encode (frames -> codes) and decode (codes -> frames) in frames per second.

    python -m bench.tokenizer_speed [--size tiny] [--batch 32] [--threads 1] [--json OUT]

Random weights of the registered size (speed does not depend on the weight values), eval mode, no gradients:
a batch of B single-frame clips (B, 1, 3, H, W) is encoded, and random codes (B, 1, h, w) are decoded, which is what
`prepare` and the sampling pipeline do. Knows nothing of training.
"""

from __future__ import annotations

import torch

from bench.common import base_parser, machine_info, measure, report, set_threads
from tokenizer.config import TOKENIZER_SIZES
from tokenizer.model import VQVAE


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], warmup=1, repeats=5)
    parser.add_argument("--size", default="tiny", choices=list(TOKENIZER_SIZES))
    parser.add_argument("--batch", type=int, default=32, help="frames per call")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    config = TOKENIZER_SIZES[args.size]
    model = VQVAE(config).eval()
    side = config.image_size
    frames = torch.rand(args.batch, 1, 3, side, side) * 2 - 1  # (B, 1, 3, H, W) in [-1, 1]
    codes = torch.randint(0, config.codebook_size, (args.batch, 1, *config.grid))  # (B, 1, h, w)
    rows = []
    for name, call in (("encode", lambda: model.encode(frames)), ("decode", lambda: model.decode(codes))):
        timing = measure(call, args.warmup, args.repeats)
        rows.append({"size": args.size, "direction": name, "batch": args.batch, "s/batch": timing.seconds,
                     "frames/s": args.batch / timing.seconds, "frames/CPU-s": args.batch / timing.cpu_seconds})
    return report("tokenizer_speed", f"frame tokenizer {side}x{side} -> {config.grid[0]}x{config.grid[1]} codes "
                  f"(median of {args.repeats})", rows, args.json,
                  {"size": args.size, "batch": args.batch, "warmup": args.warmup, "repeats": args.repeats},
                  machine_info())


if __name__ == "__main__":
    main()
