"""A depthwise conv in NCHW against the same conv on channels-last memory, each in several fresh
processes: why the authors' CloFormer at batch 8 is not one figure.

    python bench/depthwise_layouts.py --processes 6
    THP_MEM_ALLOC_ENABLE=1 python bench/depthwise_layouts.py --processes 6   # torch's tensors on huge pages

oneDNN runs an NCHW depthwise conv by reordering the map to a channel-blocked layout and back
around its direct kernel; a channels-last map needs no reorder. Each line is one process: the
median of 10 calls per layout, 1 thread.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def one_process(batch: int, channels: int, size: int, kernel: int) -> str:
    torch.set_num_threads(1)
    nchw = torch.randn(batch, channels, size, size)
    channels_last = nchw.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(channels, 1, kernel, kernel), torch.randn(channels)

    def median_ms(x: torch.Tensor) -> float:
        seconds = []
        for call in range(13):
            start = time.perf_counter()
            F.conv2d(x, weight, bias, padding=kernel // 2, groups=channels)
            if call >= 3:  # the first calls create oneDNN's primitives
                seconds.append(time.perf_counter() - start)
        return statistics.median(seconds) * 1000

    return f"NCHW {median_ms(nchw):.1f} ms, channels-last {median_ms(channels_last):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=6)
    # CloFormer-XXS's first-stage 5x5 depthwise conv at batch 8
    parser.add_argument("--shape", type=int, nargs=4, default=(8, 128, 56, 5), metavar=("BATCH", "CHANNELS", "SIZE", "KERNEL"))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args()
    if args.one:
        print(one_process(*args.shape))
        return
    batch, channels, size, kernel = args.shape
    print(f"depthwise {kernel}x{kernel} conv on ({batch}, {channels}, {size}, {size}), 1 thread, one line per process:")
    shape = [str(value) for value in args.shape]
    for _ in range(args.processes):
        result = subprocess.run(
            [sys.executable, __file__, "--one", "--shape", *shape], capture_output=True, text=True, check=True
        )
        print(result.stdout.strip())


if __name__ == "__main__":
    main()
