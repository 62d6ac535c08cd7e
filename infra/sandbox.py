"""Running untrusted work (parsing, converting and pruning uploads) in a sandbox.

An uploaded model is hostile code: its loader may unpickle, its graph may call operators
that touch files, its parser is native code. Static checks refuse what they can see; this
module contains what they cannot. Every upload inspection and every job's engine run is a
command built by `Sandbox.command`, which runs it under bubblewrap (Debian's `bubblewrap`,
the sandbox Flatpak uses) with:

- new PID, IPC, UTS, cgroup and network namespaces: no network at all, no other process;
- a new mount namespace holding only a read-only view of the system (`/usr`), the Python
  installation and the project's code, plus one writable scratch directory; no data
  directory, no other tenant's files, no secrets;
- an empty environment but for a few harmless variables (no API keys, database URL or
  storage credentials: the parent talks to the database and the store, the sandbox gets a
  file and gives back JSON and files);
- an unprivileged user (the parent, when root, drops to `sandbox_uid` with `setpriv`
  after the mounts are made; otherwise bubblewrap's user namespace keeps the caller's
  unprivileged user), no capabilities, `no_new_privs`;
- a seccomp filter that refuses the system calls no model needs and an escape would
  (ptrace, mount, namespaces, kernel modules, bpf, keyrings, io_uring, ...);
- resource limits (`prlimit`): private memory, CPU seconds, processes, open files, file
  size, no core dumps.

When bubblewrap cannot run here (not installed, user namespaces refused), `probe()` says
why; the API then refuses uploads and the worker refuses jobs, unless the operator set
`SECATEURS_INSECURE_NO_SANDBOX=true`, which runs the same command without isolation (empty
environment and limits only) and is logged loudly. This module imports no torch: the API
process uses it too.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

# Where the scratch directory appears inside the sandbox (the command's working directory).
SCRATCH = Path("/scratch")
# The packages whose code the sandboxed commands import (besides site-packages).
CODE_PACKAGES = ("worker", "contract")
# Variables a sandboxed command may inherit: nothing that names a secret.
INHERITED_ENV = ("LANG", "LC_ALL", "TZ")
# System calls that a model's parsing, conversion, pruning or timing never makes and that
# an escape or an attack on the kernel would: refused with EPERM.
DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "vhangup",
    "lookup_dcookie",
    "fanotify_init",
    "personality",
    "uselib",
    "nfsservctl",
)
# Namespace flags of clone(2): creating namespaces is refused (clone3 hides its flags in
# memory a filter cannot read, so it answers ENOSYS and the C library falls back to clone).
CLONE_NAMESPACE_FLAGS = 0x7E020000
# Socket families other than local (AF_UNIX = 1) are refused on top of the empty network
# namespace.
AF_UNIX = 1


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed process tree (0 = not limited)."""

    memory_bytes: int = 0  # RLIMIT_DATA: heap, anonymous mappings, thread stacks
    cpu_s: int = 0
    processes: int = 512  # RLIMIT_NPROC counts threads too
    open_files: int = 1024
    file_bytes: int = 8 << 30
    tmpfs_bytes: int = 256 << 20  # the sandbox's /tmp and /dev/shm, held in memory
    # Scheduling priority (nice value, 0-19) of the whole tree: a job's engine is batch
    # work, and on a machine it shares with the API it must not take the CPU that
    # answers the polls.
    niceness: int = 0

    def nice_args(self) -> list[str]:
        nice = shutil.which("nice")
        return [nice, "-n", str(self.niceness)] if self.niceness and nice else []

    def prlimit_args(self) -> list[str]:
        args = [
            "--core=0",
            f"--nproc={self.processes}",
            f"--nofile={self.open_files}",
            f"--fsize={self.file_bytes}",
        ]
        if self.memory_bytes:
            args.append(f"--data={self.memory_bytes}")
        if self.cpu_s:
            # SIGXCPU at the soft limit, SIGKILL at the hard one a second later.
            args.append(f"--cpu={self.cpu_s}:{self.cpu_s + 1}")
        return args


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up on this host (and the insecure mode is off)."""


@dataclass
class Prepared:
    """A sandboxed command ready for `subprocess` (or asyncio): argv, env and the file
    descriptors it must inherit. `close()` once the process has started."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    cwd: Path | None = None
    _owned_fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self._owned_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._owned_fds.clear()


@dataclass(frozen=True)
class Sandbox:
    """How untrusted commands run on this host. Build one per process with `from_settings`."""

    insecure: bool = False
    uid: int = 65534
    gid: int = 65534
    bwrap: str = "bwrap"
    devices: tuple[str, ...] = ()  # extra device nodes to expose (GPUs)

    @classmethod
    def from_settings(cls, settings: object, *, gpu: bool = False) -> Sandbox:
        return cls(
            insecure=bool(getattr(settings, "insecure_no_sandbox", False)),
            uid=int(getattr(settings, "sandbox_uid", 65534)),
            gid=int(getattr(settings, "sandbox_gid", 65534)),
            devices=gpu_devices() if gpu else (),
        )

    # --- the command ----------------------------------------------------------------------

    def prepare(
        self,
        argv: Sequence[str],
        *,
        scratch: Path,
        limits: Limits,
        env: Mapping[str, str] | None = None,
        readonly: Iterable[tuple[Path, Path]] = (),
    ) -> Prepared:
        """The command that runs `argv` (a `python -m …` line: `python` is this process's
        interpreter) with `scratch` as its only writable directory, seen as `/scratch`.
        `readonly` binds more (source, destination) paths read-only."""
        child_env = _child_env(env)
        python = [sys.executable if a == "python" else a for a in argv]
        if self.insecure:
            return self._prepare_insecure(python, scratch, limits, child_env)
        reason = probe(self.bwrap, self.uid, self.gid)
        if reason is not None:
            raise SandboxUnavailable(reason)
        prepare_scratch(scratch, self.uid, self.gid)
        seccomp_fd = _seccomp_fd()
        bwrap = [
            *limits.nice_args(),
            self.bwrap,
            *_namespace_args(),
            *_mount_args(scratch, readonly, limits),
            *self._device_args(),
            "--seccomp",
            str(seccomp_fd),
            "--clearenv",
            *_setenv_args(child_env),
            "--chdir",
            str(SCRATCH),
            "--",
        ]
        command = [*bwrap, "prlimit", *limits.prlimit_args(), "--", *self._drop(), *python]
        return Prepared(command, {}, (seccomp_fd,), None, [seccomp_fd])

    def _prepare_insecure(
        self, argv: list[str], scratch: Path, limits: Limits, env: dict[str, str]
    ) -> Prepared:
        scratch.mkdir(parents=True, exist_ok=True)
        env = {
            **env,
            "HOME": str(scratch),
            "TMPDIR": str(scratch / "tmp"),
            "SECATEURS_SCRATCH": str(scratch),
        }
        (scratch / "tmp").mkdir(exist_ok=True)
        prlimit = shutil.which("prlimit")
        command = [prlimit, *limits.prlimit_args(), "--", *argv] if prlimit else argv
        return Prepared([*limits.nice_args(), *command], env, (), scratch)

    def _drop(self) -> list[str]:
        """Lose root for good once the mounts are made (nothing to drop otherwise)."""
        if os.geteuid() != 0:
            return []
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--no-new-privs",
            "--bounding-set=-all",
            "--inh-caps=-all",
        ]

    def _device_args(self) -> list[str]:
        args: list[str] = []
        for device in self.devices:
            args += ["--dev-bind", device, device]
        if self.devices:
            # The GPU driver reads its devices' topology from sysfs.
            args += ["--ro-bind", "/sys", "/sys"]
        return args


# --- pieces of the bubblewrap command line ------------------------------------------------


def _namespace_args() -> list[str]:
    args = [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
    ]
    if os.geteuid() != 0:
        # Unprivileged: bubblewrap needs a user namespace for the mounts. Nested ones are
        # refused by the seccomp filter, and by bubblewrap too where it can (0.8+).
        args += ["--unshare-user", "--cap-drop", "ALL"]
        if _bwrap_version() >= (0, 8):
            args.append("--disable-userns")
    return args


@cache
def _bwrap_version(bwrap: str = "bwrap") -> tuple[int, ...]:
    """bubblewrap's version (0, 0) when unknown: some options are newer than Debian 12's."""
    try:
        text = subprocess.run(
            [bwrap, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0, 0)
    numbers = text.strip().rpartition(" ")[2].split(".")
    return tuple(int(n) for n in numbers if n.isdigit()) or (0, 0)


def _mount_args(scratch: Path, readonly: Iterable[tuple[Path, Path]], limits: Limits) -> list[str]:
    args = [*_system_mounts()]
    for source in _python_roots():
        args += ["--ro-bind", str(source), str(source)]
    for source in _code_dirs():
        args += ["--ro-bind", str(source), str(source)]
    for source, dest in readonly:
        args += ["--ro-bind", str(source), str(dest)]
    # A size for the in-memory directories where bubblewrap can set one (0.8+).
    tmpfs = (
        ["--size", str(limits.tmpfs_bytes), "--tmpfs"]
        if _bwrap_version() >= (0, 8)
        else ["--tmpfs"]
    )
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        *tmpfs,
        "/tmp",
        *tmpfs,
        "/dev/shm",
        "--bind",
        str(scratch),
        str(SCRATCH),
    ]
    return [*_parent_dirs(args), *args]


def _parent_dirs(mount_args: list[str]) -> list[str]:
    """World-readable parents for every mount point: bubblewrap, run as root, would make
    them readable by root alone, and the dropped user could not reach its own binds."""
    dests = [
        Path(mount_args[i + 2])
        for i, a in enumerate(mount_args)
        if a in ("--ro-bind", "--bind", "--dev-bind")
    ]
    parents = {p for d in dests for p in d.parents if p != Path("/")}
    args: list[str] = []
    for parent in sorted(parents, key=lambda p: len(p.parts)):
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _system_mounts() -> list[str]:
    """`/usr` read-only, the merged-/usr links (or the real directories), the few files of
    `/etc` that the dynamic loader and the C library read, and the CPU topology that
    onnxruntime and OpenMP read from sysfs."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives"):
        path = Path("/etc") / name
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    cpu = Path("/sys/devices/system/cpu")
    if cpu.is_dir():
        args += ["--ro-bind", str(cpu), str(cpu)]
    return args


def _python_roots() -> list[Path]:
    """The interpreter's installation and the virtualenv, unless `/usr` holds them."""
    roots: list[Path] = []
    for prefix in {
        Path(sys.base_prefix).resolve(),
        Path(sys.prefix).resolve(),
        Path(sys.executable).resolve().parent.parent,
    }:
        if prefix != Path("/usr") and not prefix.is_relative_to("/usr"):
            roots.append(prefix)
    # The virtualenv's own path may be a link to elsewhere: bind it where it is named too.
    venv = Path(sys.prefix)
    if venv.resolve() != venv and not venv.is_relative_to("/usr"):
        roots.append(venv)
    return sorted(set(roots))


@cache
def _code_dirs() -> tuple[Path, ...]:
    """The directories of the packages the sandboxed commands import, found without
    importing them (an editable install keeps them outside site-packages). Only these
    directories are bound, never the project root, which may hold the data directory."""
    dirs: list[Path] = []
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SandboxUnavailable(f"cannot locate the {name!r} package")
        dirs.extend(Path(p).resolve() for p in spec.submodule_search_locations)
    return tuple(sorted(set(dirs)))


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(SCRATCH),
        "TMPDIR": str(SCRATCH / "tmp"),
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "SECATEURS_SCRATCH": str(SCRATCH),
    }
    env |= {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    # The code directories are bound where they are, so the parent's import path works.
    roots = sorted({str(d.parent) for d in _code_dirs()})
    env["PYTHONPATH"] = os.pathsep.join(roots)
    env |= dict(extra or {})
    return env


def _setenv_args(env: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def prepare_scratch(scratch: Path, uid: int, gid: int) -> None:
    """Make `scratch` (and what is in it) the sandbox user's, with a `tmp/` inside.
    Without root, files already belong to the (unprivileged) caller."""
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    for root, dirs, files in os.walk(scratch):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    os.chown(scratch, uid, gid)
    scratch.chmod(0o700)


def gpu_devices() -> tuple[str, ...]:
    """NVIDIA's device nodes, when this host has them."""
    dev = Path("/dev")
    names = sorted(p.name for p in dev.glob("nvidia*")) if dev.is_dir() else []
    return tuple(str(dev / n) for n in names if (dev / n).exists() and not (dev / n).is_dir())


# --- seccomp ------------------------------------------------------------------------------


@cache
def _seccomp_program() -> bytes:
    """The filter as a BPF program (built once with libseccomp)."""
    import pyseccomp as seccomp

    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (RuntimeError, ValueError, OSError):
            continue  # not a system call on this architecture
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for bit in _namespace_bits():
        flt.add_rule(
            seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit)
        )
    flt.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.NE, AF_UNIX))
    with tempfile.TemporaryFile() as fh:
        flt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


def _namespace_bits() -> list[int]:
    return [1 << i for i in range(32) if CLONE_NAMESPACE_FLAGS & (1 << i)]


def _seccomp_fd() -> int:
    """A readable descriptor holding the filter, for `bwrap --seccomp FD`."""
    program = _seccomp_program()
    fd = os.memfd_create("secateurs-seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# --- can it run here? ---------------------------------------------------------------------


@cache
def probe(bwrap: str = "bwrap", uid: int = 65534, gid: int = 65534) -> str | None:
    """None when a sandboxed command runs on this host, else why not (cached: the answer
    does not change while the process lives)."""
    if not sys.platform.startswith("linux"):
        return "the sandbox needs Linux"
    for tool in (bwrap, "prlimit", "setpriv" if os.geteuid() == 0 else "prlimit"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install bubblewrap util-linux)"
    try:
        _seccomp_program()
    except Exception as exc:  # noqa: BLE001 - libseccomp missing or refusing
        return f"cannot build the seccomp filter (libseccomp2 missing?): {exc}"
    return _try_run(Sandbox(uid=uid, gid=gid, bwrap=bwrap))


def _try_run(sandbox: Sandbox) -> str | None:
    with tempfile.TemporaryDirectory(prefix="secateurs-probe-") as tmp:
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        prepare_scratch(scratch, sandbox.uid, sandbox.gid)
        seccomp_fd = _seccomp_fd()
        command = [
            sandbox.bwrap,
            *_namespace_args(),
            *_mount_args(scratch, (), Limits()),
            "--seccomp",
            str(seccomp_fd),
            "--clearenv",
            "--",
            *sandbox._drop(),
            sys.executable,
            "-I",
            "-c",
            "import os; open('/scratch/ok', 'w').write(str(os.getuid()))",
        ]
        try:
            done = subprocess.run(
                command,
                pass_fds=(seccomp_fd,),
                capture_output=True,
                timeout=60,
                text=True,
                errors="replace",
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap did not run: {exc}"
        finally:
            os.close(seccomp_fd)
        if done.returncode != 0 or not (scratch / "ok").exists():
            return f"bubblewrap could not start a sandbox: {done.stderr.strip()[-300:]}"
    return None


def describe(sandbox: Sandbox) -> str:
    """One line for the start-up log."""
    if sandbox.insecure:
        return (
            "INSECURE: untrusted models run WITHOUT a sandbox "
            "(SECATEURS_INSECURE_NO_SANDBOX=true); only for trusted uploads"
        )
    reason = probe(sandbox.bwrap, sandbox.uid, sandbox.gid)
    if reason is not None:
        return f"sandbox unavailable, uploads and jobs are refused: {reason}"
    return "untrusted models run in a bubblewrap sandbox (no network, no secrets)"
