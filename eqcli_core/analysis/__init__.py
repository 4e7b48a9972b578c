"""Analyses of trained models: shift equivariance of tokenizers (and, from other modules,
position and conflict analyses of generators)."""
from __future__ import annotations
