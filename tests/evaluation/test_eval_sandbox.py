"""The sandbox contains hostile samples, classifies them, and keeps serving the next sample."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from distill.sandbox import ExecResult, Sandbox, SandboxConfig, run_programs

MARK = "987654321"  # a unique argument to find leftover processes by


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxConfig(timeout=1.5, workers=2, memory_mb=512, max_output_bytes=4096)) as s:
        yield s


@pytest.fixture(scope="module")
def sb_noguard():
    """The guard off: what remains is the OS layers (rlimits, uid, process group, netns)."""
    with Sandbox(SandboxConfig(timeout=1.5, workers=2, memory_mb=512, guard=False)) as s:
        s.run("pass")
        yield s


def leftovers(marker: str = MARK) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def healthy(sandbox: Sandbox) -> None:
    res = sandbox.run("assert sum(range(10)) == 45")
    assert res.outcome == "passed", res


def test_classification(sb):
    progs = {
        "passed": "assert 1 + 1 == 2",
        "failed": "assert 1 == 2, 'one is not two'",
        "name": "undefined_function()",
        "syntax": "def f(:\n    pass",
        "indent": "def f():\nreturn 1",
        "recursion": "def f(): return f()\nf()",
        "zero": "1 / 0",
    }
    res = dict(zip(progs, sb.map(list(progs.values()))))
    assert res["passed"].outcome == "passed" and res["passed"].passed
    assert res["failed"].outcome == "failed" and "one is not two" in res["failed"].message
    assert (res["name"].outcome, res["name"].error_type) == ("error", "NameError")
    assert res["syntax"].outcome == "syntax_error"
    assert res["indent"].outcome == "syntax_error" and res["indent"].error_type == "IndentationError"
    assert res["recursion"].error_type == "RecursionError"
    assert res["zero"].error_type == "ZeroDivisionError"
    assert "1 / 0" in res["zero"].traceback  # the sample's own source lines in the traceback


def test_hostile_samples_are_contained_and_classified(sb, tmp_path):
    sentinel = tmp_path / "sentinel"
    (sentinel / "inner").mkdir(parents=True)
    (sentinel / "inner" / "keep.txt").write_text("precious")
    hostile = {
        "infinite_loop": "while True:\n    pass",
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "memory_hog": "blocks = []\nwhile True:\n    blocks.append(bytes(64 * 2**20))",
        "memory_one_shot": "x = bytearray(10**11)",
        "rm_rf_system": f"import os\nos.system('rm -rf {sentinel}')",
        "rm_rf_shutil": f"import shutil\nshutil.rmtree({str(sentinel)!r})",
        "unlink": f"import pathlib\npathlib.Path({str(sentinel / 'inner' / 'keep.txt')!r}).unlink()",
        "write_outside": f"open({str(sentinel / 'evil.txt')!r}, 'w').write('x')",
        "sys_exit": "import sys\nsys.exit(0)",
        "builtin_exit": "exit(0)",
        "os_exit": "import os\nos._exit(0)",
        "output_flood": "while True:\n    print('x' * 1000)",
        "socket_connect": "import socket\ns = socket.socket()\ns.connect(('93.184.216.34', 80))",
        "create_connection": "import socket\nsocket.create_connection(('example.com', 80), 1)",
        "subprocess": f"import subprocess\nsubprocess.run(['sleep', '{MARK}'])",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    }
    start = time.monotonic()
    res = dict(zip(hostile, sb.map(list(hostile.values()))))
    elapsed = time.monotonic() - start

    assert res["infinite_loop"].outcome == "timeout"
    assert res["fork_bomb"].outcome == "error"
    assert res["fork_bomb"].error_type == "SandboxViolation"
    assert res["memory_hog"].outcome == "error" and res["memory_hog"].error_type == "MemoryError"
    assert res["memory_one_shot"].error_type == "MemoryError"
    for key in ("rm_rf_system", "rm_rf_shutil", "unlink", "write_outside"):
        assert res[key].outcome == "error", (key, res[key])
        assert res[key].error_type == "SandboxViolation", (key, res[key])
    assert (sentinel / "inner" / "keep.txt").read_text() == "precious"
    assert not (sentinel / "evil.txt").exists()
    assert res["sys_exit"].outcome == "error" and res["sys_exit"].error_type == "SystemExit"
    assert res["builtin_exit"].error_type == "SystemExit"
    assert res["os_exit"].outcome == "crashed"
    flood = res["output_flood"]
    assert flood.outcome == "timeout"
    assert len(flood.stdout.encode()) <= 4096 < flood.stdout_bytes and flood.output_truncated
    for key in ("socket_connect", "create_connection"):
        assert res[key].error_type == "SandboxViolation", (key, res[key])
    assert res["subprocess"].error_type == "SandboxViolation"
    assert res["kill_parent"].error_type == "SandboxViolation"
    assert not any(r.passed for r in res.values())
    # timeouts overlap across the two workers; nothing waited much beyond its own timeout
    assert elapsed < 30
    assert not leftovers()
    healthy(sb)


def test_each_sample_gets_a_fresh_private_directory(sb):
    first = sb.run("import os\nopen('note.txt', 'w').write('hi')\nprint(os.getcwd())")
    assert first.passed
    cwd = first.stdout.strip()
    assert "distill-sandbox-" in cwd and not os.path.exists(cwd)  # removed after the sample
    second = sb.run("import os\nassert not os.path.exists('note.txt')\n"
                    "assert os.environ['HOME'] == os.getcwd()")
    assert second.passed, second


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("DISTILL_TEST_API_KEY", "sk-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("SOME_SECRET", "x")
    prog = ("import os\n"
            "leaked = [k for k in os.environ if any(w in k for w in ('KEY', 'TOKEN', 'SECRET'))]\n"
            "assert not leaked, leaked\n"
            "assert os.environ.get('PYTHONHASHSEED') == '0'\n")
    (res,) = run_programs([prog], SandboxConfig(timeout=5, workers=1))
    assert res.passed, res


def test_large_finite_output_is_truncated_but_the_sample_passes(sb):
    res = sb.run("print('y' * 10**6)\nassert True")
    assert res.passed
    assert res.stdout_bytes == 10**6 + 1 and len(res.stdout) == 4096 and res.output_truncated


def test_worker_killed_from_outside_is_replaced(tmp_path):
    with Sandbox(SandboxConfig(timeout=2, workers=1)) as s:
        healthy(s)
        os.kill(s.info["pid"], signal.SIGKILL)
        time.sleep(0.2)
        res = s.run("assert True")
        assert res.outcome in ("passed", "crashed")
        healthy(s)


def test_fresh_interpreter_mode():
    (ok, bad) = run_programs(["assert 2 * 3 == 6", "assert False"],
                             SandboxConfig(timeout=5, workers=1, fresh_interpreter=True))
    assert ok.passed and bad.outcome == "failed"


# ------------------------------------------------------------- the OS layers without the guard
def _os_layers(sandbox: Sandbox) -> bool:
    return sandbox.info.get("uid") is not None or os.geteuid() != 0


def test_fork_bomb_without_guard_is_contained(sb_noguard):
    if not _os_layers(sb_noguard):
        pytest.skip("root without setuid: RLIMIT_NPROC is not enforced here (see docs)")
    bomb = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
            "        pass")
    res = sb_noguard.run(bomb)
    assert res.outcome == "timeout"
    time.sleep(0.1)
    uid = sb_noguard.info.get("uid")
    if uid is not None:
        assert not [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]
    healthy(sb_noguard)


def _uid_of(pid: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_timeout_kills_the_process_group_and_escapees(sb_noguard):
    # a child in the sample's group, and a daemon that escaped with setsid() + double fork
    prog = (f"import os, subprocess, time\n"
            f"subprocess.Popen(['sleep', '{MARK}'])\n"
            f"if os.fork() == 0:\n"
            f"    os.setsid()\n"
            f"    if os.fork() == 0:\n"
            f"        os.execvp('sleep', ['sleep', '{MARK}1'])\n"
            f"    os._exit(0)\n"
            f"time.sleep(100)\n")
    res = sb_noguard.run(prog)
    assert res.outcome == "timeout"
    time.sleep(0.2)
    assert not leftovers(), "processes of the sample survived its timeout"
    healthy(sb_noguard)


def test_files_outside_are_protected_without_guard(sb_noguard, tmp_path):
    if sb_noguard.info.get("uid") is None:
        pytest.skip("no private uid here: only the guard protects files")
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("precious")
    res = sb_noguard.run(f"import os\nprint(os.system('rm -rf {sentinel}'))")
    assert res.passed and res.stdout.strip() != "0"  # rm failed: permission denied
    assert (sentinel / "keep.txt").read_text() == "precious"


def test_network_without_guard(sb_noguard):
    if not sb_noguard.info.get("network_namespace"):
        pytest.skip("no private network namespace here: only the guard blocks sockets")
    res = sb_noguard.run("import socket\nsocket.create_connection(('93.184.216.34', 80), 1)")
    assert res.outcome == "error" and res.error_type in ("OSError", "gaierror", "TimeoutError")


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("kwargs,key", [
    ({"timeout": 0}, "timeout"), ({"memory_mb": 10}, "memory_mb"),
    ({"drop_privileges": "maybe"}, "drop_privileges"), ({"workers": -1}, "workers"),
    ({"extra_env": {"OPENAI_API_KEY": "x"}}, "extra_env"),
])
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"sandbox.{key}"):
        SandboxConfig(**kwargs)


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="timeuot"):
        SandboxConfig.from_mapping({"timeuot": 3})


def test_exec_result_roundtrip():
    r = ExecResult(outcome="failed", error_type="AssertionError", message="m", duration=0.5)
    assert ExecResult.from_dict({**r.to_dict(), "unknown": 1}) == r
