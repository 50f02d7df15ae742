"""What the notebook shows after a stage: its table, and its report's key figures as ``figure: PATH``
lines (the notebook displays each PNG inline).

Tables: an experiment's five best trials (its report's ``trials.csv``), a retrain's result
(``result.json``), the DARTS protocol's seeds (``selection.json``), the study report's closing table.
Figures: those of :data:`KEY_FIGURES` that the report links, in its order, and the selected DARTS
cell's drawings.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from core.run_folder import SELECTION_FILE, read_record, read_result
from lab.state import Lab

#: The figures shown per stage, by file name (and the DARTS protocol's selected cells, :func:`show`).
KEY_FIGURES: dict[str, tuple[str, ...]] = {
    "hpo": ("trials.png", "curves.png", "budget.png", "importance.png"),
    "hpo_retrain": ("curves.png",),
    "classic_nas": ("trials.png", "architectures.png", "budget.png"),
    "darts_protocol": ("selection.png", "search_vs_select.png", "collapse.png"),
    "darts_retrain": ("curves.png",),
    "study": ("hpo_trials.png", "hpo_budget.png", "hpo_importance.png", "nas_trials.png",
              "nas_architectures.png", "darts_selection.png", "darts_collapse.png", "retrain_curves.png"),
}
LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")
CLOSING = "## This study beside"


def figures(report: Path, stage: str) -> list[Path]:
    """The key figures of a report folder that exist, in the order ``report.md`` links them."""
    md = report / "report.md"
    linked = LINK.findall(md.read_text()) if md.is_file() else []
    seen: list[Path] = []
    for name in linked:
        path = report / name
        if path in seen or not path.is_file():
            continue
        if path.name in KEY_FIGURES[stage]:
            seen.append(path)
    return seen


def _fmt(value: str | float | None, digits: int = 4) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "-"


def table(lab: Lab, stage: str) -> str:
    rec = lab.stage(stage)
    report = lab.path(rec["report"])
    source = lab.path(rec["source"]) if rec.get("source") else None
    if stage in ("hpo", "classic_nas"):
        rows = list(csv.DictReader((report / "trials.csv").open())) if (report / "trials.csv").is_file() else []
        ranked = sorted((r for r in rows if r.get("rank")), key=lambda r: int(r["rank"]))[:5]
        md = (report / "report.md").read_text() if (report / "report.md").is_file() else ""
        winner = [line[2:] for line in md.splitlines() if line.startswith("- HPO winner:")]
        lines = [f"{stage}: experiment {rec.get('experiment')}, {len(rows)} trials; the best five:", *winner,
                 f"{'rank':>4}  {'trial':<6}  {'validation accuracy':<19}  parameters"]
        for r in ranked:
            params = ", ".join(f"{k[len('params_'):]}={v}" for k, v in r.items() if k.startswith("params_") and
                               k != "params_source" and v != "")
            acc = f"{_fmt(r.get('final'))} ± {_fmt(r.get('final_se'))}"
            lines.append(f"{r['rank']:>4}  {r['trial_id']:<6}  {acc:<19}  {params}")
        return "\n".join(lines)
    if stage in ("hpo_retrain", "darts_retrain") and source is not None:
        result = read_result(source) or {}
        acc = result.get("test_acc")
        epochs = result.get("epoch")
        return (f"{stage}: {source.name}: {epochs} epoch{'s' * (epochs != 1)}, {result.get('params', 0):,} parameters, "
                f"test accuracy {_fmt(acc)} on {result.get('test_images', '?')} images")
    if stage == "darts_protocol" and source is not None:
        selection = read_record(source / SELECTION_FILE) or {}
        winner = (selection.get("winner") or {}).get("seed")
        lines = [f"darts_protocol: {len(selection.get('seeds', []))} searches; the selected cell is seed {winner}'s",
                 f"{'seed':>4}  {'search val. acc.':<16}  {'short retrain val. acc.':<23}  cell"]
        for s in selection.get("seeds", []):
            mark = " (selected)" if s.get("seed") == winner else ""
            search, select = _fmt(s.get("search_val_acc")), _fmt(s.get("select_val_acc"))
            lines.append(f"{s.get('seed'):>4}  {search:<16}  {select:<23}  {s.get('cell')}{mark}")
        return "\n".join(lines)
    if stage == "study":
        text = (report / "report.md").read_text() if (report / "report.md").is_file() else ""
        at = text.find(CLOSING)
        if at < 0:
            return "study: report " + str(report / "report.md")
        end = text.find("\n## ", at + 1)
        return text[at:end if end > 0 else None].strip()
    return f"{stage}: report {report / 'report.md'}"


def show(lab: Lab, stage: str) -> str:
    """The table and ``figure: PATH`` lines of a finished stage (or what is missing)."""
    rec = lab.stage(stage)
    if rec.get("status") != "done":
        return f"{stage}: not finished yet ({rec.get('status') or 'not started'})"
    report = lab.path(rec["report"])
    lines = [table(lab, stage), f"report: {report / 'report.md'}"]
    shown = figures(report, stage)
    protocol = lab.stage("darts_protocol").get("source")
    if stage in ("darts_protocol", "study") and protocol:
        winner = ((read_record(lab.path(protocol) / SELECTION_FILE) or {}).get("winner") or {}).get("seed")
        prefix = "darts_" if stage == "study" else ""
        shown += [p for p in (report / f"{prefix}seed{winner}_cell_normal.png",
                              report / f"{prefix}seed{winner}_cell_reduce.png") if p.is_file()]
    lines += [f"figure: {p}" for p in shown]
    return "\n".join(lines)
