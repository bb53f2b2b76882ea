"""Learners that misbehave, and the data source, for test_trial_isolation. A module of
its own (not the test module) because the trial's child process must import it by
name: `tests.unit.trial_isolation_helpers`."""

import os
import pathlib
import signal
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_breast_cancer

from nbml_server.domain.automl import LEARNERS, Learner, SearchRequest, prepare_trials
from nbml_server.domain.automl.preprocessing import SCALED
from nbml_server.domain.automl.tasks import CLASSIFICATION


class Misbehaving(ClassifierMixin, BaseEstimator):
    """fit() does `action`: "hog" allocates 64 GiB, "sleep" never returns, "segfault"
    kills its process, "probe" fails with the thread and memory settings it sees."""

    def __init__(self, action="hog"):
        self.action = action

    def fit(self, X, y):
        if self.action == "hog":
            self.buffer_ = np.ones(8 * 2**30)  # 64 GiB
        elif self.action == "sleep":
            while True:
                time.sleep(60)
        elif self.action == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif self.action == "probe":
            from threadpoolctl import threadpool_info
            pools = sorted({info["num_threads"] for info in threadpool_info()})
            env = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS",
                                                           "ARROW_DEFAULT_MEMORY_POOL")}
            raise RuntimeError(f"pools={pools} " + " ".join(f"{k}={v}" for k, v in env.items()))
        raise AssertionError(f"fit({self.action!r}) returned")


def _learner(action: str) -> Learner:
    return Learner(action, frozenset({CLASSIFICATION}), SCALED, 1.0,
                   defaults=lambda ctx: [{}], space=lambda s, ctx: {},
                   build=lambda p, ctx: Misbehaving(action))


TEST_LEARNERS = {name: _learner(name) for name in ("hog", "sleep", "segfault", "probe")}


def request(**kwargs) -> SearchRequest:
    frame = load_breast_cancer(as_frame=True).frame
    return SearchRequest(frame, "target", task="classification", holdout_fraction=0.2,
                         **kwargs)


def breast_cancer(count_file: str | None = None):
    """The TrialData of `request()` with the real and the misbehaving learners; each
    call appends a line to `count_file`."""
    if count_file is not None:
        with pathlib.Path(count_file).open("a") as f:
            f.write("called\n")
    return prepare_trials(request(), {**LEARNERS, **TEST_LEARNERS})


def failing_source():
    raise ValueError("no such data set")
