"""Installs the local cluster's programs into the user cache dir, once.

- Java programs: a Maven project naming the artifact is resolved by `mvn
  dependency:copy-dependencies` into `<cache>/<name>/lib/` (the full runtime classpath,
  transitive dependencies included; Maven keeps its own download cache in ~/.m2).
- Go programs: `go install module@version` with GOBIN = `<cache>/bin`.

A finished install leaves a marker file, so reruns cost nothing and a half-finished
install (interrupted download) is redone. Installs hold an exclusive lock on
`<cache>/.install.lock`, so processes that install at once (into an empty cache) take
turns: the later ones wait, then find the install done.
"""

import contextlib
import fcntl
import os
import pathlib
import shutil
import subprocess
import tempfile

import platformdirs

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.nbml.localcluster</groupId>
  <artifactId>{name}</artifactId>
  <version>1</version>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""
DEPENDENCY = """    <dependency>
      <groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version>
    </dependency>"""


def cache_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("NBML_CLUSTER_CACHE")
                        or platformdirs.user_cache_dir("nbml")) / "local-cluster"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def install_lock():
    """Held by one process at a time (all installs share it: Maven's ~/.m2 is shared
    too); released when the process dies."""
    with open(cache_dir() / ".install.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def maven_classpath(name: str, coordinates: list[str]) -> list[pathlib.Path]:
    """The jars of `group:artifact:version` coordinates and all their runtime
    dependencies, downloaded once into `<cache>/<name>/lib`."""
    lib = cache_dir() / name / "lib"
    marker = lib / ".complete"
    wanted = "\n".join(sorted(coordinates))

    def installed() -> bool:
        return _reads(marker) == wanted

    if installed():
        return sorted(lib.glob("*.jar"))
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the local cluster's jars")
    with install_lock():
        if not installed():  # else another process installed it while we waited
            dependencies = "\n".join(
                DEPENDENCY.format(group=g, artifact=a, version=v)
                for g, a, v in (c.split(":") for c in coordinates))
            with tempfile.TemporaryDirectory() as work:
                pom = pathlib.Path(work) / "pom.xml"
                pom.write_text(POM.format(name=name, dependencies=dependencies))
                staging = pathlib.Path(work) / "lib"
                subprocess.run(["mvn", "-q", "-B", "-f", str(pom),
                                "dependency:copy-dependencies", "-DincludeScope=runtime",
                                f"-DoutputDirectory={staging}"],
                               check=True, stdin=subprocess.DEVNULL)
                if lib.exists():
                    shutil.rmtree(lib)
                shutil.move(str(staging), lib)
            marker.write_text(wanted)
    return sorted(lib.glob("*.jar"))


def go_binary(module: str, version: str, binary: str) -> pathlib.Path:
    """`go install module@version` into `<cache>/bin`; returns the binary's path."""
    bin_dir = cache_dir() / "bin"
    path = bin_dir / binary
    marker = bin_dir / f".{binary}.version"

    def installed() -> bool:
        return path.exists() and _reads(marker) == version

    if installed():
        return path
    if shutil.which("go") is None:
        raise RuntimeError("Go is needed to install " + module)
    with install_lock():
        if not installed():  # else another process installed it while we waited
            bin_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(["go", "install", f"{module}@{version}"], check=True,
                           env={**os.environ, "GOBIN": str(bin_dir)},
                           stdin=subprocess.DEVNULL)
            marker.write_text(version)
    return path


def _reads(marker: pathlib.Path) -> str | None:
    try:
        return marker.read_text()
    except FileNotFoundError:
        return None


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
