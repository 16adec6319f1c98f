"""Student zoo: small networks by name, their costs, and (later) their low-bit forms."""

# Architecture modules register themselves on import.
from . import mobilenet_v1, mobilenet_v2, shufflenet_v1, shufflenet_v2, squeezenet  # noqa: F401
from .base import StudentNet
from .cost import ZooRow, count_macs, count_params, model_bytes, zoo_table
from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = [
    "ModelInfo",
    "StudentNet",
    "ZooRow",
    "count_macs",
    "count_params",
    "create_model",
    "export",
    "list_models",
    "load_exported",
    "model_bytes",
    "model_info",
    "register_model",
    "remove_simulation",
    "save_exported",
    "simulate_export",
    "zoo_table",
]

from .export import export, load_exported, save_exported  # noqa: E402
from .quantize import SCHEMES, clip_latent_, convert_int8, quantize, quantized_layers  # noqa: E402, F401
from .simulate import remove_simulation, simulate_export  # noqa: E402
