"""APPS / CodeContests-style test cases: a program reads stdin and prints, or a function is called.

One test case becomes one self-contained program for the sandbox (:func:`case_program`), so each
case gets its own process, its own timeout and its own outcome, exactly as a single HumanEval
program does. The program runs the solution with the case's input on ``sys.stdin`` (a text
wrapper over bytes, so ``sys.stdin.buffer`` works too) and its ``sys.stdout`` captured, then
compares the output with :func:`outputs_match`; a mismatch raises ``AssertionError`` (outcome
``failed``), a crash keeps the solution's own exception (outcome ``error``) and an endless loop is
killed by the sandbox (outcome ``timeout``).

Call-style cases (APPS ``fn_name``) call ``fn_name(*inputs)`` - a module-level function or a
method of ``Solution`` (LeetCode starter code) - and compare the returned value, as APPS's own
``testing_util`` does (tuples as lists; an expected ``[x]`` also accepts ``x``).

Not covered: output written below ``sys.stdout`` (``os.write(1, ...)``) is not captured, and
interactive problems are not supported.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence


def output_lines(text: str) -> list[str]:
    """Normalised output: trailing whitespace of each line and blank lines at either end dropped."""
    return [line.rstrip() for line in text.strip().splitlines()]


def _floats(tokens: Sequence[str]) -> list[float] | None:
    try:
        return [float(t) for t in tokens]
    except ValueError:
        return None


def outputs_match(got: str, expected: str, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """APPS's comparison, in order: same normalised lines; else same whitespace-separated tokens;
    else tokens that are all numbers and equal within tolerance (``1.0`` vs ``1``, ``0.3333333``)."""
    if output_lines(got) == output_lines(expected):
        return True
    a, b = got.split(), expected.split()
    if a == b:
        return True
    if len(a) != len(b):
        return False
    fa, fb = _floats(a), _floats(b)
    return (fa is not None and fb is not None
            and all(math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol) for x, y in zip(fa, fb)))


# The program text for one case. Only the standard library: it runs inside the sandbox worker's
# fork. ``outputs_match`` is repeated here as source (inspect.getsource keeps the two identical).
_STDIN_CASE = '''from __future__ import annotations
import io as _io
import sys as _sys
{helpers}
_SOURCE = {source!r}
_STDIN = {stdin!r}
_EXPECTED = {expected!r}
_raw = _io.BytesIO()
_out = _io.TextIOWrapper(_raw, encoding="utf-8", write_through=True)
_saved = _sys.stdin, _sys.stdout
_sys.stdin = _io.TextIOWrapper(_io.BytesIO(_STDIN.encode("utf-8")), encoding="utf-8")
_sys.stdout = _out
try:
    exec(compile(_SOURCE, "<solution>", "exec"), {{"__name__": "__main__"}})
except SystemExit:
    pass
finally:
    _out.flush()
    _sys.stdin, _sys.stdout = _saved
_got = _raw.getvalue().decode("utf-8", "replace")
if not outputs_match(_got, _EXPECTED):
    raise AssertionError("wrong output: expected %r, got %r" % (_EXPECTED[:200], _got[:200]))
'''

_CALL_CASE = '''
import json as _json
_SOURCE = {source!r}
_ARGS = _json.loads({args!r})
_EXPECTED = _json.loads({expected!r})
_ns = {{"__name__": "__solution__"}}
exec(compile(_SOURCE, "<solution>", "exec"), _ns)
_cls = _ns.get("Solution")
if _cls is not None and hasattr(_cls, {fn!r}):
    _fn = getattr(_cls(), {fn!r})
elif {fn!r} in _ns:
    _fn = _ns[{fn!r}]
else:
    raise NameError("the solution defines no function or Solution method named " + {fn!r})
_got = _json.loads(_json.dumps(_fn(*_ARGS), default=repr))  # tuples -> lists, as APPS compares
_ok = _got == _EXPECTED or (isinstance(_EXPECTED, list) and len(_EXPECTED) == 1
                             and _got == _EXPECTED[0])
if not _ok:
    raise AssertionError("wrong result: expected %r, got %r" % (_EXPECTED, _got))
'''


def _helpers() -> str:
    import inspect

    return "import math\n" + "\n".join(inspect.getsource(f) for f in (output_lines, _floats,
                                                                      outputs_match))


def case_program(source: str, case: dict[str, Any], fn_name: str | None = None) -> str:
    """The sandbox program that runs ``source`` on one case ``{"input": ..., "output": ...}``.

    Stdin style: ``input`` and ``output`` are strings. Call style (``fn_name`` set): ``input`` is
    the list of arguments and ``output`` the expected return value (JSON values).
    """
    if fn_name:
        return _CALL_CASE.format(source=source, args=json.dumps(case["input"]),
                                 expected=json.dumps(case["output"]), fn=fn_name)
    stdin, expected = case["input"], case["output"]
    if isinstance(stdin, list):  # some APPS rows store a case's lines as a list
        stdin = "\n".join(map(str, stdin))
    if isinstance(expected, list):
        expected = "\n".join(map(str, expected))
    return _STDIN_CASE.format(helpers=_helpers(), source=source, stdin=str(stdin),
                              expected=str(expected))
