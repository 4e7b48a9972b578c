"""Column-by-column samplers: pure functions of (model, labels, torch.Generator).

`iter_columns` streams: a rolling key/value cache keeps only the last `window` positions per
layer (plus the class tokens' K/V, computed once per label set), so every new column costs the
same and memory is constant however wide (or endless) the image is. `sample_tokens` collects it.
`sample_tokens_recompute` is the official algorithm (rerun the whole sequence for every column),
kept as the reference for tests and benchmarks.

Randomness: per generated column exactly one randn(B, C) is drawn from `generator` (on the
generator's device), shared by the conditional and null-class halves, as in the official code.
Guidance scale for column i (0-based) of n, cfg_schedule:
  "linear"         1 + (cfg-1) * (i+1) / n           (official; needs n = num_columns)
  "linear-window"  1 + (cfg-1) * min(i+1, L) / L     (L = train_length: ramp, then hold; endless-safe)
  "constant"       cfg
  "auto"           "linear" when num_columns is given, else "linear-window"
Temperature scales the initial noise (sampling from a tempered prior N(0, T^2)); T=1 is official.
Outputs are in the tokenizer's latent space (head outputs / latent_scale).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from .errors import UsageError
from .generator import EquivariantGenerator
from .progress import SILENT, Reporter

CFG_SCHEDULES = ("linear", "linear-window", "constant", "auto")
ClassSchedule = Callable[[int], torch.Tensor]


def guidance_scale(cfg: float, schedule: str, column: int, num_columns: int | None, ramp: int) -> float:
    """The guidance scale for 0-based `column` (see module doc)."""
    if schedule == "auto":
        schedule = "linear" if num_columns is not None else "linear-window"
    if schedule == "linear":
        if num_columns is None:
            raise UsageError("cfg_schedule 'linear' ramps over the whole image and needs a known number of columns",
                             hint="use 'linear-window' or 'constant' for endless sampling")
        return 1.0 + (cfg - 1.0) * (column + 1) / num_columns
    if schedule == "linear-window":
        return 1.0 + (cfg - 1.0) * min(column + 1, ramp) / ramp
    if schedule == "constant":
        return float(cfg)
    raise UsageError(f"unknown cfg schedule {schedule!r}; choose one of {', '.join(CFG_SCHEDULES)}")


def _check(model, labels, num_columns, cfg_schedule, steps, temperature, prefix_tokens, class_schedule):
    if cfg_schedule not in CFG_SCHEDULES:
        raise UsageError(f"unknown cfg schedule {cfg_schedule!r}; choose one of {', '.join(CFG_SCHEDULES)}")
    if steps is not None and steps < 1:
        raise UsageError(f"sampling steps must be >= 1, not {steps}")
    if temperature < 0:
        raise UsageError(f"temperature must be >= 0, not {temperature}")
    if num_columns is not None and num_columns < 1:
        raise UsageError(f"number of columns must be >= 1, not {num_columns}")
    if num_columns is None and cfg_schedule == "linear":
        raise UsageError("cfg_schedule 'linear' ramps over the whole image and needs a known number of columns; "
                         "use 'linear-window' or 'constant' for endless sampling")
    if model.config.position == "learned" and (num_columns is None or num_columns > model.config.max_length):
        raise UsageError(f"this generator uses learned absolute positions and supports at most {model.config.max_length} columns; "
                         f"{'endless sampling' if num_columns is None else f'{num_columns} columns'} requested",
                         hint="RoPE generators (position='rope') have no length limit")
    if labels is None and class_schedule is None:
        raise UsageError("give class labels (a tensor of class ids; -1 = unconditional) or a class_schedule")
    batch = _labels(model, labels if labels is not None else class_schedule(0)).numel()
    if prefix_tokens is not None:
        if prefix_tokens.ndim != 3 or prefix_tokens.shape[0] != batch or prefix_tokens.shape[2] != model.config.token_dim:
            raise UsageError(f"prefix tokens must have shape ({batch}, P, {model.config.token_dim}), not {tuple(prefix_tokens.shape)}")
        if num_columns is not None and prefix_tokens.shape[1] > num_columns:
            raise UsageError(f"the prefix has {prefix_tokens.shape[1]} columns, more than the {num_columns} requested")
    return batch


def _labels(model, labels) -> torch.Tensor:
    ids = torch.as_tensor(labels, device=model.device).long().view(-1)
    if ids.numel() == 0:
        raise UsageError("empty batch: no class labels")
    if int(ids.max()) >= model.config.num_classes:
        raise UsageError(f"class id {int(ids.max())} is out of range: the generator has {model.config.num_classes} classes")
    return ids


def _noise(generator, batch, dim, device, temperature):
    g_device = generator.device if generator is not None else device
    return torch.randn(batch, dim, generator=generator, device=g_device).to(device) * temperature


def iter_columns(model: EquivariantGenerator, labels, *, num_columns: int | None = None, cfg: float = 1.0,
                 cfg_schedule: str = "auto", steps: int | None = None, temperature: float = 1.0,
                 generator: torch.Generator | None = None, prefix_tokens: torch.Tensor | None = None,
                 class_schedule: ClassSchedule | None = None) -> Iterator[torch.Tensor]:
    """Yield generated columns (B, C) left to right, in the tokenizer's latent space.

    labels (B,) class ids (-1 = null class). num_columns counts the prefix too (None = endless).
    prefix_tokens (B,P,C): known columns to continue from (outpainting); they are not yielded.
    class_schedule(i) -> (B,) labels used for the pass that produces column i (region control);
    earlier columns keep the keys/values computed under their own labels."""
    batch = _check(model, labels, num_columns, cfg_schedule, steps, temperature, prefix_tokens, class_schedule)
    return _iter_columns(model, labels, batch, num_columns, cfg, cfg_schedule, steps or model.config.sampling_steps,
                         temperature, generator, prefix_tokens, class_schedule)


def _iter_columns(model, labels, batch, num_columns, cfg, cfg_schedule, steps, temperature, generator, prefix_tokens, class_schedule):
    was_training = model.training
    model.eval()
    try:
        device, scale, C = model.device, model.config.latent_scale, model.config.token_dim
        guided = cfg != 1.0
        null = torch.full((batch,), -1, dtype=torch.long, device=device)
        current = {"ids": None, "ctx": None}

        def context(col):  # class context for the pass producing column `col`; rebuilt only on change
            ids = _labels(model, class_schedule(col) if class_schedule is not None else labels)
            if ids.numel() != batch:
                raise UsageError(f"class_schedule({col}) gave {ids.numel()} labels for a batch of {batch}")
            if current["ids"] is None or not torch.equal(ids, current["ids"]):
                current["ids"] = ids
                current["ctx"] = model.class_context(torch.cat([ids, null]) if guided else ids, 2 * batch if guided else batch)
            return current["ctx"]

        caches = model.new_caches()
        t_table = model.head.time_table(steps, device)  # the Euler grid is the same for every column
        prefix = None if prefix_tokens is None else prefix_tokens.to(device, torch.float32) * scale
        prev = None  # last column (scaled), duplicated for the two guidance halves
        col = 0
        with torch.no_grad():
            while num_columns is None or col < num_columns:
                ctx = context(col)
                z = ctx.z_first if col == 0 else model.forward_step(prev, col - 1, ctx, caches)  # (B or 2B, D)
                if prefix is not None and col < prefix.shape[1]:
                    token = prefix[:, col]
                else:
                    noise = _noise(generator, batch, C, device, temperature)
                    s = guidance_scale(cfg, cfg_schedule, col, num_columns, model.config.train_length) if guided else None
                    token = model.head.sample(z, noise, steps, cfg=s, t_table=t_table)
                    yield token / scale
                prev = torch.cat([token, token]) if guided else token
                col += 1
    finally:
        model.train(was_training)


def sample_tokens(model: EquivariantGenerator, labels, num_columns: int, *, cfg: float = 1.0, cfg_schedule: str = "linear",
                  steps: int | None = None, temperature: float = 1.0, generator: torch.Generator | None = None,
                  prefix_tokens: torch.Tensor | None = None, class_schedule: ClassSchedule | None = None,
                  reporter: Reporter = SILENT) -> torch.Tensor:
    """Sample (B, num_columns, C) tokens in the tokenizer's latent space (streaming, constant memory
    per column). With prefix_tokens (B,P,C) the first P columns are the prefix."""
    if num_columns is None:
        raise UsageError("sample_tokens needs a number of columns; use iter_columns for endless sampling")
    cols = [] if prefix_tokens is None else list(prefix_tokens.to(model.device, torch.float32).unbind(1))
    it = iter_columns(model, labels, num_columns=num_columns, cfg=cfg, cfg_schedule=cfg_schedule, steps=steps,
                      temperature=temperature, generator=generator, prefix_tokens=prefix_tokens, class_schedule=class_schedule)
    with reporter.task("sampling columns", total=num_columns - len(cols), unit="col") as task:
        for column in it:
            cols.append(column)
            task.advance(1)
    return torch.stack(cols, dim=1)


def sample_tokens_recompute(model: EquivariantGenerator, labels, num_columns: int, *, cfg: float = 1.0,
                            cfg_schedule: str = "linear", steps: int | None = None, temperature: float = 1.0,
                            generator: torch.Generator | None = None, prefix_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: for every column rerun the transformer on the whole sequence so far (the
    official algorithm; cost grows with the width). Same randomness as sample_tokens."""
    batch = _check(model, labels, num_columns, cfg_schedule, steps, temperature, prefix_tokens, None)
    steps = steps or model.config.sampling_steps
    was_training = model.training
    model.eval()
    try:
        device, scale, C = model.device, model.config.latent_scale, model.config.token_dim
        ids = _labels(model, labels)
        guided = cfg != 1.0
        if guided:
            ids = torch.cat([ids, torch.full_like(ids, -1)])
        tokens = torch.zeros(batch, num_columns, C, device=device)  # scaled space
        start = 0
        if prefix_tokens is not None:
            start = prefix_tokens.shape[1]
            tokens[:, :start] = prefix_tokens.to(device, torch.float32) * scale
        with torch.no_grad():
            for col in range(start, num_columns):
                seq = tokens[:, :col + 1]  # token `col` itself is not seen by z[:, col]
                z = model.forward_transformer(torch.cat([seq, seq]) if guided else seq, ids)[:, col]
                noise = _noise(generator, batch, C, device, temperature)
                s = guidance_scale(cfg, cfg_schedule, col, num_columns, model.config.train_length) if guided else None
                tokens[:, col] = model.head.sample(z, noise, steps, cfg=s)
        return tokens / scale
    finally:
        model.train(was_training)
