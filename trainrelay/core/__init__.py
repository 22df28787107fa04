"""``core``: services several stages share, with no knowledge of any stage.

Resource sampling (``sampler``), torch thread setup (``threads``), device choice (``devices``),
resumable training state and session deadlines (``checkpointing``), config/file fingerprints
(``fingerprint``) and optional experiment tracking (``tracking``). Stage packages import ``core``;
``core`` imports no stage package. ``trainrelay.errors`` and ``trainrelay.atomic``, imported by
nearly every module, stay at the package root.
"""
