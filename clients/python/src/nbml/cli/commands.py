"""The CLI verbs. Each takes the parsed arguments and an Output and returns an exit
code; failures raise NbmlError (turned into ``error: ...`` / ``{"error": ...}`` and
exit 1 by main)."""

from __future__ import annotations

import getpass
import sys
from argparse import Namespace
from pathlib import Path

import pandas as pd

from nbml import credentials
from nbml.cli import render
from nbml.cli.main import Output
from nbml.client import Client, resource_id
from nbml.errors import NbmlError
from nbml.v1 import trainer_service_pb2

_FAILED = trainer_service_pb2.JobState.JOB_STATE_FAILED
_CANCELLED = trainer_service_pb2.JobState.JOB_STATE_CANCELLED


def make_client(args: Namespace, *, authenticated: bool = True) -> Client:
    """A client for --server with the token from NBML_TOKEN or the credentials file;
    tokens the client refreshes are written back to the file."""
    if not authenticated:
        return Client(args.server)
    resolved = credentials.resolve(args.server)
    on_tokens = None
    if resolved.source == "file":
        server = args.server

        def on_tokens(access: str, refresh: str) -> None:
            credentials.update_tokens(server, access, refresh)

    client = Client(args.server, resolved.token, refresh_token=resolved.refresh_token,
                    on_tokens=on_tokens)
    client.username = resolved.username
    return client


# ------------------------------------------------------------------ accounts
def _read_password(args: Namespace, confirm: bool) -> str:
    if args.password_stdin:
        password = sys.stdin.read()
        # strip the trailing newline only: spaces may be part of the password
        while password.endswith(("\n", "\r")):
            password = password[:-1]
        return password
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise NbmlError("INVALID_ARGUMENT", "the passwords do not match", "PASSWORD_MISMATCH")
    return password


def _account(args: Namespace, out: Output, *, signup: bool) -> int:
    password = _read_password(args, confirm=signup)
    with make_client(args, authenticated=False) as client:
        if signup:
            session = client.sign_up(args.username, password)
        else:
            session = client.log_in(args.username, password)
    credentials.save(args.server, credentials.StoredCredentials(
        username=session.username or args.username,
        access_token=session.access_token, refresh_token=session.refresh_token))
    doc = {"user": session.username or args.username, "user_id": session.user_id,
           "server": args.server}
    verb = "Signed up" if signup else "Logged in"
    out.emit(doc, f"{verb} as {doc['user']} ({doc['user_id']}) on {args.server}")
    return 0


def signup(args: Namespace, out: Output) -> int:
    return _account(args, out, signup=True)


def login(args: Namespace, out: Output) -> int:
    return _account(args, out, signup=False)


def logout(args: Namespace, out: Output) -> int:
    removed = credentials.delete(args.server)
    out.emit({"server": args.server, "logged_out": removed},
             f"Logged out of {args.server}" if removed else f"Not logged in to {args.server}")
    return 0


def whoami(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        user = client.whoami()
    doc = render.user_doc(user, args.server)
    out.emit(doc, f"{doc['user']} ({doc['user_id']}) on {args.server}")
    return 0


def apikey_create(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        resp = client.create_api_key_full(args.name)
    doc = render.api_key_doc(resp.api_key)
    doc["secret"] = resp.secret
    out.emit(doc, resp.secret)
    if not out.json:
        out.note(f"API key {doc['id']} created; the secret is shown only once. "
                 "Use it as NBML_TOKEN.")
    return 0


def apikey_list(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        keys = [render.api_key_doc(k) for k in client.api_keys()]
    out.emit({"api_keys": keys}, render.table(
        ["ID", "NAME", "CREATED"], [[k["id"], k["name"], k["create_time"]] for k in keys]))
    return 0


def apikey_delete(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        client.delete_api_key(args.key_id)
    key_id = resource_id(args.key_id)
    out.emit({"id": key_id, "deleted": True}, f"Deleted API key {key_id}")
    return 0


def activity(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        items = [render.activity_doc(a) for a in client.activities(args.limit)]
    rows = [[a["time"], a["status"], a["method"], a["resource"],
             render.fmt_score(a["duration_ms"], 1)] for a in items]
    out.emit({"activities": items},
             render.table(["TIME", "STATUS", "METHOD", "RESOURCE", "MS"], rows))
    return 0


# ------------------------------------------------------------------ data sets
def datasets_upload(args: Namespace, out: Output) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise NbmlError("INVALID_ARGUMENT", f"no such file: {path}", "FILE_NOT_FOUND")
    rules = Path(args.rules) if args.rules else None
    with make_client(args) as client:
        ds = client.upload_dataset(path, name=args.name, rules=rules)
    doc = render.dataset_doc(ds)
    out.emit(doc, doc["id"])
    if not out.json:
        note = f"uploaded {doc['name']}: {doc['rows']} rows, {doc['columns']} columns"
        if doc["target_suggestions"]:
            note += "; target suggestions: " + ", ".join(
                f"{s['column']} ({s['task'] or 'auto'})" for s in doc["target_suggestions"])
        out.note(note)
    return 0


def datasets_list(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        docs = [render.dataset_doc(d) for d in client.datasets()]
    rows = [[d["id"], d["name"], d["rows"], d["columns"], d["format"],
             render.fmt_bytes(d["size_bytes"]), d["create_time"]] for d in docs]
    out.emit({"datasets": docs}, render.table(
        ["ID", "NAME", "ROWS", "COLUMNS", "FORMAT", "SIZE", "CREATED"], rows))
    return 0


def datasets_get(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        doc = render.dataset_doc(client.get_dataset(args.dataset_id), profile=True)
    out.emit(doc, render.dataset_text(doc))
    return 0


def datasets_preview(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        resp = client.preview_response(args.dataset_id, args.rows)
    columns = list(resp.columns)
    rows = [list(r.cells) for r in resp.rows]
    ds_id = resource_id(args.dataset_id)
    out.emit({"id": ds_id, "columns": columns, "rows": rows},
             render.table(columns, rows) if columns else "(empty)")
    return 0


def datasets_delete(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        client.delete_dataset(args.dataset_id)
    ds_id = resource_id(args.dataset_id)
    out.emit({"id": ds_id, "deleted": True}, f"Deleted data set {ds_id}")
    return 0


def models_download(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        data = client.download_model_bytes(args.model_id)
    Path(args.output).write_bytes(data)
    out.emit({"id": resource_id(args.model_id), "output": args.output, "bytes": len(data)},
             f"Wrote {len(data)} bytes to {args.output}")
    return 0


def datasets_download(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        data = client.download_dataset_bytes(args.dataset_id)
    ds_id = resource_id(args.dataset_id)
    if args.output:
        Path(args.output).write_bytes(data)
        out.emit({"id": ds_id, "output": args.output, "bytes": len(data)},
                 f"Wrote {len(data)} bytes to {args.output}")
    elif out.json:
        out.emit({"id": ds_id, "output": None, "bytes": len(data),
                  "csv": data.decode("utf-8", errors="replace")})
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


# ------------------------------------------------------------------ training
def _wait(client: Client, job_name: str, out: Output) -> trainer_service_pb2.TrainingJob:
    last_key = None

    def on_update(job: trainer_service_pb2.TrainingJob) -> None:
        nonlocal last_key
        doc = render.job_doc(job)
        p = doc["progress"]
        key = (doc["state"], p["trials_completed"], p["best_score"], p["stage"])
        if key != last_key:
            last_key = key
            out.progress(render.progress_line(doc))

    try:
        return client.wait_for_job(job_name, on_update=on_update)
    except KeyboardInterrupt:
        out.note(f"stopped waiting; the job keeps running "
                 f"(`nbml jobs cancel {resource_id(job_name)}` stops it)")
        raise


def _finish(client: Client, job: trainer_service_pb2.TrainingJob, out: Output) -> int:
    """After waiting: the job and its leaderboard; exit 1 when the job failed."""
    job_doc = render.job_doc(job)
    if job.state == _FAILED:
        out.emit({"job": job_doc, "leaderboard": None})
        if not out.json:
            out.note(f"error: training job {job_doc['id']} failed: "
                     f"{job_doc['error'] or 'no reason given'}")
        return 1
    board_doc = None
    try:
        board_doc = render.leaderboard_doc(client.leaderboard(job.name), job.name)
    except NbmlError:
        if job.state != _CANCELLED:
            raise
    out.emit({"job": job_doc, "leaderboard": board_doc},
             render.leaderboard_text(board_doc) if board_doc else "(no models)")
    if job.state == _CANCELLED and not out.json:
        out.note(f"job {job_doc['id']} was cancelled")
    return 0


def train(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        job = client.train(args.dataset_id, args.target, task=args.task, metric=args.metric,
                           budget_seconds=args.budget, holdout_fraction=args.holdout_fraction,
                           families=args.families or (), max_trials=args.max_trials,
                           initial_params=dict(args.initial_params or ()))
        job_id = resource_id(job.name)
        if not args.wait:
            out.emit(render.job_doc(job), job_id)
            return 0
        out.line(job_id)
        final = _wait(client, job.name, out)
        return _finish(client, final, out)


def jobs_get(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        doc = render.job_doc(client.get_job(args.job_id))
    out.emit(doc, render.job_text(doc))
    return 0


def jobs_list(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        docs = [render.job_doc(j) for j in client.jobs()]
    rows = [[j["id"], j["state"], j["dataset"], j["target"], j["task"], j["metric"],
             j["progress"]["trials_completed"], render.fmt_score(j["progress"]["best_score"]),
             j["best_model"], j["create_time"]] for j in docs]
    out.emit({"jobs": docs}, render.table(
        ["ID", "STATE", "DATASET", "TARGET", "TASK", "METRIC", "TRIALS", "BEST",
         "BEST MODEL", "CREATED"], rows))
    return 0


def jobs_cancel(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        doc = render.job_doc(client.cancel_job(args.job_id))
    out.emit(doc, f"{doc['id']} {doc['state']}")
    return 0


def jobs_wait(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        final = _wait(client, client.get_job(args.job_id).name, out)
        return _finish(client, final, out)


def leaderboard(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        doc = render.leaderboard_doc(client.leaderboard(args.job_id), args.job_id)
    out.emit(doc, render.leaderboard_text(doc))
    return 0


# ------------------------------------------------------------------ models
def models_list(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        docs = [render.model_doc(m) for m in client.models(args.job)]
    rows = [[m["id"], m["job"], m["family"], m["metric"], render.fmt_score(m["cv_score"]),
             "*" if m["best"] else ""] for m in docs]
    out.emit({"models": docs},
             render.table(["ID", "JOB", "FAMILY", "METRIC", "CV SCORE", "BEST"], rows))
    return 0


def models_get(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        doc = render.model_doc(client.get_model(args.model_id))
        doc["evaluation"] = render.evaluation_doc(client.evaluation(args.model_id))
    ev = doc["evaluation"]
    lines = [f"id:        {doc['id']}", f"job:       {doc['job']}",
             f"family:    {doc['family']}", f"task:      {doc['task'] or '-'}",
             f"target:    {doc['target']}", f"features:  {', '.join(doc['feature_columns'])}",
             f"cv {doc['metric'] or 'score'}: {render.fmt_score(doc['cv_score'])}",
             *([f"ranking:   {doc['ranking_note']}"] if doc["ranking_note"] else []),
             f"params:    {', '.join(f'{k}={v}' for k, v in doc['params'].items()) or '-'}",
             f"holdout ({ev['holdout_rows']} rows): " + ", ".join(
                 f"{k} {render.fmt_score(v)}" for k, v in ev["metrics"].items())]
    if ev["feature_importances"]:
        lines += ["", render.table(["FEATURE", "IMPORTANCE", "STD"], [
            [f["column"], render.fmt_score(f["importance"]), render.fmt_score(f["importance_std"])]
            for f in ev["feature_importances"]])]
    out.emit(doc, "\n".join(lines))
    return 0


# ------------------------------------------------------------------ endpoints
def deploy(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        doc = render.endpoint_doc(client.deploy(args.model_id, args.name))
    out.emit(doc, doc["id"])
    return 0


def endpoints_list(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        docs = [render.endpoint_doc(e) for e in client.endpoints()]
    rows = [[e["id"], e["model"], e["name"], e["create_time"]] for e in docs]
    out.emit({"endpoints": docs}, render.table(["ID", "MODEL", "NAME", "CREATED"], rows))
    return 0


def endpoints_get(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        doc = render.endpoint_doc(client.get_endpoint(args.endpoint_id))
    out.emit(doc, "\n".join([f"id:       {doc['id']}", f"model:    {doc['model']}",
                             f"name:     {doc['name'] or '-'}",
                             f"features: {', '.join(doc['feature_columns'])}",
                             f"created:  {doc['create_time'] or '-'}"]))
    return 0


def endpoints_update(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        doc = render.endpoint_doc(client.update_endpoint(
            args.endpoint_id, model_id=args.model, display_name=args.name))
    out.emit(doc, f"Endpoint {doc['id']} serves model {doc['model']}")
    return 0


def endpoints_delete(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        client.delete_endpoint(args.endpoint_id)
    ep_id = resource_id(args.endpoint_id)
    out.emit({"id": ep_id, "deleted": True}, f"Deleted endpoint {ep_id}")
    return 0


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise NbmlError("INVALID_ARGUMENT", f"no such file: {path}", "FILE_NOT_FOUND")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise NbmlError("INVALID_ARGUMENT", f"{path} is empty", "EMPTY_FILE") from None
    except (ValueError, ImportError, pd.errors.ParserError) as e:
        raise NbmlError("INVALID_ARGUMENT", f"cannot read {path}: {e}", "UNREADABLE_FILE") from None


def predict(args: Namespace, out: Output) -> int:
    frame = _read_table(Path(args.input))
    with make_client(args) as client:
        preds = client.predict(args.endpoint_id, frame)
        model = client.last_model or client.get_endpoint(args.endpoint_id).model
    result = frame.copy()
    for column in preds.columns:
        result[column] = preds[column].to_numpy()
    ep_id = resource_id(args.endpoint_id)
    doc = {"endpoint": ep_id, "model": resource_id(model) or None, "rows": len(result),
           "output": args.output or None}
    if args.output:
        result.to_csv(args.output, index=False)
        out.emit(doc, f"Wrote {len(result)} predictions to {args.output}")
    elif out.json:
        doc["predictions"] = [
            {k: _json_cell(v) for k, v in row.items()}
            for row in preds.to_dict(orient="records")
        ]
        out.emit(doc)
    else:
        result.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
    return 0


def _json_cell(value: object) -> object:
    from nbml.client import to_python_value

    return to_python_value(value)


def batch_predict(args: Namespace, out: Output) -> int:
    with make_client(args) as client:
        resp = client.batch_predict_response(args.endpoint_id, args.dataset_id)
    ds = resp.output_dataset
    ep_id = resource_id(args.endpoint_id)
    in_id = resource_id(args.dataset_id)
    doc = {"id": resource_id(ds.name), "name": ds.display_name, "rows": resp.row_count,
           "endpoint": ep_id, "dataset": in_id}
    out.emit(doc, doc["id"])
    return 0
