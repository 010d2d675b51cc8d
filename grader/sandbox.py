"""Running untrusted code: one child process tree in a sandbox, under limits, every descendant killed at the end.

The layers, each used where the machine has it and named in every report (`Sandbox.layers`, `Sandbox.missing`):

    namespaces   bubblewrap: no network (its own, empty network namespace), its own PID, IPC and UTS namespaces,
                 an unprivileged identity (uid 65534 in a user namespace), a read-only view of the file system
                 except its scratch folder, an empty /tmp, hidden folders (the reference), a new session
    cgroup       a pids and a memory cgroup (v1) around the child's tree: they cap processes and memory, and list
                 every descendant, daemons included, so that all are killed when the run ends
    rlimits      CPU seconds, address space, file size, open files, processes (the last binds non-root users only)
    wall clock   a deadline, after which the whole tree is killed
    output       stdout and stderr read as they come; only the last `output_bytes` of each are kept

Missing layers are not silent: `Sandbox.warning()` is a line every report prints.
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 600.0
    cpu_seconds: int = 900
    memory_bytes: int = 6 * 2**30
    processes: int = 256
    file_bytes: int = 256 * 2**20
    open_files: int = 1024
    output_bytes: int = 200_000


@dataclass
class Finished:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    seconds: float = 0.0
    output_cut: bool = False  # more was printed than was kept


class _Tail:
    """The last `limit` bytes read from a pipe, read on a thread so that a flood of output never blocks the child."""

    def __init__(self, pipe, limit: int):
        self.chunks: deque[bytes] = deque()
        self.size, self.limit, self.cut = 0, limit, False
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe) -> None:
        try:
            while chunk := pipe.read1(65536):
                self.chunks.append(chunk)
                self.size += len(chunk)
                while self.size - len(self.chunks[0]) >= self.limit:
                    self.size -= len(self.chunks.popleft())
                    self.cut = True
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        self.thread.join(timeout=5)
        data = b"".join(self.chunks)[-self.limit:]
        return data.decode("utf-8", errors="replace")


class _Cgroup:
    """A pids and a memory cgroup (v1) for one run; `kill()` kills every process in it, `remove()` deletes it."""

    def __init__(self, limits: Limits):
        name = f"llmkata-{uuid.uuid4().hex[:12]}"
        self.folders = [CGROUP_ROOT / "pids" / name, CGROUP_ROOT / "memory" / name]
        made = []
        try:
            for folder in self.folders:
                folder.mkdir()
                made.append(folder)
            (self.folders[0] / "pids.max").write_text(str(limits.processes))
            (self.folders[1] / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
        except OSError:
            for folder in made:
                folder.rmdir()
            raise

    def join(self) -> None:  # runs in the child between fork and exec
        for folder in self.folders:
            (folder / "cgroup.procs").write_text("0")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.folders[0] / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        for _ in range(200):  # a fork bomb forks while we kill: repeat until the group is empty
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for folder in self.folders:
            for _ in range(100):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # still emptying
                    time.sleep(0.02)


def _python_folders() -> list[Path]:
    """The folders the grading child's Python reads: the interpreter's prefixes and llmkata's source (in a clone,
    the repository: the folders a submission must not read are hidden again after it)."""
    import llmkata
    folders = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
               Path(llmkata.__file__).resolve().parents[1]}
    return sorted(folder for folder in folders if folder.is_dir())


def _bwrap_works(bwrap: str) -> bool:
    try:
        probe = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-all", "--unshare-user", "--uid", str(NOBODY),
                                "--gid", str(NOBODY), "--die-with-parent", "--", "/bin/true"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _cgroups_work() -> bool:
    try:
        _Cgroup(Limits()).remove()
        return True
    except OSError:
        return False


@dataclass
class Sandbox:
    """Where untrusted code runs. `Sandbox.detect()` finds what the machine offers; `run()` runs one command."""

    bwrap: str | None = None
    cgroups: bool = False
    hidden: tuple[Path, ...] = ()  # folders the child must not see (bound to an empty folder)
    missing: list[str] = field(default_factory=list)

    @classmethod
    def detect(cls, hidden: tuple[Path, ...] = ()) -> Sandbox:
        missing = []
        bwrap = shutil.which("bwrap")
        if bwrap is None or not _bwrap_works(bwrap):
            missing.append("namespaces (bubblewrap " + ("does not run here" if bwrap else "is not installed") +
                           ": network, file system and other processes stay visible)")
            bwrap = None
        cgroups = _cgroups_work()
        if not cgroups:
            missing.append("cgroup (no writable pids/memory cgroup: processes and memory are capped by rlimits only, "
                           "and a daemon that leaves the process group may outlive the run)")
        return cls(bwrap, cgroups, tuple(Path(h).resolve() for h in hidden), missing)

    @property
    def layers(self) -> list[str]:
        layers = ["rlimits", "wall clock", "output cap", "process group"]
        if self.bwrap:
            layers[:0] = ["no network", "PID namespace", "user namespace (uid 65534)", "read-only file system",
                          "hidden reference"]
        if self.cgroups:
            layers.append("cgroup (pids, memory)")
        return layers

    def warning(self) -> str:
        return ("" if not self.missing else
                "WARNING: the sandbox is incomplete on this machine — missing: " + "; ".join(self.missing))

    def command(self, argv: list[str], scratch: Path, env: dict[str, str]) -> list[str]:
        if not self.bwrap:
            return argv
        # /tmp is emptied (other grades' scratch folders live there), then what Python needs is shown again: the
        # interpreter, its virtual environment and llmkata's own source may themselves be under /tmp.
        wrapped = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        for device in sorted(glob.glob("/dev/nvidia*")):  # a GPU grader's GPUs: the kernels chapter runs on them
            wrapped += ["--dev-bind", device, device]
        for folder in _python_folders():
            if folder.is_relative_to("/tmp"):
                wrapped += ["--ro-bind", str(folder), str(folder)]
        wrapped += ["--bind", str(scratch), str(scratch), "--unshare-all", "--unshare-user",
                   "--uid", str(NOBODY), "--gid", str(NOBODY), "--die-with-parent", "--new-session",
                   "--chdir", str(scratch), "--clearenv"]
        for folder in self.hidden:
            if folder.exists():
                wrapped += ["--tmpfs", str(folder)]
        for key, value in env.items():
            wrapped += ["--setenv", key, value]
        return wrapped + ["--", *argv]

    def start(self, argv: list[str], scratch: Path, env: dict[str, str], limits: Limits = Limits(),
              pass_fds: tuple[int, ...] = (), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) -> Started:
        """Start `argv` in `scratch` (the only folder it may write) with exactly the variables `env`."""
        scratch.chmod(0o777)  # the child's identity is not ours
        cgroup = _Cgroup(limits) if self.cgroups else None

        def limit_child() -> None:
            if cgroup is not None:
                cgroup.join()
            for which, value in ((resource.RLIMIT_CPU, limits.cpu_seconds), (resource.RLIMIT_AS, limits.memory_bytes),
                                 (resource.RLIMIT_FSIZE, limits.file_bytes),
                                 (resource.RLIMIT_NOFILE, limits.open_files),
                                 (resource.RLIMIT_NPROC, limits.processes)):
                resource.setrlimit(which, (value, value))

        child = subprocess.Popen(self.command(argv, scratch, env), cwd=scratch, env=env, stdin=stdin, stdout=stdout,
                                 stderr=subprocess.PIPE, preexec_fn=limit_child, start_new_session=True,
                                 pass_fds=pass_fds)
        out = _Tail(child.stdout, limits.output_bytes) if stdout == subprocess.PIPE else None
        return Started(child, cgroup, out, _Tail(child.stderr, limits.output_bytes), time.monotonic())

    def run(self, argv: list[str], scratch: Path, env: dict[str, str], limits: Limits = Limits()) -> Finished:
        """Run `argv` to its end (or its wall-clock limit), then kill whatever it left."""
        started = self.start(argv, scratch, env, limits)
        timed_out = False
        try:
            started.process.wait(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            started.stop()
        return Finished(None if timed_out else started.process.returncode, started.out.text(), started.err.text(),
                        timed_out, time.monotonic() - started.at, started.out.cut or started.err.cut)


@dataclass
class Started:
    """A sandboxed child that is running: `stop()` kills it and every descendant, and closes its pipes."""

    process: subprocess.Popen
    cgroup: _Cgroup | None
    out: _Tail | None
    err: _Tail
    at: float

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.cgroup is not None:
            self.cgroup.kill()
            self.cgroup.remove()
            self.cgroup = None
        self.process.wait()
        for pipe in (self.process.stdout, self.process.stderr, self.process.stdin):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
