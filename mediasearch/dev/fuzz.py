"""``make fuzz``: coverage-guided fuzzing of the parsers, then property-based fuzzing of the gateway.

``python -m mediasearch.dev.fuzz --seconds N`` runs every target of
:mod:`mediasearch.dev.fuzz_targets` under atheris (libFuzzer) for N seconds each, then the
hypothesis fuzz of the live gateway (:mod:`mediasearch.dev.fuzz_gateway`) for N seconds, and ends
with one summary line::

    fuzz: targets=5 execs=1234567 crashes=0 internal_errors=0 max_rss_mb=312

``atheris.Fuzz()`` never returns, so each target runs in a child process (this module with
``--child TARGET``) with libFuzzer's flags: ``-max_total_time``, ``-rss_limit_mb`` (memory),
``-timeout`` (seconds per input). It starts from the seeds in ``tests/fuzz_corpus/<target>/`` and
keeps what it learns in ``build/fuzz/corpus/<target>/``; a crash is written to
``build/fuzz/crashes/<target>/`` and the target restarts for the rest of its time, so one run
reports every distinct crash. Each crash found becomes a regression input in
``tests/fuzz_corpus/regressions/<target>/`` (minimise it with ``--minimize FILE``), replayed by
``tests/unit/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

from mediasearch.dev.layout import ROOT

TARGET_NAMES = ("image", "token", "events", "filters")  # mediasearch.dev.fuzz_targets.TARGETS
CORPUS = ROOT / "tests" / "fuzz_corpus"
WORK = ROOT / "build" / "fuzz"
RSS_LIMIT_MB = 2048
INPUT_TIMEOUT_S = 10
_MAX_RESTARTS = 25

_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_PROGRESS = re.compile(r"^#(\d+)\s.*\brss: (\d+)Mb", re.M)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_ERROR = re.compile(r"ERROR: libFuzzer: ([^\n]+)")
_RUNNING = re.compile(r"^Running: (.+)$", re.M)
_EXECUTED = re.compile(r"^Executed (.+) in \d+ ms$", re.M)


@dataclass
class Crash:
    target: str
    kind: str  # "fuzz target exited" (an exception), "out-of-memory ...", "timeout after ..."
    signature: str  # the exception's last line, or the libFuzzer error
    artifact: Path | None
    log: str


@dataclass
class TargetResult:
    target: str
    seconds: float
    execs: int = 0
    max_rss_mb: int = 0
    crashes: list[Crash] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"  {self.target}: execs={self.execs} crashes={len(self.crashes)} "
            f"max_rss_mb={self.max_rss_mb} ({self.seconds:.0f}s)"
        )


def _fuzzer(target: str, flags: list[str], inputs: list[Path], *, instrument: bool = True) -> str:
    """Run the target's libFuzzer child; its output (the child ends with its status in it)."""
    argv = [sys.executable, "-m", "mediasearch.dev.fuzz", "--child", target]
    if not instrument:
        argv.append("--no-instrument")
    limits = [f"-rss_limit_mb={RSS_LIMIT_MB}", f"-timeout={INPUT_TIMEOUT_S}"]
    budget = sum(float(f.split("=")[1]) for f in flags if f.startswith("-max_total_time="))
    budget += INPUT_TIMEOUT_S * (3 + len(inputs)) + 60
    proc = subprocess.run(
        _fresh([*argv, "--", *limits, *flags, *map(str, inputs)]),
        capture_output=True, text=True, errors="replace", timeout=budget,
    )  # fmt: skip
    return f"{proc.stdout}{proc.stderr}\nexit status {proc.returncode}\n"


def _fresh(argv: list[str]) -> list[str]:
    """``argv`` started by a shell that forks it: libFuzzer's memory limit reads the process's peak
    RSS (``ru_maxrss``), which a child inherits from a large parent (pytest) across fork and exec;
    a grandchild of a small shell starts from zero."""
    return ["/bin/sh", "-c", '"$@"; exit $?', "fuzz", *argv]


def run_target(target: str, seconds: float, *, work: Path = WORK, seed: int | None = None) -> TargetResult:
    """Fuzz one target for ``seconds`` (restarting after each crash) from its seeds and the corpus
    kept in ``work``; its stats and distinct crashes (inputs in ``work/crashes/<target>/``)."""
    corpus, crashes = work / "corpus" / target, work / "crashes" / target
    for folder in (corpus, crashes):
        folder.mkdir(parents=True, exist_ok=True)
    result = TargetResult(target, seconds)
    started = time.monotonic()
    seen: set[str] = set()
    for attempt in range(_MAX_RESTARTS):
        left = seconds - (time.monotonic() - started)
        if left < 1 and attempt:
            break
        flags = [
            f"-max_total_time={max(1, round(left))}",
            "-print_final_stats=1",
            f"-artifact_prefix={crashes}/",
        ]
        if seed is not None:
            flags.append(f"-seed={seed + attempt}")
        out = _fuzzer(target, flags, [corpus, CORPUS / target])
        stats = {name: int(value) for name, value in _STAT.findall(out)}
        progress = _PROGRESS.findall(out)
        result.execs += stats.get("number_of_executed_units", int(progress[-1][0]) if progress else 0)
        rss = [stats.get("peak_rss_mb", 0), *(int(r) for _, r in progress)]
        result.max_rss_mb = max(result.max_rss_mb, *rss)
        if out.endswith("exit status 0\n"):
            break
        crash = _crash(target, out)
        if crash.signature not in seen:
            seen.add(crash.signature)
            result.crashes.append(crash)
        if crash.artifact is None:  # not a crash libFuzzer recorded (the child itself failed)
            break
    result.seconds = time.monotonic() - started
    return result


@dataclass(frozen=True)
class Outcome:
    """One input replayed: ``problem`` is empty when it got a defined outcome in bounds."""

    path: Path
    problem: str = ""
    log: str = ""


def replay_files(target: str, files: list[Path]) -> dict[Path, Outcome]:
    """Each input once through ``target`` under the fuzzing limits (memory, time per input)."""
    outcomes: dict[Path, Outcome] = {}
    pending = [f.resolve() for f in files]
    while pending:
        out = _fuzzer(target, [], pending, instrument=False)
        executed = set(_EXECUTED.findall(out))
        outcomes.update({f: Outcome(f) for f in pending if str(f) in executed})
        if out.endswith("exit status 0\n"):
            break
        running = [Path(r) for r in _RUNNING.findall(out) if r not in executed]
        culprit = running[-1] if running else pending[0]
        outcomes[culprit] = Outcome(culprit, _crash(target, out).signature, out[-6000:])
        pending = pending[pending.index(culprit) + 1 :] if culprit in pending else []
    return outcomes


def _crash(target: str, out: str) -> Crash:
    error = _ERROR.search(out)
    kind = error.group(1).strip() if error else "the fuzzer failed to run"
    artifact = _ARTIFACT.search(out)
    signature = kind.split(" (")[0]  # "out-of-memory (used: ...)" -> "out-of-memory"
    if "Uncaught Python exception" in out:
        block = out.split("=== Uncaught Python exception: ===", 1)[1].split("ERROR: libFuzzer", 1)[0]
        signature = exception_signature(block)
    return Crash(target, kind, signature, Path(artifact.group(1)) if artifact else None, out[-6000:])


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def exception_signature(traceback: str) -> str:
    """What tells one crash from another: the exception type (with the field, for an unsafe
    output) and the innermost frame that is not a fuzz check."""
    lines = [ln.strip() for ln in traceback.splitlines() if ln.strip() and not ln.startswith("==")]
    kind, _, message = lines[-1].partition(": ") if lines else ("?", "", "")
    if kind.endswith("UnsafeOutput"):
        kind = f"{kind}({message.split(' ')[0]})"
    frames = [m for m in _FRAME.findall(traceback) if m[2] != "_check"]
    where = f"{Path(frames[-1][0]).name}:{frames[-1][1]} in {frames[-1][2]}" if frames else "?"
    return f"{kind} at {where}"


#: The modules whose coverage guides each target's fuzzing (the rest of the process is not
#: instrumented: instrumenting everything costs seconds at each start and slows every input).
COVERED = {
    "image": ("mediasearch.preprocess", "PIL"),
    "token": ("mediasearch.gateway.paging", "base64", "hmac"),
    "events": ("mediasearch.indexer.events", "mediasearch.objects", "json", "urllib.parse"),
    "filters": ("mediasearch.gateway.filters", "google.protobuf.internal.well_known_types"),
}


def _child(target: str, flags: list[str], instrument: bool = True) -> None:
    """In the child: instrument the code under test, then hand over to libFuzzer (never returns)."""
    import gc

    import atheris
    from PIL import Image

    from mediasearch.dev import fuzz_targets

    Image.init()  # the format plugins load lazily: load them now, so they are instrumented too
    prefixes = COVERED[target] if instrument else ()
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and _covered(getattr(obj, "__module__", None), prefixes):
            atheris.instrument_func(obj)
    # libFuzzer runs argv[0] through the shell to re-execute itself (-minimize_crash): make it the
    # command that starts this child again
    again = " ".join([sys.executable, "-m", "mediasearch.dev.fuzz", "--child", target])
    again += " --" if instrument else " --no-instrument --"
    atheris.Setup([again, *flags], fuzz_targets.TARGETS[target])
    atheris.Fuzz()


def _covered(module: str | None, prefixes: tuple[str, ...]) -> bool:
    return module is not None and any(module == p or module.startswith(p + ".") for p in prefixes)


def _minimize(target: str, crash: Path, seconds: int) -> int:
    """libFuzzer's crash minimisation of ``crash`` (``seconds`` per step, 6 steps at most); the
    smallest input that still crashes is written beside it, as ``<crash>.min``."""
    argv = [sys.executable, "-m", "mediasearch.dev.fuzz", "--child", target, "--"]
    flags = [f"-max_total_time={seconds}", "-minimize_crash=1", f"-exact_artifact_path={crash}.min"]
    proc = subprocess.Popen(_fresh([*argv, *flags, str(crash)]), start_new_session=True)
    try:
        proc.wait(timeout=6 * seconds + 30)
    except subprocess.TimeoutExpired:  # each step has kept the smallest input so far
        os.killpg(proc.pid, signal.SIGKILL)  # the steps libFuzzer started too
        proc.wait()
    return 0 if Path(f"{crash}.min").is_file() else 1


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mediasearch.dev.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60, help="per target (default 60)")
    parser.add_argument("--targets", nargs="*", default=[*TARGET_NAMES, "gateway"], help="default: all")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--no-instrument", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--minimize", type=Path, metavar="CRASH", help="minimise a crash input of --targets")
    parser.add_argument("flags", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.flags, instrument=not args.no_instrument)
        return 0
    if args.minimize:
        return _minimize(args.targets[0], args.minimize, int(args.seconds))
    unknown = set(args.targets) - {*TARGET_NAMES, "gateway"}
    if unknown:
        parser.error(f"unknown targets: {sorted(unknown)}")
    execs = crashes = internal = max_rss = 0
    for target in (t for t in TARGET_NAMES if t in args.targets):
        result = run_target(target, args.seconds)
        _say(result.line())
        for crash in result.crashes:
            _say(f"    crash: {crash.signature} -> {crash.artifact}")
        execs, crashes = execs + result.execs, crashes + len(result.crashes)
        max_rss = max(max_rss, result.max_rss_mb)
    if "gateway" in args.targets:
        from mediasearch.dev.fuzz_gateway import fuzz_live_gateway

        report = fuzz_live_gateway(args.seconds, WORK / "gateway")
        _say(report.line())
        for problem in report.problems[:20]:
            _say(f"    {problem}")
        # an answer outside the defined statuses is an internal error; any other problem (too
        # slow, over the memory limit, a traceback logged, the gateway gone) a crash
        execs, internal = execs + report.calls, internal + report.undefined
        crashes += len(report.problems) - report.undefined
        max_rss = max(max_rss, report.max_rss_mb)
    _say(
        f"fuzz: targets={len(args.targets)} execs={execs} crashes={crashes} "
        f"internal_errors={internal} max_rss_mb={max_rss}"
    )
    return 1 if crashes or internal else 0


if __name__ == "__main__":
    sys.exit(main())
