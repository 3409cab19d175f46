"""The epoch loop both trained heads share: progress bar, gradient step, per-epoch record,
validation with early stopping, atomic checkpoints and resume.

The heads differ only in what one step computes (`Trainer.step`) and what an epoch adds to
its record; everything a killed run needs to continue bit for bit (weights, optimizer, LR
schedule, gradient scaler, every random state, history, early-stopping state) is saved by
this loop after each epoch, so a retried step resumes where the last epoch ended.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from crosstvr_core.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)

EpochCallback = Callable[[int, dict, torch.nn.Module], None]


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warm-up, then cosine decay to zero."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def adamw_warmup_cosine(param_groups: list[dict], lr: float, total_steps: int,
                        warmup_fraction: float
                        ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer both heads train with: AdamW, its LR stepped by `warmup_cosine`."""
    optimizer = torch.optim.AdamW(param_groups, lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup_fraction))


@dataclass
class EarlyStopping:
    """The best validated epoch so far and its weights; stops after `patience` epochs
    without a better score."""

    patience: int
    score: float = -math.inf
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    stale_epochs: int = 0
    stopped: bool = False

    def update(self, score: float, epoch: int, model: torch.nn.Module) -> None:
        if score > self.score:
            self.score, self.epoch, self.stale_epochs = score, epoch, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale_epochs += 1
            self.stopped = self.stale_epochs >= self.patience


class WeightAverage:
    """Exponential moving average of a model's trainable weights (Polyak averaging): the
    average of the last ~1 / (1 - decay) steps is evaluated and kept, not the last step's
    weights, which a few noisy hard lists can pull around. Early steps average with a
    shorter memory (decay ramps as (1 + t) / (10 + t)), so the start is not frozen in."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"weight average: decay must be in (0, 1), got {decay}")
        self.decay, self.steps = decay, 0
        self.shadow = {name: param.detach().clone() for name, param in model.named_parameters()
                       if param.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach(), 1.0 - decay)

    @staticmethod
    @torch.no_grad()
    def _load(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        for name, param in model.named_parameters():
            if name in weights:
                param.copy_(weights[name])

    def copy_to(self, model: torch.nn.Module) -> None:
        self._load(model, self.shadow)

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """The averaged weights in the model for the block, the trained ones again after."""
        live = {name: param.detach().clone() for name, param in model.named_parameters()
                if name in self.shadow}
        self.copy_to(model)
        try:
            yield
        finally:
            self._load(model, live)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.steps = state["decay"], state["steps"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


@dataclass
class Trainer:
    """What differs between the heads.

    batches(epoch) -> the batches of one epoch, walked in order (row batches, or anything a
    step reads, drawn from the loop's generator so they resume exactly); step(batch,
    global_step) -> (loss, named scalar stats);
    epoch_extras(epoch, seconds) -> fields added to the epoch record; validate() -> metrics of
    the epoch (with `score_key`, the early-stopping score); after_validation(record) lets
    the model keep what validation picked (e.g. fusion weights).
    """

    batches: Callable[[int], Sequence[Any]]
    step: Callable[[Any, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    steps_per_epoch: int
    epoch_extras: Callable[[int, float], dict[str, Any]] = lambda epoch, seconds: {}
    validate: Callable[[], dict[str, float]] | None = None
    score_key: str = ""
    after_validation: Callable[[dict], None] = lambda record: None


@contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms for the block (warn-only: an op without a
    deterministic kernel warns instead of failing), then the previous setting again."""
    was, was_warn_only = (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn_only)


@deterministic_algorithms()
def run_epochs(
    model: torch.nn.Module,
    trainer: Trainer,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    *,
    epochs: int,
    grad_clip: float,
    name: str,
    scaler: torch.amp.GradScaler | None = None,
    early_stopping: EarlyStopping | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    weight_average: float | None = None,
) -> list[dict]:
    """Train for `epochs` (counted from 1) and return every epoch's record.

    Per step: zero grads, backward (through `scaler` when given), clip to `grad_clip`,
    optimizer and schedule step. Per epoch: the mean of the step stats, lr and seconds plus
    trainer.epoch_extras; then validation and early stopping; then a checkpoint in
    `checkpoint_dir` (its path in the record as "checkpoint"); then on_epoch_end(epoch,
    record, model). With `resume`, training continues after the latest checkpoint there.
    With `weight_average` (a decay), validation, early stopping and the final weights read
    the moving average of the weights (WeightAverage), training steps the live ones.
    The best validated weights are loaded at the end; the model is left in eval mode.

    Runs under torch's deterministic algorithms: the same config gives the same weights in
    any process (without them, CPU runs of the re-ranker drifted apart after a few steps and
    one config's two-stage R@1 spread over 6 points). On CPU they cost nothing measurable.
    """
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    history: list[dict] = []
    average = None if weight_average is None else WeightAverage(model, weight_average)
    start_epoch = 1
    latest = latest_checkpoint(checkpoint_dir) if checkpoint_dir and resume else None
    if latest is not None:
        state = load_checkpoint(latest)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"], generator)
        if average is not None and state.get("weight_average") is not None:
            average.load_state_dict(state["weight_average"])
        history = state["history"]
        if early_stopping is not None and state.get("early_stopping") is not None:
            for key, value in state["early_stopping"].items():
                setattr(early_stopping, key, value)
        start_epoch = state["epoch"] + 1

    for epoch in range(start_epoch, epochs + 1):
        if early_stopping is not None and early_stopping.stopped:
            break
        model.train()
        start = time.perf_counter()
        batches = trainer.batches(epoch)
        totals: dict[str, torch.Tensor] = {}
        bar = tqdm(range(trainer.steps_per_epoch), desc=f"{name} epoch {epoch}/{epochs}",
                   disable=not progress, leave=False)
        for step in bar:
            loss, stats = trainer.step(batches[step], (epoch - 1) * trainer.steps_per_epoch
                                       + step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            if average is not None:
                average.update(model)
            # summed on the device: one sync per epoch, or per step only when someone watches
            for key, value in {"loss": loss, **stats, "grad_norm": grad_norm}.items():
                value = value.detach().float()
                totals[key] = totals[key] + value if key in totals else value
            if progress:
                bar.set_postfix(loss=f"{totals['loss'].item() / (step + 1):.4f}")
        bar.close()

        seconds = time.perf_counter() - start
        record = {
            "epoch": epoch,
            **{key: value.item() / trainer.steps_per_epoch for key, value in totals.items()},
            "lr": schedule.get_last_lr()[0],
            "seconds": seconds,
            **trainer.epoch_extras(epoch, seconds),
        }
        if trainer.validate is not None:
            with average.applied(model) if average is not None else nullcontext():
                record.update(trainer.validate())
                trainer.after_validation(record)
                if early_stopping is not None:
                    early_stopping.update(record[trainer.score_key], epoch, model)
                    record["early_stopped"] = early_stopping.stopped
        history.append(record)
        if checkpoint_dir is not None:
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_states(generator),
                "history": history,
                "early_stopping": asdict(early_stopping) if early_stopping else None,
                "weight_average": None if average is None else average.state_dict(),
            }
            record["checkpoint"] = str(save_checkpoint(state, checkpoint_dir, epoch))
        if on_epoch_end is not None:
            on_epoch_end(epoch, record, model)
    if early_stopping is not None and early_stopping.state is not None:
        model.load_state_dict(early_stopping.state)  # the best validated epoch, not the last
    elif average is not None:
        average.copy_to(model)
    return history
