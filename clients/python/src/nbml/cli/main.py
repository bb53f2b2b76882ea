"""``nbml``: the No Brains ML command line.

Global options ``--server`` (env ``NBML_SERVER``, default ``localhost:8080``) and
``--json`` are accepted before or after the verb. With ``--json`` every verb prints
exactly one JSON document on stdout (errors too: ``{"error": {...}}``).

Exit codes: 0 success, 1 failure (an error from the server, a failed training job,
an unreadable file), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

DEFAULT_SERVER = "localhost:8080"
SERVER_ENV = "NBML_SERVER"


# ------------------------------------------------------------------ parsing
def _global_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS defaults: an option given before the verb is not reset by the
    # sub-parser, and one given after it overrides.
    parser.add_argument("--server", default=argparse.SUPPRESS, metavar="HOST:PORT",
                        help=f"server address (env {SERVER_ENV}, default {DEFAULT_SERVER})")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print exactly one JSON document on stdout")


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    _global_options(parent)
    return parent


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return value


def _name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return names


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected FAMILY.PARAM=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="nbml", description="No Brains ML: upload data, train models, deploy, predict.")
    _global_options(parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(sub: Any, name: str, handler: str, help_text: str, **kw: Any
             ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text, **kw)
        p.set_defaults(handler=handler)
        return p

    def group(name: str, help_text: str) -> Any:
        p = verbs.add_parser(name, parents=[common], help=help_text, description=help_text)
        return p.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = verb(verbs, "up", "up", "run the whole platform locally (needs nbml-platform)")
    p.add_argument("--port", type=_port, default=8080, help="HTTP/gRPC port (default 8080)")
    p.add_argument("--stack", choices=("embedded", "local-cluster"), default="embedded",
                   help="embedded backends (default), or Kafka + Cassandra + a GCS emulator "
                        "that the platform installs and starts itself")
    p.add_argument("--predictor-replicas", type=_positive_int, default=None, metavar="N",
                   help="predictor processes behind Envoy (default $NBML_PREDICTOR_REPLICAS "
                        "or 1)")

    for name, text in (("signup", "create an account and log in"),
                       ("login", "log in and store the tokens")):
        p = verb(verbs, name, name, text)
        p.add_argument("username", metavar="USER")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from stdin instead of prompting")

    verb(verbs, "logout", "logout", "forget the stored tokens for the server")
    verb(verbs, "whoami", "whoami", "show the logged-in user")

    keys = group("apikey", "API keys for scripts")
    p = verb(keys, "create", "apikey_create", "create an API key and print its secret")
    p.add_argument("--name", default="", help="a label for the key")
    verb(keys, "list", "apikey_list", "list API keys")
    p = verb(keys, "delete", "apikey_delete", "revoke an API key")
    p.add_argument("key_id", metavar="KEY_ID")

    p = verb(verbs, "activity", "activity", "your recent requests, newest first")
    p.add_argument("--limit", type=_positive_int, default=20, help="entries to show (default 20)")

    ds = group("datasets", "upload and inspect data sets")
    p = verb(ds, "upload", "datasets_upload", "upload a CSV or Parquet file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", help="display name (default: the file name)")
    p.add_argument("--rules", metavar="RULES.json", help="validation rules (JSON file)")
    verb(ds, "list", "datasets_list", "list data sets")
    p = verb(ds, "get", "datasets_get", "show a data set and its profile")
    p.add_argument("dataset_id", metavar="ID")
    p = verb(ds, "preview", "datasets_preview", "show the first rows")
    p.add_argument("dataset_id", metavar="ID")
    p.add_argument("--rows", type=_positive_int, default=20, help="rows to show (default 20)")
    p = verb(ds, "delete", "datasets_delete", "delete a data set")
    p.add_argument("dataset_id", metavar="ID")
    p = verb(ds, "download", "datasets_download", "download a data set as CSV")
    p.add_argument("dataset_id", metavar="ID")
    p.add_argument("--output", "-o", metavar="FILE.csv", help="write here instead of stdout")

    p = verb(verbs, "train", "train", "start a training job (AutoML search)")
    p.add_argument("dataset_id", metavar="DATASET_ID")
    p.add_argument("--target", required=True, metavar="COLUMN", help="column to predict")
    p.add_argument("--task", choices=["auto", "classification", "regression"], default="auto")
    p.add_argument("--metric", default=None, metavar="NAME",
                   help="roc_auc, log_loss, accuracy, f1, rmse, mae or r2 (default: by task)")
    p.add_argument("--budget", type=_positive_int, default=60, metavar="SECONDS",
                   help="search time budget in seconds (default 60)")
    # The server checks the range (it owns the limits).
    p.add_argument("--holdout-fraction", type=_finite_float, default=None, metavar="F",
                   help="share of the rows kept out of training to measure the models on, "
                        "0 to 0.5 (default 0.2); 0 trains on every row and the leaderboard "
                        "shows cross-validated scores only")
    p.add_argument("--families", type=_name_list, default=None, metavar="A,B",
                   help="model families to search, comma-separated, e.g. "
                        "logistic_regression,random_forest (default: all that suit the data)")
    p.add_argument("--max-trials", type=int, default=0, metavar="N",
                   help="stop after N trials (default 0: when the budget is spent)")
    p.add_argument("--initial-param", dest="initial_params", action="append", default=None,
                   type=_key_value, metavar="FAMILY.PARAM=VALUE",
                   help="start FAMILY from its default with PARAM=VALUE (repeatable), "
                        "e.g. random_forest.n_estimators=300")
    p.add_argument("--wait", action="store_true",
                   help="wait for the job, show progress, then the leaderboard")

    jobs = group("jobs", "training jobs")
    p = verb(jobs, "get", "jobs_get", "show a training job")
    p.add_argument("job_id", metavar="JOB_ID")
    verb(jobs, "list", "jobs_list", "list training jobs")
    p = verb(jobs, "cancel", "jobs_cancel",
             "stop a training job (its best finished trial becomes its model)")
    p.add_argument("job_id", metavar="JOB_ID")
    p = verb(jobs, "wait", "jobs_wait", "wait for a training job to end")
    p.add_argument("job_id", metavar="JOB_ID")

    p = verb(verbs, "leaderboard", "leaderboard", "a job's models, best first")
    p.add_argument("job_id", metavar="JOB_ID")

    models = group("models", "trained models")
    p = verb(models, "list", "models_list", "list models")
    p.add_argument("--job", metavar="JOB_ID", help="only the models of this job")
    p = verb(models, "get", "models_get", "show a model and its holdout evaluation")
    p.add_argument("model_id", metavar="MODEL_ID")
    p = verb(models, "download", "models_download",
             "download a fitted model as a skops file (a scikit-learn pipeline)")
    p.add_argument("model_id", metavar="MODEL_ID")
    p.add_argument("--output", "-o", required=True, metavar="FILE.skops")

    p = verb(verbs, "deploy", "deploy", "deploy a model to a new endpoint")
    p.add_argument("model_id", metavar="MODEL_ID")
    p.add_argument("--name", default=None, help="display name for the endpoint")

    eps = group("endpoints", "deployed models")
    verb(eps, "list", "endpoints_list", "list endpoints")
    p = verb(eps, "get", "endpoints_get", "show an endpoint")
    p.add_argument("endpoint_id", metavar="ID")
    p = verb(eps, "update", "endpoints_update",
             "redeploy an endpoint: serve another model (no request fails) and/or rename it")
    p.add_argument("endpoint_id", metavar="ID")
    p.add_argument("--model", default=None, metavar="MODEL_ID", help="the model to serve")
    p.add_argument("--name", default=None, help="new display name")
    p = verb(eps, "delete", "endpoints_delete", "delete an endpoint")
    p.add_argument("endpoint_id", metavar="ID")

    p = verb(verbs, "predict", "predict", "predict the rows of a CSV file")
    p.add_argument("endpoint_id", metavar="ENDPOINT_ID")
    p.add_argument("--input", "-i", required=True, metavar="FILE.csv")
    p.add_argument("--output", "-o", metavar="FILE.csv",
                   help="write input columns + predictions here (default: CSV on stdout)")

    p = verb(verbs, "batch-predict", "batch_predict",
             "predict a stored data set into a new data set")
    p.add_argument("endpoint_id", metavar="ENDPOINT_ID")
    p.add_argument("dataset_id", metavar="DATASET_ID")
    return parser


def parse_args(argv: Sequence[str] | None = None,
               environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Parses the command line; fills ``server`` (flag, else $NBML_SERVER, else
    localhost:8080) and ``json`` (bool). Usage errors raise SystemExit(2)."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    args.json = bool(getattr(args, "json", False))
    server = getattr(args, "server", None) or env.get(SERVER_ENV) or DEFAULT_SERVER
    args.server = server.strip()
    return args


# ------------------------------------------------------------------ output
class Output:
    """Where a verb's results go. In JSON mode exactly one document reaches stdout."""

    def __init__(self, json_mode: bool, stdout: TextIO | None = None,
                 stderr: TextIO | None = None):
        self.json = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.emitted = False

    def emit(self, doc: Any, text: str | None = None) -> None:
        """The verb's result: ``doc`` in JSON mode, else ``text`` (if any)."""
        if self.json:
            if self.emitted:
                raise RuntimeError("a verb may print only one JSON document")
            from nbml.cli.render import clean

            indent = 2 if self.stdout.isatty() else None
            self.stdout.write(json.dumps(clean(doc), indent=indent, ensure_ascii=False,
                                         allow_nan=False) + "\n")
            self.emitted = True
        elif text is not None:
            self.stdout.write(text if text.endswith("\n") else text + "\n")
        self.stdout.flush()

    def line(self, text: str) -> None:
        """A human-mode stdout line, flushed at once (nothing in JSON mode)."""
        if not self.json:
            self.stdout.write(text + "\n")
            self.stdout.flush()

    def progress(self, text: str) -> None:
        """Progress for people: stderr, and only in human mode."""
        if not self.json:
            self.stderr.write(text + "\n")
            self.stderr.flush()

    def note(self, text: str) -> None:
        """A remark on stderr, in both modes."""
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def error(self, err: Any) -> None:
        if self.json and not self.emitted:
            self.emit({"error": err.to_dict()})
            return
        self.stderr.write(f"error: {err.message or err.code}\n")
        for v in err.field_violations:
            self.stderr.write(f"  {v.field}: {v.description}\n")
        self.stderr.flush()


def _friendly(err: Any, server: str) -> Any:
    """Adds what to do next to errors people hit often."""
    from nbml.errors import NbmlError

    if err.code == "UNAVAILABLE" and not err.reason:
        detail = f" ({err.message})" if err.message else ""
        return NbmlError(
            "UNAVAILABLE",
            f"cannot reach the nbml server at {server}{detail}. Is it running? "
            f"Start one with `nbml up`, or point --server / {SERVER_ENV} at a running one.",
            "SERVER_UNREACHABLE", err.field_violations, request_id=err.request_id)
    if err.code == "UNAUTHENTICATED" and "nbml login" not in err.message:
        message = (err.message or "not authenticated").rstrip(".")
        return NbmlError(
            err.code, f"{message}. Log in with `nbml login USER` (server {server}) "
            "or set NBML_TOKEN.", err.reason, err.field_violations,
            metadata=err.metadata, request_id=err.request_id)
    return err


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse: usage errors are 2, --help is 0
        return e.code if isinstance(e.code, int) else 2
    out = Output(args.json)
    from nbml.errors import NbmlError

    try:
        if args.handler == "up":  # no client imports for the server launcher
            return _up(args, out)
        from nbml.cli import commands

        return int(getattr(commands, args.handler)(args, out) or 0)
    except NbmlError as e:
        out.error(_friendly(e, args.server))
        return 1
    except BrokenPipeError:  # e.g. `nbml ... | head -1`: the reader went away
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except OSError as e:  # local files: --input, --rules, --output, ...
        name = f": {e.filename}" if e.filename else ""
        out.error(NbmlError("INVALID_ARGUMENT", f"{e.strerror or e}{name}", "LOCAL_FILE_ERROR"))
        return 1
    except KeyboardInterrupt:
        out.note("interrupted")
        return 130


def _up(args: argparse.Namespace, out: Output) -> int:
    try:
        from nbml_server.launcher import serve_forever
    except ImportError as e:
        missing = getattr(e, "name", "") or ""
        detail = "" if missing.startswith("nbml_server") else f" ({e})"
        message = f"nbml up needs the platform: install nbml-platform{detail}"
        out.stderr.write(message + "\n")
        if out.json:
            out.emit({"error": {"code": "FAILED_PRECONDITION", "reason": "PLATFORM_NOT_INSTALLED",
                                "message": message, "field_violations": []}})
        return 2
    result = serve_forever(http_port=args.port, json_output=args.json, stack=args.stack,
                           predictor_replicas=args.predictor_replicas)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
