"""SG-Former's FFN (fc1, h + dwconv(h), GELU, fc2) with the residual as a separate add against the
same FFN with the identity on the depthwise kernel's centre tap (`DepthwiseResidualConv2d`, what
archdsl builds), on SG-Former-S's four stage shapes.

    python bench/depthwise_residual.py [--batch 8] [--rounds 15]

Per shape and task (eval forward, training step), each round times one call of each form in
alternating order; the line gives the median over rounds of folded / separate (below 1 the fold is
faster) and the medians in ms. 1 thread.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from side_by_side import alternating_rounds, median_ratio

from archdsl.blocks.ffn import ConvFFNModule
from archdsl.blocks.layers import DepthwiseConv2d

# SG-Former-S: widths 64, 128, 256, 512 on 56, 28, 14, 7 maps, FFN ratio 4
STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))


class SeparateResidual(DepthwiseConv2d):
    """x + depthwise(x) as the released code writes it: the conv, then the add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x


def compare(batch: int, width: int, size: int, rounds: int) -> str:
    folded = ConvFFNModule(width, 4 * width, width, 3, order="depthwise_residual")
    separate = ConvFFNModule(width, 4 * width, width, 3, order="depthwise_first")
    separate.dwconv = SeparateResidual(4 * width, 3)
    separate.load_state_dict(folded.state_dict())
    folded, separate = (m.to(memory_format=torch.channels_last) for m in (folded, separate))
    image = torch.randn(batch, width, size, size).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(folded(image), separate(image), atol=1e-5)
    cells = []
    for task in ("eval", "train"):

        def step(model, task=task):
            if task == "eval":
                with torch.no_grad():
                    model(image)
            else:
                model.zero_grad(set_to_none=True)
                model(image.requires_grad_()).sum().backward()

        for model in (folded, separate):
            step(model)
        seconds = alternating_rounds({"folded": lambda: step(folded), "separate": lambda: step(separate)}, rounds)
        folded_ms, separate_ms = (statistics.median(seconds[name]) * 1000 for name in ("folded", "separate"))
        ratio = median_ratio(seconds, "folded", "separate")
        cells.append(f"{task} {ratio:.3f} ({folded_ms:.1f} / {separate_ms:.1f} ms)")
    return f"b{batch} {width}x{size}x{size}, hidden {4 * width}: " + ", ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; folded / separate, median over {args.rounds} alternating rounds")
    for width, size in STAGES:
        print(compare(args.batch, width, size, args.rounds))


if __name__ == "__main__":
    main()
