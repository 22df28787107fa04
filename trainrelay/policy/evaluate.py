"""Walk-forward backtest of the trained policy against buy-and-hold, flat and the forecast-sign rule.

Only the test block of every fold is traded, each by that fold's own policy: fold k's policy was
fitted on fold k's train rows (which end before fold k's val and test blocks), and its observations
are rebuilt with the recipe stored in its policy file, so nothing from a test block reaches the
policy or its preprocessing. Every strategy pays the same trading cost per
unit of position change and the same funding. Per symbol the bar return is
``p * (exp(r) - 1) - cost * |p - p_prev| - p * funding``; the portfolio is equal-weight over the
symbols, rebalanced every bar; each fold's equity curve starts at 1.0 at the close of its first
test bar (the first decision).

Every number carries its uncertainty (docs/policy.md, "How the verdict is computed"): per fold and
pooled over folds, each strategy's Sharpe ratio has a 95 % stationary-bootstrap interval and a
paired difference to buy-and-hold with interval and p-value; the policy has the deflated Sharpe
ratio for the number of configurations tried; every strategy is rescored at 0x, 1x and 2x the
trading cost; a policy that is always long, short or flat is flagged. The verdict sentence is
built from these numbers (:func:`verdict`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from trainrelay.atomic import write_json, write_parquet
from trainrelay.errors import DataError
from trainrelay.policy import significance as sig
from trainrelay.policy import strategies
from trainrelay.policy.env import trade_step
from trainrelay.policy.inputs import load_inputs
from trainrelay.policy.metrics import YEAR_MS, bars_per_year, sharpe, strategy_metrics
from trainrelay.policy.model import load_policy
from trainrelay.policy.observations import ObservationSpec, build_series, episode_index_ranges, split_ranges

log = logging.getLogger(__name__)

STRATEGIES = ["policy", "buy_and_hold", "flat", "forecast_sign"]
CONFIDENCE = 0.95
BOOTSTRAP_REPS = 2000  # percentile-interval tails of 50 replications each: stable to ~0.01 quantile
COST_MULTIPLES = (0.0, 1.0, 2.0)  # cost sensitivity: the same positions rescored at these x cost
# The verdict says "too short to tell" below this many days of pooled test bars: with one bootstrap
# block per day, fewer than ~30 blocks make the resampled distribution a poor stand-in for the
# sampling distribution (and crypto Sharpe ratios need far more than a month to separate anyway).
MIN_TEST_DAYS = 30.0
# Trivial-policy flag: a symbol-bar is long when the position is above FLAT_BAND, short below
# -FLAT_BAND, flat otherwise; the policy is "always long/short/flat" when one of these covers at
# least TRIVIAL_SHARE of its symbol-bars, and "tracks buy-and-hold" when its portfolio returns
# correlate at least TRIVIAL_SHARE with buy-and-hold's (defined whenever both vary; a correlation
# with the constant always-long *position* is not).
TRIVIAL_SHARE = 0.95
FLAT_BAND = 0.05


def block_windows(
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
    return strategy_metrics(port["ret"].to_numpy(), positions, list(grosses), per_year), port, list(grosses)


def _cost_key(multiple: float) -> str:
    return f"{multiple:g}x"


def _aligned(ports: dict[str, pl.DataFrame]) -> dict[str, np.ndarray]:
    """Net return arrays of the strategies, checked to share bar timestamps (needed for pairing)."""
    stamps = ports["buy_and_hold"]["timestamp"]
    for name, port in ports.items():
        if not port["timestamp"].equals(stamps):
            raise DataError(f"strategy {name} was scored on other bars than buy_and_hold; this is a bug")
    return {name: port["ret"].to_numpy() for name, port in ports.items()}


def uncertainty(
    returns: dict[str, np.ndarray],
    per_year: float,
    seed: np.random.SeedSequence,
    n_trials: int,
    reps: int = BOOTSTRAP_REPS,
    trial_sharpes: list[float] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """({strategy: interval fields}, bootstrap/DSR facts) for aligned net return series.

    One set of stationary-bootstrap indices resamples every strategy (paired differences). The
    mean block is a day of bars (:func:`significance.mean_block_length`). The policy's deflated
    Sharpe ratio uses ``n_trials`` and V[SR_n] = the larger of the null variance 1/(T-1) and the
    variance of ``trial_sharpes`` (annualised Sharpe ratios of the configurations tried on these
    same bars, when at least two are known).
    """
    names = list(returns)
    matrix = np.stack([returns[n] for n in names])
    n_bars = matrix.shape[1]
    bars_per_day = per_year / (YEAR_MS / 86_400_000)
    block = sig.mean_block_length(n_bars, bars_per_day)
    indices = sig.bootstrap_indices(n_bars, block, reps, seed)
    boot = sig.bootstrap_sharpes(matrix, indices, per_year)
    hold = names.index("buy_and_hold")
    root = float(np.sqrt(per_year))
    variance, variance_source = sig.null_sharpe_variance(n_bars), "null: 1/(T-1)"
    if trial_sharpes is not None and len(trial_sharpes) >= 2:
        observed = float(np.var(np.asarray(trial_sharpes) / root, ddof=1))
        if observed > variance:
            variance, variance_source = observed, f"variance of {len(trial_sharpes)} trial Sharpe ratios"
    out: dict[str, dict[str, Any]] = {}
    deflated = None
    for i, name in enumerate(names):
        point = sharpe(matrix[i], per_year)
        diff = boot[i] - boot[hold]
        low, high = sig.percentile_interval(boot[i], CONFIDENCE)
        d_low, d_high = sig.percentile_interval(diff, CONFIDENCE)
        sr, skew, kurt, n_obs = sig.moments(matrix[i])
        varies = float(np.std(matrix[i])) > 1e-15
        entry: dict[str, Any] = {
            "sharpe_ci_low": low,
            "sharpe_ci_high": high,
            "sharpe_diff_vs_buy_and_hold": point - sharpe(matrix[hold], per_year),
            "sharpe_diff_ci_low": d_low,
            "sharpe_diff_ci_high": d_high,
            "sharpe_diff_p_value": sig.two_sided_p_value(diff),
            "probabilistic_sharpe": sig.probabilistic_sharpe(sr, 0.0, n_obs, skew, kurt) if varies else None,
            "deflated_sharpe": None,
        }
        if name == "policy":
            deflated = sig.deflated_sharpe(sr, n_obs, skew, kurt, n_trials, variance)
            entry["deflated_sharpe"] = deflated.dsr if varies else None
        out[name] = entry
    facts: dict[str, Any] = {
        "bars": int(n_bars),
        "days": n_bars / bars_per_day,
        "mean_block_bars": block,
        "blocks": n_bars / block,
    }
    if deflated is not None:
        facts["deflated_sharpe"] = {
            "dsr": out["policy"]["deflated_sharpe"],
            "n_trials": n_trials,
            "sharpe_per_bar": deflated.sharpe,
            "expected_max_sharpe_per_bar": deflated.expected_max_sharpe,
            "expected_max_sharpe": deflated.expected_max_sharpe * root,
            "sharpe_variance_per_bar": variance,
            "sharpe_variance_source": variance_source,
            "skewness": deflated.skewness,
            "kurtosis": deflated.kurtosis,
            "n_obs": deflated.n_obs,
        }
    return out, facts


def trivial_policy(
    positions: list[np.ndarray], policy_ret: np.ndarray, hold_ret: np.ndarray
) -> dict[str, Any]:
    """Is the policy a trivial one in disguise? (see TRIVIAL_SHARE / FLAT_BAND for the rule)."""
    held = np.concatenate(positions)
    shares = {
        "always_long": float(np.mean(held > FLAT_BAND)),
        "always_short": float(np.mean(held < -FLAT_BAND)),
        "always_flat": float(np.mean(np.abs(held) <= FLAT_BAND)),
    }
    corr = None
    if np.std(policy_ret) > 1e-15 and np.std(hold_ret) > 1e-15:
        corr = float(np.corrcoef(policy_ret, hold_ret)[0, 1])
    kind = next((k for k, share in shares.items() if share >= TRIVIAL_SHARE), None)
    if kind is None and corr is not None and corr >= TRIVIAL_SHARE:
        kind = "tracks_buy_and_hold"
    return {
        "flag": kind is not None,
        "kind": kind,
        "share_long": shares["always_long"],
        "share_short": shares["always_short"],
        "share_flat": shares["always_flat"],
        "return_correlation_with_buy_and_hold": corr,
        "threshold": TRIVIAL_SHARE,
        "flat_band": FLAT_BAND,
    }


def backtest(
    policies: dict[int, tuple[torch.nn.Module, dict[str, Any]]],
    inputs: Any,
    seed: int = 0,
    n_trials: int = 1,
    trial_sharpes: list[float] | None = None,
    reps: int = BOOTSTRAP_REPS,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """(metrics dict without verdict/ablations, equity curve frame) over every fold's test block.

    ``policies`` maps each fold to its (actor, meta) from :func:`load_policy`; every fold with a test
    block needs one. ``seed`` fixes the bootstrap; ``n_trials`` (configurations tried) and
    ``trial_sharpes`` (the other configurations' pooled Sharpe ratios) feed the deflated Sharpe.
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
    pooled: dict[str, dict[str, list]] = {k: {"pos": [], "gross": []} for k in STRATEGIES}
    # net portfolio returns per cost multiple per strategy, one array per fold (pooled = concatenated)
    pooled_ret: dict[str, dict[float, list[np.ndarray]]] = {
        k: {m: [] for m in COST_MULTIPLES} for k in STRATEGIES
    }
    for fold in folds:
        actor, meta = policies[fold]
        series = _checked_series(meta, inputs, fold)
        if per_year is None:
            per_year = bars_per_year(np.concatenate([s.timestamp for s in series]))
        windows = block_windows(series, inputs.segments, fold, "test")
        if not windows:
            raise DataError(f"fold {fold}'s test block has fewer than two bars; check segments.test_fraction")
        positions = strategy_positions(actor, windows, cost)
        fold_metrics, ports = {}, {}
        start = min(int(w.timestamp[0]) for w in windows)
        for name in STRATEGIES:
            fold_metrics[name], port, grosses = score_windows(windows, positions[name], cost, per_year)
            ports[name] = port
            ret = port["ret"].to_numpy()
            pooled[name]["pos"].extend(positions[name])
            pooled[name]["gross"].extend(grosses)
            # the same positions at other costs: a policy's decisions do not depend on the cost it
            # pays here (strategies.policy_positions feeds back gross PnL only)
            sensitivity = {}
            for multiple in COST_MULTIPLES:
                shifted = ret if multiple == 1.0 else (
                    score_windows(windows, positions[name], cost * multiple, per_year)[1]["ret"].to_numpy()
                )  # fmt: skip
                pooled_ret[name][multiple].append(shifted)
                sensitivity[_cost_key(multiple)] = _cost_point(shifted, per_year)
            fold_metrics[name]["cost_sensitivity"] = sensitivity
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
        fold_returns = _aligned(ports)
        intervals, facts = uncertainty(
            fold_returns, per_year, np.random.SeedSequence([seed, 1 + int(fold)]), n_trials, reps
        )
        for name in STRATEGIES:
            fold_metrics[name].update(intervals[name])
        train_end = max(e for _, e in split_ranges(inputs.segments, fold, "train"))
        fold_results.append(
            {
                "fold": int(fold),
                "start": _iso(start),
                "end": _iso(max(int(w.timestamp[-1]) for w in windows)),
                "policy_train_end": _iso(train_end),
                "policy_timesteps": int(meta.get("timesteps", 0)),
                "test_days": facts["days"],
                "trivial_policy": trivial_policy(
                    positions["policy"], fold_returns["policy"], fold_returns["buy_and_hold"]
                ),
                "strategies": fold_metrics,
            }
        )
    overall: dict[str, dict[str, Any]] = {}
    pooled_returns = {}
    for name, p in pooled.items():
        ret = np.concatenate(pooled_ret[name][1.0])
        pooled_returns[name] = ret
        overall[name] = strategy_metrics(ret, p["pos"], p["gross"], per_year)
        overall[name]["cost_sensitivity"] = {
            _cost_key(m): _cost_point(np.concatenate(pooled_ret[name][m]), per_year) for m in COST_MULTIPLES
        }
    trials = [overall["policy"]["sharpe"], *(trial_sharpes or [])]
    intervals, facts = uncertainty(
        pooled_returns, per_year, np.random.SeedSequence([seed, 0]), n_trials, reps, trials
    )
    for name in STRATEGIES:
        overall[name].update(intervals[name])
    equity = pl.concat(curves).with_columns(
        pl.col("fold").cast(pl.Int32),
        pl.from_epoch(pl.col("timestamp"), time_unit="ms")
        .dt.cast_time_unit("ms")
        .dt.replace_time_zone("UTC"),
    )
    result = {
        "strategies": overall,
        "folds": fold_results,
        "significance": {
            "confidence": CONFIDENCE,
            "bootstrap": {
                "method": "stationary bootstrap (Politis & Romano 1994), arch.bootstrap.StationaryBootstrap",
                "interval": "percentile",
                "p_value": "two-sided: 2 x share of paired resampled Sharpe differences on the far side "
                "of zero (ties on both sides, +1 corrected)",
                "replications": int(reps),
                "seed": int(seed),
                "mean_block_bars": facts["mean_block_bars"],
                "bars_per_day": per_year / (YEAR_MS / 86_400_000),
            },
            "test_bars": facts["bars"],
            "test_days": facts["days"],
            "blocks": facts["blocks"],
            "min_test_days": MIN_TEST_DAYS,
            "too_short": facts["days"] < MIN_TEST_DAYS,
            "deflated_sharpe": facts["deflated_sharpe"],
            "trivial_policy": trivial_policy(
                pooled["policy"]["pos"], pooled_returns["policy"], pooled_returns["buy_and_hold"]
            ),
            "cost_multiples": list(COST_MULTIPLES),
        },
        "observation": metas[-1]["observation"],
        "trading_cost": cost,
        "bars_per_year": per_year,
    }
    return result, equity.select(["fold", "timestamp", "strategy", "equity"])


def _cost_point(ret: np.ndarray, per_year: float) -> dict[str, float]:
    return {"sharpe": sharpe(ret, per_year), "cumulative_return": float(np.prod(1.0 + ret) - 1.0)}


def _iso(ms: int) -> str:
    return np.datetime64(int(ms), "ms").astype(str) + "Z"


def _num(x: float) -> str:
    return f"{x:.2f}".replace("-0.00", "0.00")


def _p(value: float) -> str:
    # 2000 replications resolve p down to ~0.001; two decimals would print a small p as 0.00
    return f"p = {value:.2f}" if value >= 0.01 else f"p = {value:.3f}"


def _ci(entry: dict[str, Any], prefix: str) -> str:
    return f"95 % CI {_num(entry[prefix + '_ci_low'])} to {_num(entry[prefix + '_ci_high'])}"


def verdict(result: dict[str, Any]) -> str:
    """The verdict sentence, built from the pooled intervals, the DSR and the flags in ``result``.

    Decision on the paired Sharpe difference to buy-and-hold: "beat" when its 95 % interval is above
    0, "trailed" when below, "not distinguishable" otherwise; all of it replaced by "too short to
    tell" when the pooled test covers fewer than MIN_TEST_DAYS days. Then the deflated Sharpe ratio
    for the configurations tried, the trivial-policy flag, and the Sharpe ratio at 0x and 2x cost.
    """
    strats, facts = result["strategies"], result["significance"]
    p, b = strats["policy"], strats["buy_and_hold"]
    signed = _num(p["sharpe_diff_vs_buy_and_hold"])
    signed = signed if signed.startswith("-") else "+" + signed
    numbers = f"{signed}, {_ci(p, 'sharpe_diff')}, {_p(p['sharpe_diff_p_value'])}"
    diff = f"difference {numbers}"
    if facts["too_short"]:
        head = (
            f"Too short to tell: the walk-forward test covers {facts['test_days']:.1f} days, fewer than "
            f"the {facts['min_test_days']:.0f} a verdict needs (Sharpe difference to buy-and-hold {numbers})."
        )
    elif p["sharpe_diff_ci_low"] > 0:
        head = f"The policy beat buy-and-hold on Sharpe ({diff})."
    elif p["sharpe_diff_ci_high"] < 0:
        head = f"The policy trailed buy-and-hold on Sharpe ({diff})."
    else:
        head = f"The policy is not distinguishable from buy-and-hold on Sharpe ({diff})."
    sharpes = (
        f"Sharpe: policy {_num(p['sharpe'])} ({_ci(p, 'sharpe')}), "
        f"buy-and-hold {_num(b['sharpe'])} ({_ci(b, 'sharpe')})."
    )
    parts = [head, sharpes]
    deflated = facts["deflated_sharpe"]
    n = deflated["n_trials"]
    tried = f"{n} configuration{'s' if n != 1 else ''} tried"
    if deflated["dsr"] is None:
        parts.append(f"Deflated Sharpe ratio: undefined (the policy's returns do not vary; {tried}).")
    else:
        judged = "significant" if deflated["dsr"] >= CONFIDENCE else "not significant"
        parts.append(
            f"Deflated Sharpe ratio {deflated['dsr']:.2f} for {tried}: {judged} at "
            f"{CONFIDENCE * 100:.0f} % after selection."
        )
    trivial = facts["trivial_policy"]
    if trivial["flag"]:
        parts.append(_trivial_sentence(trivial))
    costs = p["cost_sensitivity"]
    parts.append(
        f"At 0x / 2x the trading cost the policy's Sharpe would be {_num(costs['0x']['sharpe'])} / "
        f"{_num(costs['2x']['sharpe'])}."
    )
    return " ".join(parts)


def _trivial_sentence(trivial: dict[str, Any]) -> str:
    kind = trivial["kind"]
    if kind == "always_long":
        share = f"{trivial['share_long']:.0%}"
        return f"The policy is buy-and-hold in disguise: long on {share} of symbol-bars."
    if kind == "always_short":
        share = f"{trivial['share_short']:.0%}"
        return f"The policy is a trivial always-short rule: short on {share} of symbol-bars."
    if kind == "always_flat":
        share = f"{trivial['share_flat']:.0%}"
        return f"The policy is flat in disguise: out of the market on {share} of symbol-bars."
    corr = trivial["return_correlation_with_buy_and_hold"]
    return f"The policy is buy-and-hold in disguise: its returns correlate {corr:.2f} with buy-and-hold's."


def merge_ablations(paths: dict[str, str | Path]) -> dict[str, Any]:
    """{variant: {observation, sharpe, ...}} from the variants' metrics files (metrics/ablation/<v>.json)."""
    merged = {}
    for variant, path in sorted(paths.items()):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            merged[variant] = {
                "observation": data["observation"],
                "folds": [int(f["fold"]) for f in data["folds"]],
                **data["strategies"]["policy"],
            }
            trivial = (data.get("significance") or {}).get("trivial_policy")
            if trivial is not None:  # absent from metrics files written before the intervals
                merged[variant]["trivial_policy"] = bool(trivial["flag"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(
                f"{path}: not a policy metrics file ({exc}); rerun evaluate_policy for {variant}"
            ) from exc
    return merged


def trial_count(config: dict[str, Any], presets_compared: int = 0) -> dict[str, Any]:
    """How many configurations were tried before this policy was shown, and where the count comes from.

    1 (this configuration) + ``policy.ablations`` + the tuning trials when ``tune.enabled``
    (population_size x generations) + ``presets_compared`` (other preset runs compared with this
    one; a single run cannot see them, so the caller says).
    """
    ablations = len((config.get("policy") or {}).get("ablations") or [])
    tune = config.get("tune") or {}
    tuning = (
        int(tune.get("population_size", 0)) * int(tune.get("generations", 0)) if tune.get("enabled") else 0
    )
    parts = {
        "configuration": 1,
        "ablations": ablations,
        "tuning_trials": tuning,
        "presets_compared": int(presets_compared),
    }
    return {
        "count": sum(parts.values()),
        "parts": parts,
        "source": (
            f"config: 1 configuration + policy.ablations ({ablations}) + tune trials "
            f"({'population_size x generations' if tune.get('enabled') else 'tune off'}: {tuning})"
            f" + presets compared ({int(presets_compared)})"
        ),
    }


def evaluate_policy(
    policy_paths: dict[int, str | Path],
    paths: dict[str, str | Path | None],
    metrics_out: str | Path,
    equity_out: str | Path | None = None,
    ablations: dict[str, str | Path] | None = None,
    threads: int = 1,
    folds: list[int] | None = None,
    seed: int = 0,
    trials: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Backtest fold k's policy (``policy_paths[k]``) on fold k's test block; write metrics JSON.

    ``folds``: evaluate only these folds' test blocks (the ablations may run on the last fold only);
    None: every fold that has a test block. ``ablations``: metrics files of the variants, merged
    under ``"ablations"``. ``seed``: the bootstrap's (the run's config seed). ``trials``: from
    :func:`trial_count`; None counts this configuration and the given ablations.
    """
    torch.set_num_threads(max(1, int(threads)))
    policies = {int(fold): load_policy(path) for fold, path in policy_paths.items()}
    inputs = load_inputs(
        paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths.get("text")
    )
    if folds is not None:
        wanted = {int(f) for f in folds}
        inputs.segments = inputs.segments.filter(pl.col("fold").is_in(wanted))
    merged = merge_ablations(ablations or {})
    if trials is None:
        n = 1 + len(merged)
        trials = {
            "count": n,
            "parts": {"configuration": 1, "ablations": len(merged)},
            "source": "given ablations",
        }
    evaluated = sorted(inputs.segments.filter(pl.col("split") == "test")["fold"].unique().to_list())
    # the ablations' Sharpe ratios are trials on the same bars only when they traded the same folds
    trial_sharpes = [float(a["sharpe"]) for a in merged.values() if a["folds"] == evaluated]
    result, equity = backtest(
        policies, inputs, seed=seed, n_trials=int(trials["count"]), trial_sharpes=trial_sharpes
    )
    result["significance"]["trials"] = trials
    result["verdict"] = verdict(result)
    result["ablations"] = merged
    log.info(result["verdict"])
    write_json(metrics_out, result)
    if equity_out is not None:
        write_parquet(equity_out, equity)
    return result
