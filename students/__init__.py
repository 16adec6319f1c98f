"""Student zoo: small networks by name, their costs, and their low-bit forms.

``create_model`` builds an architecture by name; ``quantize(model, scheme)`` swaps its
Conv2d / Linear layers for QConv2d / QLinear under one of the schemes of
``students.schemes`` (binary-connect, xnor, twn, ttq, dorefa, int8); ``simulate_export``
trains and evaluates in the packed export's arithmetic; ``export`` / ``save_exported`` /
``load_exported`` ship the packed model, ``convert_int8`` the torch.ao int8 one.
"""

# Architecture modules register themselves on import.
from . import mobilenet_v1, mobilenet_v2, shufflenet_v1, shufflenet_v2, squeezenet  # noqa: F401
from .base import StudentNet
from .cost import ZooRow, count_macs, count_params, model_bytes, zoo_table
from .export import export, load_exported, save_exported
from .quantize import SCHEMES, clip_latent_, convert_int8, quantize, quantized_layers, quantizer_param_groups
from .registry import ModelInfo, create_model, list_models, model_info, register_model
from .schemes import list_schemes, make_scheme, scheme_class, schemes_with
from .simulate import remove_simulation, simulate_export, unsimulated

__all__ = [
    "SCHEMES",
    "ModelInfo",
    "StudentNet",
    "ZooRow",
    "clip_latent_",
    "convert_int8",
    "count_macs",
    "count_params",
    "create_model",
    "export",
    "list_models",
    "list_schemes",
    "load_exported",
    "make_scheme",
    "model_bytes",
    "model_info",
    "quantize",
    "quantized_layers",
    "quantizer_param_groups",
    "register_model",
    "remove_simulation",
    "save_exported",
    "scheme_class",
    "schemes_with",
    "simulate_export",
    "unsimulated",
    "zoo_table",
]
