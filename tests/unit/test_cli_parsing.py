"""The nbml CLI: argument parsing, global options in both places, output contract."""

import io
import json
import sys

import pytest

from nbml.cli import commands
from nbml.cli.main import Output, main, parse_args
from nbml.errors import FieldViolation, NbmlError
from nbml.v1 import dataset_service_pb2

NO_ENV: dict[str, str] = {}


# ------------------------------------------------------------------ global options
@pytest.mark.parametrize("argv", [
    ["--json", "whoami"],
    ["whoami", "--json"],
    ["--json", "datasets", "list"],
    ["datasets", "list", "--json"],
    ["datasets", "--json", "list"],
    ["--json", "train", "ds_1", "--target", "y"],
    ["train", "ds_1", "--json", "--target", "y"],
    ["leaderboard", "job_1", "--json"],
])
def test_json_is_accepted_before_and_after_the_verb(argv):
    assert parse_args(argv, NO_ENV).json is True


@pytest.mark.parametrize("argv", [["whoami"], ["datasets", "list"], ["jobs", "get", "job_1"]])
def test_json_defaults_to_false(argv):
    assert parse_args(argv, NO_ENV).json is False


def test_server_defaults_to_localhost_8080():
    assert parse_args(["whoami"], NO_ENV).server == "localhost:8080"


def test_server_comes_from_env_when_not_given():
    assert parse_args(["whoami"], {"NBML_SERVER": "nbml.example:9000"}).server == "nbml.example:9000"


@pytest.mark.parametrize("argv", [
    ["--server", "a:1", "whoami"],
    ["whoami", "--server", "a:1"],
    ["datasets", "list", "--server", "a:1"],
    ["--server", "a:1", "datasets", "list"],
])
def test_server_flag_works_in_both_places_and_beats_env(argv):
    assert parse_args(argv, {"NBML_SERVER": "env:2"}).server == "a:1"


def test_server_after_the_verb_overrides_the_one_before():
    assert parse_args(["--server", "a:1", "whoami", "--server", "b:2"], NO_ENV).server == "b:2"


def test_empty_env_server_falls_back_to_default():
    assert parse_args(["whoami"], {"NBML_SERVER": ""}).server == "localhost:8080"


# ------------------------------------------------------------------ verbs
def test_train_defaults():
    args = parse_args(["train", "ds_1", "--target", "species"], NO_ENV)
    assert (args.handler, args.dataset_id, args.target) == ("train", "ds_1", "species")
    assert (args.task, args.metric, args.budget, args.wait) == ("auto", None, 60, False)


def test_train_options():
    args = parse_args(["train", "datasets/ds_1", "--target", "price", "--task", "regression",
                       "--metric", "mae", "--budget", "30", "--wait"], NO_ENV)
    assert (args.task, args.metric, args.budget, args.wait) == ("regression", "mae", 30, True)
    assert args.holdout_fraction is None  # unset: the server's default


@pytest.mark.parametrize("text, fraction", [("0", 0.0), ("0.25", 0.25), ("0.5", 0.5),
                                            ("0.9", 0.9)])  # the server checks the range
def test_train_holdout_fraction(text, fraction):
    args = parse_args(["train", "ds_1", "--target", "y", "--holdout-fraction", text], NO_ENV)
    assert args.holdout_fraction == fraction


def test_train_search_options():
    args = parse_args(["train", "ds_1", "--target", "y", "--families", "knn, random_forest",
                       "--max-trials", "3", "--initial-param", "random_forest.n_estimators=300",
                       "--initial-param", "knn.weights = uniform"], NO_ENV)
    assert args.families == ["knn", "random_forest"] and args.max_trials == 3
    assert args.initial_params == [("random_forest.n_estimators", "300"),
                                   ("knn.weights", "uniform")]
    plain = parse_args(["train", "ds_1", "--target", "y"], NO_ENV)
    assert (plain.families, plain.max_trials, plain.initial_params) == (None, 0, None)


@pytest.mark.parametrize("argv, handler", [
    (["up"], "up"),
    (["signup", "ada"], "signup"),
    (["login", "ada", "--password-stdin"], "login"),
    (["whoami"], "whoami"),
    (["apikey", "create", "--name", "ci"], "apikey_create"),
    (["activity", "--limit", "5"], "activity"),
    (["datasets", "upload", "f.csv", "--name", "n", "--rules", "r.json"], "datasets_upload"),
    (["datasets", "list"], "datasets_list"),
    (["datasets", "get", "ds_1"], "datasets_get"),
    (["datasets", "preview", "ds_1", "--rows", "5"], "datasets_preview"),
    (["datasets", "delete", "ds_1"], "datasets_delete"),
    (["jobs", "get", "job_1"], "jobs_get"),
    (["jobs", "list"], "jobs_list"),
    (["jobs", "cancel", "job_1"], "jobs_cancel"),
    (["leaderboard", "job_1"], "leaderboard"),
    (["models", "download", "mdl_1", "-o", "m.skops"], "models_download"),
    (["deploy", "mdl_1"], "deploy"),
    (["endpoints", "list"], "endpoints_list"),
    (["endpoints", "delete", "ep_1"], "endpoints_delete"),
    (["predict", "ep_1", "--input", "in.csv", "--output", "out.csv"], "predict"),
    (["batch-predict", "ep_1", "ds_1"], "batch_predict"),
])
def test_every_verb_parses_to_its_handler(argv, handler):
    args = parse_args(argv, NO_ENV)
    assert args.handler == handler
    assert handler == "up" or hasattr(commands, handler)


def test_verb_arguments():
    assert parse_args(["up"], NO_ENV).port == 8080
    assert parse_args(["up", "--port", "9090"], NO_ENV).port == 9090
    assert parse_args(["up"], NO_ENV).predictor_replicas is None  # the setting decides
    assert parse_args(["up", "--predictor-replicas", "3"], NO_ENV).predictor_replicas == 3
    assert parse_args(["activity"], NO_ENV).limit == 20
    assert parse_args(["datasets", "preview", "ds_1"], NO_ENV).rows == 20
    args = parse_args(["predict", "ep_1", "--input", "in.csv"], NO_ENV)
    assert (args.endpoint_id, args.input, args.output) == ("ep_1", "in.csv", None)
    args = parse_args(["batch-predict", "ep_1", "ds_2"], NO_ENV)
    assert (args.endpoint_id, args.dataset_id) == ("ep_1", "ds_2")


@pytest.mark.parametrize("argv", [
    [],
    ["datasets"],
    ["train", "ds_1"],                       # --target is required
    ["train", "ds_1", "--target", "y", "--task", "clustering"],
    ["train", "ds_1", "--target", "y", "--budget", "soon"],
    ["train", "ds_1", "--target", "y", "--holdout-fraction", "some"],
    ["train", "ds_1", "--target", "y", "--holdout-fraction", "nan"],
    ["train", "ds_1", "--target", "y", "--families", ","],
    ["train", "ds_1", "--target", "y", "--initial-param", "n_estimators"],
    ["models", "download", "mdl_1"],         # --output is required
    ["predict", "ep_1"],                     # --input is required
    ["activity", "--limit", "0"],
    ["up", "--port", "70000"],
    ["up", "--predictor-replicas", "0"],
    ["nonsense"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, NO_ENV)
    assert exc.value.code == 2
    assert main(argv) == 2
    assert capsys.readouterr().out == ""  # usage goes to stderr


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "usage: nbml" in capsys.readouterr().out


# ------------------------------------------------------------------ nbml up
def test_up_without_the_platform_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nbml_server.launcher", None)  # import -> ImportError
    assert main(["up"]) == 2
    captured = capsys.readouterr()
    assert "nbml up needs the platform: install nbml-platform" in captured.err
    assert captured.out == ""


def test_up_without_the_platform_json(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nbml_server.launcher", None)
    assert main(["up", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["reason"] == "PLATFORM_NOT_INSTALLED"


def test_up_calls_serve_forever(monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("nbml_server.launcher")
    fake.serve_forever = lambda **kw: calls.append(kw)
    monkeypatch.setitem(sys.modules, "nbml_server.launcher", fake)
    assert main(["up", "--port", "9999", "--json"]) == 0
    assert main(["up", "--stack", "local-cluster", "--predictor-replicas", "2"]) == 0
    assert calls == [{"http_port": 9999, "json_output": True, "stack": "embedded",
                      "predictor_replicas": None},
                     {"http_port": 8080, "json_output": False, "stack": "local-cluster",
                      "predictor_replicas": 2}]


# ------------------------------------------------------------------ passwords
@pytest.mark.parametrize("raw, expected", [
    ("s3cret-pass\n", "s3cret-pass"),
    ("s3cret-pass\r\n", "s3cret-pass"),
    ("s3cret-pass", "s3cret-pass"),
    ("  spaced pass  \n", "  spaced pass  "),
])
def test_password_stdin_strips_only_the_trailing_newline(monkeypatch, raw, expected):
    monkeypatch.setattr(sys, "stdin", io.StringIO(raw))
    args = parse_args(["login", "ada", "--password-stdin"], NO_ENV)
    assert commands._read_password(args, confirm=False) == expected


def test_signup_prompt_mismatch_is_an_error(monkeypatch):
    answers = iter(["first-password", "other-password"])
    monkeypatch.setattr(commands.getpass, "getpass", lambda prompt="": next(answers))
    args = parse_args(["signup", "ada"], NO_ENV)
    with pytest.raises(NbmlError) as exc:
        commands._read_password(args, confirm=True)
    assert exc.value.reason == "PASSWORD_MISMATCH"


# ------------------------------------------------------------------ output contract
class _FakeClient:
    """Stands in for nbml.client.Client in the verbs."""

    def __init__(self, error=None):
        self.error = error
        self.username = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def datasets(self):
        if self.error:
            raise self.error
        return [dataset_service_pb2.Dataset(name="datasets/ds_1", display_name="iris.csv",
                                            row_count=150, column_count=5,
                                            format=dataset_service_pb2.DATASET_FORMAT_CSV)]


def _use_client(monkeypatch, client):
    monkeypatch.setattr(commands, "make_client", lambda args, **kw: client)


def test_json_mode_prints_exactly_one_document(monkeypatch, capsys):
    _use_client(monkeypatch, _FakeClient())
    assert main(["datasets", "list", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert doc["datasets"][0]["id"] == "ds_1"
    assert doc["datasets"][0]["rows"] == 150
    assert doc["datasets"][0]["format"] == "csv"


def test_human_mode_prints_a_table_with_bare_ids(monkeypatch, capsys):
    _use_client(monkeypatch, _FakeClient())
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["ID", "NAME"]
    assert "ds_1" in out and "datasets/ds_1" not in out


def _bad_request():
    return NbmlError("INVALID_ARGUMENT", "the file has problems", "VALIDATION_FAILED",
                     [FieldViolation("file.row[3].column[price]", "must be at least 0"),
                      FieldViolation("file.columns", "missing required column 'id'")])


def test_errors_go_to_stderr_with_field_violations(monkeypatch, capsys):
    _use_client(monkeypatch, _FakeClient(_bad_request()))
    assert main(["datasets", "list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: the file has problems",
        "  file.row[3].column[price]: must be at least 0",
        "  file.columns: missing required column 'id'",
    ]


def test_errors_in_json_mode_are_one_document_on_stdout(monkeypatch, capsys):
    _use_client(monkeypatch, _FakeClient(_bad_request()))
    assert main(["--json", "datasets", "list"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"error": {
        "code": "INVALID_ARGUMENT", "reason": "VALIDATION_FAILED",
        "message": "the file has problems",
        "field_violations": [
            {"field": "file.row[3].column[price]", "description": "must be at least 0"},
            {"field": "file.columns", "description": "missing required column 'id'"},
        ]}}


def test_unreachable_server_names_the_address_and_suggests_nbml_up(monkeypatch, capsys):
    err = NbmlError("UNAVAILABLE", "failed to connect to all addresses")
    _use_client(monkeypatch, _FakeClient(err))
    assert main(["datasets", "list", "--server", "nowhere:1234"]) == 1
    message = capsys.readouterr().err
    assert "nowhere:1234" in message and "nbml up" in message


def test_unauthenticated_suggests_login(monkeypatch, capsys):
    err = NbmlError("UNAUTHENTICATED", "this call needs a token", "TOKEN_MISSING")
    _use_client(monkeypatch, _FakeClient(err))
    assert main(["datasets", "list", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["code"] == "UNAUTHENTICATED"
    assert doc["error"]["reason"] == "TOKEN_MISSING"
    assert "nbml login" in doc["error"]["message"]


def test_missing_input_file_is_an_error_not_a_traceback(capsys):
    assert main(["predict", "ep_1", "--input", "/definitely/not/here.csv", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["code"] == "INVALID_ARGUMENT"
    assert "/definitely/not/here.csv" in doc["error"]["message"]


def test_output_refuses_a_second_json_document():
    buf = io.StringIO()
    out = Output(True, stdout=buf, stderr=io.StringIO())
    out.emit({"a": 1})
    with pytest.raises(RuntimeError):
        out.emit({"b": 2})
    assert json.loads(buf.getvalue()) == {"a": 1}


def test_output_json_has_no_nan():
    buf = io.StringIO()
    Output(True, stdout=buf, stderr=io.StringIO()).emit({"score": float("nan"), "x": [float("inf")]})
    assert json.loads(buf.getvalue()) == {"score": None, "x": [None]}


def test_progress_is_suppressed_in_json_mode():
    out_buf, err_buf = io.StringIO(), io.StringIO()
    Output(True, stdout=out_buf, stderr=err_buf).progress("job_1 running")
    Output(True, stdout=out_buf, stderr=err_buf).line("job_1")
    assert out_buf.getvalue() == "" and err_buf.getvalue() == ""
    Output(False, stdout=out_buf, stderr=err_buf).progress("job_1 running")
    assert out_buf.getvalue() == "" and err_buf.getvalue() == "job_1 running\n"
