"""Walk-forward backtest of the trained policy against buy-and-hold, flat and the forecast-sign rule.

Only the test block of every fold is traded, each by that fold's own policy: fold k's policy was
fitted on fold k's train rows (which end before fold k's val and test blocks), and its observations
are rebuilt with the recipe stored in its policy file, so nothing from a test block reaches the
policy or its preprocessing. Every strategy pays the same trading cost per
unit of position change and the same funding. Per symbol the bar return is
``p * (exp(r) - 1) - cost * |p - p_prev| - p * funding``; the portfolio is equal-weight over the
symbols, rebalanced every bar; each fold's equity curve starts at 1.0 at the close of its first
test bar (the first decision).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from trainrelay.atomic import write_json, write_parquet
from trainrelay.errors import DataError
from trainrelay.policy import strategies
from trainrelay.policy.env import trade_step
from trainrelay.policy.inputs import load_inputs
from trainrelay.policy.metrics import bars_per_year, summarise
from trainrelay.policy.model import load_policy
from trainrelay.policy.observations import ObservationSpec, build_series, episode_index_ranges, split_ranges

log = logging.getLogger(__name__)

STRATEGIES = ["policy", "buy_and_hold", "flat", "forecast_sign"]


def split_windows(
    series: list, segments: pl.DataFrame, fold: int, split: str = "test"
) -> list[strategies.Window]:
    """One window per symbol over fold ``fold``'s ``split`` block (a split is contiguous)."""
    ranges = split_ranges(segments, fold, split)
    block = [(min(s for s, _ in ranges), max(e for _, e in ranges))]
    return [
        strategies.Window.from_series(series[i], lo, hi) for i, lo, hi in episode_index_ranges(series, block)
    ]


def _returns(w: strategies.Window, positions: np.ndarray, cost: float) -> tuple[np.ndarray, np.ndarray]:
    """(net simple return per bar, gross return per bar) of holding ``positions`` in window ``w``."""
    previous = np.concatenate([[0.0], positions[:-1]])
    net, gross, _, _ = trade_step(previous, positions, np.expm1(w.next_log_return), w.next_funding, cost)
    return net, gross


def _portfolio(per_symbol: list[tuple[np.ndarray, np.ndarray]]) -> pl.DataFrame:
    """Equal-weight mean of the symbols' net returns per bar close (timestamp, ret)."""
    frames = [pl.DataFrame({"timestamp": ts, "ret": net}) for ts, net in per_symbol]
    return pl.concat(frames).group_by("timestamp").agg(pl.col("ret").mean()).sort("timestamp")


def _checked_series(meta: dict[str, Any], inputs: Any, fold: int) -> list:
    spec = ObservationSpec.from_dict(meta["spec"])
    if spec.fold != fold:
        raise DataError(
            f"the policy given for fold {fold} was trained on fold {spec.fold}; rerun train_policy_fold"
        )
    if spec.text and inputs.text is None:
        raise DataError("the policy was trained with text context but no text_embeddings.parquet was given")
    series = build_series(inputs, spec, meta["funding_every_hours"])
    if series[0].market_obs.shape[1] + 2 != meta["obs_dim"]:
        raise DataError(
            f"observations have {series[0].market_obs.shape[1] + 2} columns, the policy expects "
            f"{meta['obs_dim']}; retrain the policy on these features"
        )
    return series


def strategy_positions(
    actor: torch.nn.Module, windows: list[strategies.Window], cost: float
) -> dict[str, list[np.ndarray]]:
    """Positions of every strategy in ``STRATEGIES`` over ``windows``."""
    return {
        "policy": strategies.policy_positions(actor, windows, cost),
        "buy_and_hold": [strategies.buy_and_hold(w) for w in windows],
        "flat": [strategies.flat(w) for w in windows],
        "forecast_sign": [strategies.forecast_sign(w) for w in windows],
    }


def score_windows(
    windows: list[strategies.Window], positions: list[np.ndarray], cost: float, per_year: float
) -> tuple[dict[str, Any], pl.DataFrame, list[np.ndarray]]:
    """(metrics, portfolio frame of timestamp/ret, gross returns per symbol) of one strategy."""
    nets, grosses = zip(*(_returns(w, p, cost) for w, p in zip(windows, positions, strict=True)), strict=True)
    port = _portfolio([(w.timestamp[1:], n) for w, n in zip(windows, nets, strict=True)])
    return summarise(port["ret"].to_numpy(), positions, list(grosses), per_year), port, list(grosses)


def backtest(
    policies: dict[int, tuple[torch.nn.Module, dict[str, Any]]], inputs: Any
) -> tuple[dict[str, Any], pl.DataFrame]:
    """(metrics dict without verdict/ablations, equity curve frame) over every fold's test block.

    ``policies`` maps each fold to its (actor, meta) from :func:`load_policy`; every fold with a test
    block needs one.
    """
    folds = sorted(inputs.segments.filter(pl.col("split") == "test")["fold"].unique().to_list())
    missing = [f for f in folds if f not in policies]
    if missing:
        raise DataError(
            f"no policy for fold(s) {', '.join(map(str, missing))}; run train_policy_fold for every fold"
        )
    metas = [policies[f][1] for f in folds]
    cost = float(metas[0]["trading_cost"])
    if any(float(m["trading_cost"]) != cost for m in metas):
        raise DataError("the fold policies were trained with different trading costs; retrain them all")

    fold_results, curves, per_year = [], [], None
    pooled: dict[str, dict[str, list]] = {k: {"ret": [], "pos": [], "gross": []} for k in STRATEGIES}
    for fold in folds:
        actor, meta = policies[fold]
        series = _checked_series(meta, inputs, fold)
        if per_year is None:
            per_year = bars_per_year(np.concatenate([s.timestamp for s in series]))
        windows = split_windows(series, inputs.segments, fold, "test")
        if not windows:
            raise DataError(f"fold {fold}'s test block has fewer than two bars; check segments.test_fraction")
        positions = strategy_positions(actor, windows, cost)
        fold_metrics = {}
        start = min(int(w.timestamp[0]) for w in windows)
        for name in STRATEGIES:
            fold_metrics[name], port, grosses = score_windows(windows, positions[name], cost, per_year)
            ret = port["ret"].to_numpy()
            pooled[name]["ret"].append(ret)
            pooled[name]["pos"].extend(positions[name])
            pooled[name]["gross"].extend(grosses)
            curves.append(
                pl.DataFrame(
                    {
                        "fold": [fold] * (len(ret) + 1),
                        "timestamp": np.concatenate([[start], port["timestamp"].to_numpy()]),
                        "strategy": [name] * (len(ret) + 1),
                        "equity": np.concatenate([[1.0], np.cumprod(1.0 + ret)]),
                    }
                )
            )
        train_end = max(e for _, e in split_ranges(inputs.segments, fold, "train"))
        fold_results.append(
            {
                "fold": int(fold),
                "start": _iso(start),
                "end": _iso(max(int(w.timestamp[-1]) for w in windows)),
                "policy_train_end": _iso(train_end),
                "policy_timesteps": int(meta.get("timesteps", 0)),
                "strategies": fold_metrics,
            }
        )
    overall = {
        name: summarise(np.concatenate(p["ret"]), p["pos"], p["gross"], per_year)
        for name, p in pooled.items()
    }
    equity = pl.concat(curves).with_columns(
        pl.col("fold").cast(pl.Int32),
        pl.from_epoch(pl.col("timestamp"), time_unit="ms")
        .dt.cast_time_unit("ms")
        .dt.replace_time_zone("UTC"),
    )
    result = {
        "strategies": overall,
        "folds": fold_results,
        "observation": metas[-1]["observation"],
        "trading_cost": cost,
        "bars_per_year": per_year,
    }
    return result, equity.select(["fold", "timestamp", "strategy", "equity"])


def _iso(ms: int) -> str:
    return np.datetime64(int(ms), "ms").astype(str) + "Z"


def verdict(strats: dict[str, dict[str, Any]]) -> str:
    """One plain sentence on whether the policy beat buy-and-hold and the forecast-sign rule on Sharpe."""
    p, b, f = (strats[k]["sharpe"] for k in ("policy", "buy_and_hold", "forecast_sign"))
    beat_b, beat_f = p > b, p > f
    numbers = f"(test Sharpe {p:.2f} vs buy-and-hold {b:.2f} and forecast-sign {f:.2f})"
    if beat_b and beat_f:
        return f"The policy beat both buy-and-hold and the forecast-sign rule on Sharpe {numbers}."
    if not beat_b and not beat_f:
        return f"The policy did not beat buy-and-hold or the forecast-sign rule on Sharpe {numbers}."
    won, lost = (
        ("buy-and-hold", "the forecast-sign rule") if beat_b else ("the forecast-sign rule", "buy-and-hold")
    )
    return f"The policy beat {won} but not {lost} on Sharpe {numbers}."


def merge_ablations(paths: dict[str, str | Path]) -> dict[str, Any]:
    """{variant: {observation, sharpe, ...}} from the variants' metrics files (metrics/ablation/<v>.json)."""
    import json

    merged = {}
    for variant, path in sorted(paths.items()):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            merged[variant] = {
                "observation": data["observation"],
                "folds": [int(f["fold"]) for f in data["folds"]],
                **data["strategies"]["policy"],
            }
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(
                f"{path}: not a policy metrics file ({exc}); rerun evaluate_policy for {variant}"
            ) from exc
    return merged


def evaluate_policy(
    policy_paths: dict[int, str | Path],
    paths: dict[str, str | Path | None],
    metrics_out: str | Path,
    equity_out: str | Path | None = None,
    ablations: dict[str, str | Path] | None = None,
    threads: int = 1,
    folds: list[int] | None = None,
) -> dict[str, Any]:
    """Backtest fold k's policy (``policy_paths[k]``) on fold k's test block; write metrics JSON.

    ``folds``: evaluate only these folds' test blocks (the ablations may run on the last fold only);
    None: every fold that has a test block. ``ablations``: metrics files of the variants, merged
    under ``"ablations"``.
    """
    torch.set_num_threads(max(1, int(threads)))
    policies = {int(fold): load_policy(path) for fold, path in policy_paths.items()}
    inputs = load_inputs(
        paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths.get("text")
    )
    if folds is not None:
        wanted = {int(f) for f in folds}
        inputs.segments = inputs.segments.filter(pl.col("fold").is_in(wanted))
    result, equity = backtest(policies, inputs)
    result["verdict"] = verdict(result["strategies"])
    result["ablations"] = merge_ablations(ablations or {})
    log.info(result["verdict"])
    write_json(metrics_out, result)
    if equity_out is not None:
        write_parquet(equity_out, equity)
    return result
