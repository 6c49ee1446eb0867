"""The search core: an index folder in, hits out, in one process.

    searcher = Searcher.open("myrepo/.r2ps/index")      # the folder `r2ps index` wrote
    for hit in searcher.search("read a json file", k=5, filters=Filters(language=("go",))):
        print(hit.heading())                            # path:start-end  symbol  (go)  0.6123

A `Searcher` holds the retriever's query encoder (`r2ps.models.loading.load_query_encoder`:
ONNX Runtime without torch for an ONNX backend on a CPU, else `r2ps.models.backends`), the
faiss index (`r2ps.mining.index`), the code store (`r2ps.search.store`) and, for
`retrieval="hybrid"` or `"repo"`, BM25 (`r2ps.search.bm25`, loaded from the index folder
or built at its first use) over each unit's path, symbol and code. The
`retrieval` setting picks the first stage (`r2ps.search.fusion.RETRIEVAL_MODES`): the dense
list alone; BM25's fused with it by RRF (`hybrid`); or, for a source tree's index,
`repo`: the dense list, BM25's and the definitions of the symbols a query names, blended
(`fusion.blend`) and ranked by the repository signals (`r2ps.search.signals`: tests
demoted, file and symbol names matched, results spread over files). Filters
(`r2ps.search.filters`) apply before the top-k cut. It is what the Serve app's Retriever
deployment runs (serve/deployments.py, which batches queries across requests into
`search_many`), what `r2ps search` runs without Ray, and what benchmarks measure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from r2ps.config import ConfigError, from_dict
from r2ps.log import get_logger
from r2ps.mining.index import CodeIndex, IndexConfig
from r2ps.models.light import BACKENDS, Loaded
from r2ps.models.loading import load_query_encoder
from r2ps.ranking import tie_order
from r2ps.search.bm25 import BM25, cached
from r2ps.search.filters import Filters
from r2ps.search.fusion import BLEND_ALPHA, RETRIEVAL_MODES, blend, rrf, union
from r2ps.search.signals import RankingSignals, SymbolTable, apply_signals
from r2ps.search.store import CodeStore, load_code_store
from r2ps.search.versions import Version
from r2ps.search.versions import resolve as resolve_version

log = get_logger(__name__)

SERVE_FILE = "serve.yaml"  # the settings an index folder carries (r2ps.repo.indexer writes it)
_MASK_CACHE = 64  # filters whose allowed positions a searcher remembers
LEXICAL_DIR = "bm25"  # <embed_out>/bm25: the BM25 index saved beside the index (bm25.cached)


@dataclass
class SearchConfig:
    """What the search core loads and how it searches: the search settings of a
    serve.yaml (`ServeConfig` in r2ps.serving.settings adds the serving ones). Defaults
    point at the outputs of `make demo` (runs/demo/pipeline)."""

    retriever: str = field(
        default="runs/demo/pipeline/retriever",
        metadata={"help": "dual encoder dir; the bundled MiniLM when absent"},
    )
    codes: str = field(
        default="runs/demo/pipeline/sample",
        metadata={"help": "code store: a split folder with codes.parquet, or a .parquet file"},
    )
    embed_out: str = field(
        default="runs/demo/pipeline/mined",
        metadata={"help": "the embed job's output dir: <embed_out>/index is searched"},
    )
    index: IndexConfig = field(default_factory=IndexConfig)
    backend: str = field(
        default="torch",
        metadata={
            "help": "CPU inference of the retriever's query encoder (and a served ranker): "
            "torch | onnx | onnx-int8 (the export beside each model: jobs/export_onnx.py); "
            "GPU replicas always run torch"
        },
    )
    threads: int = field(
        default=0,
        metadata={"help": "CPU threads per replica (torch or ONNX Runtime); 0: its reserved CPUs"},
    )
    retrieval: str = field(
        default="dense",
        metadata={
            "help": "first stage when a request names none: dense | hybrid (BM25 + dense, "
            "RRF) | repo (BM25 + dense blended, then the repository signals; a source "
            "tree's index only)"
        },
    )
    hybrid_depth: int = field(
        default=100, metadata={"help": "hybrid, repo: candidates from each list before fusion"}
    )
    rrf_k: int = field(default=60, metadata={"help": "hybrid: RRF's k (r2ps.search.fusion)"})
    blend_alpha: float = field(
        default=BLEND_ALPHA,
        metadata={"help": "repo: the dense share of the blend, 1 - BM25's (r2ps.search.fusion)"},
    )
    signals: RankingSignals = field(
        default_factory=RankingSignals,
        metadata={
            "help": "repo: the ranking signals (r2ps.search.signals); enabled: false leaves "
            "the blend's order"
        },
    )

    def search_checks(self) -> dict[str, bool]:
        """Each search setting's name -> whether its value is valid."""
        return {
            "retrieval": self.retrieval in RETRIEVAL_MODES,
            "hybrid_depth": self.hybrid_depth >= 1,
            "rrf_k": self.rrf_k >= 0,
            "blend_alpha": 0.0 <= self.blend_alpha <= 1.0,
            "backend": self.backend in BACKENDS,
            "threads": self.threads >= 0,
        }

    def __post_init__(self) -> None:
        bad = [name for name, ok in self.search_checks().items() if not ok]
        if bad:
            raise ConfigError(f"{type(self).__name__}: invalid value for {', '.join(bad)}: {self}")


class Query(NamedTuple):
    """One search of a batch (`Searcher.search_many`)."""

    text: str
    k: int = 10
    retrieval: str | None = None  # None: the searcher's setting
    filters: Filters | None = None


@dataclass
class SearchHit:
    """One answer: the unit, where it is (None for a corpus split's code) and its score
    (a cosine for dense retrieval, an RRF score for hybrid, the signals' score for repo:
    the blend in [0, 1] plus boosts)."""

    code_id: str
    code: str
    language: str
    source: str
    score: float
    path: str | None = None
    start_line: int | None = None  # 1-based, inclusive
    end_line: int | None = None
    symbol: str | None = None

    def where(self) -> str:
        """`path:start-end` (`path:line` for one line), or the code id when not in a file."""
        if not self.path:
            return self.code_id
        if self.start_line is None:
            return self.path
        end = f"-{self.end_line}" if self.end_line and self.end_line != self.start_line else ""
        return f"{self.path}:{self.start_line}{end}"

    def heading(self) -> str:
        """One grep-like line: `path:start-end  symbol  (language)  score`."""
        symbol = f"  {self.symbol}" if self.symbol else ""
        return f"{self.where()}{symbol}  ({self.language})  {self.score:.4f}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchHit:
        """A hit from a mapping holding at least this class's fields (a POST /search
        result holds more: they are left out)."""
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})


class Searcher:
    """Search one index (module docstring). Build with `open` (an index folder) or
    `from_config`; `search` answers one query, `search_many` a batch."""

    def __init__(
        self, loaded: Loaded, index: CodeIndex, store: CodeStore, cfg: SearchConfig, model_dir: str
    ) -> None:
        missing = [c for c in index.code_ids if c not in store.rows]
        if missing:
            raise ValueError(
                f"{len(missing)} indexed code ids (e.g. {missing[0]!r}) are not in the code "
                f"store {store.path}: the index was built from another corpus"
            )
        self.loaded, self.index, self.store, self.cfg = loaded, index, store, cfg
        self.model_dir = model_dir
        ids = index.code_ids
        # per index position: what filters and the repository signals read
        self._paths = [store.location(c).get("path") for c in ids]
        self._symbols = [store.location(c).get("symbol") for c in ids]
        self._languages = [store.rows[c][1] for c in ids]
        self._masks: dict[Filters, np.ndarray] = {}
        self._bm25: BM25 | None = None
        self._table: SymbolTable | None = None
        # the index folder's version loaded (r2ps.search.versions; None: unversioned) and
        # the settings as given, naming the folder (what `r2ps.search.live` reopens)
        self.version: Version | None = None
        self.source_cfg = cfg
        self.mode(cfg.retrieval)  # a `repo` default on a store without paths fails here

    @classmethod
    def from_config(
        cls,
        cfg: SearchConfig,
        *,
        model_dir: str | None = None,
        threads: int | None = None,
        device=None,
        build_index: bool = True,
        loaded: Loaded | None = None,
    ) -> Searcher:
        """Load what `cfg` names. `model_dir`: the retriever folder when the caller has
        resolved it (serving falls back to the bundled MiniLM); default `cfg.retriever`.
        `threads`: CPU threads (default `cfg.threads`; 0 leaves torch's). `build_index`:
        embed and index the codes when the saved index is missing or stale (Ray Data);
        otherwise that is an error (FileNotFoundError, or StaleIndexError naming what
        differs). `loaded`: the query encoder, already loaded (a reload of a new index
        version). An index folder with versions is read at its current version
        (`r2ps.search.versions.resolve`)."""
        from r2ps.mining.corpus_index import ensure_index, saved_code_embedding
        from r2ps.mining.embed import EmbedConfig
        from r2ps.models.light import model_or_default

        model_dir = model_dir or model_or_default(cfg.retriever)
        if not Path(model_dir, "config.json").exists():
            raise FileNotFoundError(f"retriever: {model_dir}: no model there (no config.json)")
        threads = cfg.threads if threads is None else threads
        source_cfg = cfg
        codes, embed_out, version = resolve_version(cfg.codes, cfg.embed_out)
        if version is not None:
            cfg = dataclasses.replace(cfg, codes=codes, embed_out=embed_out)
        loaded = loaded or load_query_encoder(model_dir, cfg.backend, threads, device)
        store = load_code_store(cfg.codes)
        if build_index and not Path(cfg.embed_out, "index", "manifest.json").exists():
            log.warning(
                "no index under %s: embedding %s here. Ray Data needs free CPUs beside the "
                "Serve replicas; on a small machine build it first with "
                "`python jobs/embed.py --model %s --codes %s --out %s`",
                cfg.embed_out, cfg.codes, model_dir, cfg.codes, cfg.embed_out,
            )  # fmt: skip
        embed_cfg = EmbedConfig(
            model=model_dir,
            codes=cfg.codes,
            out=cfg.embed_out,
            index=dataclasses.replace(cfg.index),
        )
        # the codes' truncation and backend are the index's own (the index job's choice)
        index = ensure_index(saved_code_embedding(embed_cfg), build=build_index)
        searcher = cls(loaded, index, store, cfg, model_dir)
        searcher.version, searcher.source_cfg = version, source_cfg
        return searcher

    @classmethod
    def open(cls, folder: str | Path, **settings: Any) -> Searcher:
        """The index in `folder` (its serve.yaml, as `r2ps index` / jobs/index.py write it;
        or a serve.yaml itself), never rebuilt: a missing or stale index is an error.
        `settings` override the file's (e.g. `retrieval="hybrid"`, `threads=1`).

        Raises FileNotFoundError when `folder` holds no serve.yaml, ConfigError for a bad
        setting."""
        path = Path(folder)
        if path.is_dir():
            path = path / SERVE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {SERVE_FILE}: not an index folder")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        known = {f.name for f in dataclasses.fields(SearchConfig)}
        cfg = from_dict(SearchConfig, {k: v for k, v in data.items() if k in known} | settings)
        return cls.from_config(cfg, build_index=False)

    @property
    def model(self):
        """The query encoder (`embed_queries`)."""
        return self.loaded.model

    def __len__(self) -> int:
        return len(self.index)

    def mode(self, retrieval: str | None) -> str:
        """The first stage a query gets: `retrieval`, or the setting when None."""
        mode = retrieval or self.cfg.retrieval
        if mode not in RETRIEVAL_MODES:
            raise ValueError(f"retrieval: expected one of {RETRIEVAL_MODES}, got {mode!r}")
        if mode == "repo" and not self.store.locations:
            raise ValueError(
                f"retrieval 'repo' ranks by file paths and symbols, and the code store "
                f"{self.store.path} has none (a corpus split, not a source tree's index): "
                "use dense or hybrid"
            )
        return mode

    def lexical(self) -> BM25:
        """BM25 over every indexed unit, in index order; built at the first call. A unit's
        document is its path, qualified symbol and code where it has them (a source tree's
        units; a corpus split's codes are code alone): a query that names the file or the
        class matches it (semble dev, BM25 alone: NDCG@10 0.58 against 0.52 on code).
        Loaded from `<embed_out>/bm25` when saved there for these documents (by the index
        job or an earlier search), else built and saved there (`bm25.cached`)."""
        if self._bm25 is None:
            folder = Path(self.cfg.embed_out, LEXICAL_DIR)
            self._bm25 = cached(lexical_documents(self.index.code_ids, self.store), folder)
        return self._bm25

    def symbols(self) -> SymbolTable:
        """Where each symbol name is defined, over index positions; built at the first call."""
        if self._table is None:
            self._table = SymbolTable(self._symbols)
        return self._table

    def allowed(self, filters: Filters | None) -> np.ndarray | None:
        """bool [N] over index positions: what `filters` lets through; None: everything."""
        if not filters:
            return None
        mask = self._masks.get(filters)
        if mask is None:
            mask = filters.mask(self._paths, self._languages)
            if len(self._masks) >= _MASK_CACHE:
                self._masks.pop(next(iter(self._masks)))
            self._masks[filters] = mask
        return mask

    def search(
        self,
        query: str,
        k: int = 10,
        retrieval: str | None = None,
        filters: Filters | None = None,
    ) -> list[SearchHit]:
        """The top `k` units for `query`, best first; fewer when the index, or what
        `filters` allow of it, holds fewer. `retrieval`: dense | hybrid | repo (None: the
        setting)."""
        return self.search_many([Query(query, k, retrieval, filters)])[0]

    def search_many(self, queries: Sequence[Query]) -> list[list[SearchHit]]:
        """`search` for each query; their texts go through the encoder as one batch."""
        if not queries:
            return []
        for q in queries:
            if q.k < 1:
                raise ValueError(f"k must be >= 1, got {q.k}")
        modes = [self.mode(q.retrieval) for q in queries]
        masks = [self.allowed(q.filters) for q in queries]
        depths = [
            q.k if mode == "dense" else max(q.k, self.cfg.hybrid_depth)
            for q, mode in zip(queries, modes, strict=True)
        ]
        embeddings = self.model.embed_queries([q.text for q in queries])
        dense = self._dense(embeddings, depths, masks)
        out = []
        for q, mode, mask, depth, embedding, (scores, positions) in zip(
            queries, modes, masks, depths, embeddings, dense, strict=True
        ):
            if mode == "hybrid":  # BM25's list and the dense one fused by rank
                lexical = self._lexical_list(q.text, depth, mask)
                positions, scores = rrf([positions, lexical], k=self.cfg.rrf_k, top=q.k)
            elif mode == "repo":
                positions, scores = self._repo(q, embedding, mask, positions, depth)
            out.append(
                [self._hit(int(p), float(s)) for p, s in zip(positions, scores, strict=True)]
            )
        return out

    def _lexical_list(self, text: str, depth: int, mask: np.ndarray | None) -> np.ndarray:
        """BM25's top `depth` positions that `mask` allows, best first; a unit sharing no
        term with the query is not in the list."""
        among = None if mask is None else np.flatnonzero(mask)
        positions, scores = self.lexical().top_k(text, depth, among)
        return positions[scores > 0]

    def _repo(
        self,
        q: Query,
        embedding: np.ndarray,
        mask: np.ndarray | None,
        dense: np.ndarray,
        depth: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`retrieval: repo`: (positions, scores) of the top `q.k`, best first.

        The candidates are the dense list (`dense`, positions best first), BM25's top
        `depth` and the units defining a symbol the query names (`SymbolTable`; found
        even when neither list holds them), each allowed by `mask`. Every candidate is
        scored by both stages (its dense score from the index's own vector), blended
        (`fusion.blend`) and ranked by the repository signals (`signals.apply_signals`);
        ties keep the candidates' order (dense list first)."""
        lists = [dense, self._lexical_list(q.text, depth, mask)]
        signals = self.cfg.signals
        if signals.enabled and signals.symbol_weight > 0:
            found = self.symbols().definitions(q.text)
            lists.append(found if mask is None else found[mask[found]])
        candidates = union(lists)
        if not candidates.size:
            return candidates, np.empty(0)
        fused = blend(
            self.index.vectors(candidates) @ np.asarray(embedding, dtype=np.float32),
            self.lexical().scores(q.text)[candidates],
            self.cfg.blend_alpha,
        )
        final = apply_signals(
            fused,
            [self._paths[p] for p in candidates],
            [self._symbols[p] for p in candidates],
            q.text,
            signals,
        )
        top = tie_order(final)[: q.k]
        return candidates[top], final[top]

    def _dense(
        self, embeddings: np.ndarray, wants: list[int], masks: list[np.ndarray | None]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (scores, positions) best first: the first `wants[i]` positions of the
        index's ranking that `masks[i]` allows (all when None), fewer when fewer exist.

        One search for the batch at the deepest depth asked; a filtered query that finds
        too few allowed positions in it asks again, four times deeper each time, until
        enough pass or the whole index was asked for."""
        n = len(self.index)
        wants = [
            min(want, n if mask is None else int(mask.sum()))
            for want, mask in zip(wants, masks, strict=True)
        ]
        # A filter passing a fraction f of the index passes about f of any list: ask for
        # twice the depth that gives `want`, so one search is usually enough.
        asks = [
            0 if not want else want if mask is None else math.ceil(2 * want * n / mask.sum())
            for want, mask in zip(wants, masks, strict=True)
        ]
        first = min(n, max(asks))
        if first:
            scores, positions = self.index.search(embeddings, first)
        out = []
        for i, (want, mask) in enumerate(zip(wants, masks, strict=True)):
            if not want:
                out.append((np.empty(0, np.float32), np.empty(0, np.int64)))
                continue
            depth, s, p = first, scores[i], positions[i]
            while True:
                keep = p >= 0
                if mask is not None:
                    keep &= mask[np.maximum(p, 0)]
                if keep.sum() >= want or depth >= n:
                    break
                depth = min(n, depth * 4)
                s, p = (row[0] for row in self.index.search(embeddings[i : i + 1], depth))
            out.append((s[keep][:want], p[keep][:want]))
        return out

    def _hit(self, position: int, score: float) -> SearchHit:
        code_id = self.index.code_ids[position]
        code, language, source = self.store.rows[code_id]
        return SearchHit(code_id, code, language, source, score, **self.store.location(code_id))

    def info(self) -> dict[str, Any]:
        """What is searched: the model, the number of codes, the index kind, the first
        stage (`first_stage`), the backend."""
        return {
            "model": self.model_dir,
            "codes": len(self.index),
            "index": self.index.manifest.get("kind"),
            **first_stage(self.cfg),
            **self.loaded.info(),
        }


def lexical_documents(code_ids: Sequence[str], store: CodeStore) -> list[str]:
    """Each unit's BM25 document, in `code_ids`' order: its path, qualified symbol and
    code where it has them (`Searcher.lexical`)."""
    out = []
    for c in code_ids:
        where = store.location(c)
        parts = (where.get("path"), where.get("symbol"), store.rows[c][0])
        out.append(" ".join(filter(None, parts)))
    return out


def save_lexical(code_ids: Sequence[str], codes: str | Path, folder: str | Path) -> BM25:
    """BM25 of an index whose ids in order are `code_ids`, over the units of `codes`
    (codes.parquet), saved in `folder`/bm25, where `Searcher.lexical` of that index
    folder loads it (the index job: the first search then skips building it)."""
    store = load_code_store(str(codes))
    return cached(lexical_documents(code_ids, store), Path(folder, LEXICAL_DIR))


def first_stage(cfg: SearchConfig) -> dict[str, Any]:
    """The first stage a query that names none gets, with the settings it runs by, named as
    in serve.yaml: what /readyz and index_summary.json report, and what r2ps.repo.indexer
    writes. {"retrieval": mode}, plus `hybrid_depth` and `rrf_k` for hybrid,
    `hybrid_depth`, `blend_alpha` and `signals` (RankingSignals' fields) for repo."""
    out: dict[str, Any] = {"retrieval": cfg.retrieval}
    if cfg.retrieval != "dense":
        out["hybrid_depth"] = cfg.hybrid_depth
    if cfg.retrieval == "hybrid":
        out["rrf_k"] = cfg.rrf_k
    if cfg.retrieval == "repo":
        out["blend_alpha"] = cfg.blend_alpha
        out["signals"] = dataclasses.asdict(cfg.signals)
    return out
