"""The sandbox a training or evaluation process runs in.

With bubblewrap (`bwrap`) a run sees an allow-list, not the host: the system directories (/usr,
/bin, /lib*) and the few files of /etc that programs need (the loader cache, passwd, time zone,
certificates), the interpreter it runs (its prefixes and the directories on its import path,
wherever they live: a virtualenv in /tmp, a `.venv` inside a checkout, conda, pyenv), the
read-only paths it is given (the prepared training data), its own writable directories, a private
size-capped /tmp and /dev/shm, a minimal /dev, its own /proc and PID namespace (the whole tree dies
with the sandbox), no network, and the GPU device nodes when asked. Nothing else exists in it:
the repository (val.txt, .git, earlier experiments), the user's home and any other checkout on
the host are simply absent. A run under a Python the sandbox cannot start is refused up front by
`self_check`. In every case the process gets resource limits (file size, open files, core dumps,
address space on CPU, first place for the OOM killer) from `limits_preexec`, and `loop.procs` gives it its own session and a tree
kill. Without a working bwrap the daemon prints `warning()` once and runs unsandboxed.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import platform
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from loop import seccomp

NO_SANDBOX_WARNING = ("warning: bubblewrap (bwrap) is not usable here: experiments run without a sandbox "
                      "(only resource limits and a tree kill); install it with `apt-get install bubblewrap`")
MEMORY_ENV = "AUTORESEARCH_MAX_MEMORY_MB"  # overrides the address-space cap of CPU runs
FILE_ENV = "AUTORESEARCH_MAX_FILE_MB"  # overrides the cap on any one file a run writes
MEMORY_SHARE = 0.75  # default cap on a CPU run's address space: this share of the host's RAM
HIDE_TMPFS_BYTES = 1 << 20  # the tmpfs over a hidden path holds only mount points
PRIVATE_TMP_BYTES = 1 << 30  # the run's own /tmp and /dev/shm, each
CHECK_TIMEOUT_S = 300.0  # `import torch` on a busy machine can take a minute
QUERY_TIMEOUT_S = 60.0
KEYCTL_SYSCALL = {"x86_64": 250, "aarch64": 219}  # keyctl(2) has no libc wrapper
KEYCTL_JOIN_SESSION_KEYRING = 1
# Every namespace, and no capability in them: bwrap started by root leaves the sandbox every
# capability of its user namespace, with which a run could remount its read-only binds (/usr, the
# interpreter's site-packages) writable and change what the daemon and the scorer run next.
ISOLATION = ("--unshare-all", "--cap-drop", "ALL")
OOM_SCORE_ADJ = b"1000"  # the most: of all the host's processes, a run's are the OOM killer's first

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc programs read: the dynamic loader's cache, user and group names (getpass, torch's
# cache paths), name-service and host files, the time zone, TLS certificates, the alternatives
# that some /usr/bin and CUDA links go through, and Debian's per-Python site customisation.
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "host.conf",
               "hosts", "localtime", "timezone", "os-release", "ssl", "ca-certificates", "ca-certificates.conf",
               "pki", "alternatives", "mime.types")
ETC_GLOBS = ("python3*",)
DEV = Path("/dev")
GPU_SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")  # every GPU process opens them
# What the interpreter reports about itself; -I leaves out the working directory, PYTHONPATH and
# the user's site directory, none of which a run gets.
INTERPRETER_QUERY = ("import json, sys; print(json.dumps({'prefixes': [sys.executable, sys.prefix, sys.base_prefix, "
                     "sys.exec_prefix, sys.base_exec_prefix], 'path': sys.path}))")


@dataclass(frozen=True)
class SandboxSpec:
    workdir: Path
    writable: tuple[Path, ...] = ()
    readonly: tuple[Path, ...] = ()
    hide: tuple[Path, ...] = ()  # never shown, even when inside something that is (the repository)
    gpu: bool = False
    gpu_devices: tuple[int, ...] | None = None  # with gpu: bind only /dev/nvidia<i> for these; None: all
    max_file_bytes: int = 8 << 30
    max_open_files: int = 4096
    max_memory_bytes: int | None = None  # None: MEMORY_ENV, else MEMORY_SHARE of RAM; never on a GPU
    nodes_dir: Path | None = None  # where its own copies of the standard device nodes go (node_copies)


@dataclass(frozen=True)
class Mount:
    """One bwrap mount: `option source dest`, or `option dest` for the file systems bwrap makes."""

    option: str  # --ro-bind, --bind, --dev-bind, --symlink (source: the link's text), --tmpfs, --dev, --proc
    dest: Path
    source: str | None = None
    size: int | None = None  # tmpfs only

    def args(self) -> list[str]:
        size = ["--size", str(self.size)] if self.size is not None else []
        source = [self.source] if self.source is not None else []
        return [*size, self.option, *source, str(self.dest)]


# bwrap applies mounts in order; a parent must come before what is mounted inside it, and on one
# path a tmpfs that hides comes before the bind that shows something again.
OPTION_ORDER = {"--symlink": 0, "--tmpfs": 1, "--dev": 1, "--proc": 1, "--ro-bind": 2, "--bind": 3, "--dev-bind": 3}


@functools.cache
def available() -> bool:
    """bwrap is installed and can create its namespaces here (nested containers often cannot)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    try:
        probe = subprocess.run([exe, "--ro-bind", "/", "/", *ISOLATION, "--die-with-parent", "true"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def warning() -> str | None:
    """The one line the daemon prints at start when runs cannot be sandboxed, else None."""
    return None if available() else NO_SANDBOX_WARNING


def wrap(argv: list[str], spec: SandboxSpec) -> list[str]:
    """The bwrap command line running argv under spec, or argv unchanged without bwrap."""
    if not available():
        return list(argv)
    cmd = ["bwrap", *ISOLATION, "--die-with-parent", "--new-session"]
    make_node_copies(spec)
    for mount in mounts(argv, spec):
        cmd += mount.args()
    # Last, once every mount point exists: nothing but the run's own directories, /tmp and
    # /dev/shm can be written (the root and /dev are tmpfs that would otherwise take any file).
    cmd += ["--remount-ro", "/dev", "--remount-ro", "/"]
    return cmd + ["--chdir", str(spec.workdir), "--", *argv]


def mounts(argv: Sequence[str], spec: SandboxSpec) -> list[Mount]:
    """Everything a run of argv under spec sees, parents before children."""
    hidden = [Path(p).absolute() for p in spec.hide]
    home = Path.home().absolute()
    plan = [*_system_mounts(), Mount("--dev", DEV), Mount("--proc", Path("/proc")),
            Mount("--tmpfs", Path("/tmp"), size=PRIVATE_TMP_BYTES),
            Mount("--tmpfs", DEV / "shm", size=PRIVATE_TMP_BYTES)]
    shown = [Path(d) for d in SYSTEM_DIRS]
    python = _interpreter(argv[0]) if argv else None
    if python is not None:
        for path in _read_only_dirs(python, hidden, home, shown):
            plan.append(Mount("--ro-bind", path, str(path)))
            shown.append(path)
    for path in _library_dirs(hidden, home):
        if not _covered(path, shown):
            plan.append(Mount("--ro-bind", path, str(path)))
            shown.append(path)
    plan += [Mount("--dev-bind", host, str(copy)) for host, copy in node_copies(spec)]
    if spec.gpu:
        plan += [Mount("--dev-bind", node, str(node)) for node in gpu_nodes(spec.gpu_devices)]
        plan.append(Mount("--ro-bind", Path("/sys"), "/sys"))  # the driver reads PCI and NUMA topology there
    plan += [Mount("--ro-bind", Path(p), str(p)) for p in spec.readonly]
    plan += [Mount("--bind", Path(p), str(p)) for p in (spec.workdir, *spec.writable)]
    shown += [Path(p) for p in (*spec.readonly, spec.workdir, *spec.writable)]
    # A hidden path inside something shown (the repository under a Python prefix, the home under
    # a bound directory) gets an empty tmpfs over it; binds deeper inside it are shown again.
    for path in (*hidden, home):
        if path != Path("/") and any(path != s and path.is_relative_to(s) for s in shown):
            plan.append(Mount("--tmpfs", path, size=HIDE_TMPFS_BYTES))
    return sorted(plan, key=lambda m: (len(m.dest.parts), OPTION_ORDER[m.option]))


# The host's own nodes that bwrap's --dev binds into a sandbox, writable (it has no read-only binding
# that keeps a device usable). A root daemon's run is their owner there: it cannot write through
# them to anything, but it can change their mode and owner, for every user of the host, and set
# their times to any value, a message to whichever run looks next (a model process that has just
# seen every validation window, to the next training run).
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

# So a root daemon gives each sandbox its own copies of them (the same devices, new inodes, made
# fresh in the run's nodes_dir): what a run does to a copy is seen by nobody else, and no sibling
# run in flight, no other daemon on the host, can be blamed for it or miss it. Where copies cannot
# be made (a file system mounted nodev, no CAP_MKNOD) the host's nodes are bound, and put back
# after the run (device_states, put_back_devices), as they are for the GPU's nodes.


def node_copies(spec: SandboxSpec) -> list[tuple[Path, Path]]:
    """(host node, its copy) for each standard node a sandbox under spec gets a copy of: none
    unless the daemon is root (no other user's run owns the host's nodes) and copies work where
    spec.nodes_dir is."""
    if spec.nodes_dir is None or os.geteuid() != 0 or not available() or not _copies_work(spec.nodes_dir.parent):
        return []
    return [(DEV / name, spec.nodes_dir / name) for name in DEV_NODES if _is_char_device(DEV / name)]


def make_node_copies(spec: SandboxSpec) -> None:
    """Make the copies node_copies names, fresh: mode, owner and device number as the host's."""
    copies = node_copies(spec)
    if not copies:
        return
    assert spec.nodes_dir is not None
    for host, copy in copies:
        # One that cannot be made (a full disk) is missing, and bwrap refuses to start the run: a
        # crash with its reason, never a run on the host's node unwatched.
        with contextlib.suppress(OSError):
            spec.nodes_dir.mkdir(parents=True, exist_ok=True)
            st = os.stat(host)
            with contextlib.suppress(FileNotFoundError):
                copy.unlink()
            os.mknod(copy, stat.S_IFCHR | 0o600, st.st_rdev)
            os.chown(copy, st.st_uid, st.st_gid)
            os.chmod(copy, stat.S_IMODE(st.st_mode))


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


_COPIES_WORK: dict[int, bool] = {}  # by file system (st_dev): can a device node be made and opened there
_COPIES_LOCK = threading.Lock()


def _copies_work(folder: Path) -> bool:
    """A device node made under folder can be made and opened (tried once per file system)."""
    with _COPIES_LOCK:
        try:
            device = os.stat(folder).st_dev
        except OSError:
            return False
        if device not in _COPIES_WORK:
            _COPIES_WORK[device] = _try_a_copy(folder / f".autoresearch-node-{os.getpid()}")
        return _COPIES_WORK[device]


def _try_a_copy(trial: Path) -> bool:
    try:
        os.mknod(trial, stat.S_IFCHR | 0o600, os.stat(DEV / "null").st_rdev)
        try:
            fd = os.open(trial, os.O_WRONLY)  # refused where the file system is mounted nodev
            os.write(fd, b"x")
            os.close(fd)
        finally:
            trial.unlink()
    except OSError:
        return False
    return True


DeviceState = tuple[int, int, int, int, int]  # mode, owner, group, atime and mtime in ns
_FIRST_SEEN: dict[Path, DeviceState] = {}  # each node as this process first found it


def device_states(spec: SandboxSpec) -> dict[Path, DeviceState]:
    """The state each host device node a run under spec is given must be in after it: as this
    process first saw it, not as the run before left it (a sibling run in flight may have moved it).
    Nodes it gets copies of are not the host's to watch."""
    copied = {host for host, _ in node_copies(spec)}
    nodes = [DEV / name for name in DEV_NODES if DEV / name not in copied]
    nodes += gpu_nodes(spec.gpu_devices) if spec.gpu else []
    for node in nodes:
        if node not in _FIRST_SEEN:
            with contextlib.suppress(OSError):
                st = os.stat(node)
                _FIRST_SEEN[node] = (st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns)
    return {node: _FIRST_SEEN[node] for node in nodes if node in _FIRST_SEEN}


def put_back_devices(states: dict[Path, DeviceState]) -> list[str]:
    """Each node whose mode, owner or times differ from `states`, put back as it was; what it had
    been made, one line each."""
    changed = []
    for node, (mode, uid, gid, atime, mtime) in states.items():
        try:
            st = os.stat(node)
        except OSError:
            continue
        if (st.st_mode, st.st_uid, st.st_gid) != (mode, uid, gid):
            changed.append(f"{node} (made mode {stat.S_IMODE(st.st_mode):o}, owner {st.st_uid}:{st.st_gid})")
            with contextlib.suppress(OSError):
                os.chown(node, uid, gid)
                os.chmod(node, stat.S_IMODE(mode))
        if (st.st_atime_ns, st.st_mtime_ns) != (atime, mtime):
            changed.append(f"{node} (times set to {st.st_atime_ns} {st.st_mtime_ns})")
            with contextlib.suppress(OSError):
                os.utime(node, ns=(atime, mtime))
    return changed


def gpu_nodes(devices: tuple[int, ...] | None, dev: Path = DEV) -> list[Path]:
    """The device nodes under dev a run on these GPUs needs: /dev/nvidia<i> for each (all when
    None) and the shared control nodes that exist."""
    if devices is None:
        return sorted(dev.glob("nvidia*"))
    own = [dev / f"nvidia{i}" for i in devices]
    shared = [dev / name for name in GPU_SHARED_NODES]
    return [node for node in (*own, *shared) if node.exists()]


def gpu_present() -> bool:
    return any(DEV.glob("nvidia[0-9]*"))


def self_check(python: str = sys.executable, imports: Iterable[str] = (), gpu: bool | None = None) -> str | None:
    """Start python in the sandbox a run gets and import the named modules: None when that works,
    else one line saying why not and what to do, ready to raise (`raise SetupError(line)`)."""
    imports = tuple(imports)
    with tempfile.TemporaryDirectory(prefix="autoresearch-check-") as tmp:
        spec = SandboxSpec(workdir=Path(tmp), gpu=gpu_present() if gpu is None else gpu)
        failure = _try(python, "pass", spec)
        if failure is not None:
            where = "in the sandbox" if available() else "here"
            return (f"{python} does not start {where} ({failure}): runs see only /usr, /lib*, a few files of /etc "
                    "and the interpreter's own prefixes and import path; use a Python whose installation "
                    "is complete there (a virtualenv or conda env anywhere, or the system's) and start again")
        for name in imports:
            failure = _try(python, f"import {name}", spec)
            if failure is not None:
                return (f"{python} cannot import {name} in the sandbox a run gets ({failure}): install it "
                        f"into that interpreter (`{python} -m pip install {name}`) "
                        "and start again")
    return None


def memory_cap(spec: SandboxSpec) -> int | None:
    """Bytes of address space a run may map; None on a GPU, where CUDA maps far more than it uses."""
    if spec.gpu:
        return None
    if spec.max_memory_bytes is not None:
        return spec.max_memory_bytes
    if MEMORY_ENV in os.environ:
        return int(float(os.environ[MEMORY_ENV]) * (1 << 20))
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_SHARE)


def limits_preexec(spec: SandboxSpec) -> Callable[[], None]:
    """A preexec_fn: caps on any one file's size, open files, core dumps and (on CPU) memory, so
    a disk filler or a memory hog fails inside its own run instead of taking the host down; and the
    run first in line for the kernel's OOM killer (on a GPU no address-space cap applies: a run
    that takes the host's memory is what the kernel ends, never the daemon). Where the daemon may
    lower it again (CAP_SYS_RESOURCE) the run may not: the kernel keeps that power to privilege.
    It gets a session keyring of its own, then no keyring calls at all (loop.seccomp)."""
    memory = memory_cap(spec)
    file_bytes = int(float(os.environ[FILE_ENV]) * (1 << 20)) if FILE_ENV in os.environ else spec.max_file_bytes

    join_new_session_keyring = _session_keyring_joiner()
    no_keyrings = seccomp.installer(shutil.which("bwrap"))

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec.max_open_files, spec.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        first_for_the_oom_killer()
        join_new_session_keyring()
        no_keyrings()  # last: the join above is a keyring call

    return apply


def first_for_the_oom_killer() -> None:
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
    except OSError:
        return  # no /proc: nothing to ask of the OOM killer
    try:
        os.write(fd, OOM_SCORE_ADJ)
    except OSError:
        pass
    finally:
        os.close(fd)


@functools.cache
def _session_keyring_joiner() -> Callable[[], None]:
    """Joins a new anonymous session keyring. Keyrings are not namespaced: a daemon started from a
    login or a service has a session keyring, every run would inherit it, and one run could leave
    a key there for the next to find (a later run knowing it is not the first). Resolved here, in
    the parent, so that the child only makes the call. Where keyctl is refused (a container's
    seccomp), the run cannot reach a keyring either."""
    number = KEYCTL_SYSCALL.get(platform.machine())
    if number is None:
        return lambda: None
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long
    return lambda: syscall(ctypes.c_long(number), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None)


# --- what the allow-list is made of -------------------------------------------------------------
@dataclass(frozen=True)
class Interpreter:
    prefixes: tuple[Path, ...]  # the executable's directories and sys.prefix & co: shown even inside the repo
    import_path: tuple[Path, ...]  # sys.path as a run gets it: shown unless it would show something hidden


def _system_mounts() -> list[Mount]:
    plan = []
    for name in SYSTEM_DIRS:
        plan += _mirror(Path(name))
    etc = Path("/etc")
    names = {*ETC_ENTRIES, *(p.name for pattern in ETC_GLOBS for p in etc.glob(pattern))}
    for name in sorted(names):
        plan += _mirror(etc / name)
    return plan


def _mirror(path: Path) -> list[Mount]:
    """path as it is on the host: a symlink stays a symlink (merged /usr, /etc/localtime)."""
    if path.is_symlink():
        return [Mount("--symlink", path, os.readlink(path))]
    return [Mount("--ro-bind", path, str(path))] if path.exists() else []


def _interpreter(program: str) -> Interpreter | None:
    """The paths the Python that argv starts with needs; None when argv[0] is not a Python."""
    found = shutil.which(program)
    if found is None or not Path(program).name.startswith("python"):
        return None
    return _query_interpreter(str(Path(found).absolute()))


@functools.cache
def _query_interpreter(executable: str) -> Interpreter | None:
    # Asked of the interpreter itself, once per process: only it knows its import path (.pth files,
    # a venv's base installation, conda's layout). It is the daemon's own trusted interpreter.
    try:
        out = subprocess.run([executable, "-I", "-c", INTERPRETER_QUERY], capture_output=True, text=True,
                             timeout=QUERY_TIMEOUT_S, cwd="/", env={"PATH": os.environ.get("PATH", os.defpath)})
        report = json.loads(out.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None  # self_check says why this Python cannot run
    exe = Path(executable)
    prefixes = [exe.parent, exe.resolve().parent, *(Path(p) for p in report["prefixes"][1:] if p)]
    if report["prefixes"][0]:
        prefixes.append(Path(report["prefixes"][0]).resolve().parent)
    import_path = [Path(p) for p in report["path"] if p and os.path.isabs(p)]
    return Interpreter(tuple(_dedupe(prefixes)), tuple(_dedupe(import_path)))


def _read_only_dirs(python: Interpreter, hidden: list[Path], home: Path, shown: list[Path]) -> list[Path]:
    """The interpreter's paths to bind, fewest first: each as named and as resolved (a symlinked
    home or venv), none inside another, none that is "/"."""
    chosen: list[Path] = []
    candidates = [*python.prefixes, *(p for p in python.import_path if _importable(p, hidden, home))]
    for path in candidates:
        for form in _dedupe([path, path.resolve()]):
            if form != Path("/") and form.exists() and not _covered(form, [*shown, *chosen]):
                chosen = [c for c in chosen if not c.is_relative_to(form)] + [form]
    return chosen


def _importable(path: Path, hidden: list[Path], home: Path) -> bool:
    """An import-path entry a run may see: it shows nothing hidden (a compat-mode editable install
    puts the repository itself on sys.path) and is no source checkout (another copy of the
    experiment, with its own validation data, could be one)."""
    return not _reveals(path, hidden, home) and not (path / ".git").exists()


def _library_dirs(hidden: list[Path], home: Path) -> list[Path]:
    """LD_LIBRARY_PATH's directories, which the run inherits (CUDA outside /usr, say)."""
    dirs = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if os.path.isabs(p)]
    return [d for d in _dedupe(dirs) if d.is_dir() and not _reveals(d, hidden, home)]


def _reveals(path: Path, hidden: list[Path], home: Path) -> bool:
    """Binding path would show a hidden path, or the whole home, or lie inside a hidden path."""
    return (home.is_relative_to(path) or
            any(path.is_relative_to(h) or h.is_relative_to(path) for h in hidden))


def _covered(path: Path, shown: Iterable[Path]) -> bool:
    return any(path.is_relative_to(s) for s in shown)


def _dedupe(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _try(python: str, code: str, spec: SandboxSpec) -> str | None:
    """None when `python -c code` exits 0 in the sandbox of spec, else the last line it printed."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(spec.workdir), "TMPDIR": str(spec.workdir),
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    try:
        done = subprocess.run(wrap([python, "-c", code], spec), cwd=spec.workdir, env=env, capture_output=True,
                              text=True, timeout=CHECK_TIMEOUT_S, preexec_fn=limits_preexec(spec))
    except subprocess.TimeoutExpired:
        return f"no answer within {CHECK_TIMEOUT_S:.0f}s"
    except OSError as e:
        return e.strerror or str(e)
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"exit {done.returncode}"
