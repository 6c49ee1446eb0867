"""Embedding on the Ray Data actor pool: same vectors as one process, reuse, staleness."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RERUN_TOL, make_codes, write_split

from r2ps.data.errors import BadRecord
from r2ps.data.schema import codes_file
from r2ps.mining.corpus_index import ensure_index
from r2ps.mining.embed import (
    CodeEmbedder,
    EmbedConfig,
    block_count,
    embed_corpus,
    plan_pool,
    tokenize_codes,
)
from r2ps.mining.index import IndexConfig, StaleIndexError, embedding_layout, read_embeddings
from r2ps.models.dual import DualEncoder
from r2ps.models.onnx_export import export_onnx

ROOT = Path(__file__).resolve().parents[2]


def small_cfg(model: Path, codes: Path, out: Path, **kw) -> EmbedConfig:
    return EmbedConfig(
        model=str(model), codes=str(codes), out=str(out), block_rows=8, batch_size=4, **kw
    )


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@pytest.mark.parametrize("tokenize", ["actor", "task"])
def test_embeddings_equal_the_single_process_ones(ray_local, tiny_bert_dir, tmp_path, tokenize):
    table = make_codes(40)
    split = write_split(tmp_path / "split", table)
    cfg = small_cfg(tiny_bert_dir, split, tmp_path / "out", actors=2, tokenize=tokenize)
    manifest = embed_corpus(cfg)
    assert manifest["tokenize"] == f"{tokenize}s" and manifest["backend"] == "torch"

    ids, emb = read_embeddings(str(tmp_path / "out" / "embeddings"))
    want = DualEncoder.from_pretrained(tiny_bert_dir).embed_codes(table["code"].to_pylist())
    assert ids == table["code_id"].to_pylist()
    np.testing.assert_allclose(emb, want, atol=1e-5)

    assert manifest["count"] == 40 and manifest["dim"] == 32 and manifest["actors"] == 2
    shards = sorted((tmp_path / "out" / "embeddings").glob("part-*.parquet"))
    assert len(shards) == manifest["shards"] > 1
    schema = pq.read_schema(shards[0])
    assert schema.field("code_id").type == pa.string()
    assert schema.field("embedding").type == pa.list_(pa.float32(), 32)
    saved = json.loads((tmp_path / "out" / "embeddings" / "manifest.json").read_text())
    assert saved == manifest


def test_ensure_index_reuses_what_matches_and_rebuilds_what_is_stale(
    ray_local, tiny_bert_dir, tmp_path
):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)  # this test edits the model
    split = write_split(tmp_path / "split", make_codes(24))
    out = tmp_path / "out"
    emb_manifest, idx_manifest = (
        out / "embeddings" / "manifest.json",
        out / "index" / "manifest.json",
    )

    # the job's command line, as a user runs it (joins the test's Ray)
    job = runpy.run_path(str(ROOT / "jobs" / "embed.py"), run_name="embed_job")
    assert job["main"](["--model", str(model), "--codes", str(split), "--out", str(out)]) == 0
    first = ensure_index(small_cfg(model, split, out))  # up to date: loads, embeds nothing
    assert first.manifest["count"] == 24 and first.manifest["kind"] == "flat"
    stamps = mtime(emb_manifest), mtime(idx_manifest)
    again = ensure_index(small_cfg(model, split, out))
    assert (mtime(emb_manifest), mtime(idx_manifest)) == stamps
    np.testing.assert_array_equal(first.search(np.eye(32, dtype=np.float32), 3)[1],
                                  again.search(np.eye(32, dtype=np.float32), 3)[1])  # fmt: skip

    # another index kind: re-indexed from the saved embeddings, not re-embedded
    hnsw = ensure_index(small_cfg(model, split, out, index=IndexConfig(kind="hnsw")))
    assert hnsw.manifest["kind"] == "hnsw"
    assert mtime(emb_manifest) == stamps[0] and mtime(idx_manifest) != stamps[1]
    assert sorted(p.name for p in out.iterdir()) == ["embeddings", "index"]  # no vectors left

    # another corpus: re-embedded
    write_split(split, make_codes(25))
    grown = ensure_index(small_cfg(model, split, out))
    assert grown.manifest["count"] == 25 and mtime(emb_manifest) != stamps[0]
    stamps = mtime(emb_manifest), mtime(idx_manifest)

    # another model (its r2ps.json changed): re-embedded, and the old index is refused
    (model / "r2ps.json").write_text(json.dumps({"kind": "dual", "max_code_len": 16}))
    with pytest.raises(StaleIndexError, match="model_fingerprint"):
        from r2ps.mining.index import CodeIndex
        from r2ps.models.encoder import model_fingerprint

        CodeIndex.load(out / "index", expect={"model_fingerprint": model_fingerprint(str(model))})
    retrained = ensure_index(small_cfg(model, split, out))
    assert retrained.manifest["max_code_len"] == 16
    assert mtime(emb_manifest) != stamps[0]


def test_onnx_actors_embed_as_torch_and_int8_vectors_are_kept_apart(
    ray_local, tiny_bert_dir, tmp_path
):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)  # the export is written beside the model
    table = make_codes(24)
    split = write_split(tmp_path / "split", table)
    out = tmp_path / "out"
    fp32 = ensure_index(small_cfg(model, split, out, backend="onnx"))  # exports, then embeds
    assert (model / "onnx" / "manifest.json").exists() and fp32.manifest["backend"] == "onnx"
    _, emb = read_embeddings(str(out / "embeddings"))
    want = DualEncoder.from_pretrained(model).embed_codes(table["code"].to_pylist())
    np.testing.assert_allclose(emb, want, atol=1e-5)

    int8 = ensure_index(small_cfg(model, split, out, backend="onnx-int8"))  # not the fp32 set
    assert int8.manifest["backend"] == "onnx-int8"
    _, emb8 = read_embeddings(str(out / "embeddings"))
    assert np.einsum("ij,ij->i", emb8, want).min() > 0.95 and not np.allclose(emb8, want)
    with pytest.raises(ValueError, match="backend"):
        EmbedConfig(backend="fp8")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_actor_tokenises_text_blocks_as_the_tasks_do(tiny_bert_dir, tmp_path, backend):
    """CodeEmbedder called directly (no Ray): a block of code text, as CPU pools send it,
    gives the vectors of the same block tokenised by a task, and of the single process."""
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    if backend != "torch":
        export_onnx(model, int8=False)
    table = make_codes(12).select(["code_id", "code"])
    block = table.add_column(0, "pos", pa.array(range(12), pa.int64()))
    actor = CodeEmbedder(str(model), batch_size=4, threads=1, backend=backend, max_len=64)
    from_text = actor(block)
    tokenized = tokenize_codes(block, actor.model.tokenizer, 64)
    from_ids = actor(tokenized)
    assert from_text.column_names == ["pos", "code_id", "embedding"]
    got = np.array(from_text["embedding"].to_pylist())
    np.testing.assert_allclose(got, np.array(from_ids["embedding"].to_pylist()), **RERUN_TOL)
    want = DualEncoder.from_pretrained(model, max_code_len=64).embed_codes(
        table["code"].to_pylist()
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_blocks_divide_evenly_among_the_actors():
    assert block_count(5000, 1024, 1) == 5
    assert block_count(5000, 1024, 2) == 6  # 5 would leave one actor idle at the end
    assert block_count(3, 1024, 4) == 3  # never an empty block
    assert block_count(40, 8, 2) == 6


def test_the_pool_leaves_cpus_for_the_read_tasks(ray_local):
    plan = plan_pool(EmbedConfig(actors=2))
    assert (plan.actors, plan.num_cpus, plan.num_gpus, plan.threads) == (2, 0.5, 0.0, 1)
    assert plan.task_cpus == 0.25  # unequal to the actors': no fusion into them
    plan = plan_pool(EmbedConfig())
    assert (plan.actors, plan.num_cpus, plan.threads) == (1, 1.0, 2)


def test_bad_codes_input_names_the_file_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: codes file not found"):
        codes_file(str(tmp_path / "nowhere"))
    pq.write_table(pa.table({"code_id": ["a"], "text": ["x"]}), tmp_path / "codes.parquet")
    with pytest.raises(ValueError, match=r"codes.parquet: field\(s\) \['code'\] missing"):
        codes_file(str(tmp_path))
    dup = write_split(tmp_path / "dup", make_codes(3).slice(0, 1).take([0, 0]))
    with pytest.raises(ValueError, match="'code_id' has 1 duplicates"):
        embed_corpus(EmbedConfig(codes=str(dup), out=str(tmp_path / "o")))


def _not_utf8(table: pa.Table, column: str, row: int, at: int, bad: bytes) -> pa.Table:
    """`table` with `bad` put into one value of a string column, as a tool that does not
    check UTF-8 may write it (pyarrow reads Parquet strings without checking them)."""
    values = [v.encode() for v in table[column].to_pylist()]
    values[row] = values[row][:at] + bad + values[row][at:]
    strings = pa.array(values, pa.binary()).view(pa.string())
    return table.set_column(table.column_names.index(column), column, strings)


def test_codes_that_are_not_utf8_are_named_by_row_and_field(ray_local, tiny_bert_dir, tmp_path):
    """A code id or a code whose bytes are not UTF-8 is named (row, field) before any work
    starts, never a UnicodeError in a tokenizer inside a Ray task. Nothing is written."""
    codes = write_split(
        tmp_path / "codes", _not_utf8(make_codes(40), "code", 37, 9, b"\xed\xa0\x80")
    )
    with pytest.raises(BadRecord, match=r"codes\.parquet:38: field 'code': byte 0xed is not UTF-8"):
        embed_corpus(small_cfg(tiny_bert_dir, codes, tmp_path / "out"))  # row group 3 of 3
    assert not (tmp_path / "out" / "embeddings").exists()
    ids = write_split(tmp_path / "ids", _not_utf8(make_codes(40), "code_id", 5, 2, b"\xff"))
    with pytest.raises(BadRecord, match=r"codes\.parquet:6: field 'code_id': byte 0xff"):
        embed_corpus(small_cfg(tiny_bert_dir, ids, tmp_path / "out"))


def test_read_embeddings_puts_rows_in_place_and_refuses_an_incomplete_set(tmp_path):
    def shard(name: str, pos: list[int], dim: int = 2) -> None:
        values = [float(p * 10 + j) for p in pos for j in range(dim)]  # row p: p*10, p*10+1
        emb = pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), dim)
        table = pa.table({"pos": pos, "code_id": [f"c{p}" for p in pos], "embedding": emb})
        pq.write_table(table, tmp_path / name)

    shard("part-a.parquet", [1, 0])
    shard("part-b.parquet", [2])
    want = np.array([[0, 1], [10, 11], [20, 21]], dtype=np.float32)
    ids, emb = read_embeddings(str(tmp_path))
    assert ids == ["c0", "c1", "c2"] and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, want)
    ids, mapped = read_embeddings(str(tmp_path), into=tmp_path / "v.npy")  # a memory map
    assert isinstance(mapped, np.memmap) and ids == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(mapped, want)
    assert embedding_layout(tmp_path) == (["c0", "c1", "c2"], 2)
    shard("part-b.parquet", [3])
    with pytest.raises(ValueError, match="missing or repeated"):
        read_embeddings(str(tmp_path))
    shard("part-b.parquet", [2], dim=3)
    with pytest.raises(ValueError, match=r"differ in embedding dimension: \[2, 3\]"):
        embedding_layout(tmp_path)
    pq.write_table(pa.table({"pos": [2], "code_id": ["c2"]}), tmp_path / "part-b.parquet")
    with pytest.raises(
        ValueError, match=r"part-b.parquet: shard lacks column\(s\) \['embedding'\]"
    ):
        read_embeddings(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no embedding shards"):
        read_embeddings(str(tmp_path / "empty"))


def test_the_embedding_actor_refuses_nan_vectors_naming_the_codes(tiny_bert_dir, tmp_path):
    # An overflowing or broken model: its NaN rows must not reach the shards and index.
    from safetensors.torch import load_file, save_file

    from r2ps.mining.embed import CodeEmbedder

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, broken)
    weights = next(broken.glob("*.safetensors"))
    state = load_file(weights)
    for name in state:
        if "word_embeddings" in name:
            state[name][:] = float("nan")
    save_file(state, weights)
    actor = CodeEmbedder(str(broken), batch_size=2, threads=1)
    batch = pa.table(
        {"pos": [0, 1], "code_id": ["a", "b"], "input_ids": [[101, 7, 102], [101, 102]]}
    )
    with pytest.raises(ValueError, match=r"embeddings: 2 of 2 rows .* e.g. \['a', 'b'\]"):
        actor(batch)
