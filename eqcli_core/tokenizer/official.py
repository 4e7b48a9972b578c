"""Convert the official release tokenizer (github.com/drx-code/EquivariantModeling) into ours.

Accepted inputs (all loaded weights-only through eqcli_core.io.load_raw):
- the release's Lightning checkpoint `{'state_dict': ...}`: raw weights under `encoder.*`,
  `decoder.*`, `quant_layer.*`, `post_quant_layer.*` and EMA copies under
  `ema_<part>.<param name without dots>`; the EMA weights are used (they are what the authors
  evaluated), the semantic decoder and loss weights are dropped (training-only parts);
- a plain dict `{'ddconfig', 'embed_dim', 'state_dict'}` in the official parameter names.

The architecture comes from the release's YAML (`model.params.ddconfig`, `embed_dim`, `std`),
from a `ddconfig` stored in the file, or is inferred from the weight shapes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path


from ..errors import CheckpointError, UsageError
from ..io import load_raw, state_dict_hash
from .model import ColumnTokenizer, TokenizerConfig

PARTS = ("encoder", "decoder", "quant_layer", "post_quant_layer")


# --------------------------------------------------------------------------------------------
# A YAML subset reader: nested mappings by indentation, "- item" lists, plain scalars. Enough
# for the release's config files (PyYAML is not a dependency).

def _scalar(text: str):
    t = text.strip()
    if t == "" or t in ("null", "~", "Null", "NULL"):
        return None
    if t in ("true", "True", "TRUE"):
        return True
    if t in ("false", "False", "FALSE"):
        return False
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [_scalar(v) for v in inner.split(",")] if inner else []
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", t):
        return float(t)
    return t


def parse_yaml_subset(text: str) -> dict:
    lines = []
    for raw in text.splitlines():
        s = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if s.strip():
            lines.append((len(s) - len(s.lstrip(" ")), s.strip()))

    def block(i: int, indent: int):
        # returns (value, next index) for the block whose lines are at `indent`
        if i < len(lines) and lines[i][1].startswith("- "):
            out = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                out.append(_scalar(lines[i][1][2:]))
                i += 1
            return out, i
        out = {}
        while i < len(lines) and lines[i][0] == indent:
            key, _, rest = lines[i][1].partition(":")
            i += 1
            if rest.strip():
                out[key.strip()] = _scalar(rest)
            elif i < len(lines) and (lines[i][0] > indent or (lines[i][0] == indent and lines[i][1].startswith("- "))):
                out[key.strip()], i = block(i, lines[i][0])
            else:
                out[key.strip()] = None
        return out, i

    if not lines:
        return {}
    value, i = block(0, lines[0][0])
    if i != len(lines):
        raise UsageError(f"could not parse the YAML config near line {i + 1}: {lines[i][1]!r}")
    return value


# --------------------------------------------------------------------------------------------

def config_from_ddconfig(dd: dict, embed_dim: int, std: float = 2.5) -> TokenizerConfig:
    try:
        return TokenizerConfig(
            arch="ldm", height=int(dd["resolution"]), in_channels=int(dd.get("in_channels", 3)), out_channels=int(dd.get("out_ch", 3)),
            ch=int(dd["ch"]), ch_mult=tuple(int(m) for m in dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
            attn_resolutions=tuple(int(r) for r in (dd.get("attn_resolutions") or ())),
            len_down_scale=int(dd.get("len_down_scale", 1)), z_channels=int(dd["z_channels"]), token_dim=int(embed_dim),
            double_enc=bool(dd.get("double_enc", False)), dropout=float(dd.get("dropout", 0.0)), noise_std=float(std),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"tokenizer config is missing or has a bad field: {exc}") from exc


def config_from_yaml(path: str | os.PathLike) -> TokenizerConfig:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    doc = parse_yaml_subset(path.read_text())
    params = ((doc.get("model") or {}).get("params") or {}) if isinstance(doc, dict) else {}
    if "ddconfig" not in params or "embed_dim" not in params:
        raise UsageError(f"{path} has no model.params.ddconfig / embed_dim (is it a tokenizer_config.yaml?)")
    return config_from_ddconfig(params["ddconfig"], params["embed_dim"], params.get("std", 2.5))


def infer_config(sd: dict) -> TokenizerConfig:
    """Rebuild the ldm config from official weight shapes (noise std is not stored: 2.5)."""
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
        n = len(levels)
        mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(n))
        nrb = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
        z = sd["decoder.conv_in.weight"].shape[1]
        double = sd["encoder.conv_out.weight"].shape[0] == 2 * z
        post = sd["post_quant_layer.weight"].shape[0]
        height = (post // z) * 2 ** (n - 1)
        lds = 0
        for i in range(n - 1):
            c_in = ch * mult[i]
            if sd[f"encoder.down.{i}.downsample.conv.conv.weight"].shape[0] * 4 == c_in:
                lds += 1
        attn = tuple(height // 2 ** i for i in range(n) if f"encoder.down.{i}.attn.0.q.weight" in sd)
        token_dim = sd["quant_layer.weight"].shape[0]
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise CheckpointError(f"cannot infer the tokenizer architecture from the weights (missing {exc}); pass --config tokenizer_config.yaml") from exc
    return TokenizerConfig(arch="ldm", height=height, ch=ch, ch_mult=mult, num_res_blocks=nrb, attn_resolutions=attn,
                           len_down_scale=lds, z_channels=z, token_dim=token_dim, double_enc=double)


def _pick_weights(sd: dict, model: ColumnTokenizer) -> tuple[dict, bool]:
    """Our state dict from the release's, preferring the EMA copies. Returns (weights, used_ema)."""
    ours = model.state_dict()
    ema_keys = {f"ema_{p}.{n[len(p) + 1:].replace('.', '')}": n for n in ours for p in PARTS if n.startswith(p + ".")}
    have_ema = all(k in sd for k in ema_keys)
    out = {}
    for ek, name in ema_keys.items():
        src = sd.get(ek) if have_ema else sd.get(name)
        if src is None:
            raise CheckpointError(f"release checkpoint lacks {name!r}: not an EquivariantModeling tokenizer, or a different architecture")
        out[name] = src
    return out, have_ema


def convert_release_tokenizer(path: str | os.PathLike, config_path: str | os.PathLike | None = None) -> ColumnTokenizer:
    """Official tokenizer checkpoint -> ColumnTokenizer (eval mode, fingerprint set)."""
    raw = load_raw(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not an official tokenizer checkpoint (no 'state_dict')")
    sd = raw["state_dict"]
    if not any(k.startswith("encoder.") for k in sd) and not any(k.startswith("ema_encoder.") for k in sd):
        raise CheckpointError(f"{path} holds no tokenizer weights (no encoder.* keys); is it a generator checkpoint?")
    if config_path is not None:
        cfg = config_from_yaml(config_path)
    elif isinstance(raw.get("ddconfig"), dict) and "embed_dim" in raw:
        cfg = config_from_ddconfig(raw["ddconfig"], raw["embed_dim"], raw.get("std", 2.5))
    else:
        base = {k: v for k, v in sd.items() if not k.startswith("ema_")}
        if "encoder.conv_in.weight" not in base:  # EMA-only file: rebuild raw names for inference
            raise CheckpointError(f"{path}: cannot infer the architecture; pass --config tokenizer_config.yaml")
        cfg = infer_config(base)
    model = ColumnTokenizer(cfg)
    weights, _ = _pick_weights(sd, model)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match the tokenizer config: {str(exc).splitlines()[0][:300]}") from exc
    model.fingerprint = state_dict_hash(model.state_dict())
    return model.eval()
