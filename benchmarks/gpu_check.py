"""The GPU check: one command, from a bare GPU machine with CUDA, PyTorch, CuPy, pybind11
and pytest installed and no network, in the repository root:

    python benchmarks/gpu_check.py --commit <full hash of the code tested>

1. builds fastconv for sm_90 only (no build isolation: nothing is downloaded),
2. runs the GPU tests (pytest -m gpu) and the compute-sanitizer subset (memcheck,
   racecheck on benchmarks/sanitizer_subset.py),
3. runs `fastconv bench --device cuda` (every suite, cuDNN / cupyx peers), writing
   benchmarks/results/gpu-<date>-<card>.json and .png,
4. writes benchmarks/results/gpu-check-<short commit>.json (also into $OUT when set)
   and prints a short table last.
Sized to finish in well under 8 minutes on an H100.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(cmd, log, env=None, timeout=None):
    """Runs cmd, appending its output to log; returns (exit code, output)."""
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                           text=True, timeout=timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = f"{e.stdout or ''}{e.stderr or ''}\nTIMEOUT after {timeout} s", 124
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}  ({time.time() - t0:.0f} s, exit {rc})\n{out}\n")
    return rc, out


def device_info():
    info = {"name": None, "driver": None, "cuda": None}
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            name, driver = (s.strip() for s in r.stdout.splitlines()[0].split(","))
            info.update(name=name, driver=driver)
    r = subprocess.run(["nvcc", "--version"], capture_output=True, text=True) if shutil.which("nvcc") else None
    if r is not None:
        m = re.search(r"release (\d+\.\d+)", r.stdout)
        info["cuda"] = m.group(1) if m else None
    return info


def test_counts(junit):
    try:
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
        skipped = int(suite.get("skipped"))
        return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}
    except (OSError, ET.ParseError, AttributeError, TypeError):
        return {"passed": 0, "failed": None, "skipped": None}


def sanitizer(tool, log):
    exe = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not Path(exe).exists():
        return None, "compute-sanitizer not found"
    rc, out = sh([exe, "--tool", tool, "--error-exitcode", "0", sys.executable,
                  "benchmarks/sanitizer_subset.py"], log, timeout=240)
    m = re.search(r"ERROR SUMMARY: (\d+) error", out)
    if m:
        return int(m.group(1)), "ok"
    return None, f"no summary (exit {rc})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", required=True, help="full hash of the code under test")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--examples", default="25", help="hypothesis examples per GPU test")
    args = ap.parse_args()
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / f"gpu-check-{args.commit[:10]}.log"
    log.write_text("")
    t_start = time.time()
    steps = {}

    if not args.skip_build:
        t0 = time.time()
        rc, _ = sh([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                    "--no-index", "-e", "."], log,
                   env={"FASTCONV_CUDA": "1", "FASTCONV_CUDA_ARCHS": "90"}, timeout=420)
        steps["build"] = {"exit": rc, "seconds": round(time.time() - t0)}
        if rc:
            print(f"build failed (exit {rc}); see {log}")

    t0 = time.time()
    junit = out_dir / "gpu-junit.xml"
    rc, out = sh([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                  f"--junitxml={junit}", "tests"], log, env={"FASTCONV_EXAMPLES": args.examples},
                 timeout=300)
    tests = test_counts(junit)
    steps["tests"] = {"exit": rc, "seconds": round(time.time() - t0)}

    t0 = time.time()
    mem, mem_note = sanitizer("memcheck", log)
    race, race_note = sanitizer("racecheck", log)
    steps["sanitizer"] = {"seconds": round(time.time() - t0), "memcheck": mem_note, "racecheck": race_note}

    # The benchmark harness on the GPU (under 3 minutes on an H100 by design); its JSON
    # and chart are named by date and card.
    t0 = time.time()
    card = re.sub(r"[^a-z0-9]+", "-", (device_info()["name"] or "gpu").lower()).strip("-")
    stem = f"gpu-{datetime.date.today().isoformat()}-{card}"
    bench_json, bench_png = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    rc_bench, bench_out = sh([sys.executable, "-m", "fastconv", "bench", "--device", "cuda",
                              "--json", str(bench_json), "--plot", str(bench_png)], log,
                             timeout=240)
    steps["bench"] = {"exit": rc_bench, "seconds": round(time.time() - t0),
                      "json": bench_json.name if bench_json.exists() else None}

    result = {
        "commit": args.commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(),
        "tests": tests,
        "sanitizer": {"memcheck_errors": mem, "racecheck_errors": race},
        "steps": steps,
        "seconds": round(time.time() - t_start),
    }
    path = out_dir / f"gpu-check-{args.commit[:10]}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    if os.environ.get("OUT"):
        for f in (path, log, junit, bench_json, bench_png):
            if f.exists():
                shutil.copy(f, os.environ["OUT"])
    print(out[-3000:])
    print(f"\nGPU check of {args.commit[:10]} on {result['device']['name']} "
          f"(driver {result['device']['driver']}, CUDA {result['device']['cuda']}), {result['seconds']} s")
    print(f"  build      {steps.get('build', {'exit': 'skipped'})}")
    print(f"  tests      passed {tests['passed']}  failed {tests['failed']}  skipped {tests['skipped']}")
    print(f"  memcheck   {mem} errors ({mem_note})")
    print(f"  racecheck  {race} errors ({race_note})")
    print(f"  bench      exit {rc_bench}, {steps['bench']['seconds']} s -> {steps['bench']['json']}")
    print(bench_out[-6000:])
    print(f"  wrote {path.relative_to(ROOT)}")
    ok = tests["failed"] == 0 and tests["passed"] > 0 and mem == 0 and race == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
