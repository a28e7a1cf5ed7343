"""The ops of the language. Importing this package registers every bundled op."""

from archdsl.blocks import attention, convolution, dct, ffn, fusion, heads, interactions, layers  # noqa: F401  (shared ops first)
from archdsl.blocks import cloformer, mixformer, nommer, sgformer  # noqa: F401
