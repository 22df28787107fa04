"""The policy file: an SB3 PPO zip with the observation recipe inside, and a plain torch view of it.

``ppo_policy.zip`` is what ``PPO.save`` writes plus one extra member, ``trainrelay_meta.json``
(observation flags, feature names, the fitted :class:`ObservationSpec`, costs), so that evaluation
and export need nothing but the zip. SB3 ignores members it does not know. Reading that member
without torch is :mod:`trainrelay.policy.policy_zip`'s job.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainrelay.atomic import write_bytes
from trainrelay.policy.observations import OBS_CLIP
from trainrelay.policy.policy_zip import META_MEMBER, read_meta

# What inference needs from the pickled training objects is nothing: replacing the schedules avoids
# unpickling closures (which breaks across Python versions, as SB3's docs warn).
_INFERENCE_OBJECTS = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}


class DeterministicActor(nn.Module):
    """float32 observations [batch, obs_dim] -> deterministic actions [batch, 1] in [-1, 1].

    The actor half of SB3's ActorCriticPolicy as in SB3's export guide: features extractor, actor
    MLP, action net; the Gaussian's mean is the deterministic action, clipped to the action space
    exactly as ``PPO.predict(obs, deterministic=True)`` does.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        observation = torch.clamp(observation, -OBS_CLIP, OBS_CLIP)
        features = self.policy.extract_features(observation, self.policy.pi_features_extractor)
        latent = self.policy.mlp_extractor.forward_actor(features)
        return torch.clamp(self.policy.action_net(latent), -1.0, 1.0)


def save_policy(model: Any, meta: dict[str, Any], target: str | Path) -> None:
    """Write the SB3 zip with ``meta`` inside, atomically."""
    buffer = io.BytesIO()
    model.save(buffer)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(META_MEMBER, json.dumps(meta, sort_keys=True, indent=2))
    write_bytes(target, buffer.getvalue())


def load_policy(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(eval-mode torch module, meta) of a policy zip; meta has obs_dim, observation, feature_names.

    The module runs on CPU; move it with ``.to(device)``. Observations are what
    :func:`trainrelay.policy.observations.build_series` produces plus [position, unrealised_pnl].
    """
    from stable_baselines3 import PPO

    meta = read_meta(path)
    model = PPO.load(path, device="cpu", custom_objects=_INFERENCE_OBJECTS)
    if model.use_sde:
        # gSDE's sampled exploration noise hangs off the policy with an autograd graph to log_std,
        # which makes the module impossible to deepcopy (the benchmark copies it per engine). The
        # deterministic action never uses it: redraw it without a graph, leaving the global RNG as it was.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.policy.reset_noise()
    actor = DeterministicActor(model.policy).eval()
    for param in actor.parameters():
        param.requires_grad_(False)
    return actor, meta
