"""Tiny OpenCLIP models and inputs shared by the model tests (CPU, a few ms per forward)."""
import warnings

import open_clip
import torch

import open_clip_thermal  # noqa: F401  (registers the tiny configs)

TINY = "thermal-vit-tiny"


def tiny_clip(seed: int = 0, attention: str = "mha") -> torch.nn.Module:
    """A random tiny CLIP; ``attention='custom'`` uses OpenCLIP's own ``Attention`` class (4.x style)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if attention == "mha":
            return open_clip.create_model(TINY)
        cfg = open_clip.get_model_config(TINY)
        cfg["vision_cfg"]["block_type"] = "custom"
        cfg["text_cfg"]["block_type"] = "custom"
        return open_clip.CLIP(**cfg)


def images(n: int = 3, size: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def tokens(n: int = 3, seed: int = 2, length: int = 77) -> torch.Tensor:
    """Random token ids with an end-of-text token (the highest id) at varying positions."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, 1000, (n, length), generator=g)
    for i in range(n):
        end = 5 + 7 * i
        t[i, end] = 49407
        t[i, end + 1:] = 0
    return t


def randomise_lora(model: torch.nn.Module, std: float = 0.3, seed: int = 3) -> None:
    """Give every LoRA B matrix non-zero values so branches differ from the base and each other."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
