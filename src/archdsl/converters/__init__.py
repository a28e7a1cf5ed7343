"""The authors' checkpoints -> archdsl state dicts, one module per family, each registered
under the spec's `family` (`@register_converter("cloformer")`). Importing this package
registers them; `weights.converter_for` does so on first use."""

from archdsl.converters import cloformer, convnext, mixformer, nommer, pit, pvt_v2, sgformer, swin, vit  # noqa: F401
