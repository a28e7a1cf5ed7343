"""A training step of archdsl's model with `attend` as it is (a bias that takes a gradient goes the
explicit matmul -> softmax -> matmul way) against the same model with such a bias handed to
`scaled_dot_product_attention`, whose fused CPU kernel has no mask gradient and falls back to an
unfused path. One model per spec, the path toggled per round in alternating order.

    python bench/trained_bias_attention.py mixformer_b0 nommer_t --batch 8 --rounds 8

Prints, per spec, the median over rounds of explicit / SDPA (below 1 the explicit path is faster).
1 thread.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from side_by_side import alternating_rounds, median_ratio

import archdsl
from archdsl.blocks import attention, multihead

EXPLICIT = multihead.attend


def through_sdpa(query, key, value, scale, bias=None, return_attention_received=False):
    """`attend` before the explicit path for trained biases: every bias into SDPA."""
    if bias is None or return_attention_received:
        return EXPLICIT(query, key, value, scale, bias, return_attention_received)
    return multihead._attend_fused(query, key, value, scale, bias.to(query.dtype))


def compare(spec: str, batch: int, rounds: int) -> float:
    model = archdsl.create_model(spec).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, model.spec.head.classes, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    def step_through(path):
        def run() -> None:
            attention.attend = path
            step()

        return run

    steps = {"sdpa": step_through(through_sdpa), "explicit": step_through(EXPLICIT)}
    try:
        for run in steps.values():
            run()
        seconds = alternating_rounds(steps, rounds)
    finally:
        attention.attend = EXPLICIT
    return median_ratio(seconds, "explicit", "sdpa")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for spec in args.specs:
        print(f"{spec}: training step at batch {args.batch}, explicit / SDPA {compare(spec, args.batch, args.rounds):.3f}")


if __name__ == "__main__":
    main()
