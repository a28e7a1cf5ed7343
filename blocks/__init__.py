"""The ops of the language. Importing this package registers every bundled op."""

from archdsl.blocks import attention, ffn, fusion, heads, layers, norms  # noqa: F401  (shared ops first)
from archdsl.blocks import cloformer, sgformer  # noqa: F401
