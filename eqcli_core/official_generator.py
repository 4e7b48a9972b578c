"""Convert the official EquivariantModeling generator release into an EquivariantGenerator.

Accepted inputs (all loaded weights-only):
  - the training script's checkpoint {'model', 'model_ema', 'optimizer', 'epoch', 'scaler', 'args'}
    (args: argparse.Namespace). The EMA weights ('model_ema') are used: they are what the
    release's results were computed with. args.vae_norm becomes latent_scale.
  - {'config': <constructor kwargs>, 'state_dict': <official key names>}.
Shapes are read from the weights where possible; the head count (not recoverable from weights)
comes from the args / config or the named model size.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path


from .errors import BadInputError, CheckpointError, UsageError
from .generator import EquivariantGenerator, GeneratorConfig, save_generator
from .io import file_sha256, load_raw

# official block/head names -> ours (regex on the full key)
_KEY_RULES = [
    (r"^fake_latent$", "null_class"),
    (r"^encoder_pos_embed_learned$", "class_pos"),
    (r"^class_emb\.", "class_emb."),
    (r"^z_proj\.", "token_proj."),
    (r"^z_proj_ln\.", "in_norm."),
    (r"^encoder_norm\.", "out_norm."),
    (r"^encoder_blocks\.(\d+)\.attn2\.qkv\.", r"blocks.\1.cross.q."),
    (r"^encoder_blocks\.(\d+)\.attn2\.(k|v|proj)\.", r"blocks.\1.cross.\2."),
    (r"^encoder_blocks\.(\d+)\.cross_cond_norm\.", r"blocks.\1.cond_norm."),
    (r"^encoder_blocks\.(\d+)\.(norm1|norm2|cross_norm|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.", r"blocks.\1.\2."),
    (r"^diffloss\.net\.time_embed\.mlp\.0\.", "head.time_fc1."),
    (r"^diffloss\.net\.time_embed\.mlp\.2\.", "head.time_fc2."),
    (r"^diffloss\.net\.cond_embed\.", "head.cond_proj."),
    (r"^diffloss\.net\.input_proj\.", "head.in_proj."),
    (r"^diffloss\.net\.res_blocks\.(\d+)\.in_ln\.", r"head.blocks.\1.norm."),
    (r"^diffloss\.net\.res_blocks\.(\d+)\.mlp\.0\.", r"head.blocks.\1.fc1."),
    (r"^diffloss\.net\.res_blocks\.(\d+)\.mlp\.2\.", r"head.blocks.\1.fc2."),
    (r"^diffloss\.net\.res_blocks\.(\d+)\.adaLN_modulation\.1\.", r"head.blocks.\1.ada."),
    (r"^diffloss\.net\.final_layer\.linear\.", "head.final.linear."),
    (r"^diffloss\.net\.final_layer\.adaLN_modulation\.1\.", "head.final.ada."),
]

# named sizes of the official equ_modeling.py: (width, depth = encoder+decoder, heads)
_NAMED = {"tiny_model": (256, 8, 4), "small_model": (512, 16, 8), "base_model": (768, 24, 12),
          "large_model": (1024, 32, 16), "huge_model": (1280, 40, 16)}


def map_official_key(key: str) -> str | None:
    key = key.removeprefix("module.")
    for pattern, repl in _KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def convert_state_dict(official: dict) -> dict:
    """Official key names -> ours; unknown keys are an error (a layout we do not understand)."""
    out, unknown = {}, []
    for k, v in official.items():
        new = map_official_key(k)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise CheckpointError(f"unrecognised parameters in the official generator: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    return out


def config_from_official(settings: dict, state_dict: dict) -> GeneratorConfig:
    """Official constructor kwargs / training args + official weights -> GeneratorConfig."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    try:
        width = sd["z_proj.weight"].shape[0]
        token_dim = sd["z_proj.weight"].shape[1]
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder_blocks\.(\d+)\.", k)))
        head_depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"diffloss\.net\.res_blocks\.(\d+)\.", k)))
        mlp_hidden = sd["encoder_blocks.0.mlp.fc1.weight"].shape[0]
        config = dict(
            token_dim=token_dim, width=width, depth=depth, mlp_ratio=mlp_hidden / width,
            num_classes=sd["class_emb.weight"].shape[0], class_tokens=sd["encoder_pos_embed_learned"].shape[1],
            head_width=sd["diffloss.net.input_proj.weight"].shape[0], head_depth=head_depth,
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"not an official generator state dict (missing {exc})") from exc
    heads = settings.get("encoder_num_heads")
    if heads is None and settings.get("model") in _NAMED:
        heads = _NAMED[settings["model"]][2]
    if heads is None:
        raise CheckpointError("the official checkpoint does not say how many attention heads it uses (no encoder_num_heads, unknown model name)")
    cond = int(settings.get("cond_length", 0) or 0)
    token_num = int(settings.get("token_num", 16))
    shift = settings.get("shift_num")
    try:
        return GeneratorConfig(
            **config, num_heads=int(heads), window=cond if cond > 0 else None, position="rope",
            train_length=token_num, shift_range=int(shift) if shift is not None else token_num,
            sampling_steps=int(settings.get("num_sampling_steps", 100)),
            diffusion_batch_mul=int(settings.get("diffusion_batch_mul", 1) or 1),
            label_drop=float(settings.get("label_drop_prob", 0.1)),
            latent_scale=float(settings.get("vae_norm", 1.0)),
            attn_dropout=float(settings.get("attn_dropout", 0.1)), proj_dropout=float(settings.get("proj_dropout", 0.1)),
        )
    except UsageError as exc:
        raise CheckpointError(f"inconsistent official generator settings: {exc.message}") from exc


def convert_release_generator(path: str | os.PathLike) -> EquivariantGenerator:
    """Load an official generator file (release checkpoint or {'config','state_dict'}) as our model (eval, CPU)."""
    doc = load_raw(path)
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} is not an official generator checkpoint")
    if "args" in doc and ("model_ema" in doc or "model" in doc):
        args = doc["args"]
        settings = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        weights = doc.get("model_ema") or doc.get("model")  # EMA: what the release was evaluated with
    elif "state_dict" in doc and isinstance(doc.get("config"), dict):
        settings, weights = doc["config"], doc["state_dict"]
    else:
        raise CheckpointError(f"{path} is not an official generator checkpoint (expected 'model_ema' and 'args')",
                              hint="an eqimg generator is loaded directly; this command converts the official release")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: the weights are not a state dict")
    config = config_from_official(settings, weights)
    model = EquivariantGenerator(config)
    try:
        model.load_state_dict(convert_state_dict(weights))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: official weights do not fit the inferred config: {str(exc).splitlines()[0][:300]}") from exc
    return model.eval()


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One class name per line (blank lines ignored)."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"could not read class names from {path}: {exc}") from exc
    if not names:
        raise BadInputError(f"{path} lists no class names")
    return names


def convert_official(*, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None, tokenizer_config: str | os.PathLike | None = None,
                     generator: str | os.PathLike | None = None, class_names: list[str] | None = None,
                     class_names_file: str | os.PathLike | None = None) -> dict:
    """Convert official release files to eqimg checkpoints.

    One input: `out` is the output file. Both: `out` is a directory receiving tokenizer.pt and
    generator.pt. Returns a summary document."""
    if tokenizer is None and generator is None:
        raise UsageError("nothing to convert: give --tokenizer and/or --generator")
    if tokenizer_config is not None and tokenizer is None:
        raise UsageError("--config describes the tokenizer; give --tokenizer too")
    if class_names_file is not None:
        class_names = read_class_names(class_names_file)
    out = Path(out)
    both = tokenizer is not None and generator is not None
    if both and out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; with both --tokenizer and --generator, --out must be a directory")
    if not both and out.is_dir():
        raise UsageError(f"{out} is a directory; give an output file name")
    # convert everything in memory first: a bad input leaves no partial output behind
    tok = model = None
    if tokenizer is not None:
        from .tokenizer.official import convert_release_tokenizer  # the tokenizer module's converter

        tok = convert_release_tokenizer(tokenizer, tokenizer_config)
    if generator is not None:
        model = convert_release_generator(generator)
        names = list(class_names) if class_names else [str(i) for i in range(model.config.num_classes)]
        if len(names) != model.config.num_classes:
            raise UsageError(f"{len(names)} class names given but the generator has {model.config.num_classes} classes")
    summary: dict = {"outputs": {}}
    tok_fp = None
    if tok is not None:
        from .tokenizer import save_tokenizer

        target = out / "tokenizer.pt" if both else out
        tok_fp = save_tokenizer(tok, target, {"source": "official-release", "source_file": Path(tokenizer).name,
                                              "source_sha256": file_sha256(tokenizer)})
        summary["outputs"]["tokenizer"] = str(target)
        summary["tokenizer_fingerprint"] = tok_fp
    if model is not None:
        target = out / "generator.pt" if both else out
        meta = {"source": "official-release", "source_file": Path(generator).name, "source_sha256": file_sha256(generator)}
        if tok_fp:
            meta["tokenizer_fingerprint"] = tok_fp  # lets `eqimg sample` check the pair
        save_generator(model, target, class_names=names, meta=meta)
        summary["outputs"]["generator"] = str(target)
        summary["generator"] = {"params": model.num_params(), "latent_scale": model.config.latent_scale,
                                "num_classes": model.config.num_classes, "window": model.config.window,
                                "train_length": model.config.train_length}
    return summary
