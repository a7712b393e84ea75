"""The GPU check: one command, from a bare GPU machine with CUDA, PyTorch, CuPy, pybind11
and pytest installed and no network, in the repository root:

    python benchmarks/gpu_check.py --commit <full hash of the code tested>

Steps, in this order (a fault is located by the sanitizers in the first minutes, before
the test suite, where one illegal access would poison the CUDA context of a process):

  build      pip install -e . for sm_90 only, no build isolation, nothing downloaded,
             one nvcc per .cu file in parallel (all cores)
  info       `fastconv info`: the device, the architectures built, the CUDA versions,
             and, where the backend is unusable, the real reason
  memcheck   compute-sanitizer on benchmarks/sanitizer_subset.py (CuPy's memory pool
  racecheck  off, PyTorch's caching allocator off, so every overrun meets a real edge)
  tests      pytest -m gpu, in several processes where pytest-xdist is present
  sweep      `fastconv sweep --device cuda`: every conv2d variant x precision on the
             suites' layers against cuDNN in the same precision, and auto's table
             fragment for this card (autotable-<card>.json; fold it into
             fastconv/autotable.json with `python -m fastconv.sweep --merge`)
  bench      `fastconv bench --device cuda`, every suite, peers and ceilings in the run
  synccheck  the subset again under the two further tools, if the time allows
  initcheck

Every step prints one flushed line; after every step the log and a partial JSON
(`"complete": false` until the end) are written to benchmarks/results/ and into $OUT,
so a run cut short by the device command's limit still brings back what it did. One
overall deadline (--deadline, 540 s by default) bounds the whole run: a step gets what
is left, less a reserve for writing the results, and a step that cannot start in time
is recorded as skipped. --steps / --skip choose steps for a rerun.

The whole plan takes more than one device command (10 minutes): run it as two, the
second with --resume and --steps, on the same commit; the JSON then holds both calls'
steps and the verdict is over all of them (benchmarks/NOTES.md, "The GPU check's plan").

--dry-run exercises all of it on a machine without a GPU: the build is skipped, the
sanitizer steps run the subset on NumPy arrays under benchmarks/standin.py, which
prints a recorded summary of each tool, and the bench step runs the GPU harness on CPU
tensors with a stand-in timer. Its results go to a scratch folder, never beside a real
run's, and are copied to --out (or $OUT) as usual.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

# Expected seconds of each step on an H200 machine (16 cores), and the most it may take.
# The expectations are what the run is planned with: build 16 .cu files for one arch in
# parallel, sanitizers ~10x the subset's native few seconds plus CUDA start-up, the
# bench "under 3 minutes" by design.
STEPS = {  # name: (expected, cap)
    "build": (120, 300),
    "info": (5, 30),
    "memcheck": (60, 150),
    "racecheck": (60, 150),
    "tests": (120, 240),
    "sweep": (120, 200),
    "bench": (180, 240),
    "synccheck": (40, 120),
    "initcheck": (40, 120),
}
SANITIZERS = ("memcheck", "racecheck", "synccheck", "initcheck")
OPTIONAL = ("synccheck", "initcheck")  # run if the deadline leaves time for them
RESERVE = 10  # seconds kept back from every step for writing the results
SUBSET_DONE = "sanitizer subset done"


# ------------------------------------------------------------------ parsing tool output

_ERROR_SUMMARY = re.compile(r"^=+ ERROR SUMMARY: (\d+) errors?\b", re.M)
_RACE_SUMMARY = re.compile(
    r"^=+ RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", re.M)


def parse_sanitizer(tool, output, returncode):
    """What one compute-sanitizer run says: {"errors", "warnings", "ok", "note"}.

    memcheck, synccheck and initcheck end with "ERROR SUMMARY: N errors"; racecheck with
    "RACECHECK SUMMARY: H hazards displayed (E errors, W warnings)". A run counts as
    clean only if its own summary says 0 errors, the subset printed its completion line
    (a crash before the end leaves none) and the exit status is 0 (the sanitizer passes
    the application's through)."""
    if tool == "racecheck":
        m = _RACE_SUMMARY.search(output)
        errors, warnings = (int(m.group(2)), int(m.group(3))) if m else (None, None)
    else:
        m = _ERROR_SUMMARY.search(output)
        errors, warnings = (int(m.group(1)), None) if m else (None, None)
    problems = []
    if m is None:
        problems.append(f"no {tool} summary")
    if SUBSET_DONE not in output:
        problems.append("the subset did not finish")
    if returncode != 0:
        problems.append(f"exit {returncode}")
    ok = not problems and errors == 0
    note = "; ".join(problems) if problems else f"{errors} errors" + (
        f", {warnings} warnings" if warnings is not None else "")
    return {"errors": errors, "warnings": warnings, "ok": ok, "note": note}


def junit_counts(paths):
    """passed / failed / skipped summed over JUnit XML files (a missing or unreadable
    file counts as one failure: its process did not get to write it)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for path in paths:
        try:
            root = ET.parse(path).getroot()
            suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
            for s in suites:
                total, skipped = int(s.get("tests")), int(s.get("skipped"))
                failed = int(s.get("failures")) + int(s.get("errors"))
                counts["passed"] += total - failed - skipped
                counts["failed"] += failed
                counts["skipped"] += skipped
        except (OSError, ET.ParseError, TypeError, ValueError):
            counts["failed"] += 1
    return counts


def _text(data):
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


# ------------------------------------------------------------------------------ the run


class Check:
    def __init__(self, args):
        self.args = args
        self.t_start = time.monotonic()
        self.deadline = self.t_start + args.deadline
        self.results = ROOT / "benchmarks" / "results"
        self.out = Path(args.out) if args.out else (
            Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
        if args.dry_run:  # never beside a real run's results
            self.results = Path(tempfile.mkdtemp(prefix="gpu-check-dry-"))
            self.out = self.out or self.results / "out"
        if getattr(args, "results", None):
            self.results = Path(args.results)
        self.results.mkdir(parents=True, exist_ok=True)
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
        short = args.commit[:10]
        self.log = self.results / f"gpu-check-{short}.log"
        self.json = self.results / f"gpu-check-{short}.json"
        self.env = {**os.environ, "FASTCONV_COMMIT": args.commit, "PYTHONUNBUFFERED": "1"}
        self.files = []  # artifacts to bring back, besides the log and the JSON
        self.result = {
            "commit": args.commit, "date": _now(), "dry_run": args.dry_run,
            "deadline_s": args.deadline, "complete": False, "device": None,
            "tests": None, "sanitizer": {}, "steps": {},
        }
        earlier = self.resumed() if getattr(args, "resume", False) else None
        if earlier:  # an earlier call's steps stand; this call's replace the ones it reruns
            for key in ("device", "tests", "sanitizer", "steps", "fastconv_info"):
                if earlier.get(key) is not None:
                    self.result[key] = earlier[key]
            self.result["runs"] = earlier.get("runs", [earlier["date"]]) + [self.result["date"]]
        else:
            self.log.write_text("")

    def resumed(self):
        """The JSON an earlier call of --resume's commit left here (copied back into the
        tree between two device commands), or None; another commit's is refused."""
        if not self.json.exists():
            return None
        earlier = json.loads(self.json.read_text())
        if earlier.get("commit") != self.args.commit:
            sys.exit(f"--resume: {self.json} is of commit {earlier.get('commit')}, "
                     f"not {self.args.commit}")
        return earlier

    # --- running commands

    def left(self):
        return self.deadline - time.monotonic()

    def say(self, line):
        print(f"[{time.monotonic() - self.t_start:5.0f} s] {line}", flush=True)

    def run(self, cmd, timeout, env=None):
        """Runs cmd in its own process group, output to the log; on timeout the whole
        group is killed (a sanitizer's child too). Returns (exit code, output)."""
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(env or {})}, text=True,
                             errors="replace", stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=max(1, timeout))
            rc = p.returncode
        except subprocess.TimeoutExpired as e:
            os.killpg(p.pid, signal.SIGKILL)
            rest, _ = p.communicate()
            out = _text(e.output) + _text(rest) + f"\nTIMEOUT after {timeout:.0f} s"
            rc = 124
        with open(self.log, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}  ({time.monotonic() - t0:.0f} s, exit {rc})\n"
                    f"{out}\n")
        return rc, out

    # --- steps

    def step_build(self, timeout):
        rc, out = self.run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                            "--no-deps", "--no-index", "-e", "."], timeout,
                           env={"FASTCONV_CUDA": "1", "FASTCONV_CUDA_ARCHS": "90",
                                "FASTCONV_BUILD_JOBS": str(os.cpu_count() or 8)})
        return {"exit": rc, "ok": rc == 0}, "ok" if rc == 0 else f"failed (exit {rc})"

    def step_info(self, timeout):
        rc, out = self.run([sys.executable, "-m", "fastconv", "info"], timeout)
        self.result["device"] = device_info()
        self.result["fastconv_info"] = out.strip().splitlines()
        usable = rc == 0 and "GPU backend usable" in out
        return ({"exit": rc, "ok": rc == 0, "gpu_usable": usable},
                out.strip().splitlines()[-1] if out.strip() else f"exit {rc}")

    def step_sanitizer(self, tool, timeout):
        subset = [sys.executable, str(HERE / "sanitizer_subset.py")]
        if self.args.dry_run:
            cmd = [sys.executable, str(HERE / "standin.py"), "sanitizer", "--tool", tool,
                   "--", *subset, "--cpu"]
        else:
            exe = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
            if not Path(exe).exists():
                return {"ok": False, "note": "compute-sanitizer not found"}, "not found"
            cmd = [exe, "--tool", tool, *subset]
        # No memory pools: memcheck sees an overrun only where an allocation ends.
        rc, out = self.run(cmd, timeout, env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        parsed = parse_sanitizer(tool, out, rc)
        self.result["sanitizer"][f"{tool}_errors"] = parsed["errors"]
        if parsed["warnings"] is not None:
            self.result["sanitizer"][f"{tool}_warnings"] = parsed["warnings"]
        return {"exit": rc, **parsed}, parsed["note"]

    def step_tests(self, timeout):
        junit = self.results / "gpu-junit.xml"
        junit.unlink(missing_ok=True)  # a stale file must not pass for this run's
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               f"--junitxml={junit}", "tests"]
        if _has_module("xdist"):  # several processes: one poisoned context stays in one
            cmd[3:3] = ["-n", "4", "--dist", "loadfile"]
        if _has_module("pytest_timeout"):
            cmd[3:3] = ["--timeout", "120"]
        rc, out = self.run(cmd, timeout, env={"FASTCONV_EXAMPLES": self.args.examples})
        counts = junit_counts([junit])
        self.result["tests"] = counts
        self.files.append(junit)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        ok = rc in (0, 5) and counts["failed"] == 0 and (counts["passed"] > 0 or
                                                        self.args.dry_run)
        return ({"exit": rc, "ok": ok, **counts},
                f"passed {counts['passed']} failed {counts['failed']} skipped "
                f"{counts['skipped']} ({last})")

    def _card(self):
        return re.sub(r"[^a-z0-9]+", "-", ((self.result["device"] or {}).get("name")
                                           or "gpu").lower()).strip("-")

    def step_sweep(self, timeout):
        stem = f"sweep-{datetime.date.today().isoformat()}-{self._card()}"
        if self.args.dry_run:
            stem += "-dry-run"
        js = self.results / f"{stem}.json"
        table = self.results / f"autotable-{self._card()}{'-dry-run' if self.args.dry_run else ''}.json"
        for f in (js, table):
            f.unlink(missing_ok=True)
        args = ["sweep", "--device", "cuda", "--json", str(js), "--table", str(table),
                "--commit", self.args.commit]
        if self.args.dry_run:
            cmd = [sys.executable, str(HERE / "standin.py"), *args]
        else:
            cmd = [sys.executable, "-m", "fastconv", *args]
        rc, out = self.run(cmd, timeout)
        timed = refused = classes = 0
        if js.exists():
            rows = json.loads(js.read_text())["rows"]
            timed = sum("ms" in r for r in rows)
            refused = sum("refused" in r or "error" in r for r in rows)
        if table.exists():
            cards = json.loads(table.read_text())["cards"]
            classes = sum(len(c["classes"]) for c in cards.values())
        self.files += [js, table]
        ok = rc == 0 and js.exists() and table.exists()
        return ({"exit": rc, "ok": ok, "json": js.name if js.exists() else None,
                 "timed": timed, "refused": refused, "classes": classes},
                f"exit {rc}, {timed} timings, {refused} refused, {classes} layer classes")

    def step_bench(self, timeout):
        stem = f"gpu-{datetime.date.today().isoformat()}-{self._card()}"
        if self.args.dry_run:
            stem += "-dry-run"
        js, png = self.results / f"{stem}.json", self.results / f"{stem}.png"
        for f in (js, png):  # stale files of the same day must not pass for this run's
            f.unlink(missing_ok=True)
        args = ["bench", "--device", "cuda", "--json", str(js), "--plot", str(png)]
        if self.args.dry_run:
            cmd = [sys.executable, str(HERE / "standin.py"), *args]
        else:
            cmd = [sys.executable, "-m", "fastconv", *args]
        rc, out = self.run(cmd, timeout)
        rows = errors = 0
        if js.exists():
            data = json.loads(js.read_text())
            rows = len(data["rows"])
            errors = sum(r.get("mode") == "error" for r in data["rows"])
        self.files += [js, png]
        ok = rc == 0 and js.exists() and errors == 0
        return ({"exit": rc, "ok": ok, "json": js.name if js.exists() else None,
                 "rows": rows, "error_rows": errors},
                f"exit {rc}, {rows} rows ({errors} errors) -> {js.name if js.exists() else '-'}")

    # --- bookkeeping

    def write(self, complete=False):
        self.result["complete"] = complete
        self.result["seconds"] = round(time.monotonic() - self.t_start)
        self.json.write_text(json.dumps(self.result, indent=1) + "\n")
        if self.out:
            for f in (self.json, self.log, *self.files):
                if f.exists() and f.parent != self.out:
                    shutil.copy(f, self.out)

    def verdict(self):
        """Every step that ran succeeded; on a GPU also: tests passed > 0 and memcheck
        and racecheck ran clean (a check that left them out proves nothing)."""
        steps = self.result["steps"]
        ok = all(name in OPTIONAL if "not_run" in s else s["ok"] for name, s in steps.items())
        if not self.args.dry_run:
            tests = self.result["tests"] or {}
            ok = ok and tests.get("failed") == 0 and tests.get("passed", 0) > 0 and all(
                steps.get(t, {}).get("ok") for t in ("memcheck", "racecheck"))
        return ok


def _has_module(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def device_info():
    info = {"name": None, "driver": None, "cuda": None, "l2_bytes": None}
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            name, driver = (s.strip() for s in r.stdout.splitlines()[0].split(","))
            info.update(name=name, driver=driver)
    if shutil.which("nvcc"):
        r = subprocess.run(["nvcc", "--version"], capture_output=True, text=True)
        m = re.search(r"release (\d+\.\d+)", r.stdout)
        info["cuda"] = m.group(1) if m else None
    return info


def choose_steps(args):
    names = list(STEPS)
    if args.steps:
        wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            sys.exit(f"--steps: unknown step(s) {', '.join(unknown)}; choose from {', '.join(names)}")
        names = [n for n in names if n in wanted]
    skip = {s.strip() for s in (args.skip or "").split(",") if s.strip()}
    if skip - set(STEPS):
        sys.exit(f"--skip: unknown step(s) {', '.join(sorted(skip - set(STEPS)))}")
    if args.dry_run:
        skip.add("build")
    return [n for n in names if n not in skip]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", required=True, help="full hash of the code under test")
    ap.add_argument("--deadline", type=float, default=540,
                    help="seconds for the whole run, results written included (default 540)")
    ap.add_argument("--steps", help=f"comma-separated steps to run, of: {', '.join(STEPS)}")
    ap.add_argument("--skip", help="comma-separated steps to leave out (e.g. build on a rerun)")
    ap.add_argument("--results", help="where the log, the JSON and the suites' files go "
                                      "(default benchmarks/results; a dry run: a scratch folder)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the steps an earlier call recorded for this commit in "
                         "benchmarks/results/ (the run split over two device commands)")
    ap.add_argument("--examples", default="25", help="hypothesis examples per GPU test")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: stand-ins for the sanitizer and the CUDA timer, build skipped")
    ap.add_argument("--out", help="where to copy the results after each step (default $OUT)")
    args = ap.parse_args(argv)
    steps = choose_steps(args)
    check = Check(args)
    plan = ", ".join(f"{s} ~{STEPS[s][0]} s" for s in steps)
    check.say(f"gpu check of {args.commit[:10]}{' (dry run)' if args.dry_run else ''}: "
              f"deadline {args.deadline:.0f} s; plan {plan} "
              f"(expected {sum(STEPS[s][0] for s in steps)} s)")
    check.write()  # something comes back even if the first step never ends
    for name in steps:
        budget = min(STEPS[name][1], check.left() - RESERVE)
        if budget < min(STEPS[name][0] / 4, 30):
            check.result["steps"][name] = {"not_run": "deadline"}
            check.say(f"{name:10s} skipped: {check.left():.0f} s left before the deadline")
            check.write()
            continue
        t0 = time.monotonic()
        if name in SANITIZERS:
            record, line = check.step_sanitizer(name, budget)
        else:
            record, line = getattr(check, f"step_{name}")(budget)
        record["seconds"] = round(time.monotonic() - t0)
        check.result["steps"][name] = record
        check.say(f"{name:10s} {'ok  ' if record.get('ok') else 'FAIL'} {line} "
                  f"({record['seconds']} s)")
        check.write()
        if name == "build" and not record["ok"]:
            check.say("the build failed: nothing else can run; see the log")
            break
    ok = check.verdict()
    check.write(complete=True)
    check.say(f"{'PASS' if ok else 'FAIL'}: wrote {check.json}"
              + (f" (copied to {check.out})" if check.out else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
