"""The faiss index: exact search against numpy, approximate recall, save/load, staleness."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from conftest import RERUN_TOL

from r2ps.mining.index import (
    CodeIndex,
    IndexConfig,
    StaleIndexError,
    corpus_fingerprint,
    gpu_available,
)
from r2ps.models.encoder import model_fingerprint
from r2ps.ranking import top_k_of_scores


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k of the full numpy score matrix, ties (within float noise) in pool
    order: what faiss must give, whatever order its rounding puts near-ties in."""
    return top_k_of_scores(queries @ codes.T, k)


def ids(n: int) -> list[str]:
    return [f"c{i:05d}" for i in range(n)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return unit_rows(2000, 32, seed=0), unit_rows(50, 32, seed=1)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """Embeddings that cluster by topic, as real code embeddings do (uniform random
    vectors are the worst case for inverted lists and would test nothing useful)."""
    rng = np.random.default_rng(5)
    centres = unit_rows(40, 32, seed=6)

    def around(n: int) -> np.ndarray:
        x = centres[rng.integers(0, 40, n)] + 0.25 * rng.standard_normal((n, 32))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return around(2000), around(50)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def test_flat_equals_numpy_brute_force(data):
    codes, queries = data
    index = CodeIndex.build(codes, ids(len(codes)), IndexConfig(), manifest={})
    scores, pos = index.search(queries, k=10)
    want_scores, want_pos = brute_force(codes, queries, 10)
    assert scores.dtype == np.float32 and pos.dtype == np.int64 and pos.shape == (50, 10)
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert index.device == ("gpu" if gpu_available() else "cpu")


def test_search_in_chunks_gives_the_same_answer(data):
    codes, queries = data
    index = CodeIndex.build(codes, ids(len(codes)), IndexConfig(), manifest={})
    whole = index.search(queries, k=5, chunk=4096)
    chunked = index.search(queries, k=5, chunk=7)
    np.testing.assert_array_equal(whole[1], chunked[1])
    # under 20 queries a call, faiss sums by SIMD instead of BLAS: other rounding
    np.testing.assert_allclose(whole[0], chunked[0], **RERUN_TOL)


def test_k_beyond_the_corpus_pads_with_minus_one():
    codes = unit_rows(3, 8, seed=2)
    index = CodeIndex.build(codes, ids(3), IndexConfig(), manifest={})
    scores, pos = index.search(codes[:1], k=5)
    assert sorted(pos[0, :3].tolist()) == [0, 1, 2] and pos[0, 0] == 0
    assert pos[0, 3:].tolist() == [-1, -1] and np.isneginf(scores[0, 3:]).all()


@pytest.mark.parametrize(
    "cfg",
    [IndexConfig(kind="ivf", nlist=16, nprobe=8), IndexConfig(kind="hnsw", ef_search=128)],
    ids=["ivf", "hnsw"],
)
def test_approximate_indexes_have_high_recall(clustered, cfg):
    codes, queries = clustered
    index = CodeIndex.build(codes, ids(len(codes)), cfg, manifest={})
    _, pos = index.search(queries, k=10)
    _, truth = brute_force(codes, queries, 10)
    assert recall(pos, truth) >= 0.9
    assert index.manifest["kind"] == cfg.kind


def test_ivf_default_nlist_is_about_four_sqrt_n(data):
    codes, _ = data
    index = CodeIndex.build(codes, ids(len(codes)), IndexConfig(kind="ivf"), manifest={})
    assert index.manifest["nlist_used"] == round(4 * np.sqrt(len(codes)))


def test_ivfpq_stores_pq_m_bytes_a_code_and_keeps_most_neighbours(clustered):
    """Product quantisation trades recall for memory: on these 32-d vectors, 16 bytes a
    code (flat: 128) still finds most of the true top 10, and the bytes are as planned."""
    codes, queries = clustered
    _, truth = brute_force(codes, queries, 10)
    cfg = IndexConfig(kind="ivfpq", nlist=16, nprobe=16, pq_m=16)
    index = CodeIndex.build(codes, ids(len(codes)), cfg, manifest={})
    _, pos = index.search(queries, k=10)
    assert recall(pos, truth) >= 0.85
    assert index.manifest["pq_m_used"] == 16 and index.manifest["settings"]["pq_m"] == 16
    ivf = faiss.extract_index_ivf(index._cpu)
    assert ivf.code_size == 16 and ivf.ntotal == len(codes)
    flat = CodeIndex.build(codes, ids(len(codes)), IndexConfig(), manifest={})
    assert len(faiss.serialize_index(index._cpu)) < 0.4 * len(faiss.serialize_index(flat._cpu))
    default = CodeIndex.build(codes, ids(len(codes)), IndexConfig(kind="ivfpq", nlist=16), {})
    assert default.manifest["pq_m_used"] == 32 // 8


def test_ivfpq_refuses_what_it_cannot_build_clearly(clustered):
    codes, _ = clustered
    with pytest.raises(ValueError, match="pq_m: 5 does not divide the embedding dimension 32"):
        CodeIndex.build(codes, ids(len(codes)), IndexConfig(kind="ivfpq", pq_m=5), {})
    with pytest.raises(ValueError, match="100 codes cannot train 256 PQ centroids"):
        CodeIndex.build(codes[:100], ids(100), IndexConfig(kind="ivfpq"), {})
    with pytest.raises(ValueError, match="index.pq_m: must be >= 0"):
        IndexConfig(kind="ivfpq", pq_m=-1)


def test_a_memory_mapped_matrix_builds_the_same_index_in_chunks(tmp_path, clustered, monkeypatch):
    """What `ensure_index` does with a large corpus: vectors on disk, added in chunks,
    IVF trained on a sample, gives the index the in-memory matrix gives."""
    codes, queries = clustered
    mapped = np.lib.format.open_memmap(tmp_path / "v.npy", "w+", np.float32, codes.shape)
    mapped[:] = codes
    monkeypatch.setattr("r2ps.mining.index.ADD_CHUNK", 300)  # 7 chunks
    for cfg in (IndexConfig(), IndexConfig(kind="ivf", nlist=16, nprobe=16)):
        whole = CodeIndex.build(codes, ids(len(codes)), cfg, {})
        chunked = CodeIndex.build(mapped, ids(len(codes)), cfg, {})
        for a, b in zip(whole.search(queries, 10), chunked.search(queries, 10), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_vectors_score_candidates_as_the_search_does(clustered, kind):
    """`vectors` gives what the index ranks by: a dot with the query is the search's score
    (the embedding itself where the index keeps it, ivfpq's compressed vector otherwise)."""
    codes, queries = clustered
    index = CodeIndex.build(codes, ids(len(codes)), IndexConfig(kind=kind, nlist=16), {})
    scores, positions = index.search(queries[:5], 20)
    for q, s, p in zip(queries[:5], scores, positions, strict=True):
        np.testing.assert_allclose(index.vectors(p) @ q, s, rtol=1e-4, atol=1e-4)
    if kind != "ivfpq":
        np.testing.assert_array_equal(index.vectors([7, 0, 7]), codes[[7, 0, 7]])
    assert index.vectors([]).shape == (0, 32)
    with pytest.raises(IndexError, match=r"\[2000\]"):
        index.vectors([3, 2000])


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_save_load_round_trip(tmp_path, data, kind):
    codes, queries = data
    manifest = {"model_fingerprint": "m1", "model_path": "/models/m1"}
    built = CodeIndex.build(codes, ids(len(codes)), IndexConfig(kind=kind, nlist=16), manifest)
    built.save(tmp_path)
    loaded = CodeIndex.load(tmp_path)
    assert loaded.code_ids == built.code_ids
    assert loaded.manifest == built.manifest
    for a, b in zip(built.search(queries, 10), loaded.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    m = loaded.manifest
    assert (m["dim"], m["count"], m["kind"]) == (32, 2000, kind)
    assert m["corpus_fingerprint"] == corpus_fingerprint(ids(2000))


@pytest.mark.parametrize("key", ["model_fingerprint", "corpus_fingerprint", "dim", "count", "kind"])
def test_a_manifest_mismatch_is_refused_naming_the_key(tmp_path, key):
    codes = unit_rows(20, 8, seed=3)
    CodeIndex.build(codes, ids(20), IndexConfig(), {"model_fingerprint": "m1"}).save(tmp_path)
    expect = {
        "model_fingerprint": "m1",
        "corpus_fingerprint": corpus_fingerprint(ids(20)),
        "dim": 8,
        "count": 20,
        "kind": "flat",
    }
    assert len(CodeIndex.load(tmp_path, expect=expect)) == 20
    stale = {**expect, key: "something else"}
    with pytest.raises(StaleIndexError, match=key):
        CodeIndex.load(tmp_path, expect=stale)


def test_loading_with_another_kind_is_refused(tmp_path):
    CodeIndex.build(unit_rows(20, 8, seed=3), ids(20), IndexConfig(), {}).save(tmp_path)
    with pytest.raises(StaleIndexError, match="kind"):
        CodeIndex.load(tmp_path, cfg=IndexConfig(kind="hnsw"))


def test_missing_index_names_the_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        CodeIndex.load(tmp_path)


def test_bad_input_is_refused_clearly():
    codes = unit_rows(10, 8, seed=4)
    with pytest.raises(ValueError, match="10 embeddings but 9 code ids"):
        CodeIndex.build(codes, ids(9), IndexConfig(), {})
    with pytest.raises(ValueError, match="2-d"):
        CodeIndex.build(codes[0], ids(1), IndexConfig(), {})
    index = CodeIndex.build(codes, ids(10), IndexConfig(), {})
    with pytest.raises(ValueError, match="dimension 4 differs"):
        index.search(codes[:, :4], k=1)
    with pytest.raises(ValueError, match="index.kind"):
        IndexConfig(kind="lsh")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_non_finite_vectors_are_refused_naming_the_rows(kind):
    # faiss indexes a NaN row silently and never returns it: a code counted but unfindable.
    codes = unit_rows(20, 8, seed=5)
    codes[7] = np.nan
    codes[12, 3] = np.inf
    with pytest.raises(ValueError, match=r"2 of 20 rows .* \(rows 7, 12\); e.g. \['c7', 'c12'\]"):
        CodeIndex.build(codes, [f"c{i}" for i in range(20)], IndexConfig(kind=kind), {})
    index = CodeIndex.build(np.nan_to_num(codes), ids(20), IndexConfig(kind=kind), {})
    with pytest.raises(ValueError, match=r"queries: 1 of 3 rows .* \(rows 1\)"):
        index.search(codes[6:9], k=5)


def test_a_memory_mapped_matrix_is_checked_chunk_by_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr("r2ps.mining.index.ADD_CHUNK", 4)
    codes = np.lib.format.open_memmap(
        tmp_path / "e.npy", mode="w+", dtype=np.float32, shape=(10, 8)
    )
    codes[:] = unit_rows(10, 8, seed=6)
    codes[9, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 of 10 rows .* \(rows 9\)"):
        CodeIndex.build(codes, ids(10), IndexConfig(), {})


def test_ties_are_listed_in_position_order():
    # faiss flat lists a tied group last-first; the one tie rule (r2ps.evaluation.metrics) is pool order.
    same = np.ones((300, 8), np.float32) / np.sqrt(8)
    index = CodeIndex.build(same, ids(300), IndexConfig(), {})
    scores, pos = index.search(same[:2], 10)
    assert pos.tolist() == [list(range(10))] * 2
    _, pos = index.search(same[:1], 305)
    assert pos[0, :300].tolist() == list(range(300)) and pos[0, 300:].tolist() == [-1] * 5


@pytest.mark.skipif(gpu_available(), reason="checks the CPU-only refusal")
def test_asking_for_a_gpu_index_without_gpu_faiss_fails_clearly():
    with pytest.raises(RuntimeError, match="use_gpu"):
        CodeIndex.build(unit_rows(10, 8, seed=4), ids(10), IndexConfig(use_gpu=True), {})


def test_fingerprints(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    (tmp_path / "config.json").write_text("{}")
    first = model_fingerprint(str(tmp_path))
    (tmp_path / "README.md").write_text("not part of the model")
    assert model_fingerprint(str(tmp_path)) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    assert model_fingerprint(str(tmp_path)) != first
    with pytest.raises(FileNotFoundError, match="nowhere: model directory not found"):
        model_fingerprint(str(tmp_path / "nowhere"))
    assert corpus_fingerprint(["a", "b"]) != corpus_fingerprint(["b", "a"])
    assert corpus_fingerprint(["ab", "c"]) != corpus_fingerprint(["a", "bc"])


def test_a_model_dir_without_weights_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        model_fingerprint(str(tmp_path))
