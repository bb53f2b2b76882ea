"""JSON documents and human tables for the CLI. The dict shapes here are the CLI's
``--json`` contract: change them only compatibly (add keys, never rename)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from nbml.client import (
    column_type_to_str,
    dataset_format_to_str,
    job_state_to_str,
    resource_id,
    task_to_str,
)


# ------------------------------------------------------------------ scalars
def ts(message: Any, field: str) -> str | None:
    """A Timestamp field as RFC 3339 text, or None when unset."""
    if not message.HasField(field):
        return None
    return getattr(message, field).ToJsonString()


def num(value: float | None) -> float | None:
    """A float fit for JSON (NaN and infinities become null)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def clean(obj: Any) -> Any:
    """Recursively replaces non-finite floats with None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def fmt_score(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def fmt_holdout(fraction: float | None) -> str:
    if fraction is None:
        return "-"
    if fraction == 0:
        return "none (trained on every row)"
    return f"{fraction * 100:g}% of the rows"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain left-aligned text table (no trailing spaces)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(widths[i]) for i, v in enumerate(values)).rstrip()

    return "\n".join([line(list(headers))] + [line(r) for r in cells])


# ------------------------------------------------------------------ documents
def user_doc(user: Any, server: str) -> dict[str, Any]:
    return {"user": user.username, "user_id": resource_id(user.name), "server": server,
            "create_time": ts(user, "create_time")}


def suggestion_doc(s: Any) -> dict[str, Any]:
    return {"column": s.column, "task": task_to_str(s.task), "reason": s.reason}


def dataset_doc(ds: Any, *, profile: bool = False) -> dict[str, Any]:
    doc = {
        "id": resource_id(ds.name),
        "name": ds.display_name,
        "rows": ds.row_count,
        "columns": ds.column_count,
        "format": dataset_format_to_str(ds.format),
        "size_bytes": ds.size_bytes,
        "create_time": ts(ds, "create_time"),
        "source_endpoint": resource_id(ds.source_endpoint) or None,
        "target_suggestions": [suggestion_doc(s) for s in ds.profile.target_suggestions],
    }
    if profile:
        doc["profile"] = {
            "row_count": ds.profile.row_count,
            "columns": [column_doc(c) for c in ds.profile.columns],
        }
    return doc


def column_doc(c: Any) -> dict[str, Any]:
    stats = None
    if c.HasField("numeric_stats"):
        n = c.numeric_stats
        stats = {"min": num(n.min), "max": num(n.max), "mean": num(n.mean), "std": num(n.std),
                 "median": num(n.median)}
    return {
        "name": c.name,
        "type": column_type_to_str(c.type),
        "missing_rate": num(c.missing_rate),
        "distinct_count": c.distinct_count,
        "numeric_stats": stats,
        "top_values": [{"value": v.value, "count": v.count} for v in c.top_values],
    }


def job_doc(job: Any) -> dict[str, Any]:
    p = job.progress
    return {
        "id": resource_id(job.name),
        "state": job_state_to_str(job.state),
        "dataset": resource_id(job.dataset),
        "target": job.target_column,
        "task": task_to_str(job.resolved_task) or task_to_str(job.task),
        "metric": job.resolved_metric or job.metric or None,
        "budget_seconds": job.budget_seconds,
        # None from a server that predates the option.
        "holdout_fraction": (num(job.holdout_fraction) if job.HasField("holdout_fraction")
                             else None),
        "families": list(job.families),  # [] = every family
        "max_trials": job.max_trials or None,
        "initial_params": dict(job.initial_params),
        "progress": {
            "trials_completed": p.trials_completed,
            "best_score": num(p.best_score) if p.trials_completed else None,
            "elapsed_seconds": num(p.elapsed_seconds),
            "stage": p.stage or None,
        },
        "best_model": resource_id(job.best_model) or None,
        "error": job.error or None,
        "create_time": ts(job, "create_time"),
        "update_time": ts(job, "update_time"),
    }


def trial_doc(t: Any) -> dict[str, Any]:
    return {
        "number": t.number,
        "family": t.family,
        "cv_score": None if t.error else num(t.cv_score),
        "cv_score_std": None if t.error else num(t.cv_score_std),
        "fit_seconds": num(t.fit_seconds),
        "params": dict(sorted(t.params.items())),
        "error": t.error or None,
    }


def leaderboard_doc(board: Any, job_id: str) -> dict[str, Any]:
    return {
        "job": resource_id(board.name) or resource_id(job_id),
        "metric": board.metric or None,
        "best_model": resource_id(board.best_model) or None,
        "models": [
            {
                "rank": e.rank,
                "id": resource_id(e.model.name),
                "family": e.model.family,
                "cv_score": num(e.model.cv_score),
                "params": dict(sorted(e.model.params.items())),
                "holdout_metrics": {k: num(v) for k, v in sorted(e.evaluation.metrics.items())},
                "best": bool(e.model.best or (board.best_model
                                              and e.model.name == board.best_model)),
                "ranking_note": e.model.ranking_note or None,
            }
            for e in board.entries
        ],
        "trials": [trial_doc(t) for t in board.trials],
    }


def model_doc(m: Any) -> dict[str, Any]:
    return {
        "id": resource_id(m.name),
        "job": resource_id(m.training_job),
        "family": m.family,
        "params": dict(sorted(m.params.items())),
        "task": task_to_str(m.task),
        "metric": m.metric or None,
        "cv_score": num(m.cv_score),
        "feature_columns": list(m.feature_columns),
        "target": m.target_column,
        "classes": list(m.classes),
        "best": m.best,
        "ranking_note": m.ranking_note or None,
        "create_time": ts(m, "create_time"),
    }


def evaluation_doc(ev: Any) -> dict[str, Any]:
    cm = None
    if ev.HasField("confusion_matrix") and ev.confusion_matrix.labels:
        cm = {"labels": list(ev.confusion_matrix.labels),
              "counts": list(ev.confusion_matrix.counts)}
    return {
        "metrics": {k: num(v) for k, v in sorted(ev.metrics.items())},
        "confusion_matrix": cm,
        "feature_importances": [
            {"column": f.column, "importance": num(f.importance),
             "importance_std": num(f.importance_std)}
            for f in ev.feature_importances
        ],
        "holdout_rows": ev.holdout_rows,
    }


def endpoint_doc(ep: Any) -> dict[str, Any]:
    return {
        "id": resource_id(ep.name),
        "model": resource_id(ep.model),
        "name": ep.display_name or None,
        "feature_columns": list(ep.feature_columns),
        "create_time": ts(ep, "create_time"),
        "update_time": ts(ep, "update_time"),
    }


def api_key_doc(key: Any) -> dict[str, Any]:
    return {"id": resource_id(key.name), "name": key.display_name or None,
            "create_time": ts(key, "create_time")}


def activity_doc(a: Any) -> dict[str, Any]:
    return {
        "time": ts(a, "time"),
        "method": a.method,
        "resource": a.resource or None,
        "status": a.status,
        "duration_ms": num(a.duration_ms),
        "request_id": a.request_id or None,
    }


# ------------------------------------------------------------------ human views
def leaderboard_text(doc: dict[str, Any]) -> str:
    metrics = sorted({k for m in doc["models"] for k in m["holdout_metrics"]})
    headers = ["RANK", "MODEL", "FAMILY", f"CV {doc['metric'] or 'SCORE'}".upper()]
    headers += [m.upper() for m in metrics] + ["BEST"]
    rows = []
    for m in doc["models"]:
        rows.append([m["rank"], m["id"], m["family"], fmt_score(m["cv_score"])]
                    + [fmt_score(m["holdout_metrics"].get(k)) for k in metrics]
                    + ["*" if m["best"] else ""])
    failed = sum(1 for t in doc["trials"] if t["error"])
    lines = [f"job {doc['job']}  metric {doc['metric'] or '-'}  "
             f"best model {doc['best_model'] or '-'}  "
             f"trials {len(doc['trials'])}" + (f" ({failed} failed)" if failed else "")]
    lines.append(table(headers, rows) if rows else "(no models)")
    lines += [f"rank {m['rank']} ({m['family']}): {m['ranking_note']}"
              for m in doc["models"] if m.get("ranking_note")]
    if rows and not metrics:
        lines.append("no holdout metrics (the job kept no holdout rows): "
                     "the scores are cross-validated")
    return "\n".join(lines)


def dataset_text(doc: dict[str, Any]) -> str:
    lines = [
        f"id:       {doc['id']}",
        f"name:     {doc['name']}",
        f"format:   {doc['format'] or '-'}",
        f"rows:     {doc['rows']}",
        f"columns:  {doc['columns']}",
        f"size:     {fmt_bytes(doc['size_bytes'])}",
        f"created:  {doc['create_time'] or '-'}",
    ]
    if doc.get("source_endpoint"):
        lines.append(f"source:   predictions of endpoint {doc['source_endpoint']}")
    profile = doc.get("profile")
    if profile and profile["columns"]:
        rows = []
        for c in profile["columns"]:
            stats = c["numeric_stats"]
            if stats:
                summary = (f"min {fmt_score(stats['min'], 3)}  max {fmt_score(stats['max'], 3)}"
                           f"  mean {fmt_score(stats['mean'], 3)}")
            else:
                summary = ", ".join(f"{v['value']} ({v['count']})" for v in c["top_values"][:5])
            rows.append([c["name"], c["type"] or "-", f"{(c['missing_rate'] or 0) * 100:.1f}%",
                         c["distinct_count"], summary])
        lines += ["", table(["COLUMN", "TYPE", "MISSING", "DISTINCT", "SUMMARY"], rows)]
    if doc["target_suggestions"]:
        lines += ["", "target suggestions:"]
        lines += [f"  {s['column']} ({s['task'] or 'auto'}): {s['reason']}"
                  for s in doc["target_suggestions"]]
    return "\n".join(lines)


def job_text(doc: dict[str, Any]) -> str:
    p = doc["progress"]
    lines = [
        f"id:          {doc['id']}",
        f"state:       {doc['state']}",
        f"dataset:     {doc['dataset']}",
        f"target:      {doc['target']}",
        f"task:        {doc['task'] or '-'}",
        f"metric:      {doc['metric'] or '-'}",
        f"budget:      {doc['budget_seconds']}s",
        f"holdout:     {fmt_holdout(doc.get('holdout_fraction'))}",
        f"families:    {', '.join(doc.get('families') or []) or 'all'}"
        + (f", at most {doc['max_trials']} trials" if doc.get("max_trials") else ""),
        *[f"start from:  {k}={v}" for k, v in sorted((doc.get("initial_params") or {}).items())],
        f"progress:    {p['trials_completed']} trials, best {fmt_score(p['best_score'])}, "
        f"{fmt_score(p['elapsed_seconds'], 0)}s" + (f", {p['stage']}" if p["stage"] else ""),
        f"best model:  {doc['best_model'] or '-'}",
        f"created:     {doc['create_time'] or '-'}",
    ]
    if doc["error"]:
        lines.append(f"error:       {doc['error']}")
    return "\n".join(lines)


def progress_line(doc: dict[str, Any]) -> str:
    p = doc["progress"]
    parts = [doc["id"], f"{doc['state'] or '?':<9}", f"trials {p['trials_completed']}",
             f"best {fmt_score(p['best_score'])}"]
    if p["stage"]:
        parts.append(p["stage"])
    if p["elapsed_seconds"]:
        parts.append(f"{p['elapsed_seconds']:.0f}s")
    return "  ".join(parts)
