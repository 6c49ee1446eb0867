"""The MCP server: r2ps's search as tools a coding agent calls (the official Python SDK,
`mcp`, its `MCPServer`).

    r2ps mcp --index DIR        # stdio: what Claude Code, Cursor, VS Code and Codex start
    http://HOST:PORT/mcp        # streamable HTTP on the running Serve app (serve/deployments.py)

Tools (docs/AGENTS.md has each agent's configuration):
- `search_code{query, top_k, language, path, exclude, retrieval}`: one line per hit,
  `path:start-end  symbol  (language)  score` (`SearchHit.heading`, as `r2ps search` prints
  it), and the first lines of its code; the same as structured content (`SearchAnswer`).
  The arguments are POST /search's (`r2ps.serving.api`: the same languages, globs and
  limits), `top_k` at most `MAX_TOP_K`;
- `index_status{}`: what is indexed, when, by which model, and whether an index run is
  under way (`IndexStatus`).

Bounded answers: a whole answer (its text and its structured content, as JSON) stays
under a budget of characters (`BUDGET_CHARS`, well under the 25,000 tokens agents accept
from a tool). `render_answer` shows at most `SNIPPET_LINES` lines of each hit, each line at
most `LINE_CHARS` characters, every cut marked; over the budget it shows fewer lines of
each hit, then fewer hits, and says how many it left out. The JSON is made from the data
that fits, never cut.

Index runs: each complete run of the index job publishes a new version of the folder at
once (`r2ps.search.versions`), and states while it runs that a run is under way
(`r2ps.repo.indexer.run_under_way`). The server searches the version it loaded and, before a
search, loads a newer one when one was published (`r2ps.search.live.LiveSearcher`): an
answer during a run is the last complete version's, and says so; `index_status` names the
version and its age. A folder written before versions is searched as it was loaded; a stdio
server that starts while a run writes such a folder waits for the run to end.

Bad arguments are tool errors (`isError`) that name the argument: `top_k: Input should be
less than or equal to 50`, `path[0]: ...`, `lang: unknown argument ...`.
"""

# No `from __future__ import annotations`: the SDK reads the tools' annotations at run
# time (pydantic), and one of them holds a value of `build_server`'s.
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Protocol

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from r2ps import __version__
from r2ps.log import get_logger
from r2ps.repo.indexer import SUMMARY, run_under_way
from r2ps.search import versions
from r2ps.search.filters import glob_problem
from r2ps.search.searcher import SearchHit
from r2ps.serving.api import Language, Retrieval, SearchRequest, SearchResponse
from r2ps.serving.settings import MAX_GLOB_CHARS, MAX_GLOBS, ServeConfig

log = get_logger(__name__)

BUDGET_CHARS = 20_000  # an answer's text + its structured content as JSON
MIN_BUDGET_CHARS = 2_000  # room for a note and a few hits' headings
MAX_TOP_K = 50
SNIPPET_LINES = 12  # of each hit, at most
LINE_CHARS = 160  # of each line shown, at most
CUT = "…"  # ends a line that was cut; starts the line saying how many lines were left out
HTTP_PATH = "/mcp"


def _glob(value: str) -> str:
    problem = glob_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# POST /search's globs (r2ps.serving.api), checked by the same rule, without the pattern
# its OpenAPI document states: 1.2 KB of escapes an agent would read into every session.
Globs = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_GLOB_CHARS), AfterValidator(_glob)]]
    | None,
    Field(min_length=1, max_length=MAX_GLOBS),
]

INSTRUCTIONS = """\
r2ps searches this repository's code by meaning: a neural index of every function, method \
and class. Use search_code for natural-language or conceptual questions about the code, when \
you do not know the names to grep for: "where are failed requests retried", "how is the \
config file parsed", "code that validates user input". Use grep (or ripgrep) instead for \
exact strings: an identifier you know, an error message, a literal. Each hit is \
`path:start-end  symbol  (language)  score` and the unit's first lines: read the file at \
those lines for the rest. Narrow with language (e.g. ["python"]), path and exclude \
(gitignore-style globs over paths from the indexed folder: exclude ["**/tests/**"] leaves out \
every tests folder, "tests/**" only the top one). index_status says what is indexed, when, \
and whether an index run is under way."""


class CodeHit(BaseModel):
    """One hit of `search_code`'s structured content."""

    path: str | None = Field(description="file, relative to the indexed folder")
    start_line: int | None = Field(description="1-based first line of the unit")
    end_line: int | None = Field(description="1-based last line of the unit")
    symbol: str | None = Field(description="qualified name, e.g. Circle.area")
    language: str
    score: float = Field(description="what the hits are ordered by (higher first)")
    code_id: str
    snippet: str = Field(description=f"the unit's first lines; a line cut ends with {CUT}")
    more_lines: int = Field(description="lines of the unit after the snippet, not shown")


class SearchAnswer(BaseModel):
    """`search_code`'s structured content."""

    retrieval: str | None = Field(description="the first stage used")
    hits: list[CodeHit]
    hits_left_out: int = Field(description="found but left out to stay under the budget")
    note: str | None = Field(description="what the answer should be read with, if anything")


class IndexStatus(BaseModel):
    """`index_status`'s answer."""

    index: str = Field(description="the index folder")
    root: str | None = Field(description="the folder that was indexed")
    units: int | None = Field(description="functions, methods and classes indexed")
    files: int | None = Field(description="files indexed")
    by_language: dict[str, int] = Field(description="units per language")
    model: str | None = Field(description="the retriever that embedded them")
    last_indexed: str | None = Field(description="when the last complete run ended (UTC)")
    age_seconds: float | None = Field(description="seconds since then")
    version: int | None = Field(
        description="the index's version: each complete index run publishes the next one "
        "(null: an index written before versions)"
    )
    served_version: int | None = Field(
        description="the version answers come from: the newest, once loaded (null: not "
        "loaded yet, or an index without versions)"
    )
    indexing: bool = Field(description="an index run is under way")
    indexing_since: str | None = Field(description="when that run started (UTC)")
    ready: bool = Field(description="the search core is loaded and answering")
    note: str | None = None


@dataclasses.dataclass
class Found:
    """What a backend found: the hits best first, the first stage, a note for the reader."""

    hits: list[SearchHit]
    retrieval: str | None
    note: str | None = None


class Backend(Protocol):
    """What answers the tools: `LocalIndex` (an index folder, in this process) or
    `ServedIndex` (the Serve app's cascade)."""

    def start(self) -> None: ...
    async def search(self, request: SearchRequest) -> Found: ...
    async def status(self) -> IndexStatus: ...


def _utc(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def read_status(
    folder: str | Path,
    *,
    ready: bool,
    note: str | None = None,
    served_version: int | None = None,
) -> IndexStatus:
    """`IndexStatus` of the index in `folder`, from its current version's summary (absent
    for a corpus index: those fields are None), its pointer and its run marker."""
    try:
        version = versions.current(folder)
    except versions.VersionError:
        version = None
    path = Path(version.folder if version else folder, SUMMARY)
    try:
        summary, written = json.loads(path.read_text()), path.stat().st_mtime
    except (OSError, ValueError):
        summary, written = {}, None
    if version is not None:
        written = version.published
    run = run_under_way(folder)
    units = summary.get("units", {})
    return IndexStatus(
        index=str(folder),
        root=summary.get("source"),
        units=units.get("total"),
        files=summary.get("files", {}).get("indexed"),
        by_language=units.get("by_language", {}),
        model=summary.get("model"),
        last_indexed=_utc(written),
        age_seconds=None if written is None else round(time.time() - written, 1),
        version=version.number if version else None,
        served_version=served_version,
        indexing=run is not None,
        indexing_since=_utc(run.get("started")) if run else None,
        ready=ready,
        note=note,
    )


def run_note(folder: str | Path) -> str | None:
    """What an answer says while an index run writes `folder`, else None."""
    run = run_under_way(folder)
    if run is None:
        return None
    return (
        f"an index run is under way (since {_utc(run.get('started'))}): this answer is from "
        "the last complete index"
    )


class LocalIndex:
    """An index folder searched in this process (`LiveSearcher`: each new version loaded
    before the next search), loaded in a thread from `start` so the server answers the
    handshake at once; the first search waits for it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._loading: concurrent.futures.Future | None = None

    def start(self) -> None:
        if self._loading is None:
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="r2ps-load")
            self._loading = pool.submit(self._open)
            pool.shutdown(wait=False)

    def _open(self):
        from r2ps.search.live import LiveSearcher

        while True:
            try:
                return LiveSearcher.open(self.folder)
            except Exception as e:  # a folder without versions, half-written by a run
                if run_under_way(self.folder) is None:
                    raise
                log.warning("%s: an index run is writing it (%s): waiting", self.folder, e)
                time.sleep(1.0)

    async def searcher(self):
        """The loaded `Searcher`; ToolError when the index cannot be opened."""
        self.start()
        try:
            return await asyncio.wrap_future(self._loading)
        except Exception as e:
            raise ToolError(f"cannot open the index {self.folder}: {e}") from e

    def note(self, searcher=None) -> str | None:
        """A run under way, or a newer version than the one `searcher` (a LiveSearcher)
        answers from: what answers say."""
        note = run_note(self.folder)
        status = searcher.status() if searcher is not None else {}
        if note is None and status.get("reload_error"):
            note = (
                f"version {status['latest_version']} of the index did not load "
                f"({status['reload_error']}): answers are from version {status['version']}"
            )
        return note

    async def search(self, request: SearchRequest) -> Found:
        searcher = await self.searcher()
        try:
            mode = searcher.mode(request.retrieval)
        except ValueError as e:  # a first stage this index cannot serve (repo on a corpus)
            raise ToolError(str(e)) from e
        run = lambda: searcher.search(request.query, request.top_k, mode, request.filters())  # noqa: E731
        return Found(await asyncio.to_thread(run), mode, self.note(searcher))

    async def status(self) -> IndexStatus:
        ready = self._loading is not None and self._loading.done()
        failed = ready and self._loading.exception() is not None
        if failed:
            note, served = f"cannot open the index: {self._loading.exception()}", None
        else:
            searcher = self._loading.result() if ready else None
            note = self.note(searcher)
            served = searcher.version.number if searcher and searcher.version else None
        return read_status(
            self.folder, ready=ready and not failed, note=note, served_version=served
        )


class ServedIndex:
    """The Serve app's backend: `answer` is the Cascade ingress's (retrieve, rerank: what
    POST /search answers); the status is read from the index folder its settings name,
    `ready` asks the retriever (raising when it does not answer)."""

    def __init__(
        self,
        answer: Callable[[SearchRequest], Awaitable[Any]],
        cfg: ServeConfig,
        ready: Callable[[], Awaitable[Any]],
    ) -> None:
        self.answer, self.folder, self.ready = answer, cfg.embed_out, ready

    def start(self) -> None:
        pass

    async def search(self, request: SearchRequest) -> Found:
        response = await self.answer(request)
        if not isinstance(response, SearchResponse):  # POST /search's error: a 422 or a 503
            detail = json.loads(response.body).get("detail")
            raise ToolError(f"{detail} (HTTP {response.status_code})")
        hits = [SearchHit.from_dict(h.model_dump()) for h in response.results]
        notes = [run_note(self.folder)]
        if response.degraded_reason:
            notes.append(f"not reranked ({response.degraded_reason}): the retriever's order")
        return Found(hits, response.retrieval, "; ".join(n for n in notes if n) or None)

    async def status(self) -> IndexStatus:
        try:
            state = await self.ready()
        except Exception as e:
            return read_status(self.folder, ready=False, note=f"the retriever is down ({e!r})")
        served = (state.get("index") or {}).get("version") if isinstance(state, dict) else None
        return read_status(self.folder, ready=True, served_version=served)


def _cut(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 1] + CUT


def code_hit(hit: SearchHit, lines: int) -> CodeHit:
    """`hit` with at most `lines` lines of its code, each cut to LINE_CHARS."""
    code = hit.code.split("\n")
    return CodeHit(
        path=hit.path,
        start_line=hit.start_line,
        end_line=hit.end_line,
        symbol=hit.symbol,
        language=hit.language,
        score=round(hit.score, 4),
        code_id=hit.code_id,
        snippet="\n".join(_cut(line) for line in code[:lines]),
        more_lines=max(0, len(code) - lines),
    )


def answer_text(hits: list[SearchHit], answer: SearchAnswer, budget: int) -> str:
    """The text an agent reads: each hit's heading (`SearchHit.heading`, as `r2ps search`
    prints it) and its snippet indented, then what was left out and the note."""
    out = []
    shown_hits = answer.hits  # the first of `hits`, shortened
    for hit, shown in zip(hits[: len(shown_hits)], shown_hits, strict=True):
        out.append(hit.heading())
        out.extend("    " + line for line in shown.snippet.split("\n") if shown.snippet)
        if shown.more_lines:
            out.append(f"    {CUT} {shown.more_lines} more lines")
    if not hits:
        out.append("no hits")
    if answer.hits_left_out:
        out.append(
            f"[{answer.hits_left_out} more hits left out to stay under {budget} characters: "
            "ask for fewer (top_k) or narrow with language, path or exclude]"
        )
    if answer.note:
        out.append(f"[{answer.note}]")
    return "\n".join(out)


def render_answer(found: Found, budget: int = BUDGET_CHARS) -> CallToolResult:
    """`found` as a tool result under `budget` characters (its text + its structured
    content as JSON): each hit's first SNIPPET_LINES lines if all fit, else fewer lines of
    each (halved down to none), then fewer hits."""
    lines, keep = SNIPPET_LINES, len(found.hits)
    while True:
        answer = SearchAnswer(
            retrieval=found.retrieval,
            hits=[code_hit(h, lines) for h in found.hits[:keep]],
            hits_left_out=len(found.hits) - keep,
            note=found.note,
        )
        text = answer_text(found.hits, answer, budget)
        structured = answer.model_dump(mode="json")
        size = len(text) + len(json.dumps(structured, ensure_ascii=False))
        if size <= budget or keep == 0:
            return CallToolResult(
                content=[TextContent(type="text", text=text)], structured_content=structured
            )
        if lines:
            lines //= 2
        else:
            keep -= 1


def _not_blank(query: str) -> str:
    if not query.strip():
        raise ValueError("empty or only whitespace")
    return query


def _argument_error(err: dict) -> str:
    """One pydantic error as `argument: message`: ('path', 0) -> `path[0]: ...`, a
    validator's own message without pydantic's "Value error, "."""
    loc = err["loc"]
    name = (str(loc[0]) if loc else "arguments") + "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:]
    )
    error = err.get("ctx", {}).get("error")
    return f"{name}: {error if err['type'] == 'value_error' and error else err['msg']}"


class _Server(MCPServer):
    """MCPServer whose argument errors name the argument in one line each, and which
    refuses an argument no tool parameter has (a misspelt filter would else be dropped
    and the answer read as filtered)."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context=None):
        tools = {t.name: t for t in await self.list_tools()}
        if name in tools:
            known = list(tools[name].input_schema.get("properties", {}))
            for key in arguments:
                if key not in known:
                    raise ToolError(f"{key}: unknown argument; {name} takes {', '.join(known)}")
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as e:
            cause = e.__cause__
            if isinstance(e, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            raise ToolError("; ".join(map(_argument_error, cause.errors()))) from cause


def build_server(
    backend: Backend, *, budget: int = BUDGET_CHARS, max_query_chars: int | None = None
) -> MCPServer:
    """The MCP server over `backend`: tools `search_code` and `index_status`.

    `budget`: characters an answer may hold (>= MIN_BUDGET_CHARS, else ValueError);
    `max_query_chars`: the longest query (default: ServeConfig's)."""
    if budget < MIN_BUDGET_CHARS:
        raise ValueError(f"budget: at least {MIN_BUDGET_CHARS} characters, got {budget}")
    max_query_chars = max_query_chars or ServeConfig().max_query_chars

    @contextlib.asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[None]:
        backend.start()  # on stdio: after the SDK took fd 1, so no load message reaches it
        yield

    server = _Server(
        "r2ps", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING",
        lifespan=lifespan,
    )  # fmt: skip
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=read_only, structured_output=True)
    async def search_code(
        query: Annotated[
            str,
            Field(
                min_length=1,
                max_length=max_query_chars,
                description="what the code does, in plain words (not an exact string: grep that)",
            ),
            AfterValidator(_not_blank),
        ],
        top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K, description="hits to return")] = 10,
        language: Annotated[
            list[Language] | None, Field(min_length=1, description="only these languages")
        ] = None,
        path: Annotated[
            Globs,
            Field(
                description="only files matching one of these gitignore-style globs over "
                "paths from the indexed folder, e.g. ['src/**', '*.py']"
            ),
        ] = None,
        exclude: Annotated[
            Globs,
            Field(
                description="no file matching one of these, e.g. ['**/tests/**', '**/*_test.go']"
            ),
        ] = None,
        retrieval: Annotated[
            Retrieval | None,
            Field(description="the first stage (as POST /search's); default: the index's own"),
        ] = None,
    ) -> Annotated[CallToolResult, SearchAnswer]:
        """Search the repository's code by meaning: functions, methods and classes that do
        what the query says, best first. Filters apply before the top_k cut: fewer hits
        when fewer pass, never others."""
        # valid as a POST /search body: the arguments were checked by the same types
        request = SearchRequest(
            query=query, top_k=top_k, retrieval=retrieval,
            language=language, path=path, exclude=exclude,
        )  # fmt: skip
        return render_answer(await backend.search(request), budget)

    @server.tool(annotations=read_only)
    async def index_status() -> IndexStatus:
        """What is indexed (root, units, files, languages), when it was last indexed, by
        which model, and whether an index run is under way."""
        return await backend.status()

    return server


def mount_http(app, server: MCPServer):
    """Add `server`'s streamable-HTTP endpoint at HTTP_PATH to the FastAPI `app` and its
    session manager to `app`'s lifespan; returns `app`.

    Stateless, with JSON responses: any replica of the ingress answers any request (no
    session to route back to), and nothing streams. Host and origin are not checked (the
    SDK's DNS-rebinding guard): the endpoint answers the same read-only search as POST
    /search, wherever Serve's proxy listens."""
    from fastapi import APIRouter

    http = server.streamable_http_app(
        streamable_http_path=HTTP_PATH,
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    app.mount("/", http)  # after the app's own routes: only HTTP_PATH is the SDK's
    app.include_router(APIRouter(lifespan=lambda _app: server.session_manager.run()))
    return app
