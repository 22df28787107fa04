"""The trainrelay member of a policy zip, and publishing a fold's zip: no torch, no SB3.

``ppo_policy.zip`` is SB3's ``PPO.save`` output plus ``trainrelay_meta.json`` (see
:mod:`trainrelay.policy.model`). Reading that member and copying a finished zip need neither torch
nor Stable-Baselines3, whose imports take about 2.5 s; the ``train_policy`` rule, which only
publishes the last fold's policy, starts in a fraction of that.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

from trainrelay.atomic import write_bytes
from trainrelay.errors import DataError

META_MEMBER = "trainrelay_meta.json"

log = logging.getLogger(__name__)


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: policy file not found; run train_policy first")
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(META_MEMBER))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a trainrelay policy file ({exc}); rerun train_policy") from exc


def publish_policy(
    policy_in: str | Path, loss_in: str | Path, policy_out: str | Path, loss_out: str | Path
) -> None:
    """Copy one fold's policy and loss CSV to the deployable places (atomically), checking the zip first."""
    meta = read_meta(policy_in)  # a DataError naming the file if it is not a policy zip
    loss_in = Path(loss_in)
    if not loss_in.is_file():
        raise DataError(f"{loss_in}: policy loss CSV not found; rerun train_policy_fold")
    write_bytes(policy_out, Path(policy_in).read_bytes())
    write_bytes(loss_out, loss_in.read_bytes())
    log.info("deployable policy = fold %s's (%s)", meta.get("fold"), policy_in)
