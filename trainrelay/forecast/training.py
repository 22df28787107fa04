"""The training loop shared by the workflow stage and the ETT benchmark.

Seeded; Adam or AdamW; the paper's schedules (constant, ``type1`` halving, ``type3`` hold then
x0.9 per epoch, per-batch one-cycle); early stopping on validation MSE with the best weights
reloaded at the end; bf16 autocast on CUDA; a tqdm bar per epoch. With a
:class:`~trainrelay.checkpointing.StateStore` the complete state (model, optimiser, scheduler, RNG
states, epoch, batch index and that epoch's shuffled order, best score, early-stop counter,
history) is saved at every epoch end and whenever the :class:`TimeBudget` says so between
batches, so a killed job continues where it stopped and ends with the same weights.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trainrelay.checkpointing import StateStore, TimeBudget
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
    s = settings
    seed_everything(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    module.to(device)
    # On CUDA the (small) series are copied to the GPU once, through pinned memory.
    train, val = train.to(device), val.to(device)
    optimizer = _make_optimizer(module, s)
    n_batches = (len(train) + s.batch_size - 1) // s.batch_size
    scheduler = _make_scheduler(optimizer, s, n_batches)

    epoch, batch, order = 0, 0, None
    loss_sum, seen, epoch_seconds = 0.0, 0, 0.0
    best_val, best_epoch, best_weights, bad_epochs = float("inf"), 0, None, 0
    history: list[dict[str, float]] = []
    train_seconds, samples, resumed_from, finished = 0.0, 0, None, False

    saved = store.latest() if store is not None else None
    if saved is not None:
        module.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"])
        epoch, batch, order = saved["epoch"], saved["batch"], saved["order"]
        loss_sum, seen, epoch_seconds = saved["loss_sum"], saved["seen"], saved["epoch_seconds"]
        best_val, best_epoch, best_weights = saved["best_val"], saved["best_epoch"], saved["best_weights"]
        bad_epochs, history = saved["bad_epochs"], saved["history"]
        train_seconds, samples, finished = saved["train_seconds"], saved["samples"], saved["finished"]
        resumed_from = epoch + 1
        log.info("%s: resuming from epoch %d batch %d", label, epoch + 1, batch)

    def snapshot() -> dict[str, Any]:
        return {
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "epoch": epoch,
            "batch": batch,
            "order": order,
            "loss_sum": loss_sum,
            "seen": seen,
            "epoch_seconds": epoch_seconds,
            "best_val": best_val,
            "best_epoch": best_epoch,
            "best_weights": best_weights,
            "bad_epochs": bad_epochs,
            "history": history,
            "train_seconds": train_seconds,
            "samples": samples,
            "finished": finished,
        }

    def save() -> None:
        if store is not None:
            store.save(snapshot(), step=epoch * n_batches + batch)
            if budget is not None:
                budget.mark_saved()

    def stop_for_budget(where: str) -> None:
        if budget is not None and budget.exhausted():
            save()
            where_saved = store.directory if store is not None else "(nowhere: no state store)"
            raise BudgetExhausted(
                f"time budget of {budget.budget_minutes:g} min reached after {where}; state saved to "
                f"{where_saved} — rerun the same command to resume"
            )

    module.train()
    while not finished and epoch < s.epochs:
        if order is None:
            # A generator per epoch: the order is reproducible and saved with mid-epoch state.
            order = torch.randperm(
                len(train), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            )
            batch, loss_sum, seen, epoch_seconds = 0, 0.0, 0, 0.0
        started = time.perf_counter()
        bar = tqdm(
            total=n_batches,
            initial=batch,
            desc=f"{label} epoch {epoch + 1}/{s.epochs}",
            disable=not progress,
            leave=False,
            mininterval=1.0,
        )
        while batch < n_batches:
            index = order[batch * s.batch_size : (batch + 1) * s.batch_size]
            x, y = train.batch(index)
            x, y = _to_device(x, device), _to_device(y, device)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device):
                pred = module(x)
            loss = nn.functional.mse_loss(pred.float(), y)
            if not torch.isfinite(loss):
                raise DataError(
                    f"{label}: training loss became {float(loss)} at epoch {epoch + 1}; lower the lr"
                )
            loss.backward()
            optimizer.step()
            if s.schedule == "onecycle":
                scheduler.step()
            loss_sum += float(loss.detach()) * len(index)
            seen += len(index)
            batch += 1
            bar.update(1)
            between_batches = store is not None and budget is not None and batch < n_batches
            if between_batches and (budget.due() or budget.exhausted()):
                now = time.perf_counter()
                epoch_seconds += now - started
                train_seconds += now - started
                started = now
                stop_for_budget(f"epoch {epoch} (+ {batch} batches of epoch {epoch + 1})")
                save()
        bar.close()
        elapsed = time.perf_counter() - started
        epoch_seconds += elapsed
        train_seconds += elapsed
        samples += len(train)
        val_mse = evaluate(module, val, device, s.eval_batch_size)["mse"] if len(val) else loss_sum / seen
        epoch_seconds += time.perf_counter() - started - elapsed  # the csv's seconds include validation
        lr = optimizer.param_groups[0]["lr"]
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen,
                "val_loss": val_mse,
                "lr": lr,
                "seconds": epoch_seconds,
            }
        )
        log.info(
            "%s epoch %d: train %.5f val %.5f lr %.2e (%.1fs)",
            label,
            epoch + 1,
            loss_sum / seen,
            val_mse,
            lr,
            epoch_seconds,
        )
        if val_mse < best_val:
            best_val, best_epoch, bad_epochs = val_mse, epoch + 1, 0
            best_weights = {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}
        else:
            bad_epochs += 1
        if s.schedule != "onecycle":
            scheduler.step()
        epoch, batch, order = epoch + 1, 0, None
        finished = bad_epochs >= s.patience or epoch >= s.epochs
        if bad_epochs >= s.patience:
            log.info("%s: early stop after epoch %d (best %d)", label, epoch, best_epoch)
        save()
        if not finished:
            stop_for_budget(f"epoch {epoch}")

    if best_weights is not None:
        module.load_state_dict(best_weights)
    module.eval()
    return FitResult(
        best_epoch=best_epoch,
        epochs_run=len(history),
        best_val_mse=best_val,
        history=history,
        train_seconds=train_seconds,
        samples_seen=samples,
        resumed_from_epoch=resumed_from,
    )
