"""What a file holds (`eqimg info`) and which models ship with eqimg (`eqimg models`).

`describe(path)` recognises: eqimg checkpoints (tokenizer, generator and their train states),
eqimg latent files (complete or an interrupted run's `.partial`), and the official release
formats (generator `.pth`, Lightning tokenizer `.ckpt`, and plain official-layout weights), which
it describes and points at `eqimg convert official`. Checkpoints are read weights-only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, EqimgError, LatentFileError
from .io import FORMAT, load_raw, state_dict_hash

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
_CONVERT_HINT = "convert it with `eqimg convert official` to use it with eqimg"


def describe(path: str | os.PathLike) -> dict:
    """A JSON-able description of a checkpoint or latent file; clear errors for anything else."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give a checkpoint (.pt) or latent file (.h5)")
    if not path.exists():
        raise CheckpointError(f"file not found: {path}")
    if _is_hdf5(path):
        return _describe_latents(path)
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf", ".partial"):
        # named as a latent file but not HDF5: say so (exit 5) instead of trying it as a checkpoint
        from .errors import LatentFileError

        what = "empty (0 bytes)" if path.stat().st_size == 0 else "not a readable HDF5 latent file (truncated or corrupt?)"
        raise LatentFileError(f"{path} is {what}")
    try:
        doc = load_raw(path)
    except EqimgError:
        raise
    except Exception as exc:  # e.g. a text file: the unpickler fails in odd ways
        raise CheckpointError(f"{path} is neither a checkpoint nor a latent file (not a torch or HDF5 file): {type(exc).__name__}") from exc
    base = {"path": str(path), "file_bytes": path.stat().st_size}
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        return {**base, **_describe_eqimg(doc)}
    official = _describe_official(doc) if isinstance(doc, dict) else None
    if official is not None:
        return {**base, **official, "hint": _CONVERT_HINT}
    what = f"a {type(doc).__name__}" + (f" with keys {sorted(map(str, doc))[:8]}" if isinstance(doc, dict) else "")
    raise CheckpointError(f"{path} is neither an eqimg checkpoint, an eqimg latent file nor an official release file (it holds {what})")


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == HDF5_SIGNATURE:
        return True
    try:
        import h5py

        return bool(h5py.is_hdf5(str(path)))  # also finds a superblock after a user block
    except Exception:
        return False


# ----------------------------------------------------------------------------- latent files


def _describe_latents(path: Path) -> dict:
    from .latents import FORMAT as LATENT_FORMAT
    from .latents import LatentFile, _open_h5
    from .saved_tokens import FORMAT as SAMPLE_TOKENS_FORMAT
    from .saved_tokens import load_sample_tokens

    is_sampled = False
    f = _open_h5(path, swmr=True)  # SWMR read also opens an interrupted run's partial file
    try:
        a = dict(f.attrs)
        if a.get("format") == SAMPLE_TOKENS_FORMAT:
            is_sampled = True
        elif a.get("format") != LATENT_FORMAT:
            raise LatentFileError(f"{path} is an HDF5 file but not an eqimg latent file (format {a.get('format')!r})")
        elif not bool(a.get("complete", False)):
            try:
                done, cols = (int(x) for x in f["_progress"][()])
                total = len(f["_listing_paths"])
            except (KeyError, OSError, ValueError, TypeError) as exc:
                raise LatentFileError(f"{path} is an unfinished latent file whose progress cannot be read (corrupt?)") from exc
            return {
                "path": str(path), "kind": "latents-partial", "complete": False,
                "files_done": done, "files_total": total, "columns_done": cols,
                "tokenizer_fingerprint": str(a.get("tokenizer_fingerprint")), "dtype": str(a.get("dtype")),
                "format_version": int(a.get("format_version", 0)),
                "hint": "an interrupted `eqimg tokenize` run: rerun it with the same arguments to resume",
            }
    except EqimgError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise LatentFileError(f"{path} could not be read (truncated or corrupt?): {str(exc).splitlines()[0][:200]}") from exc
    finally:
        f.close()
    if is_sampled:
        doc = load_sample_tokens(path).summary()
        return {"path": str(path), **doc, "complete": True, "file_bytes": path.stat().st_size,
                "hint": "decode it with `eqimg decode` and the tokenizer it was sampled with"}
    with LatentFile(path) as lf:
        doc = lf.summary()
        doc["tokenizer_config"] = lf.tokenizer_config
        doc["skipped_examples"] = [list(x) for x in lf.skipped()[:5]]
    return {"kind": "latents", "complete": True, "file_bytes": path.stat().st_size, **doc}


# ----------------------------------------------------------------------------- checkpoints


def _tensor_dict(d: Any) -> bool:
    return isinstance(d, dict) and bool(d) and all(torch.is_tensor(v) for v in d.values())


def _count(sd: dict) -> int:
    return int(sum(v.numel() for v in sd.values() if torch.is_tensor(v) and v.is_floating_point()))


def _plain(v: Any, depth: int = 0) -> Any:
    """Plain JSON-able copy; tensors become their shape, big containers are summarised."""
    if torch.is_tensor(v):
        return {"tensor": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} if v.numel() != 1 else v.item()
    if isinstance(v, dict):
        if _tensor_dict(v) and len(v) > 8:
            return {"tensors": len(v), "parameters": _count(v)}
        if depth > 3:
            return f"<dict with {len(v)} keys>"
        return {str(k): _plain(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        if len(v) > 64:
            return f"<{type(v).__name__} of {len(v)} items>"
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if hasattr(v, "__dict__"):  # argparse.Namespace in official files
        return {k: _plain(x, depth + 1) for k, x in vars(v).items()}
    return str(v)


def _describe_eqimg(doc: dict) -> dict:
    kind = doc.get("kind")
    out: dict[str, Any] = {"kind": kind, "format_version": doc.get("format_version")}
    if "config" in doc:
        out["config"] = _plain(doc["config"])
    # Parameter counts of every weight set stored (model, EMA, ...); optimizer states are not weights.
    params = {}
    for key, v in doc.items():
        if key in ("optimizer", "disc_optimizer", "rng", "scheduler"):
            continue
        if _tensor_dict(v):
            params[key] = _count(v)
        elif isinstance(v, dict):
            for sub, w in v.items():
                if _tensor_dict(w):
                    params[f"{key}.{sub}"] = _count(w)
    out["parameters"] = params
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    for key in ("class_names", "step", "latent_fingerprint", "train_config", "best_psnr", "world_size"):
        if key in doc:
            out[key] = _plain(doc[key])
    if "class_names" in out:
        out["classes"] = len(out["class_names"])
    if "step" not in out and "step" in meta:
        out["step"] = meta["step"]
    if kind == "tokenizer":
        sd = doc.get("state_dict")
        out["fingerprint"] = meta.get("fingerprint") or (state_dict_hash(sd) if isinstance(sd, dict) else None)
        cfg = doc.get("config") or {}
        out["column_width_hint"] = _column_width(cfg)
    elif kind == "tokenizer-train-state":
        ema = doc.get("ema")
        shadow = ema.get("shadow") if isinstance(ema, dict) else None
        if _tensor_dict(shadow):
            out["fingerprint"] = state_dict_hash(shadow)  # what load_tokenizer would report for it
    if meta:
        out["meta"] = _plain(meta)
    return out


def _column_width(cfg: dict) -> int | None:
    try:
        from .io import config_from_dict
        from .tokenizer import TokenizerConfig

        return int(config_from_dict(TokenizerConfig, cfg).column_width)
    except Exception:  # the tokenizer module may be absent or the config foreign
        return None


def _describe_official(doc: dict) -> dict | None:
    """Recognise the official release formats (and plain official-layout weights)."""
    if {"model", "model_ema", "args"} <= set(doc):  # official generator training checkpoint
        args = _plain(doc["args"])
        return {
            "kind": "official-generator", "source": "official release (EquivariantModeling main.py checkpoint)",
            "epoch": _plain(doc.get("epoch")), "args": args,
            "parameters": {k: _count(doc[k]) for k in ("model", "model_ema") if _tensor_dict(doc[k])},
            "classes": args.get("class_num") if isinstance(args, dict) else None,
            "latent_scale_vae_norm": args.get("vae_norm") if isinstance(args, dict) else None,
        }
    sd = doc.get("state_dict")
    if _tensor_dict(sd):
        keys = set(sd)
        if any(k.startswith("encoder.") for k in keys) and any(k.startswith("quant_layer.") for k in keys):
            has_ema = any(k.startswith("ema_encoder.") for k in keys)
            raw = {k: v for k, v in sd.items() if k.split(".")[0] in ("encoder", "decoder", "quant_layer", "post_quant_layer")}
            out = {"kind": "official-tokenizer", "source": "official release (Lightning tokenizer checkpoint)" if "global_step" in doc or has_ema else "official tokenizer layout",
                   "parameters": {"weights": _count(raw)}, "ema_weights": has_ema,
                   "embed_dim": int(sd["quant_layer.weight"].shape[0]) if "quant_layer.weight" in sd else None}
            for key in ("epoch", "global_step", "ddconfig", "embed_dim", "post_channels"):
                if key in doc:
                    out[key] = _plain(doc[key])
            return out
        if "fake_latent" in keys and "class_emb.weight" in keys:
            return {"kind": "official-generator", "source": "official generator layout", "parameters": {"weights": _count(sd)},
                    "classes": int(sd["class_emb.weight"].shape[0]), "config": _plain(doc.get("config"))}
    return None


# ----------------------------------------------------------------------------- bundled models


def list_bundled(directory: str | os.PathLike | None = None) -> dict:
    """Bundled models described by `bundled/manifest.json`; an empty list when none ship."""
    directory = Path(directory) if directory is not None else BUNDLED_DIR
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return {"directory": str(directory), "models": [], "message": "no bundled models in this installation"}
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{manifest} is not valid JSON: {exc}") from exc
    entries = doc.get("models", doc) if isinstance(doc, dict) else doc
    if isinstance(entries, dict):  # {"name": {...}} form
        entries = [{"name": k, **(v if isinstance(v, dict) else {})} for k, v in entries.items()]
    if not isinstance(entries, list):
        raise CheckpointError(f"{manifest} has no list of models")
    models = []
    for e in entries:
        if not isinstance(e, dict):
            continue
        files = e.get("files", [])
        if isinstance(files, dict):
            files = list(files.values())
        if isinstance(files, str):
            files = [files]
        listed = []
        for name in files:
            fname = name.get("path") or name.get("name") if isinstance(name, dict) else str(name)
            p = directory / str(fname)
            listed.append({"file": str(fname), "present": p.is_file(), "bytes": p.stat().st_size if p.is_file() else None})
        classes = e.get("classes", e.get("class_names"))
        models.append({
            **{k: v for k, v in e.items() if k not in ("files",)},
            "name": e.get("name", "?"),
            "files": listed,
            "num_classes": len(classes) if isinstance(classes, list) else classes,
            "complete": all(f["present"] for f in listed),
        })
    out = {"directory": str(directory), "models": models}
    if not models:
        out["message"] = "no bundled models in this installation"
    return out
