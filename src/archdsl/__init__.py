"""archdsl: a declarative architecture language for conv/attention vision backbones."""

from archdsl.api import count_flops, create_model, load_spec, lower_spec
from archdsl.errors import CheckpointError, SpecError
from archdsl.inference import prepare_for_inference
from archdsl.onednn import use_onednn
from archdsl.plugins import load_plugins
from archdsl.weights import save_checkpoint

__all__ = [
    "load_spec",
    "create_model",
    "count_flops",
    "lower_spec",
    "prepare_for_inference",
    "use_onednn",
    "save_checkpoint",
    "load_plugins",
    "SpecError",
    "CheckpointError",
]
__version__ = "0.1.0"
