"""`r2ps`: index a folder, search it, serve it. The user's command (jobs/ stay the
training platform's entry points).

    r2ps index [PATH] [--out DIR] [--model DIR] [--full] [--address ADDR] [--watch]
    r2ps search QUERY [-k N] [--lang python,go] [--path GLOB]... [--exclude GLOB]...
                [--retrieval dense|hybrid|repo] [--json] [--index DIR | --url URL]
    r2ps serve [--index DIR] [--host HOST] [--port PORT] [--address ADDR]
    r2ps mcp [--index DIR] [--budget CHARS]

Where an index lives: `r2ps index PATH` writes `PATH/.r2ps/index` (`.r2ps/` holds a
.gitignore of `*`, so git and the next index run leave it alone); `r2ps search` and
`r2ps serve` use the nearest `.r2ps/index` from the current folder up, as git finds
`.git`, unless `--index` names a folder (any index folder with a serve.yaml, e.g. one
`jobs/index.py` wrote).

`r2ps index PATH --watch` indexes, then re-indexes on every change to the tree's code
(r2ps.repo.watch) until Ctrl-C or SIGTERM (exit 0); each run publishes a new version of the
index folder, which `r2ps serve` and `r2ps mcp` load before their next search
(r2ps.search.versions, r2ps.search.live).

`r2ps mcp` serves an index to a coding agent over MCP on stdin/stdout (the tools
`search_code` and `index_status`: r2ps.serving.mcp; docs/AGENTS.md configures each agent).

`r2ps search` prints one line per hit, `path:start-end  symbol  (language)  score`, and on
a terminal the first lines of each hit's code below it; `--json` prints one JSON object
(`query`, `retrieval`, `hits`: `r2ps.search.searcher.SearchHit` fields) for scripts. It
searches the index in this process (`Searcher`: no Ray, no Serve), or a running server's
`POST /search` with `--url`. Exit status, as grep's: 0 with hits, 1 with none, 2 on an
error (a usage error, a bad filter, no index, a server that cannot be reached).

Ray: `r2ps index` starts a local Ray only for a tree large enough to fan out
(r2ps.repo), `r2ps serve` always; neither joins a cluster that `--address` or RAY_ADDRESS
does not name (a plain `ray.init()` joins one running on this machine).

A subcommand is one function `(args) -> exit status`, registered with `@command(name,
arguments)`, where `arguments(parser)` declares its flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

INDEX_HOME = ".r2ps"  # beside the indexed tree: INDEX_HOME/index
SNIPPET_LINES = 4  # lines of each hit's code shown on a terminal
# A query is a few dozen tokens: one thread encodes it in tens of milliseconds, and more
# only contend for cores the user's other work holds (on 2 busy cores, 2 threads took
# 0.9 s a query against 35 ms for 1: benchmarks/cli_latency.py).
SEARCH_THREADS = 1
USAGE, NO_HITS = 2, 1

Run = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Run]] = {}


def command(name: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register `run` (its docstring's first line is the subcommand's help)."""

    def register(run: Run) -> Run:
        COMMANDS[name] = ((run.__doc__ or "").strip().split("\n")[0], arguments, run)
        return run

    return register


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


def default_index(root: str | Path) -> Path:
    """Where `r2ps index ROOT` writes its index: ROOT/.r2ps/index."""
    return Path(root) / INDEX_HOME / "index"


def find_index(start: str | Path | None = None) -> Path:
    """The nearest `.r2ps/index` holding a serve.yaml, from `start` (default: the current
    folder) up to the filesystem root; UsageError when there is none."""
    from r2ps.search.searcher import SERVE_FILE

    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (default_index(folder) / SERVE_FILE).is_file():
            return default_index(folder)
    raise UsageError(
        f"no index found in {here} or a folder above it: run `r2ps index .` in the folder "
        "to search, or name one with --index DIR"
    )


def ray_address(flag: str | None) -> str:
    """The Ray to use: `--address`, else RAY_ADDRESS, else 'local' (a Ray started for this
    command, never a cluster that happens to run on this machine)."""
    return flag or os.environ.get("RAY_ADDRESS") or "local"


def _quiet_logging() -> None:
    # Warnings only: the output is the answer. Not r2ps.log.setup_logging, which imports
    # Ray Data (a second of a one-off search's cold start).
    level = os.environ.get("R2PS_LOG_LEVEL", "WARNING")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# ------------------------------------------------------------------ r2ps index


def _index_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=".", help="the folder to index (default: .)")
    p.add_argument("--out", help="index folder (default: PATH/.r2ps/index)")
    p.add_argument("--model", default="", help="retriever folder (default: the bundled MiniLM)")
    p.add_argument("--full", action="store_true", help="ignore the last run: rebuild all")
    p.add_argument("--address", help="a Ray cluster to fan out on (default: a local Ray)")
    p.add_argument(
        "--watch", action="store_true",
        help="then re-index on every change to the folder's code, until Ctrl-C",
    )  # fmt: skip


@command("index", _index_arguments)
def index(args: argparse.Namespace) -> int:
    """Index a folder (incremental: a second run re-reads only what changed)."""
    from r2ps.config import ConfigError
    from r2ps.log import setup_logging
    from r2ps.repo.config import RepoIndexConfig
    from r2ps.repo.indexer import NothingToIndex, format_summary, index_repo

    out = Path(args.out) if args.out else default_index(args.path)
    if not args.out and Path(args.path).is_dir():
        home = out.parent
        home.mkdir(exist_ok=True)
        ignore = home / ".gitignore"
        if not ignore.exists():  # git, and the next run's walk, leave the index alone
            ignore.write_text("# written by `r2ps index`\n*\n")
    setup_logging()  # progress: bars on a terminal, a line per stage elsewhere
    cfg = RepoIndexConfig(
        source=args.path, out=str(out), model=args.model, full=args.full,
        ray_address=ray_address(args.address),
    )  # fmt: skip
    from r2ps.repo.watch import stop_on_signals, watch_index

    # with --watch, Ctrl-C and SIGTERM end it with status 0, the last complete version current
    with stop_on_signals() if args.watch else contextlib.nullcontext():
        try:
            summary = index_repo(cfg)
        except (ConfigError, NothingToIndex) as e:
            raise UsageError(str(e)) from None
        print(format_summary(summary))
        where = f"--index {out}" if args.out else ""
        print(f'search it: r2ps search "..." {where}'.rstrip(), flush=True)
        if args.watch:
            watch_index(cfg)  # one line per run on stderr
    return 0


# ------------------------------------------------------------------ r2ps search


def _search_arguments(p: argparse.ArgumentParser) -> None:
    from r2ps.search.filters import LANGUAGES
    from r2ps.search.fusion import RETRIEVAL_MODES

    p.add_argument("query", help="what the code does, in plain words")
    p.add_argument("-k", "--top-k", type=_positive, default=10, help="hits (default 10)")
    p.add_argument(
        "--lang",
        action="append",
        default=[],
        metavar="LANG[,LANG]",
        help=f"only these languages ({', '.join(LANGUAGES)})",
    )
    p.add_argument(
        "--path", action="append", default=[], metavar="GLOB",
        help="only files matching a gitignore-style glob (e.g. 'src/**'); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB",
        help="no file matching this glob (e.g. 'tests/**', '**/*_test.go'); repeatable",
    )  # fmt: skip
    p.add_argument("--retrieval", choices=RETRIEVAL_MODES, help="default: the index's setting")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--index", metavar="DIR", help="default: the nearest .r2ps/index")
    where.add_argument("--url", help="a running server (`r2ps serve`): POST URL/search")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _filters(args: argparse.Namespace):
    """The --lang, --path and --exclude flags as Filters (None: none given)."""
    from r2ps.search.filters import FilterError, Filters

    languages = [s.strip().lower() for item in args.lang for s in item.split(",") if s.strip()]
    flag = {"language": "--lang", "path": "--path", "exclude": "--exclude"}
    try:
        found = Filters(languages, args.path, args.exclude)
    except FilterError as e:
        raise UsageError(f"{flag[e.field.split('[')[0]]}: {e.message}") from None
    return found if found else None


@command("search", _search_arguments)
def search(args: argparse.Namespace) -> int:
    """Search an index in plain words; exit 0 with hits, 1 with none, 2 on an error."""
    _quiet_logging()
    filters = _filters(args)
    if args.url:
        where = args.url
        retrieval, hits = _ask_server(args, filters)
    else:
        from r2ps.config import ConfigError
        from r2ps.mining.index import StaleIndexError
        from r2ps.search.searcher import Searcher

        folder = Path(args.index) if args.index else find_index()
        try:
            searcher = Searcher.open(folder, threads=SEARCH_THREADS)
        except (FileNotFoundError, StaleIndexError, ConfigError) as e:
            raise UsageError(f"{e} (write the index with `r2ps index PATH`)") from None
        where, retrieval = str(folder), searcher.mode(args.retrieval)
        hits = searcher.search(args.query, args.top_k, retrieval, filters)
    if args.json:
        body = {"query": args.query, "index": where, "retrieval": retrieval}
        print(json.dumps({**body, "hits": [h.to_dict() for h in hits]}, indent=1))
    else:
        _print_hits(hits, snippets=sys.stdout.isatty())
    return 0 if hits else NO_HITS


def _ask_server(args: argparse.Namespace, filters) -> tuple[str | None, list]:
    """(the first stage used, hits) from a running server's POST /search."""
    from r2ps.search.searcher import SearchHit

    body = {"query": args.query, "top_k": args.top_k}
    if args.retrieval:
        body["retrieval"] = args.retrieval
    body.update(filters.to_dict() if filters else {})
    request = urllib.request.Request(
        args.url.rstrip("/") + "/search",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise UsageError(f"{args.url}: {e.code}: {_detail(e.read())}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UsageError(f"{args.url}: cannot reach the server ({e})") from None
    return answer.get("retrieval"), [SearchHit.from_dict(h) for h in answer["results"]]


def _detail(raw: bytes) -> str:
    """A server's error body in one line: FastAPI's `detail` (each field and message)."""
    try:
        detail = json.loads(raw)["detail"]
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace")[:500]
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail
        )
    return str(detail)


def _print_hits(hits: list, snippets: bool) -> None:
    for hit in hits:
        print(hit.heading())
        if snippets:
            lines = hit.code.split("\n")
            for line in lines[:SNIPPET_LINES]:
                print("    " + line)
            if len(lines) > SNIPPET_LINES:
                print(f"    ... ({len(lines) - SNIPPET_LINES} more lines)")
            print()


# ------------------------------------------------------------------ r2ps serve


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", metavar="DIR", help="default: the nearest .r2ps/index")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", help="a Ray cluster to serve on (default: a local Ray)")


@command("serve", _serve_arguments)
def serve(args: argparse.Namespace) -> int:
    """Serve an index: the search page at / and POST /search (Ray Serve), until Ctrl-C."""
    from r2ps.config import ConfigError
    from r2ps.log import setup_logging
    from r2ps.search.searcher import SERVE_FILE
    from r2ps.serving.settings import CONFIG_ENV, ServeConfig

    folder = Path(args.index) if args.index else find_index()
    os.environ[CONFIG_ENV] = str((folder / SERVE_FILE).resolve())
    setup_logging()
    try:  # what `serve run serve.app:cascade` does with R2PS_SERVE_CONFIG set
        cfg = ServeConfig.from_env()
        cfg.check_inputs()
    except ConfigError as e:
        raise UsageError(str(e)) from None
    build_app = _deployments().build_app
    import ray
    from ray import serve as ray_serve

    ray.init(address=ray_address(args.address))
    ray_serve.start(http_options={"host": args.host, "port": args.port})
    ray_serve.run(build_app(cfg.without_untrained_ranker()), name="r2ps", route_prefix="/")
    print(f"serving {folder} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ray_serve.shutdown()
    return 0


def _deployments():
    """serve/deployments.py, from the r2ps checkout this package runs from (it lives at the
    repository root, beside platform/); Ray workers started here find it too."""
    import importlib

    import r2ps

    root = Path(r2ps.__file__).resolve().parents[2]
    if not (root / "serve" / "deployments.py").is_file():
        raise UsageError(f"r2ps serve needs the r2ps repository's serve/ folder, not in {root}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    paths = os.environ.get("PYTHONPATH", "")
    if str(root) not in paths.split(os.pathsep):  # the replicas unpickle serve.deployments
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), paths) if p)
    return importlib.import_module("serve.deployments")


# ------------------------------------------------------------------ r2ps mcp


def _mcp_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", metavar="DIR", help="default: the nearest .r2ps/index")
    p.add_argument(
        "--budget", type=_positive, metavar="CHARS",
        help="characters one answer may hold, its text and structured content together "
        "(default: r2ps.serving.mcp.BUDGET_CHARS, 20000)",
    )  # fmt: skip


@command("mcp", _mcp_arguments)
def mcp(args: argparse.Namespace) -> int:
    """Serve an index to a coding agent over MCP (stdio), until the agent closes it."""
    from r2ps.search.searcher import SERVE_FILE
    from r2ps.serving.mcp import BUDGET_CHARS, LocalIndex, build_server

    _quiet_logging()  # to stderr: stdout carries the protocol
    folder = Path(args.index) if args.index else find_index()
    if not (folder / SERVE_FILE).is_file():  # the index itself loads after the handshake
        raise UsageError(f"{folder}: no {SERVE_FILE}: not an index folder (`r2ps index PATH`)")
    try:
        server = build_server(LocalIndex(folder), budget=args.budget or BUDGET_CHARS)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    server.run("stdio")
    return 0


# ------------------------------------------------------------------ main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="r2ps",
        description="Index a folder, search it in plain words, serve it.",
        epilog="Exit status: 0 with hits, 1 with none (search), 2 on an error.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_, arguments, run) in COMMANDS.items():
        arguments(sub.add_parser(name, help=help_, description=run.__doc__))
    return p


def main(argv: list[str] | None = None) -> int:
    """The `r2ps` console script; returns the exit status (argparse exits 2 by itself on a
    malformed command line)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when first imported
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except UsageError as e:
        print(f"r2ps {args.command}: error: {e}", file=sys.stderr)
        return USAGE


if __name__ == "__main__":
    sys.exit(main())
