"""What the oneDNN lowering (src/archdsl/onednn.py) gains on this machine.

    python bench/onednn_layers.py cloformer_xxs sgformer_s nommer_t mixformer_b0 --rounds 9

First one Linear of NomMer-T's first stage ((3136, 64) -> 256 tokens x channels, the shape of
its MLP's first layer): torch's F.linear (MKL's sgemm) against oneDNN's inner product, with and
without a fused GELU. This says what kind of machine it is: on AMD processors MKL takes its AVX2
code, oneDNN AVX-512 where the processor has it. Then, per spec, the whole prepared model at
batch 1 and 8 with the lowering against the same preparation without it (`onednn=False`), and
a training step at batch 8 (forward, cross-entropy, backward, SGD step) of the model after
`use_onednn` against the model as built; the two in alternating order per round. Prints medians
of per-round ratios, lowered / not (below 1 the lowering is faster). 1 thread, 224x224.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from side_by_side import alternating_rounds, median_ratio

import archdsl


def linear_ratios(rounds: int) -> tuple[float, float]:
    x, weight, bias = torch.randn(3136, 64), torch.randn(256, 64), torch.randn(256)
    blocked = torch.ops.mkldnn._reorder_linear_weight(weight, None)

    def repeated(call):
        return lambda: [call() for _ in range(20)]

    steps = {
        "torch": repeated(lambda: F.linear(x, weight, bias)),
        "onednn": repeated(lambda: torch.ops.mkldnn._linear_pointwise(x, blocked, bias, "none", [], None)),
        "torch_gelu": repeated(lambda: F.gelu(F.linear(x, weight, bias))),
        "onednn_gelu": repeated(lambda: torch.ops.mkldnn._linear_pointwise(x, blocked, bias, "gelu", [], "none")),
    }
    seconds = alternating_rounds(steps, rounds)
    return median_ratio(seconds, "onednn", "torch"), median_ratio(seconds, "onednn_gelu", "torch_gelu")


def eval_ratio(spec: str, batch: int, rounds: int) -> float:
    model = archdsl.create_model(spec)
    models = {
        "plain": archdsl.prepare_for_inference(copy.deepcopy(model), onednn=False),
        "onednn": archdsl.prepare_for_inference(model),
    }
    images = torch.randn(batch, 3, 224, 224)

    def forward(prepared):
        def run() -> None:
            with torch.no_grad():
                prepared(images)

        return run

    return _lowered_over_plain({name: forward(prepared) for name, prepared in models.items()}, rounds)


def train_ratio(spec: str, batch: int, rounds: int) -> float:
    model = archdsl.create_model(spec).train()
    models = {"plain": model, "onednn": archdsl.use_onednn(copy.deepcopy(model))}
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, model.spec.head.classes, (batch,))

    def train_step(trained):
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.0)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(trained(images), labels).backward()
            optimizer.step()

        return run

    return _lowered_over_plain({name: train_step(trained) for name, trained in models.items()}, rounds)


def _lowered_over_plain(steps: dict, rounds: int) -> float:
    for run in steps.values():
        run()
    return median_ratio(alternating_rounds(steps, rounds), "onednn", "plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain, fused = linear_ratios(args.rounds)
    print(f"Linear (3136, 64) -> 256, oneDNN / torch: {plain:.2f}; with GELU, fused / after: {fused:.2f}")
    print("| spec | eval b1 | eval b8 | train b8 |\n| --- | --- | --- | --- |")
    for spec in args.specs:
        ratios = eval_ratio(spec, 1, args.rounds), eval_ratio(spec, 8, args.rounds), train_ratio(spec, 8, args.rounds)
        print(f"| {spec} | " + " | ".join(f"{ratio:.2f}" for ratio in ratios) + " |", flush=True)


if __name__ == "__main__":
    main()
