"""The evaluation's report: results.md (the tables) and results.png beside results.json.

Reads only the report dict `evaluate.evaluate` builds, so a saved results.json can be
rendered again (`write_results(json.load(...), folder)`).
"""

from __future__ import annotations

import json
from pathlib import Path

from r2ps.storage import atomic_path, write_text_atomic

METRICS = ("mrr", "recall@1", "recall@5", "recall@10", "ndcg@10")


def markdown(report: dict) -> str:
    """The quality table (rows = methods, columns = metrics per data set) and Table 5."""
    names = list(report["datasets"])
    methods: list[str] = []
    for data in report["datasets"].values():
        methods += [m for m in data["methods"] if m not in methods]
    header = ["method"]
    for n in names:
        header += [f"{n} {m.upper() if m == 'mrr' else m}" for m in METRICS]
        header.append(f"{n} MRR - DE [95% CI]")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for method in methods:
        cells = [_label(method, report["datasets"])]
        for n in names:
            row = report["datasets"][n]["methods"].get(method)
            cells += [f"{100 * row[m]:.1f}" if row else "" for m in METRICS]
            cells.append(_delta(row["vs_de"]) if row and "vs_de" in row else "")
        lines.append("| " + " | ".join(cells) + " |")
    sizes = ", ".join(
        f"{n}: {d['n_queries']} queries, {d['n_codes']} codes"
        for n, d in report["datasets"].items()
    )
    lines += ["", f"Metrics in %, whole pool ({sizes}); MRR counts a rank past 1000 as 0."]
    if report["alpha"]["by_ranker"]:
        chosen = "; ".join(
            f"{label} " + ", ".join(f"K={k}: {v['alpha']}" for k, v in by_k.items())
            for label, by_k in report["alpha"]["by_ranker"].items()
        )
        lines.append(f"Fusion weights chosen on {report['alpha']['split']}: {chosen}.")
        lines.append(
            "Rows: `K=` is a ranker's cascade at its trained weight; `fused` at the K and "
            "weight chosen on valid (each ranker's, served or not); `served` is what "
            "serve.yaml serves."
        )
    exported = {k: v for k, v in report.get("checkpoints", {}).items() if v}
    if exported:
        lines.append(
            "Rankers evaluated at the step chosen on valid: "
            + ", ".join(f"{k} step {v['step']} of {v['of']}" for k, v in exported.items())
            + " (a residual ranker at step 0 is the retriever)."
        )
    if report.get("served"):
        lines.append(f"Served (chosen on the valid split): {report['served']['reason']}.")
    lines.append(
        "MRR - DE: paired bootstrap over the same queries "
        f"({report['settings'].get('bootstrap')} resamples, seed {report['settings'].get('seed')})."
    )
    for reason in report["skipped"]:
        lines.append(f"- {reason}")
    if report.get("pending"):
        lines.append(
            f"\nNot computed yet: {', '.join(report['pending'])} (the job was still running, "
            "or stopped, when this was written)."
        )
    eff = report.get("efficiency")
    if eff:
        lines += [
            "",
            f"| pool | DE s/query | CE over pool s/query | RR K={eff['k']} s/query | speed-up | "
            "indexing (embed) s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in eff["rows"]:
            star = " (extrapolated)" if r["ce_all_extrapolated"] else ""
            emb = " (extrapolated)" if r["index_embed_extrapolated"] else ""
            lines.append(
                f"| {r['pool']} | {r['de_s_per_query']:.4f} | {r['ce_all_s_per_query']:.2f}{star} "
                f"| {r['rr_s_per_query']:.4f} | {r['speedup_rr_vs_ce_all']:.3g}x "
                f"| {r['index_embed_s']:.1f}{emb} |"
            )
        lines.append(
            f"\nRetriever {eff['retriever']}, ranker {eff['ranker']}; {eff['timed_queries']} "
            f"queries timed one at a time; cross encoder {eff['ce_s_per_pair'] * 1000:.1f} ms "
            f"per pair over {eff['timed_pairs']} timed pairs. {eff['note']}."
        )
    return "\n".join(lines) + "\n"


def _label(method: str, datasets: dict) -> str:
    """A row's name; the fused rows ("<ranker> as served" in results.json: each ranker's
    cascade at the K and weight chosen on valid, served or not) and "served" name their
    K and weight."""
    for data in datasets.values():
        row = data["methods"].get(method)
        if row and method.endswith("served"):
            if method != "served":
                family = method.removesuffix(" as served")
                if not row["k"]:
                    return f"{family} fused (K=0 chosen on valid: the retriever alone)"
                return f"{family} fused (K={row['k']}, alpha={row['alpha']} chosen on valid)"
            if not row["k"]:
                return f"{method} (retriever alone)"
            return f"{method} (K={row['k']}, alpha={row['alpha']})"
    return method


def _delta(d: dict) -> str:
    return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def plot(report: dict, path: Path) -> None:
    """MRR against K per method and data set; time per query against pool size (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"BM25": "tab:grey", "untrained DE": "tab:olive", "DE": "tab:blue"}
    colors.update({"RR": "tab:orange", "RR+PS": "tab:red"})
    markers = "os^vD"
    for d, (name, data) in enumerate(report["datasets"].items()):
        curves: dict[tuple[str, bool], list[tuple[int, float]]] = {}
        for method, row in data["methods"].items():
            if method.endswith("served"):  # one chosen point, named in the table
                continue
            if "k" in row:
                curves.setdefault((row["family"], row["fused"]), []).append((row["k"], row["mrr"]))
            else:  # no K: a level line
                color = colors.get(method, "black")
                left.axhline(
                    100 * row["mrr"], color=color, linestyle=":", label=f"{method} ({name})"
                )
        for (family, fused), points in curves.items():
            points.sort()
            left.plot(
                [k for k, _ in points],
                [100 * m for _, m in points],
                linestyle="--" if fused else "-",
                marker=markers[d % len(markers)],
                color=colors.get(family, "black"),
                label=f"{family}{' fused' if fused else ''} ({name})",
            )
    ks = report["settings"]["ks"]
    left.set_xscale("log")
    left.set_xticks(ks, [str(k) for k in ks])
    left.minorticks_off()
    left.set_xlabel("K (codes reranked)")
    left.set_ylabel("MRR (%)")
    left.set_title("MRR against K")
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7, ncol=2)
    eff = report.get("efficiency")
    if eff:
        pools = [r["pool"] for r in eff["rows"]]
        right.plot(pools, [r["de_s_per_query"] for r in eff["rows"]], "-o", label="DE")
        right.plot(
            pools,
            [r["ce_all_s_per_query"] for r in eff["rows"]],
            "--o",
            label="CE over pool (extrapolated)",
        )
        right.plot(
            pools, [r["rr_s_per_query"] for r in eff["rows"]], "-s", label=f"cascade K={eff['k']}"
        )
        right.set_xscale("log")
        right.set_yscale("log")
        right.legend(fontsize=7)
    right.set_xlabel("pool size (codes)")
    right.set_ylabel("seconds per query")
    right.set_title("time per query")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_results(report: dict, out: str | Path) -> dict[str, Path]:
    """results.json, results.md and results.png in `out`; returns their paths.

    Each file is replaced whole (`storage.atomic_path`): the evaluation writes them again
    as each part is computed, and a reader, or a job stopped mid-write, never sees half.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    report["files"] = {k: str(v) for k, v in paths.items()}
    write_text_atomic(paths["json"], json.dumps(report, indent=1, default=str))
    write_text_atomic(paths["md"], markdown(report))
    with atomic_path(paths["png"]) as tmp:
        plot(report, tmp)
    return paths
