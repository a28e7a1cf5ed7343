"""The ops of the language. Importing this package registers every bundled op."""

from archdsl.blocks import (  # noqa: F401  (shared ops first)
    attention,
    cloformer,
    convolution,
    dct,
    embedding,
    ffn,
    fusion,
    heads,
    interactions,
    layers,
    merging,
    mixformer,
    nommer,
    sgformer,
)
