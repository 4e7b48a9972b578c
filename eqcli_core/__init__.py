"""eqimg library: column tokenizers, equivariant column-wise generators, samplers and analyses.

Importable from a notebook; no CLI dependencies. The public API is re-exported lazily here.
"""
from __future__ import annotations

__version__ = "0.1.0"

# name -> module that defines it; resolved on first access so `import eqcli_core` stays fast.
_PUBLIC = {
    "EqimgError": "errors",
    "load_tokenizer": "tokenizer",
    "load_generator": "generator",
    "sample_tokens": "sampling",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        module = importlib.import_module(f".{_PUBLIC[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'eqcli_core' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))
