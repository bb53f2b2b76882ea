"""Renders a benchmark result (the dict written to results.json): the printed tables,
results.md and results.png."""

from __future__ import annotations

import pathlib
from typing import Any

SYSTEM_ORDER = ("platform", "flaml", "h2o", "hgb")
PEERS = ("flaml", "h2o", "hgb")
PRIMARY = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}
SECONDARY = {"binary": "accuracy", "multiclass": "accuracy", "regression": "r2"}
SHORT = {"roc_auc": "auc", "log_loss": "logloss", "rmse": "rmse", "accuracy": "acc", "r2": "r2"}


def _runs(result: dict) -> dict[tuple[str, str, Any], dict]:
    return {(r["dataset"], r["system"], r["budget"]): r for r in result["runs"]}


def _run(runs: dict, dataset: str, system: str, budget: int) -> dict | None:
    return runs.get((dataset, system, budget)) or runs.get((dataset, system, None))


def _datasets(result: dict) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for r in result["runs"]:
        seen.setdefault(r["dataset"], r["task"])
    return list(seen.items())


def _systems(result: dict) -> list[str]:
    present = {r["system"] for r in result["runs"]} | set(result["meta"].get("systems", []))
    return [s for s in SYSTEM_ORDER if s in present]


def _metric_cell(run: dict | None, metric: str) -> str:
    if run is None:
        return "-"
    if run["status"] == "missing":
        return "n/a"
    if run["status"] != "ok":
        return "ERR"
    value = run["metrics"].get(metric)
    return "-" if value is None else f"{value:.4f}"


def _seconds(run: dict | None) -> str:
    if run is None or run["status"] != "ok" or run["fit_seconds"] is None:
        return "-"
    return f"{run['fit_seconds']:.1f}"


def _ratio(result: dict, dataset: str, budget: int, peer: str) -> str:
    for r in result["ratios"]:
        if (r["dataset"], r["budget"], r["peer"]) == (dataset, budget, peer):
            return f"{r['ratio']:.3f}"
    return "-"


def tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, for the text and markdown renderings."""
    runs = _runs(result)
    systems = _systems(result)
    peers = [p for p in PEERS if p in systems]
    out = []
    for budget in result["meta"]["budgets"]:
        header = (["data set", "task", "metric"] + systems
                  + ([f"vs {p}" for p in peers] if "platform" in systems else [])
                  + [f"t {s}" for s in systems])
        rows = []
        for dataset, task in _datasets(result):
            for metric in (PRIMARY[task], SECONDARY[task]):
                primary = metric == PRIMARY[task]
                row = [dataset if primary else "", task if primary else "", SHORT[metric]]
                row += [_metric_cell(_run(runs, dataset, s, budget), metric) for s in systems]
                if "platform" in systems:
                    row += [_ratio(result, dataset, budget, p) if primary else "" for p in peers]
                row += [_seconds(_run(runs, dataset, s, budget)) if primary else ""
                        for s in systems]
                rows.append(row)
        out.append((f"Budget {budget} s: test metrics; vs = ratio, > 1 means the platform is "
                    "better; t = fit wall seconds (hgb: no budget)", header, rows))
    if result["summary"]:
        header = ["peer", "budget", "data sets", "median ratio", "min ratio", "min on",
                  "platform better"]
        rows = [[s["peer"], f"{s['budget']} s", str(s["n"]), f"{s['median']:.3f}",
                 f"{s['min']:.3f}", s["min_dataset"], f"{s['platform_better']}/{s['n']}"]
                for s in result["summary"]]
        out.append(("Summary (ratio > 1: the platform is better; binary ROC-AUC, multiclass "
                    "log loss, regression RMSE)", header, rows))
    platform_rows = []
    for r in result["runs"]:
        if r["system"] != "platform" or r["status"] != "ok":
            continue
        d = r["details"]
        platform_rows.append([
            r["dataset"], f"{r['budget']} s", f"{r['fit_seconds']:.1f}",
            _num(d.get("queue_seconds")), _num(d.get("search_seconds")),
            _num(d.get("refit_seconds")), str(d.get("trials", "-")),
            str(d.get("best_family", "-")), str(len(d.get("models", []))),
            _num(d.get("leaderboard_seconds")), _num(r.get("predict_seconds")),
            _num(r.get("prepare_seconds"))])
    if platform_rows:
        out.append(("Platform: wall = train call to job end; queue = until the worker "
                    "started; search/refit from the job's progress; leaderboard, predict "
                    "(deploy + endpoint) and upload are not in the wall time",
                    ["data set", "budget", "wall", "queue", "search", "refit", "trials",
                     "best", "models", "leaderboard", "predict", "upload"], platform_rows))
    return out


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def _problems(result: dict) -> list[str]:
    lines = []
    for name, why in result["meta"].get("missing", {}).items():
        lines.append(f"{name}: not available: {why}")
    for r in result["runs"]:
        where = f"{r['dataset']} {r['system']}" + (f" @{r['budget']}s" if r["budget"] else "")
        if r["status"] == "error":
            lines.append(f"{where}: {r['error']}")
        for note in r.get("notes") or []:
            lines.append(f"{where}: {note}")
    return lines


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    numeric = [i >= 3 for i in range(len(header))]

    def line(cells):
        return "  ".join((str(c).rjust(w) if n else str(c).ljust(w))
                         for c, w, n in zip(cells, widths, numeric)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def text(result: dict) -> str:
    parts = []
    if result["meta"].get("partial"):
        parts.append("PARTIAL RESULTS (the run did not finish)")
    for title, header, rows in tables(result):
        parts.append(f"\n{title}\n{_text_table(header, rows)}")
    problems = _problems(result)
    if problems:
        parts.append("\nNotes and errors:\n" + "\n".join(f"  - {p}" for p in problems))
    return "\n".join(parts)


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = ["# AutoML benchmark: the platform against FLAML, H2O AutoML and HistGradientBoosting",
             ""]
    if meta.get("partial"):
        lines += ["**Partial results: the run did not finish.**", ""]
    lines += [f"- started {meta.get('started')}, took {meta.get('elapsed_seconds', 0):.0f} s, "
              f"commit {meta.get('commit')}",
              f"- budgets {meta['budgets']} s; systems {', '.join(meta['systems'])}",
              f"- machine: {meta['machine']['cpus']} CPUs, {meta['machine']['platform']}, "
              f"Python {meta['machine']['python']}; load average at start "
              f"{meta['machine'].get('load_average_at_start')}, at end "
              f"{meta.get('load_average_at_end')}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
              f"- split: 75/25, stratified for classification, random_state "
              f"{meta['split']['random_state']}; every system gets the same rows; the "
              "platform gets only the train split (as CSV), predicts the test features "
              "through a deployed endpoint", ""]
    for title, header, rows in tables(result):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        lines.append("")
    if result.get("datasets"):
        lines += ["## Data sets", "", "| name | task | rows | train | test | features | "
                  "categorical | missing cells | classes | minority | description |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for d in result["datasets"]:
            lines.append(f"| {d['name']} | {d['task']} | {d['rows']} | {d['train_rows']} | "
                         f"{d['test_rows']} | {d['features']} | {d['categorical_features']} | "
                         f"{d['missing_cells']} | {d.get('classes', '')} | "
                         f"{d.get('minority_share', '')} | {d['description']} |")
        lines.append("")
    problems = _problems(result)
    if problems:
        lines += ["## Notes and errors", ""] + [f"- {p}" for p in problems] + [""]
    lines += ["![ratios](results.png)", ""]
    return "\n".join(lines)


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = result["meta"]["budgets"]
    datasets = [d for d, _ in _datasets(result)]
    peers = [p for p in PEERS if any(r["peer"] == p for r in result["ratios"])]
    fig, axes = plt.subplots(len(budgets), 1, figsize=(max(6, 1.1 * len(datasets) + 2),
                                                      3.2 * len(budgets)), squeeze=False)
    width = 0.8 / max(1, len(peers))
    values = [r["ratio"] for r in result["ratios"]] or [1.0]
    low, high = min(min(values), 0.95) / 1.05, max(max(values), 1.05) * 1.1
    ticks = [t for t in (0.25, 0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2, 4, 8, 16, 32, 64)
             if low <= t <= high]
    for ax, budget in zip(axes[:, 0], budgets):
        for k, peer in enumerate(peers):
            xs, ys = [], []
            for i, d in enumerate(datasets):
                for r in result["ratios"]:
                    if (r["dataset"], r["budget"], r["peer"]) == (d, budget, peer):
                        xs.append(i + (k - (len(peers) - 1) / 2) * width)
                        ys.append(r["ratio"])
            # bars grow from 1 (up: the platform is better, down: the peer is)
            ax.bar(xs, [y - 1 for y in ys], width=width, label=f"vs {peer}", bottom=1)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.2f}", (x, y), ha="center", fontsize=6,
                            va="bottom" if y >= 1 else "top")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        ax.set_yticks(ticks)
        ax.set_yticks([], minor=True)
        ax.set_yticklabels([f"{t:g}" for t in ticks])
        ax.set_xticks(range(len(datasets)))
        ax.set_xticklabels(datasets, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("ratio (>1: platform better)", fontsize=8)
        ax.set_title(f"budget {budget} s (binary ROC-AUC, multiclass log loss, regression RMSE)",
                     fontsize=9)
        if peers:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
