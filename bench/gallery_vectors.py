"""Test vectors for the gallery specs (src/archdsl/specs/gallery/), computed with timm.

Run it outside the repository's environment, with timm's source and what `import timm` needs:

    git --git-dir=<a clone of huggingface/pytorch-image-models> archive HEAD | tar -x -C /tmp/timm
    PYTHONPATH=<a stub torchvision package>:<huggingface_hub, safetensors> \\
        TIMM_COMMIT=<its commit> python bench/gallery_vectors.py /tmp/timm [convnext_t deit_ti]

(timm imports torchvision at import time but computes nothing with it here, so a stub package
whose names are placeholder classes is enough.) For each model it writes
tests/vectors/gallery/<spec>.pt: timm's key list with shapes, the seeds of the weight and input
rule (tests/gallery_rule.py, which tests/test_gallery.py uses too), the float32 logits of timm's
model in eval mode on the CPU, its parameter count and fvcore's FLOPs at 224 (batch 1, fused
attention off so that the attention's matmuls are traced and counted). pvt_v2_b0_li is no spec of
its own: timm's pvt_v2_b0 with linear=True (PVTv2-li), which the tests build as overrides on
gallery/pvt_v2_b0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "vectors" / "gallery"
MODELS = {
    "convnext_t": "convnext_tiny",
    "deit_ti": "deit_tiny_patch16_224",
    "swin_t": "swin_tiny_patch4_window7_224",
    "pvt_v2_b0": "pvt_v2_b0",
    "pit_ti": "pit_ti_224",
    "pvt_v2_b0_li": "pvt_v2_b0",
}
# timm's keyword arguments where the vector is of a variant that timm registers under no name
TIMM_KWARGS = {"pvt_v2_b0_li": {"linear": True}}


def main(timm_source: str, names: list[str]) -> None:
    sys.path.insert(0, timm_source)
    sys.path.insert(0, str(REPO / "tests"))
    import timm
    from fvcore.nn import FlopCountAnalysis
    from gallery_rule import INPUT_SEED, WEIGHT_SEED, rule_input, rule_state
    from timm.layers import set_fused_attn

    set_fused_attn(False)  # explicit q @ kᵀ and attn @ v, which fvcore counts (it skips fused SDPA)
    torch.set_num_threads(1)
    # a checkout knows its commit; for an exported tree (git archive) give it as TIMM_COMMIT
    commit = (
        os.environ.get("TIMM_COMMIT")
        or subprocess.run(
            ["git", "-C", timm_source, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    OUT.mkdir(parents=True, exist_ok=True)
    for spec in names or MODELS:
        kwargs = TIMM_KWARGS.get(spec, {})
        model = timm.create_model(MODELS[spec], **kwargs).eval()
        keys = [(name, list(value.shape)) for name, value in model.state_dict().items()]
        model.load_state_dict(rule_state(keys, WEIGHT_SEED), strict=True)
        with torch.no_grad():
            logits = model(rule_input(INPUT_SEED))
            flops = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = flops.total()
        vector = {
            "timm_model": MODELS[spec],
            "timm_kwargs": kwargs,
            "timm_version": timm.__version__,
            "timm_commit": commit,
            "keys": keys,
            "weight_seed": WEIGHT_SEED,
            "input_seed": INPUT_SEED,
            "logits": logits.float(),
            "params": sum(p.numel() for p in model.parameters()),
            "fvcore_flops": int(total),
        }
        torch.save(vector, OUT / f"{spec}.pt")
        print(f"{spec}: {vector['params']:,} parameters, {total:,} FLOPs, |logits| max {logits.abs().max():.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
