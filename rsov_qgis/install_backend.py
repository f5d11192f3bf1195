# SPDX-License-Identifier: GPL-2.0-or-later
"""Install the rsov backend into its own virtual environment; standard library only (no QGIS).

Run from the folder that holds the plugin package::

    python3 -m rsov_qgis.install_backend --prefix DIR [--find-links DIR] [--offline]
        [--torch cpu|cuda|auto] [--python PATH]

It finds a Python 3.10+ (the configured one, else the usual names on PATH), creates a virtual
environment at ``--prefix`` (never QGIS's own site-packages; an existing environment there is
reused), installs a matched torch/torchvision pair (a CUDA build where an NVIDIA GPU is present)
and then the backend from the source the plugin carries, so plugin and backend versions match.

Output is pip's own, line by line, interleaved with lines for programs: ``PROGRESS <0-100>
<stage>``, at the end ``DONE <rsov executable>``, or ``ERROR <one sentence>`` (exit code 1;
130 when cancelled) followed by indented detail lines (e.g. pip's last lines). SIGTERM stops pip
and its children too; a rerun continues from whatever the stopped run left.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import socket

# what this module is for: venv and pip, with fixed argument lists and no shell
import subprocess  # nosec B404
import sys
import threading
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple, TypedDict, cast

from .errors import RsovPluginError
from .paths import BACKEND_SOURCE

MIN_PYTHON = (3, 10)  # the backend's requires-python
LAUNCHER_PYTHON = (3, 8)  # enough to run this module
TORCH_PAIR = ("torch==2.14.1", "torchvision==0.29.1")  # a matched pair (see the Makefile's TORCH_SPEC)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = "https://download.pytorch.org/whl/cu130"  # the CUDA 13 build PyPI's Linux wheels of this pair use
INDEX_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 20.0
CHECK_TIMEOUT_S = 600.0  # importing torch from a cold disk takes a while
TAIL_LINES = 15
SOURCE_COPY = ".backend-src"  # inside the prefix; pip builds there, not in the plugin folder
PROGRESS, DONE, ERROR = "PROGRESS", "DONE", "ERROR"
CANCELLED_EXIT = 130
PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3]); print(sys.executable)"
CHECK = (
    "import rsov, torch, torchvision; print('rsov', rsov.__version__, 'with torch', torch.__version__, "
    "'and torchvision', torchvision.__version__, '(CUDA available: %s)' % torch.cuda.is_available())"
)
# Set by QGIS for its own Python (OSGeo4W, the macOS bundle): another interpreter must not see them.
FOREIGN_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")


class InstallError(RsovPluginError):
    """A failed installation: ``message`` is one sentence, ``details`` lines that explain it."""

    def __init__(self, message: str, details: Sequence[str] = ()):
        super().__init__(message)
        self.message = message
        self.details = list(details)


class Cancelled(RsovPluginError):
    """SIGTERM or Ctrl-C arrived."""


@dataclass(frozen=True)
class TorchSource:
    """Where one torch build comes from: PyTorch's own index or pip's configured one (PyPI)."""

    label: str
    index_url: str | None  # None: pip's configured index
    disk_gb: float  # free space the whole environment needs with this build
    fallback: TorchSource | None = None  # when index_url cannot be reached (a CUDA build: it runs on CPU too)

    def pip_arguments(self, offline: bool) -> list[str]:
        """The index arguments of the torch pip call (a wheelhouse alone when offline)."""
        return ["--index-url", self.index_url] if self.index_url and not offline else []


PYPI_CUDA = TorchSource("the CUDA build from pip's index", None, 10.0)
PYPI_CPU = TorchSource("the CPU build from pip's index", None, 3.0)
# (flavour, platform) -> source. PyPI's Linux wheels are CUDA builds, its Windows wheels CPU builds,
# its macOS wheels CPU + MPS (Apple GPUs); macOS has no CUDA build at all.
TORCH_SOURCES = {
    ("cpu", "linux"): TorchSource("the CPU build from PyTorch's CPU index", CPU_INDEX, 3.0, fallback=PYPI_CUDA),
    ("cuda", "linux"): PYPI_CUDA,
    ("cpu", "win32"): PYPI_CPU,
    ("cuda", "win32"): TorchSource("the CUDA build from PyTorch's CUDA index", CUDA_INDEX, 10.0),
    ("cpu", "darwin"): TorchSource("the CPU and MPS build from pip's index", None, 3.0),
}
PLATFORM_NAMES = {"linux": "Linux", "win32": "Windows", "darwin": "macOS"}


class Interpreter(NamedTuple):
    """A Python that ran, with its version and real executable."""

    executable: str
    version: tuple[int, ...]

    @property
    def version_text(self) -> str:
        """E.g. ``"3.11.7"``."""
        return ".".join(map(str, self.version))


class Environment(NamedTuple):
    """The paths of a virtual environment's Python and ``rsov`` executables."""

    python: Path
    rsov: Path


@dataclass(frozen=True)
class Request:
    """What to install where: the command line's options."""

    prefix: Path
    torch: str = "auto"  # cpu, cuda or auto
    python: str = ""  # the Python to create the environment with; "": found on PATH
    find_links: str = ""  # a wheelhouse folder for every pip call
    offline: bool = False  # the wheelhouse only

    def arguments(self) -> list[str]:
        """This module's command-line arguments for this request (the dock's command)."""
        args = ["-m", __name__, "--prefix", str(self.prefix), "--torch", self.torch]
        for flag, value in (("--python", self.python), ("--find-links", self.find_links)):
            if value:
                args += [flag, value]
        return args + (["--offline"] if self.offline else [])


# --- output ------------------------------------------------------------------------------------
def say(line: str) -> None:
    """Print a line at once (the dock reads it live)."""
    print(line, flush=True)


def report(percent: int, stage: str) -> None:
    """A ``PROGRESS`` line, at the start of each stage (where a cancel takes effect)."""
    _check_cancelled()
    say(f"{PROGRESS} {percent} {stage}")


def parse_progress(line: str) -> tuple[int, str] | None:
    """(percent, stage) of a ``PROGRESS`` line; None for any other line."""
    match = re.match(rf"{PROGRESS} (\d+) (.*)$", line)
    return (int(match.group(1)), match.group(2)) if match else None


def done_path(line: str) -> str | None:
    """The rsov executable of a ``DONE`` line; None for any other line."""
    return line[len(DONE) + 1 :].strip() if line.startswith(DONE + " ") else None


def error_message(output: str) -> str | None:
    """The error at the end of an installer's output (its ``ERROR`` line and the detail lines
    after it, without the prefix); None when there is none."""
    lines = output.splitlines()
    start = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith(ERROR + " ")), None)
    if start is None:
        return None
    return "\n".join([lines[start][len(ERROR) + 1 :], *lines[start + 1 :]]).strip()


# --- processes ---------------------------------------------------------------------------------
def child_environment() -> dict[str, str]:
    """This environment without QGIS's Python variables, with unbuffered UTF-8 output."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARIABLES}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    return env


class _Isolation(TypedDict):
    stdin: int
    env: dict[str, str]
    start_new_session: bool


def _isolated() -> _Isolation:
    """The options of every child: no input, a clean environment, and (POSIX) its own
    process group, so that cancelling takes pip's build subprocesses along."""
    return {"stdin": subprocess.DEVNULL, "env": child_environment(), "start_new_session": os.name != "nt"}


def _stop(process: subprocess.Popen) -> None:
    """End ``process`` and its children (on POSIX it leads its own process group)."""
    try:
        if os.name == "nt":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        if os.name != "nt":
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass  # gone in the meantime
        process.wait()


def run_logged(command: Sequence[str], what: str, writing: tuple[int, str] | None = None) -> None:
    """Run ``command``, echoing its output line by line; InstallError with its last lines when
    it fails. ``writing``: the progress line to report when pip starts writing the packages."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    # a fixed argument list, no shell
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **_isolated())  # nosec B603
    _RUNNING.append(process)
    try:
        _check_cancelled()  # a SIGTERM during Popen found no process to stop
        for raw in cast("IO[bytes]", process.stdout):  # stdout=PIPE: always set
            line = raw.decode("utf-8", "replace").rstrip()
            say(line)
            if line.strip():
                tail.append(line)
            if writing is not None and line.startswith("Installing collected packages"):
                report(*writing)
        code = process.wait()
        _check_cancelled()
    except BaseException:  # cancelled (SIGTERM, Ctrl-C) or broken: pip must not go on alone
        _stop(process)
        raise
    finally:
        _RUNNING.remove(process)
    if code:
        raise InstallError(f"{what} failed (exit code {code}); the last lines of its output:", tail)


def _output(command: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a short command, capturing its output as text."""
    # a fixed argument list, no shell
    return subprocess.run(  # nosec B603
        list(command), capture_output=True, text=True, errors="replace", timeout=timeout, **_isolated()
    )


def stop_installer(pid: int) -> None:
    """Cancel a running installer with its pip: SIGTERM on POSIX (the installer then stops pip's
    process group), ``taskkill /T`` on Windows (console programs ignore a polite close)."""
    if os.name == "nt":
        _output(["taskkill", "/F", "/T", "/PID", str(pid)], PROBE_TIMEOUT_S)
    else:
        os.kill(pid, signal.SIGTERM)


_CANCELLED = threading.Event()
_RUNNING: list[subprocess.Popen] = []  # the child being run, stopped by a cancel


def _cancel(_signum, _frame) -> None:
    """SIGTERM: note it and stop the running child; the installer stops at its next check.
    Raising here instead could land between the child's start and its registration."""
    _CANCELLED.set()
    for process in list(_RUNNING):
        if os.name != "nt":
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except OSError:
                pass  # gone in the meantime


def _check_cancelled() -> None:
    if _CANCELLED.is_set():
        raise Cancelled()


# --- Python ------------------------------------------------------------------------------------
def _search_path() -> str:
    """PATH, plus where macOS keeps Pythons that an app started from the Finder does not see."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    if sys.platform == "darwin":
        frameworks = Path("/Library/Frameworks/Python.framework/Versions").glob("*/bin")
        folders += ["/opt/homebrew/bin", "/usr/local/bin", *sorted(map(str, frameworks), reverse=True)]
    return os.pathsep.join(f for f in folders if f)


def candidates() -> list[list[str]]:
    """Commands that may start a Python, newest first (Windows' ``py -3`` launcher first there)."""
    names = [f"python3.{minor}" for minor in range(13, MIN_PYTHON[1] - 1, -1)] + ["python3", "python"]
    search = _search_path()
    found = [path for path in (shutil.which(name, path=search) for name in names) if path]
    launcher = shutil.which("py") if os.name == "nt" else None
    return ([[launcher, "-3"]] if launcher else []) + [[path] for path in dict.fromkeys(found)]


def probe(command: Sequence[str]) -> Interpreter | str:
    """The Python that ``command`` starts, or why it does not run."""
    try:
        run = _output([*command, "-c", PROBE], PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"does not run: {exc}"
    lines = run.stdout.strip().splitlines()
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", lines[0].strip()) if run.returncode == 0 and lines else None
    if match is None:
        return "does not run"
    return Interpreter(lines[1].strip() if len(lines) > 1 else command[0], tuple(int(g) for g in match.groups()))


def find_python(configured: str = "", minimum: tuple[int, int] = MIN_PYTHON) -> Interpreter:
    """The configured Python (no other, when one is configured), else the newest candidate of
    ``minimum`` or newer; InstallError saying what was tried otherwise."""
    need = f"Python {minimum[0]}.{minimum[1]} or newer"
    if configured:
        found = probe([configured]) if Path(configured).is_file() else "does not exist"
        if isinstance(found, str):
            raise InstallError(f"The configured Python {configured} {found}: rsov needs {need}.")
        if found.version[:2] < minimum:
            raise InstallError(f"The configured Python {configured} is {found.version_text}: rsov needs {need}.")
        return found
    tried = []
    for command in candidates():
        found = probe(command)
        if not isinstance(found, str) and found.version[:2] >= minimum:
            return found
        tried.append(f"{' '.join(command)} ({found if isinstance(found, str) else found.version_text})")
    raise InstallError(
        f"No suitable Python found: rsov needs {need} (tried: {', '.join(tried) or 'none on PATH'}); "
        "install one (python.org, or your package manager) or choose it with --python."
    )


def launcher(configured: str = "") -> Interpreter:
    """The Python that runs this module for the dock: the configured one when it would do for the
    backend, else any Python that can run this module (the installer then says what is wrong
    with the configured one)."""
    try:
        return find_python(configured)
    except InstallError:
        return find_python("", LAUNCHER_PYTHON)


# --- torch -------------------------------------------------------------------------------------
def platform_key() -> str:
    """``win32``, ``darwin`` or ``linux`` (other POSIX systems get Linux's sources)."""
    return sys.platform if sys.platform in ("win32", "darwin") else "linux"


def nvidia_gpu() -> str:
    """The first GPU ``nvidia-smi -L`` lists; "" when there is none (or no driver)."""
    try:
        run = _output(["nvidia-smi", "-L"], PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return ""
    gpus = [line for line in run.stdout.splitlines() if line.startswith("GPU ")] if run.returncode == 0 else []
    return gpus[0].strip() if gpus else ""


def choose_flavour(requested: str) -> str:
    """``cpu`` or ``cuda``: ``auto`` is cuda where an NVIDIA GPU is present."""
    if requested != "auto":
        return requested
    gpu = nvidia_gpu()
    say(
        f"NVIDIA GPU found ({gpu}): installing a CUDA build of torch."
        if gpu
        else "No NVIDIA GPU found (nvidia-smi lists none): installing a CPU build of torch."
    )
    return "cuda" if gpu else "cpu"


def reachable(url: str, timeout: float = INDEX_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host (or the HTTPS proxy pip would use) opens."""
    target = urllib.parse.urlsplit(urllib.request.getproxies().get("https") or url)
    try:
        with socket.create_connection((target.hostname or "", target.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def torch_source(flavour: str, platform: str, offline: bool) -> TorchSource:
    """Where this flavour comes from here; InstallError when it cannot be had."""
    source = TORCH_SOURCES.get((flavour, platform))
    if source is None:
        raise InstallError(
            f"There is no {flavour.upper()} build of torch for {PLATFORM_NAMES[platform]}: use --torch cpu."
        )
    if offline or source.index_url is None or reachable(source.index_url):
        return source
    if source.fallback is None:
        raise InstallError(
            f"PyTorch's index {source.index_url} is not reachable (no internet?): connect, use "
            "--torch cpu, or install from a wheelhouse with --find-links DIR --offline."
        )
    say(
        f"PyTorch's index {source.index_url} is not reachable: installing {source.fallback.label} "
        "instead (a CUDA build runs on CPU too)."
    )
    return source.fallback


# --- disk and environment ----------------------------------------------------------------------
def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                pass  # removed while we count
    return total


def check_disk(prefix: Path, need_gb: float, label: str) -> None:
    """InstallError when the prefix's file system lacks the room (what the prefix already holds
    counts: a rerun needs less)."""
    existing = next(p for p in (prefix, *prefix.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need_gb * 1e9 - folder_size(prefix) > free:
        raise InstallError(
            f"Not enough disk space for {prefix}: {free / 1e9:.1f} GB free, about {need_gb:.0f} GB "
            f"needed for torch ({label}) and the backend; free some space or choose another folder."
        )


@contextmanager
def exclusive(prefix: Path) -> Iterator[None]:
    """Hold the lock of ``prefix`` (a file beside it: creating the environment empties the
    folder); InstallError when another installation holds it. The system drops the lock of
    a killed process, so a stopped run never blocks the next."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.with_name(prefix.name + ".lock"), "a+b") as handle:
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InstallError(f"Another installation into {prefix} is running: wait for it, or stop it.") from None
        yield


def environment_paths(prefix: Path, windows: bool = os.name == "nt") -> Environment:
    """Where a virtual environment at ``prefix`` keeps its Python and ``rsov``."""
    scripts, suffix = (prefix / "Scripts", ".exe") if windows else (prefix / "bin", "")
    return Environment(scripts / f"python{suffix}", scripts / f"rsov{suffix}")


def usable_environment(prefix: Path) -> bool:
    """Whether ``prefix`` is a virtual environment whose Python runs with pip."""
    python = environment_paths(prefix).python
    if not (prefix / "pyvenv.cfg").is_file() or not python.is_file():
        return False
    try:
        return _output([str(python), "-m", "pip", "--version"], PROBE_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def prepare_environment(prefix: Path, configured_python: str) -> Environment:
    """Reuse the virtual environment at ``prefix``, else create it (over a broken one a stopped
    run left); a folder that holds something else is refused."""
    if usable_environment(prefix):
        say(f"Reusing the environment in {prefix}.")
        return environment_paths(prefix)
    if prefix.exists() and any(prefix.iterdir()) and not (prefix / "pyvenv.cfg").is_file():
        raise InstallError(f"{prefix} is not empty and not a Python environment: choose a new or empty folder.")
    report(5, "looking for Python 3.10 or newer")
    python = find_python(configured_python)
    report(8, f"creating the environment in {prefix} (Python {python.version_text})")
    run_logged(
        [python.executable, "-m", "venv", "--clear", str(prefix)], f"Creating the environment with {python.executable}"
    )
    return environment_paths(prefix)


def source_version(source: Path) -> str:
    """The ``__version__`` of the backend source."""
    text = (source / "rsov" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"""__version__\s*=\s*["']([^"']+)""", text)
    if match is None:
        raise InstallError(f"The backend source in {source} has no version.")
    return match.group(1)


def copy_source(source: Path, prefix: Path) -> Path:
    """A fresh copy of the backend source inside the prefix (pip writes build files beside it)."""
    copy = prefix / SOURCE_COPY
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist"))
    return copy


def pip_install(env: Environment, packages: Iterable[str], request: Request) -> list[str]:
    """The pip command installing ``packages`` (with the wheelhouse, and nothing interactive)."""
    command = [
        str(env.python),
        "-m",
        "pip",
        "install",
        "--progress-bar",
        "off",
        "--no-input",
        "--disable-pip-version-check",
    ]
    if request.find_links:
        command += ["--find-links", request.find_links]
    if request.offline:
        command.append("--no-index")
    return command + list(packages)


def _check(command: Sequence[str], what: str, prefix: Path) -> str:
    """The output of a check of the new environment; InstallError when it fails."""
    try:
        run = _output(command, CHECK_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"The new environment cannot {what} ({exc}).") from None
    if run.returncode:
        lines = (run.stdout + run.stderr).strip().splitlines()[-TAIL_LINES:]
        raise InstallError(f"The new environment cannot {what}: delete {prefix} and install again.", lines)
    say(run.stdout.strip())
    return run.stdout.strip()


def verify(env: Environment, prefix: Path, expected: str) -> None:
    """Import the backend with torch and torchvision, and ask its CLI for its version."""
    _check([str(env.python), "-c", CHECK], "import rsov, torch and torchvision", prefix)
    version = _check([str(env.rsov), "--version"], "run rsov --version", prefix)
    if version.split()[-1:] != [expected]:
        raise InstallError(f"The environment's rsov says '{version}', but the plugin carries {expected}.")


# --- the whole installation --------------------------------------------------------------------
def install(request: Request, source: Path = BACKEND_SOURCE) -> Path:
    """Install the backend; returns its rsov executable (InstallError says why not)."""
    if request.offline and not request.find_links:
        raise InstallError("--offline installs from a wheelhouse only: give it with --find-links DIR.")
    if not (source / "pyproject.toml").is_file():
        raise InstallError(f"The backend source is missing ({source / 'pyproject.toml'}): reinstall the plugin.")
    prefix = request.prefix.expanduser().absolute()
    expected = source_version(source)
    report(0, "choosing the torch build")
    chosen = torch_source(choose_flavour(request.torch), platform_key(), request.offline)
    check_disk(prefix, chosen.disk_gb, chosen.label)
    with exclusive(prefix):
        return _install_into(prefix, request, chosen, source, expected)


def _install_into(prefix: Path, request: Request, chosen: TorchSource, source: Path, expected: str) -> Path:
    """The steps that change ``prefix`` (under its lock): environment, torch, backend, check."""
    env = prepare_environment(prefix, request.python)
    pair = " and ".join(spec.replace("==", " ") for spec in TORCH_PAIR)
    report(15, f"installing {pair}, {chosen.label}")
    run_logged(
        pip_install(env, [*TORCH_PAIR, *chosen.pip_arguments(request.offline)], request),
        f"Installing {pair}",
        (40, f"installing {pair}: writing the packages"),
    )
    backend = f"the rsov backend {expected}"
    report(60, f"installing {backend} and its dependencies")
    # the pair again, so that no dependency of the backend swaps it (pip always reinstalls a folder)
    run_logged(
        # with the sam3 extra: the dock offers the SAM 3 engine (its weights are a separate, gated download)
        pip_install(env, [*TORCH_PAIR, f"{copy_source(source, prefix)}[sam3]"], request),
        f"Installing {backend}",
        (80, f"installing {backend}: writing the packages"),
    )
    shutil.rmtree(prefix / SOURCE_COPY, ignore_errors=True)
    report(90, "checking the installed backend")
    verify(env, prefix, expected)
    report(100, "done")
    return env.rsov


def default_prefix() -> Path:
    """The user's data folder, not the QGIS profile: one environment serves every profile, and the
    path stays short (Windows' 260-character limit bites deep inside torch's files)."""
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "rsov" / "backend-env"


def parser() -> argparse.ArgumentParser:
    """The command line."""
    cli = argparse.ArgumentParser(prog="python3 -m rsov_qgis.install_backend", description=__doc__.split("\n")[0])
    cli.add_argument(
        "--prefix",
        type=Path,
        default=default_prefix(),
        help=f"folder of the backend's virtual environment (default: {default_prefix()})",
    )
    cli.add_argument(
        "--torch",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="torch build: auto is cuda where an NVIDIA GPU is present, else cpu",
    )
    cli.add_argument(
        "--python", default="", help="the Python 3.10+ to create the environment with (default: one found on PATH)"
    )
    cli.add_argument("--find-links", default="", help="a folder of wheels (a wheelhouse) given to every pip call")
    cli.add_argument(
        "--offline", action="store_true", help="install from the --find-links wheelhouse only (pip --no-index)"
    )
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run the installation; 0 on success, 1 on failure, 130 when cancelled."""
    args = parser().parse_args(argv)
    stdout = sys.stdout
    if isinstance(stdout, io.TextIOWrapper):
        stdout.reconfigure(errors="replace")  # pip's output may not fit a Windows console's code page
    signal.signal(signal.SIGTERM, _cancel)
    try:
        rsov = install(Request(args.prefix, args.torch, args.python, args.find_links, args.offline))
    except InstallError as exc:
        say(f"{ERROR} {exc.message}")
        for line in exc.details:
            say(f"  {line}")
        return 1
    except (Cancelled, KeyboardInterrupt):
        say(f"{ERROR} The installation was cancelled: install again to continue where it stopped.")
        return CANCELLED_EXIT
    say(f"{DONE} {rsov}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
