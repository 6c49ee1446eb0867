"""benchmarks/index_speed.py end to end on tiny trees in semble's format (the fixture of
test_repo_search.py) with a tiny random BERT: a row per setting, each in a child process,
with stage seconds, memory, NDCG@10 through repo_search's scorer, the comparison with
`today`, and the time from the index command to the first answer."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from test_repo_search import semble  # noqa: F401  (the fixture: tiny trees and queries)

REPO = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "index_speed", REPO / "benchmarks" / "index_speed.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_index_speed_end_to_end(semble, tmp_path, tiny_bert_dir, capsys):  # noqa: F811
    data, trees = semble
    model = tmp_path / "model"  # a copy: the benchmark exports ONNX beside the model
    import shutil

    shutil.copytree(tiny_bert_dir, model)
    bench = _benchmark()
    report = bench.main(
        [
            f"--data={data}",
            f"--trees={trees}",
            "--repos=pyrepo,gorepo,empty",
            "--settings=today,int8,default",
            f"--model={model}",
            f"--out-dir={tmp_path / 'indexes'}",
            f"--results={tmp_path / 'results'}",
            "--tag=t",
            "--first-answer=pyrepo",
        ]
    )
    saved = json.loads((tmp_path / "results" / "index_speed_t.json").read_text())
    assert saved["comparison"] == report["comparison"]
    rows = saved["settings_run"]
    assert list(rows) == ["today", "int8", "default"]
    for name, row in rows.items():
        assert row["crashed"] == ["empty"]  # a tree without code: recorded, the run goes on
        # pyrepo 2 functions; gorepo 1 function + its module unit (`package shapes`)
        assert row["units"] == 4 and row["embedded"] == 4
        assert set(row["seconds"]) == {"walk", "extract", "embed", "index", "write", "total"}
        assert row["seconds"]["total"] >= row["seconds"]["embed"] > 0
        assert row["codes_per_s"] > 0
        assert row["peak_rss_mib"] > 100  # torch and the model were resident in the child
        by_tree = {t["name"]: t for t in row["trees"]}
        # the function's own text finds it first (1), a missing file is never found (0)
        assert by_tree["pyrepo"]["dense"]["served"]["queries"] == [1.0, 0.0], name
        assert by_tree["gorepo"]["dense"]["served"]["ndcg10"] == 1.0
        assert row["ndcg10_served"] == 0.75
    assert rows["int8"]["trees"][0]["embedding"]["backend"] == "onnx-int8"
    assert rows["int8"]["ndcg10_torch_queries"] == 0.75  # the mismatch row is there
    assert "ndcg10_torch_queries" not in rows["today"]
    assert rows["today"]["vs_today"]["speed"] == 1.0
    assert rows["today"]["vs_today"]["ndcg10"]["diff"] == 0.0
    comparison = saved["comparison"]
    assert comparison["best_ndcg10"] == 0.75 and set(comparison["within"]) == set(rows)
    fastest = min(rows, key=lambda n: rows[n]["seconds"]["total"])
    assert comparison["choice"] == fastest

    first = {f["setting"]: f for f in saved["first_answer"]}
    assert set(first) == {"today", "default"}
    for f in first.values():
        assert f["units"] == 2 and f["first_hit"] == "geometry.py"  # paths under the root
        assert f["to_first_answer_seconds"] == round(f["index_seconds"] + f["search_seconds"], 2)
    assert first["default"]["index_command"].endswith("r2ps index")
    printed = capsys.readouterr().out
    assert "fastest of those" in printed and "first answer, default" in printed
