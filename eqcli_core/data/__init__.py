"""Datasets: procedural landscape panoramas, photo-texture crops, robust ImageFolder input.

Names are resolved lazily so that `eqcli_core.data.landscapes` (numpy + Pillow only) does not
pull in torch, which `images` needs for its Dataset.
"""
from __future__ import annotations

_PUBLIC = {
    "IMAGE_EXTENSIONS": "images", "ImageCropDataset": "images", "load_for_tokenize": "images",
    "load_rgb": "images", "scan_image_folder": "images",
    "LANDSCAPE_CLASSES": "landscapes", "image_seed": "landscapes", "make_landscapes": "landscapes",
    "render_landscape": "landscapes",
    "TEXTURE_CLASSES": "textures", "crop_texture": "textures", "make_textures": "textures",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'eqcli_core.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))
