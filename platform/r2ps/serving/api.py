"""The HTTP API of `POST /search`: request and response models (pydantic, so FastAPI
validates input and writes the OpenAPI document from the same classes) and
`parse_search_request` (body size limit + validation, every bad input a 4xx)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from r2ps.search.filters import GLOB_PATTERN, LANGUAGES, Filters, glob_problem
from r2ps.search.fusion import RETRIEVAL_MODES
from r2ps.serving.settings import MAX_GLOB_CHARS, MAX_GLOBS, MAX_RERANK_K, MAX_TOP_K, NOT_BLANK

Language = Literal[LANGUAGES]  # type: ignore[valid-type]  (the labels of r2ps.data.grammars)
Retrieval = Literal[RETRIEVAL_MODES]  # type: ignore[valid-type]  (r2ps.search.fusion)


def _glob(value: str) -> str:
    problem = glob_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# A glob: the document states GLOB_PATTERN, `_glob` enforces the same rule in Python
# (r2ps.search.filters.glob_problem), with a message that says what is wrong.
Glob = Annotated[
    str,
    Field(min_length=1, max_length=MAX_GLOB_CHARS, json_schema_extra={"pattern": GLOB_PATTERN}),
    AfterValidator(_glob),
]
_GLOB_HELP = (
    "gitignore-style globs over paths relative to the indexed folder (e.g. `tests/**`, "
    "`**/*_test.go`, `*.py`, `src/`); no `!`, `#`, `\\` escapes or `[ranges]`"
)

# --- the HTTP API ---


class SearchRequest(BaseModel):
    """Body of POST /search. Unknown fields and wrong types are rejected, not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(
        description="natural-language query: not blank (some character other than "
        "whitespace); at most the server's max_query_chars characters (see maxLength)",
        examples=["read a json file"],
        # stated for clients; enforced by `_not_blank` and `parse_search_request`
        json_schema_extra={"minLength": 1, "pattern": NOT_BLANK},
    )
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K, description="codes to return")
    rerank_k: int | None = Field(
        default=None,
        ge=0,
        le=MAX_RERANK_K,
        description="retriever candidates the ranker rescores (0: retriever only; "
        "default: the server's rerank_k, chosen on validation data)",
    )
    retrieval: Retrieval | None = Field(
        default=None,
        description="first stage: dense; hybrid (BM25 + dense by reciprocal rank fusion; "
        "scores are then RRF scores); or repo, for a source tree's index (BM25 + dense "
        "blended, then ranked by repository signals: test files demoted, file and symbol "
        "names matched, results spread over files; scores are then the blend in [0, 1] "
        "plus those boosts); null: the server's setting",
    )
    # Filters (r2ps.search.filters), applied before the top-k cut: fewer than top_k
    # results when fewer codes pass, never others.
    language: list[Language] | None = Field(
        default=None,
        min_length=1,
        max_length=len(LANGUAGES),
        description="only codes in one of these languages",
    )
    path: list[Glob] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_GLOBS,
        description=f"only codes in files matching one of these {_GLOB_HELP}",
    )
    exclude: list[Glob] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_GLOBS,
        description=f"no code in files matching one of these {_GLOB_HELP}",
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is empty or only whitespace")
        return value

    def filters(self) -> Filters | None:
        """The request's filters, or None when it names none."""
        found = Filters(self.language, self.path, self.exclude)
        return found if found else None

    @field_validator("top_k", "rerank_k", mode="before")
    @classmethod
    def _integral_number(cls, value: Any) -> Any:
        # JSON Schema's "integer" includes 5.0; strict mode would refuse it
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def search_request_schema(max_query_chars: int) -> dict:
    """SearchRequest's JSON schema with this server's query length limit (`maxLength`)."""
    schema = SearchRequest.model_json_schema()
    schema["properties"]["query"]["maxLength"] = max_query_chars
    return schema


def search_body_openapi(max_query_chars: int) -> dict:
    """The `openapi_extra` of POST /search: its body is read by hand, so it is stated here."""
    schema = search_request_schema(max_query_chars)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class Hit(BaseModel):
    rank: int = Field(description="1-based position in the answer")
    code_id: str
    code: str
    language: str
    source: str
    score: float = Field(description="the score the answer is ordered by")
    retriever_score: float
    retriever_rank: int = Field(description="1-based position in the retriever's list")
    ranker_score: float | None = Field(description="raw cross-encoder score; null if not reranked")
    # Where the code is, when the code store knows (an index of a source tree,
    # jobs/index.py); null for a corpus split.
    path: str | None = Field(default=None, description="file, relative to the indexed folder")
    start_line: int | None = Field(default=None, description="1-based first line of `code`")
    end_line: int | None = Field(default=None, description="1-based last line of `code`")
    symbol: str | None = Field(default=None, description="qualified name, e.g. Circle.area")


class SearchResponse(BaseModel):
    query: str
    results: list[Hit]
    reranked: bool = Field(description="false: the ranker was skipped, timed out or down")
    reranked_count: int
    degraded_reason: str | None = None
    timings_ms: dict[str, float] = Field(description="retrieve, rerank, total")
    retrieval: str | None = Field(default=None, description="the first stage used")


class RequestError(Exception):
    """A bad request: `status` (4xx) and a message that says what was wrong."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


async def read_limited_body(chunks, limit: int, content_length: str | None) -> bytes:
    """The request body, or RequestError(413) as soon as it passes `limit` bytes.

    Content-Length is checked first; the stream is counted too, since a chunked body
    has no length header.
    """
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise RequestError(400, f"bad Content-Length header {content_length!r}") from None
        if declared > limit:
            raise RequestError(413, f"body of {declared} bytes is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in chunks:
        body.extend(chunk)
        if len(body) > limit:
            raise RequestError(413, f"body is over the {limit}-byte limit")
    return bytes(body)


def parse_search_request(body: bytes, max_query_chars: int) -> SearchRequest:
    """Validate a JSON body into a SearchRequest, or RequestError(422) naming the field.

    The error never echoes the input: an error message must not fail on the bytes it
    reports (invalid UTF-8, a number JSON cannot write back such as 1e400).
    """
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})"
        raise RequestError(422, [{"loc": ["body"], "msg": msg, "type": "json_invalid"}]) from None
    try:
        req = SearchRequest.model_validate_json(body)
    except ValidationError as e:
        raise RequestError(422, _validation_detail(e)) from None
    if len(req.query) > max_query_chars:
        raise RequestError(
            422,
            [
                {
                    "loc": ["body", "query"],
                    "msg": f"query has {len(req.query)} characters, at most "
                    f"{max_query_chars} are allowed",
                    "type": "string_too_long",
                }
            ],
        )
    return req


def _validation_detail(e: ValidationError) -> list[dict]:
    """pydantic's errors as JSON-safe dicts: loc, msg, type (and ctx), without the input."""
    try:
        return json.loads(e.json(include_url=False, include_input=False))
    except ValueError:  # a ctx or loc that JSON cannot hold: keep the plain facts
        return [
            {"loc": [str(p) for p in err["loc"]], "msg": str(err["msg"]), "type": err["type"]}
            for err in e.errors(include_url=False, include_input=False, include_context=False)
        ]
