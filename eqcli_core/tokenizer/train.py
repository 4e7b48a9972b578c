"""Train a column tokenizer: L1+L2 + latent penalty + perceptual (+ hinge GAN, + feature alignment).

Run directory layout:
  state.pt      kind "tokenizer-train-state": config, model, ema, optimizer(s), step, RNG states
  tokenizer.pt  kind "tokenizer": the best EMA weights so far (by held-out PSNR)
  preview.png   held-out originals (top) and EMA reconstructions (bottom)
  log.jsonl     one line per validation
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.images import _show, load_rgb, scan_image_folder
from ..device import autocast, pick_device
from ..ema import EMA
from ..errors import BadInputError, CheckpointError, TrainingDivergedError, UsageError
from ..io import OutputLock, atomic_path, config_from_dict, load_checkpoint, save_checkpoint, state_dict_hash
from ..progress import SILENT, Reporter
from . import save_tokenizer
from .losses import FeatureAligner, PatchDiscriminator, PerceptualLoss, hinge_d_loss, hinge_g_loss, latent_penalty, reconstruction_loss
from .model import TOKENIZER_PRESETS, ColumnTokenizer, TokenizerConfig, to_pixels



@dataclass
class TrainTokenizerConfig:
    preset: str = "tiny"
    batch: int = 16
    crop_width: int | None = None      # training crop width in px (default: the model height)
    lr: float = 1e-3
    min_lr_frac: float = 0.1           # cosine decay to lr*min_lr_frac over the run's budget
    warmup: int = 200
    weight_decay: float = 0.0
    ema_rate: float = 0.999
    l1: float = 1.0
    l2: float = 1.0
    kl_weight: float = 1e-4
    perceptual: bool = True
    perceptual_weight: float = 0.1
    perceptual_size: int = 64          # px height the perceptual network sees (downscaled)
    perceptual_every: int = 4          # compute it every k steps (its gradient is scaled by k)
    gan_start: int | None = None       # enable the hinge GAN from this step
    gan_weight: float = 0.1
    feature_align: bool = False
    align_weight: float = 0.5
    val_images: int = 32
    val_every: int = 0                 # steps between validations; 0: every ckpt_minutes
    ckpt_minutes: float = 5.0
    seed: int = 0
    decoder_from: str | None = None    # fine-tune only the decoder of this tokenizer (its encoder, so its latents, stay fixed)


# --------------------------------------------------------------------------------------------
# data (files are read by the shared robust loader: EXIF rotation, 16-bit, transparency on white)

def list_images(root: Path, reporter: Reporter = SILENT) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under `root` (recursively, class subfolders allowed), sorted, and the files the
    scan skipped as [(path, reason)]. Raises BadInputError when the folder has no image files."""
    root = Path(root)
    if root.is_file():
        raise BadInputError(f"--data must be a directory of images, got a file: {_show(root)}")
    samples, _, skipped = scan_image_folder(root)
    return sorted(Path(p) for p, _ in samples), list(skipped)


def _load_rgb(path: Path, height: int) -> np.ndarray | None:
    """uint8 (H, W, 3) scaled to `height` (aspect kept), or None if unreadable."""
    try:
        im = load_rgb(path)
    except BadInputError:
        return None
    w, h = im.size
    if h != height:
        im = im.resize((max(1, round(w * height / h)), height), Image.BICUBIC)
    return np.asarray(im)


def _scaled_width(im: Image.Image, height: int) -> int:
    w, h = im.size
    return max(1, round(w * height / h))


class ImageCrops:
    """Random (or centre) crops of `height` x `width` from a list of image files, as [-1,1] tensors.
    `bad` maps file index -> reason for files that failed to load (each is warned about once)."""

    def __init__(self, files: list[Path], height: int, width: int, reporter: Reporter = SILENT):
        self.files, self.height, self.width, self.reporter = list(files), height, width, reporter
        self.bad: dict[int, str] = {}

    def _mark_bad(self, i: int, why: str) -> None:
        if i not in self.bad:
            self.bad[i] = why
            self.reporter.warn(f"skipping {_show(self.files[i])}: {why}")

    def check(self, i: int) -> bool:
        """Load file i once (no crop): False (and a warning) if it is unreadable or too narrow."""
        try:
            im = load_rgb(self.files[i])
        except BadInputError as exc:
            self._mark_bad(i, f"unreadable ({exc.message})")
            return False
        if _scaled_width(im, self.height) < self.width:
            self._mark_bad(i, f"narrower than {self.width} px after scaling to height {self.height}")
            return False
        return True

    def get(self, i: int, gen: torch.Generator | None, flip: bool = False) -> torch.Tensor | None:
        try:
            im = load_rgb(self.files[i])
        except BadInputError as exc:
            self._mark_bad(i, f"unreadable ({exc.message})")
            return None
        w = _scaled_width(im, self.height)
        if w < self.width:
            self._mark_bad(i, f"narrower than {self.width} px after scaling to height {self.height}")
            return None
        x0 = int(torch.randint(0, w - self.width + 1, (1,), generator=gen)) if gen is not None else (w - self.width) // 2
        # resample only the crop window (Pillow's box): a 100000-px panorama costs no more than a square
        s = im.size[0] / w
        crop = im.resize((self.width, self.height), Image.BICUBIC, box=(x0 * s, 0, (x0 + self.width) * s, im.size[1]))
        t = torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
        return t.flip(-1) if flip else t

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        out, tries = [], 0
        while len(out) < n:
            tries += 1
            if tries > 20 * n + 100:
                raise BadInputError("too many unreadable images in the training data")
            i = int(torch.randint(0, len(self.files), (1,), generator=gen))
            flip = bool(torch.randint(0, 2, (1,), generator=gen))
            if i in self.bad:
                continue
            t = self.get(i, gen, flip)
            if t is not None:
                out.append(t)
        return torch.stack(out)


def usable_files(files: list[Path], height: int, width: int, reporter: Reporter = SILENT) -> tuple[list[Path], list[tuple[str, str]]]:
    """Read every file once (before the split, so the held-out images are ones that load):
    -> (files that give a height x width crop, [(path, reason)] for the rest)."""
    probe = ImageCrops(files, height, width, reporter)
    with reporter.task("checking images", total=len(files), unit="img") as task:
        ok = []
        for i in range(len(files)):
            if probe.check(i):
                ok.append(files[i])
            task.advance(1)
    return ok, [(str(files[i]), why) for i, why in probe.bad.items()]


def split_files(files: list[Path], val_images: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic held-out split: a seeded permutation, the first k files are validation."""
    if len(files) < 2:
        raise BadInputError(f"need at least 2 readable images (some are held out for validation), found {len(files)}")
    k = max(1, min(val_images, len(files) // 10 or 1))
    perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed + 12345)).tolist()
    return [files[i] for i in perm[k:]], [files[i] for i in perm[:k]]


# --------------------------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def reconstruct(model: ColumnTokenizer, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    outs = []
    for i in range(0, images.shape[0], batch):
        outs.append(model.decode(model.encode(images[i:i + batch])))
    return torch.cat(outs)


def psnr_ssim(original: np.ndarray, recon: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over uint8 (B,H,W,3) pairs (scikit-image)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ps = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(original, recon)]
    ss = [structural_similarity(a, b, channel_axis=2, data_range=255) for a, b in zip(original, recon)]
    return float(np.mean(ps)), float(np.mean(ss))


def save_preview(original: np.ndarray, recon: np.ndarray, path: Path, n: int = 8) -> None:
    from PIL import Image

    top = np.concatenate(list(original[:n]), axis=1)
    bot = np.concatenate(list(recon[:n]), axis=1)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.concatenate([top, bot], axis=0)).save(tmp, format="PNG")


# --------------------------------------------------------------------------------------------
# training

def _encoder_fingerprint(model: ColumnTokenizer) -> str:
    names = {id(p) for p in model.encoder_parameters()}
    return state_dict_hash({k: v for k, v in model.named_parameters() if id(v) in names})


def _check_encoder(model: ColumnTokenizer, expected: str) -> None:
    # why: a tokenizer that claims its source's latent space must really have its encoder
    if _encoder_fingerprint(model) != expected:
        raise RuntimeError("decoder fine-tuning changed the encoder weights; refusing to save a tokenizer with a false latent fingerprint")


def _ema_state(ema: EMA) -> dict:
    # the tokenizer's state.pt keeps rate and update count next to the weights (format since v1)
    return {"rate": ema.rate, "updates": ema.updates, "shadow": ema.state_dict()}


def _load_ema_state(ema: EMA, state: dict) -> None:
    ema.rate = float(state["rate"])
    ema.load_state_dict(state["shadow"], updates=int(state["updates"]))


def _rng_state(gens: dict[str, torch.Generator]) -> dict:
    return {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in gens.items()}}


def _set_rng_state(state: dict, gens: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for k, g in gens.items():
        g.set_state(state[k])


def _lr_at(step: int, progress: float, tc: TrainTokenizerConfig) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    p = min(1.0, max(0.0, progress))
    return tc.lr * (tc.min_lr_frac + (1 - tc.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def _capture(module: torch.nn.Module, store: dict):
    return module.register_forward_hook(lambda m, i, o: store.__setitem__("feat", o))


def train_tokenizer(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    train_config: TrainTokenizerConfig | None = None,
    model_config: TokenizerConfig | None = None,
    minutes: float | None = None,
    steps: int | None = None,
    resume: bool = False,
    val_data: str | os.PathLike | None = None,
    device: str | None = "cpu",
    reporter: Reporter = SILENT,
) -> dict:
    """Train (or resume) a tokenizer in run directory `out`; stops after `minutes` of this session
    or at total step `steps`, whichever comes first. Held-out images come from `val_data` if
    given, else from a fixed split of `data`. Returns a summary dict."""
    tc = copy.deepcopy(train_config or TrainTokenizerConfig())
    if minutes is None and steps is None:
        raise UsageError("give a training budget: --minutes M and/or --steps N")
    if (minutes is not None and minutes <= 0) or (steps is not None and steps <= 0):
        raise UsageError("--minutes and --steps must be positive")
    if tc.batch < 1:
        raise UsageError("--batch must be at least 1")
    out = Path(out)
    state_path = out / "state.pt"
    dev = pick_device(device)

    with OutputLock(out):
        doc = None
        if resume:
            if not state_path.exists():
                raise CheckpointError(f"nothing to resume: {state_path} does not exist", hint="drop --resume to start a new run")
            doc = load_checkpoint(state_path, kind="tokenizer-train-state")
            tc = config_from_dict(TrainTokenizerConfig, {**asdict(tc), **doc.get("train_config", {}),
                                                           # budget-like settings may change on resume
                                                           "val_every": tc.val_every, "ckpt_minutes": tc.ckpt_minutes})
            mc = config_from_dict(TokenizerConfig, doc["config"])
        else:
            if state_path.exists():
                raise UsageError(f"{out} already holds a training run", hint="pass --resume to continue it, or choose another --out")
            if tc.decoder_from is not None:
                from . import load_tokenizer

                source = load_tokenizer(tc.decoder_from)  # its config replaces --preset
                mc = copy.deepcopy(source.config)
                tc.decoder_from = str(tc.decoder_from)
            elif model_config is not None:
                mc = copy.deepcopy(model_config)
            elif tc.preset in TOKENIZER_PRESETS:
                mc = copy.deepcopy(TOKENIZER_PRESETS[tc.preset])
            else:
                raise UsageError(f"unknown tokenizer preset {tc.preset!r}; choose one of: {', '.join(TOKENIZER_PRESETS)}")

        crop_w = tc.crop_width or mc.height
        files, skipped = list_images(Path(data))
        for p, why in skipped:
            reporter.warn(f"skipping {_show(p)}: {why}")
        files, bad = usable_files(files, mc.height, crop_w, reporter)
        skipped += bad
        if not files:
            raise BadInputError(f"none of the image files under {_show(data)} could be used ({len(skipped)} skipped)")
        if val_data is not None:  # a separate held-out folder: an evenly spaced, fixed subset of it
            vfiles, vskipped = list_images(Path(val_data))
            for p, why in vskipped:
                reporter.warn(f"skipping {_show(p)}: {why}")
            vfiles, vbad = usable_files(vfiles, mc.height, crop_w, reporter)
            skipped += vskipped + vbad
            if not vfiles:
                raise BadInputError(f"none of the held-out images under {_show(val_data)} could be used")
            k = min(tc.val_images, len(vfiles))
            train_files, val_files = files, [vfiles[i * len(vfiles) // k] for i in range(k)]
        else:
            train_files, val_files = split_files(files, tc.val_images, tc.seed)
        with torch.random.fork_rng(devices=[]):  # reproducible init without touching the caller's RNG
            torch.manual_seed(tc.seed)
            model = ColumnTokenizer(mc).to(dev)
        latent_fp = encoder_fp = None
        if tc.decoder_from is not None:
            if doc is None:
                model.load_state_dict(source.state_dict())
                latent_fp, encoder_fp = source.latent_fingerprint, _encoder_fingerprint(source)
            else:
                latent_fp, encoder_fp = doc.get("latent_fingerprint"), doc.get("encoder_fingerprint")
                if not latent_fp or not encoder_fp:
                    raise CheckpointError(f"{state_path} is a decoder fine-tuning run without its source's fingerprints; the file is damaged")
            for p in model.encoder_parameters():  # frozen: the latents stay exactly those of the source
                p.requires_grad_(False)
        if crop_w % model.column_width:
            raise UsageError(f"crop width {crop_w} is not a multiple of the column width {model.column_width}")
        train_data = ImageCrops(train_files, mc.height, crop_w, reporter)
        val_data = ImageCrops(val_files, mc.height, crop_w, reporter)
        val_list = [t for t in (val_data.get(i, None) for i in range(len(val_files))) if t is not None]
        if not val_list:  # only if files changed on disk since they were checked
            raise BadInputError("none of the held-out validation images could be read")
        val_x = torch.stack(val_list)

        params = [p for p in model.parameters() if p.requires_grad]
        # optional parts
        percep = None
        align = None
        feat_net = None
        if tc.perceptual or tc.feature_align:
            try:
                from ..features import load_feature_network

                feat_net = load_feature_network(dev)
            except Exception as exc:  # missing module or weights: train without them
                reporter.warn(f"pretrained feature network unavailable ({exc}); perceptual loss and feature alignment disabled")
                tc.perceptual, tc.feature_align = False, False
        if tc.perceptual and feat_net is not None:
            percep = PerceptualLoss(feat_net, tc.perceptual_size)
        store: dict = {}
        if tc.feature_align and feat_net is not None:
            dec_mod = model.decoder.levels[-1] if mc.arch == "fast" else model.decoder.mid.block_2
            dec_ch = mc.ch * mc.ch_mult[-1]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(tc.seed + 2)
                align = FeatureAligner(dec_ch, 112).to(dev)  # the feature net's stride-16 map has 112 channels
            params += list(align.parameters())
            _capture(dec_mod, store)
        opt = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.99), weight_decay=tc.weight_decay)
        disc = disc_opt = None
        if tc.gan_start is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(tc.seed + 3)
                disc = PatchDiscriminator().to(dev)
            disc_opt = torch.optim.AdamW(disc.parameters(), lr=tc.lr * 0.5, betas=(0.5, 0.9))
        ema = EMA(model, tc.ema_rate)
        gens = {"data": torch.Generator().manual_seed(tc.seed), "noise": torch.Generator(device=dev).manual_seed(tc.seed + 1)}
        step, best_psnr, history, prev_seconds = 0, -1.0, [], 0.0
        if doc is not None:
            try:
                model.load_state_dict(doc["model"])
                _load_ema_state(ema, doc["ema"])
                opt.load_state_dict(doc["optimizer"])
                if align is not None and doc.get("align") is not None:
                    align.load_state_dict(doc["align"])
                if disc is not None and doc.get("disc") is not None:
                    disc.load_state_dict(doc["disc"])
                    disc_opt.load_state_dict(doc["disc_optimizer"])
                _set_rng_state(doc["rng"], gens)
            except (KeyError, ValueError, RuntimeError) as exc:
                raise CheckpointError(f"{state_path} does not match this run's settings: {str(exc).splitlines()[0][:300]}") from exc
            step, best_psnr, history = int(doc["step"]), float(doc.get("best_psnr", -1.0)), list(doc.get("history", []))
            prev_seconds = float(doc.get("train_seconds", 0.0))
            reporter.log(f"resumed {out} at step {step}")

        eval_model = ColumnTokenizer(mc).to(dev).eval()

        def validate() -> dict:
            ema.copy_to(eval_model)
            with torch.no_grad(), autocast(dev, enabled=False):
                rec = reconstruct(eval_model, val_x.to(dev))
                toks = eval_model.encode(val_x[: min(16, len(val_x))].to(dev))
            orig_px, rec_px = to_pixels(val_x), to_pixels(rec)
            p, s = psnr_ssim(orig_px, rec_px)
            save_preview(orig_px, rec_px, out / "preview.png")
            return {"step": step, "psnr": p, "ssim": s, "token_std": float(toks.std()), "token_mean": float(toks.mean())}

        def checkpoint(last_val: dict | None) -> None:
            nonlocal best_psnr
            payload = {
                "config": asdict(mc), "train_config": asdict(tc), "model": model.state_dict(), "ema": _ema_state(ema),
                "optimizer": opt.state_dict(), "align": align.state_dict() if align is not None else None,
                "disc": disc.state_dict() if disc is not None else None,
                "disc_optimizer": disc_opt.state_dict() if disc_opt is not None else None,
                "step": step, "best_psnr": best_psnr, "history": history, "rng": _rng_state(gens),
                "train_seconds": prev_seconds + (time.monotonic() - t0),
                "latent_fingerprint": latent_fp, "encoder_fingerprint": encoder_fp,
            }
            if last_val is not None and last_val["psnr"] > best_psnr:
                best_psnr = last_val["psnr"]
                payload["best_psnr"] = best_psnr
                ema.copy_to(eval_model)
                meta = {"preset": tc.preset, "step": step, "val_psnr": last_val["psnr"], "val_ssim": last_val["ssim"],
                        "token_std": last_val["token_std"], "data": str(data)}
                if tc.decoder_from is not None:
                    _check_encoder(eval_model, encoder_fp)
                    eval_model.inherited_latent_fingerprint = latent_fp
                    meta["decoder_from"] = tc.decoder_from
                save_tokenizer(eval_model, out / "tokenizer.pt", meta=meta)
            save_checkpoint(payload, state_path, kind="tokenizer-train-state")

        t0 = time.monotonic()
        last_ckpt = t0
        start_step = step
        total = steps if steps is not None else None
        reporter.log(f"training {tc.preset} tokenizer: {len(train_files)} train / {len(val_x)} held-out images, "
                     f"batch {tc.batch}, column width {model.column_width}px, token dim {model.token_dim}")
        model.train()
        imgs_s = 0.0
        with reporter.task("train-tokenizer", total=total, unit="step") as task:
            if total is not None:
                task.update(completed=step)
            while True:
                elapsed = time.monotonic() - t0
                if steps is not None and step >= steps:
                    break
                if minutes is not None and elapsed >= minutes * 60:
                    break
                # time progress spans sessions: a resumed run with --minutes M is treated as if it had
                # been planned for (time already trained + M), so the LR does not jump back to its peak
                t_all = prev_seconds + elapsed
                progress = max(step / steps if steps else 0.0, t_all / (prev_seconds + minutes * 60) if minutes else 0.0)
                lr = _lr_at(step, progress, tc)
                for g in opt.param_groups:
                    g["lr"] = lr
                ts = time.monotonic()
                x = train_data.batch(tc.batch, gens["data"]).to(dev)
                with autocast(dev):
                    recon, mean, logvar = model(x, sample=True, generator=gens["noise"])
                    loss_rec = reconstruction_loss(recon.float(), x, tc.l1, tc.l2)
                    loss_kl = latent_penalty(mean.float(), logvar.float(), mc.learned_logvar)
                    loss = loss_rec + tc.kl_weight * loss_kl
                    logs = {"rec": loss_rec.item()}
                    if percep is not None and step % tc.perceptual_every == 0:
                        lp = percep(recon.float(), x)
                        loss = loss + tc.perceptual_weight * tc.perceptual_every * lp
                        logs["lpips"] = lp.item()
                    if align is not None:
                        target = feat_net.feature_maps(x)[3]  # stride 16
                        la = align(store["feat"].float(), target)
                        loss = loss + tc.align_weight * la
                        logs["align"] = la.item()
                    gan_on = disc is not None and step >= tc.gan_start
                    if gan_on:
                        lg = hinge_g_loss(disc(recon))
                        loss = loss + tc.gan_weight * lg
                        logs["g"] = lg.item()
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(f"loss became {float(loss)} at step {step}; the last checkpoint in {out} is kept",
                                                hint="lower the learning rate or resume from the checkpoint")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                if gan_on:
                    with autocast(dev):
                        ld = hinge_d_loss(disc(x), disc(recon.detach()))
                    disc_opt.zero_grad(set_to_none=True)
                    ld.backward()
                    disc_opt.step()
                    logs["d"] = ld.item()
                ema.update(model)
                step += 1
                dt = time.monotonic() - ts
                imgs_s = 0.9 * imgs_s + 0.1 * (tc.batch / dt) if imgs_s else tc.batch / dt
                task.advance(1, loss=loss.item(), img_s=imgs_s, lr=lr, **logs)

                now = time.monotonic()
                due_val = (tc.val_every and step % tc.val_every == 0) or (not tc.val_every and now - last_ckpt >= tc.ckpt_minutes * 60)
                if due_val:
                    v = validate()
                    v["elapsed_min"] = (now - t0) / 60
                    history.append(v)
                    _append_log(out, v)
                    reporter.log(f"step {step}: held-out PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.4f}", img_s=imgs_s)
                    checkpoint(v)
                    last_ckpt = time.monotonic()
                elif now - last_ckpt >= tc.ckpt_minutes * 60:
                    checkpoint(None)
                    last_ckpt = time.monotonic()

        v = validate()
        v["elapsed_min"] = (time.monotonic() - t0) / 60
        history.append(v)
        _append_log(out, v)
        checkpoint(v)
        if not (out / "tokenizer.pt").exists():  # no improvement ever recorded (cannot happen normally)
            ema.copy_to(eval_model)
            eval_model.inherited_latent_fingerprint = latent_fp
            save_tokenizer(eval_model, out / "tokenizer.pt", meta={"preset": tc.preset, "step": step})
        reporter.log(f"done at step {step}: held-out PSNR {v['psnr']:.2f} dB (best {best_psnr:.2f}), SSIM {v['ssim']:.4f}")
        return {
            "run": str(out), "tokenizer": str(out / "tokenizer.pt"), "steps": step, "session_steps": step - start_step,
            "psnr": v["psnr"], "ssim": v["ssim"], "best_psnr": best_psnr, "token_std": v["token_std"],
            "images_per_s": imgs_s, "train_images": len(train_files), "val_images": int(len(val_x)),
            "skipped": len(skipped) + len(train_data.bad) + len(val_data.bad),  # files that changed since the check count too
            "perceptual": percep is not None, "feature_align": align is not None, "gan": disc is not None,
            "decoder_from": tc.decoder_from, "latent_fingerprint": latent_fp,
        }


def _append_log(out: Path, entry: dict) -> None:
    with open(out / "log.jsonl", "a") as fh:
        fh.write(json.dumps(entry) + "\n")
