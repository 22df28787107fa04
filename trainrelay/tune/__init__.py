"""``tune``: genetic hyperparameter search for the forecaster (Optuna's NSGA-II sampler).

``search.run_worker`` runs trials (one job per ``{worker}``), ``history.finalize`` writes the best
parameters and the fitness history, ``space.with_best_params`` gives ``train_forecaster`` its
tuned config. See docs/tuning.md.
"""
