"""`model.quantize` applied: the frozen UNet's linear layers stored in int8 (torchao weight-only) or NF4
(bitsandbytes) before the adapter goes on top of them (QLoRA). The saved adapter is an ordinary file for
the unquantized base. Measured memory and step time: docs/benchmarks.md.
"""

from __future__ import annotations

import torch

from loramix.core.errors import ConfigError


def check_quantize_backend(quantize: str, device: torch.device) -> None:
    """Refuse, before the model loads, a setting whose backend is missing here."""
    if quantize == "int8":
        try:
            import torchao.quantization  # noqa: F401
        except ImportError as e:
            raise ConfigError("model.quantize", "int8 needs torchao: pip install 'loramix[quant]', or set "
                                                "model.quantize=none.") from e
    elif quantize == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ConfigError("model.quantize", "nf4 needs bitsandbytes and a CUDA GPU: pip install "
                                                "'loramix[bnb]', or use model.quantize=int8.") from e
        if device.type != "cuda":
            raise ConfigError("model.quantize", "nf4 runs on a CUDA GPU only; use model.quantize=int8 here.")


def quantize_unet(unet: torch.nn.Module, quantize: str, compute_dtype: torch.dtype, device: torch.device) -> None:
    """Quantize the UNet's linear layers in place (nothing for "none")."""
    if quantize == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(unet, Int8WeightOnlyConfig())
    elif quantize == "nf4":  # QLoRA as PEFT expects it: bnb Linear4bit layers, quantized when moved to the GPU
        import bitsandbytes as bnb

        for parent in list(unet.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=compute_dtype, quant_type="nf4")
                    q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                    if child.bias is not None:
                        q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                    setattr(parent, name, q.to(device))
