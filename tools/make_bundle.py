"""Package trained tiny models as eqimg's bundled default (eqcli_core/bundled/).

    python tools/make_bundle.py --tokenizer runs/tokenizer_final.pt --generator runs/gen_tiny/generator.pt

The generator is stored in float16 (half the size; it is cast back to float32 on load). The
tokenizer stays float32 so its (latent) fingerprint, recorded in the latent file and in the
generator's meta, still matches. Writes manifest.json with classes, sizes and the training recipe.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from eqcli_core.generator import load_generator
from eqcli_core.io import load_checkpoint, save_checkpoint
from eqcli_core.tokenizer import load_tokenizer

BUNDLED = Path(__file__).resolve().parent.parent / "eqcli_core" / "bundled"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--generator", required=True)
    ap.add_argument("--recipe", default="docs/bundled_model.md")
    args = ap.parse_args()
    BUNDLED.mkdir(parents=True, exist_ok=True)

    tok_doc = load_checkpoint(args.tokenizer, kind="tokenizer")
    save_checkpoint({k: v for k, v in tok_doc.items() if k not in ("format", "format_version", "kind")},
                    BUNDLED / "tokenizer.pt", kind="tokenizer")

    gen_doc = load_checkpoint(args.generator, kind="generator")
    gen_doc["state_dict"] = {k: (v.half() if v.is_floating_point() else v) for k, v in gen_doc["state_dict"].items()}
    gen_doc.setdefault("meta", {})["storage_dtype"] = "float16"
    save_checkpoint({k: v for k, v in gen_doc.items() if k not in ("format", "format_version", "kind")},
                    BUNDLED / "generator.pt", kind="generator")

    tok = load_tokenizer(BUNDLED / "tokenizer.pt")
    gen = load_generator(BUNDLED / "generator.pt")
    count = lambda m: sum(p.numel() for p in m.parameters())
    manifest = {"models": [{
        "name": "landscapes-tiny",
        "kind": "tokenizer+generator",
        "files": ["tokenizer.pt", "generator.pt"],
        "classes": list(gen.class_names),
        "height": tok.height,
        "column_width": tok.column_width,
        "token_dim": tok.token_dim,
        "tokenizer_parameters": count(tok),
        "generator_parameters": count(gen),
        "tokenizer_fingerprint": tok.fingerprint,
        "tokenizer_latent_fingerprint": tok.latent_fingerprint,  # differs after a decoder-only fine-tune
        "tokenizer_meta": {k: v for k, v in (tok_doc.get("meta") or {}).items() if isinstance(v, (int, float, str))},
        "generator_meta": {k: v for k, v in (gen_doc.get("meta") or {}).items() if isinstance(v, (int, float, str))},
        "provenance": "trained from scratch by the eqimg team on `eqimg data landscapes` (procedural, no external data), on a 2-core CPU",
        "recipe": args.recipe,
        "license": "MIT",
    }]}
    (BUNDLED / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    sizes = {p.name: p.stat().st_size for p in BUNDLED.iterdir()}
    print(json.dumps({"bundled": str(BUNDLED), "bytes": sizes, "total_mb": sum(sizes.values()) / 2**20}, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
