"""The training loop shared by the workflow stage and the ETT benchmark.

Seeded; Adam or AdamW; the paper's schedules (constant, ``type1`` halving, ``type3`` hold then
x0.9 per epoch, per-batch one-cycle); early stopping on validation MSE with the best weights
reloaded at the end; bf16 autocast on CUDA; a tqdm bar per epoch. With a
:class:`~trainrelay.core.checkpointing.StateStore` the complete state (model, optimiser, scheduler, RNG
states, epoch, batch index and that epoch's shuffled order, best score, early-stop counter,
history) is saved at every epoch end and whenever the :class:`TimeBudget` says so between
batches, so a killed job continues where it stopped and ends with the same weights.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from trainrelay.core.checkpointing import StateStore, TimeBudget
from trainrelay.core.progress import progress_bar
from trainrelay.errors import BudgetExhausted, ConfigError, DataError
from trainrelay.forecast.windows import WindowSet

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "type1", "type3", "onecycle")
OPTIMIZERS = ("adam", "adamw")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "type3"
    hold_epochs: int = 2  # type3: epochs at the base rate before the x0.9 decay starts
    pct_start: float = 0.3  # onecycle: share of steps spent warming up
    patience: int = 10
    eval_batch_size: int = 128  # measured fastest for PatchTST on 2 CPU cores (memory-bound scores)

    @classmethod
    def from_config(cls, section: dict[str, Any], where: str) -> TrainSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        settings = cls(**section)
        if settings.schedule not in SCHEDULES:
            raise ConfigError(f"{where}.schedule '{settings.schedule}' must be one of {', '.join(SCHEDULES)}")
        if settings.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"{where}.optimizer '{settings.optimizer}' must be one of {', '.join(OPTIMIZERS)}"
            )
        if settings.epochs < 1 or settings.batch_size < 1 or settings.patience < 1:
            raise ConfigError(f"{where}: epochs, batch_size and patience must be >= 1")
        return settings

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    best_epoch: int  # 1-based epoch whose weights were kept
    epochs_run: int
    best_val_mse: float
    history: list[dict[str, float]] = field(default_factory=list)  # epoch, train_loss, val_loss, lr, seconds
    train_seconds: float = 0.0
    samples_seen: int = 0
    resumed_from_epoch: int | None = None
    # cpu_util_pct, peak_rss_mb, gpu_util_pct (NVML, CUDA only), vram_mb, notes: set by Forecaster.fit
    resources: dict[str, Any] | None = None

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_optimizer(module: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, s: TrainSettings, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if s.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=s.lr, epochs=s.epochs, steps_per_epoch=steps_per_epoch, pct_start=s.pct_start
        )
    if s.schedule == "type3":
        hold = s.hold_epochs
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: 1.0 if e < hold else 0.9 ** (e - hold + 1)
        )
    if s.schedule == "type1":
        # The official code sets the rate after epoch e to lr * 0.5 ** (e - 1) with e counted
        # from 1, so the first two epochs run at the base rate and halving starts with the third.
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 ** max(0, e - 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device == device:
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 needs no loss scaling; on the CPU we stay in float32 (bf16 matmuls are slow there).
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate(
    module: nn.Module, windows: WindowSet, device: torch.device, batch_size: int = 128
) -> dict[str, float]:
    """MSE and MAE over every window, horizon step and channel (scaled values)."""
    if len(windows) == 0:
        raise DataError("no evaluation windows: the split is shorter than lookback + horizon")
    was_training = module.training
    module.eval()
    windows = windows.to(device)  # on CUDA the series live on the GPU: batches are gathered there
    sq, ab, count = 0.0, 0.0, 0
    for lo in range(0, len(windows), batch_size):
        x, y = windows.batch(torch.arange(lo, min(lo + batch_size, len(windows))))
        x, y = _to_device(x, device), _to_device(y, device)
        with _autocast(device):
            pred = module(x)
        err = pred.float() - y
        sq += float(err.double().pow(2).sum())
        ab += float(err.double().abs().sum())
        count += err.numel()
    module.train(was_training)
    return {"mse": sq / count, "mae": ab / count}


@torch.no_grad()
def predict_windows(
    module: nn.Module, windows: WindowSet, device: torch.device, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Forecasts and targets ``[n, horizon, C]`` (float32, scaled) of every window, in order.

    The same forward pass as :func:`evaluate` (autocast on CUDA), kept whole so that per-channel
    metrics and the overall MSE come from one pass.
    """
    if len(windows) == 0:
        raise DataError("no evaluation windows: the split is shorter than lookback + horizon")
    was_training = module.training
    module.eval()
    windows = windows.to(device)
    preds, targets = [], []
    for lo in range(0, len(windows), batch_size):
        x, y = windows.batch(torch.arange(lo, min(lo + batch_size, len(windows))))
        x, y = _to_device(x, device), _to_device(y, device)
        with _autocast(device):
            pred = module(x)
        preds.append(pred.float().cpu().numpy())
        targets.append(y.float().cpu().numpy())
    module.train(was_training)
    return np.concatenate(preds), np.concatenate(targets)


def overall_errors(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE and MAE over every window, step and channel, as :func:`evaluate` sums them."""
    err = (pred - target).astype(np.float64)  # float32 difference, float64 sums: as evaluate
    return {"mse": float(np.mean(err * err)), "mae": float(np.mean(np.abs(err)))}


@dataclass
class _Progress:
    """Where a fit stands; saved (with model, optimiser, scheduler and RNG states) to resume it."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    order: torch.Tensor | None = None  # the current epoch's shuffled window order (None: not started)
    loss_sum: float = 0.0  # the current epoch's summed training loss
    seen: int = 0  # windows trained on in the current epoch
    epoch_seconds: float = 0.0
    best_val: float = float("inf")
    best_epoch: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    samples: int = 0
    finished: bool = False

    def as_state(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class _Fit:
    """What one :func:`fit_module` call works with; the steps below take it first."""

    module: nn.Module
    train: WindowSet
    val: WindowSet
    settings: TrainSettings
    device: torch.device
    seed: int
    store: StateStore | None
    budget: TimeBudget | None
    progress: bool
    label: str
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False)
    n_batches: int = field(init=False)

    def __post_init__(self) -> None:
        self.optimizer = _make_optimizer(self.module, self.settings)
        self.n_batches = (len(self.train) + self.settings.batch_size - 1) // self.settings.batch_size
        self.scheduler = _make_scheduler(self.optimizer, self.settings, self.n_batches)


def fit_module(
    module: nn.Module,
    train: WindowSet,
    val: WindowSet,
    settings: TrainSettings,
    *,
    device: torch.device,
    seed: int,
    store: StateStore | None = None,
    budget: TimeBudget | None = None,
    progress: bool = True,
    label: str = "forecaster",
) -> FitResult:
    """Train ``module`` in place; on return it holds the best-validation weights."""
    if len(train) == 0:
        raise DataError(f"{label}: no training windows: the train split is shorter than lookback + horizon")
    seed_everything(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    module.to(device)
    # On CUDA the (small) series are copied to the GPU once, through pinned memory.
    train, val = train.to(device), val.to(device)
    fit = _Fit(module, train, val, settings, device, seed, store, budget, progress, label)
    state, resumed_from = _resume_or_start(fit)
    module.train()
    while not state.finished and state.epoch < settings.epochs:
        _train_epoch(fit, state)
        val_mse = _validate(fit, state)
        _record_epoch(fit, state, val_mse)
        _keep_best(fit, state, val_mse)
        _end_epoch(fit, state)
    return _best_result(fit, state, resumed_from)


def _resume_or_start(fit: _Fit) -> tuple[_Progress, int | None]:
    """The saved progress and the 1-based epoch it resumes at (model, optimiser, scheduler and RNG
    restored from the store), or a fresh start and None."""
    saved = fit.store.latest() if fit.store is not None else None
    if saved is None:
        return _Progress(), None
    fit.module.load_state_dict(saved["model"])
    fit.optimizer.load_state_dict(saved["optimizer"])
    fit.scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(saved["rng"])
    state = _Progress(**{f.name: saved[f.name] for f in fields(_Progress)})
    log.info("%s: resuming from epoch %d batch %d", fit.label, state.epoch + 1, state.batch)
    return state, state.epoch + 1


def _train_epoch(fit: _Fit, state: _Progress) -> None:
    """The epoch's remaining batches; between batches, save when due and stop when the budget is spent."""
    s = fit.settings
    if state.order is None:
        # A generator per epoch: the order is reproducible and saved with mid-epoch state.
        generator = torch.Generator().manual_seed(fit.seed * 1_000_003 + state.epoch)
        state.order = torch.randperm(len(fit.train), generator=generator)
        state.batch, state.loss_sum, state.seen, state.epoch_seconds = 0, 0.0, 0, 0.0
    started = time.perf_counter()
    with progress_bar(
        fit.n_batches,
        f"{fit.label} epoch {state.epoch + 1}/{s.epochs}",
        enabled=fit.progress,
        initial=state.batch,
    ) as bar:
        while state.batch < fit.n_batches:
            index = state.order[state.batch * s.batch_size : (state.batch + 1) * s.batch_size]
            loss = _train_step(fit, state, index)
            state.loss_sum += float(loss.detach()) * len(index)
            state.seen += len(index)
            state.batch += 1
            bar.update(1)
            if _save_due_between_batches(fit, state):
                now = time.perf_counter()
                state.epoch_seconds += now - started
                state.train_seconds += now - started
                started = now
                _stop_if_out_of_time(
                    fit, state, f"epoch {state.epoch} (+ {state.batch} batches of epoch {state.epoch + 1})"
                )
                _checkpoint(fit, state)
    elapsed = time.perf_counter() - started
    state.epoch_seconds += elapsed
    state.train_seconds += elapsed
    state.samples += len(fit.train)


def _train_step(fit: _Fit, state: _Progress, index: torch.Tensor) -> torch.Tensor:
    """One optimiser step on the windows ``index``; the batch's loss."""
    x, y = fit.train.batch(index)
    x, y = _to_device(x, fit.device), _to_device(y, fit.device)
    fit.optimizer.zero_grad(set_to_none=True)
    with _autocast(fit.device):
        pred = fit.module(x)
    loss = nn.functional.mse_loss(pred.float(), y)
    if not torch.isfinite(loss):
        raise DataError(
            f"{fit.label}: training loss became {float(loss)} at epoch {state.epoch + 1}; lower the lr"
        )
    loss.backward()
    fit.optimizer.step()
    if fit.settings.schedule == "onecycle":
        fit.scheduler.step()
    return loss


def _save_due_between_batches(fit: _Fit, state: _Progress) -> bool:
    between_batches = fit.store is not None and fit.budget is not None and state.batch < fit.n_batches
    return between_batches and (fit.budget.due() or fit.budget.exhausted())


def _validate(fit: _Fit, state: _Progress) -> float:
    """Validation MSE (the epoch's training loss when there are no validation windows)."""
    started = time.perf_counter()
    if len(fit.val):
        val_mse = evaluate(fit.module, fit.val, fit.device, fit.settings.eval_batch_size)["mse"]
    else:
        val_mse = state.loss_sum / state.seen
    state.epoch_seconds += time.perf_counter() - started  # the csv's seconds include validation
    return val_mse


def _record_epoch(fit: _Fit, state: _Progress, val_mse: float) -> None:
    lr = fit.optimizer.param_groups[0]["lr"]
    train_loss = state.loss_sum / state.seen
    row = {"epoch": state.epoch + 1, "train_loss": train_loss, "val_loss": val_mse, "lr": lr}
    state.history.append({**row, "seconds": state.epoch_seconds})
    log.info(
        "%s epoch %d: train %.5f val %.5f lr %.2e (%.1fs)",
        fit.label,
        state.epoch + 1,
        train_loss,
        val_mse,
        lr,
        state.epoch_seconds,
    )


def _keep_best(fit: _Fit, state: _Progress, val_mse: float) -> None:
    """Copy the weights when validation improved, else count one more epoch without improvement."""
    if val_mse < state.best_val:
        state.best_val, state.best_epoch, state.bad_epochs = val_mse, state.epoch + 1, 0
        state.best_weights = {k: v.detach().clone().cpu() for k, v in fit.module.state_dict().items()}
    else:
        state.bad_epochs += 1


def _end_epoch(fit: _Fit, state: _Progress) -> None:
    """Step the per-epoch schedule, move to the next epoch, stop early after ``patience``, save."""
    s = fit.settings
    if s.schedule != "onecycle":
        fit.scheduler.step()
    state.epoch, state.batch, state.order = state.epoch + 1, 0, None
    state.finished = state.bad_epochs >= s.patience or state.epoch >= s.epochs
    if state.bad_epochs >= s.patience:
        log.info("%s: early stop after epoch %d (best %d)", fit.label, state.epoch, state.best_epoch)
    _checkpoint(fit, state)
    if not state.finished:
        _stop_if_out_of_time(fit, state, f"epoch {state.epoch}")


def _checkpoint(fit: _Fit, state: _Progress) -> None:
    """Save the complete state to the store (if any)."""
    if fit.store is None:
        return
    snapshot = {
        "model": fit.module.state_dict(),
        "optimizer": fit.optimizer.state_dict(),
        "scheduler": fit.scheduler.state_dict(),
        "rng": _rng_state(),
        **state.as_state(),
    }
    fit.store.save(snapshot, step=state.epoch * fit.n_batches + state.batch)
    if fit.budget is not None:
        fit.budget.mark_saved()


def _stop_if_out_of_time(fit: _Fit, state: _Progress, where: str) -> None:
    """Save and raise BudgetExhausted when the session's time budget is spent."""
    if fit.budget is None or not fit.budget.exhausted():
        return
    _checkpoint(fit, state)
    where_saved = fit.store.directory if fit.store is not None else "(nowhere: no state store)"
    raise BudgetExhausted(
        f"time budget of {fit.budget.budget_minutes:g} min reached after {where}; state saved to "
        f"{where_saved} — rerun the same command to resume"
    )


def _best_result(fit: _Fit, state: _Progress, resumed_from: int | None) -> FitResult:
    """Reload the best weights into the module (eval mode) and report the fit."""
    if state.best_weights is not None:
        fit.module.load_state_dict(state.best_weights)
    fit.module.eval()
    return FitResult(
        best_epoch=state.best_epoch,
        epochs_run=len(state.history),
        best_val_mse=state.best_val,
        history=state.history,
        train_seconds=state.train_seconds,
        samples_seen=state.samples,
        resumed_from_epoch=resumed_from,
    )
