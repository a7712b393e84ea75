"""benchmarks/gpu_check.py, the GPU check, on a machine without a GPU: its parsers read
the sanitizers' recorded outputs right (clean, dirty, crashed, refused), its deadline
holds, it writes the partial JSON after every step, and its dry run goes end to end."""

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDED = Path(__file__).resolve().parent / "data" / "sanitizer"
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

# file, exit status it came with, (ok, errors, warnings)
RECORDINGS = [
    ("memcheck-clean", 0, (True, 0, None)),
    ("memcheck-dirty", 0, (False, 2, None)),
    ("memcheck-crash", 1, (False, 0, None)),
    ("memcheck-refused", 1, (False, None, None)),
    ("racecheck-clean", 0, (True, 0, 0)),
    ("racecheck-dirty", 0, (False, 1, 1)),
    ("racecheck-warnings", 0, (True, 0, 2)),
    ("synccheck-clean", 0, (True, 0, None)),
    ("initcheck-clean", 0, (True, 0, None)),
    ("initcheck-dirty", 0, (False, 1, None)),
]


@pytest.mark.parametrize("name,rc,want", RECORDINGS, ids=[r[0] for r in RECORDINGS])
def test_sanitizer_summaries_are_read_per_tool(name, rc, want):
    tool = name.split("-")[0]
    got = gpu_check.parse_sanitizer(tool, (RECORDED / f"{name}.txt").read_text(), rc)
    assert (got["ok"], got["errors"], got["warnings"]) == want, got


def test_a_crash_is_never_clean_whatever_the_summary_says():
    text = (RECORDED / "memcheck-crash.txt").read_text()
    assert "ERROR SUMMARY: 0 errors" in text
    got = gpu_check.parse_sanitizer("memcheck", text, 1)
    assert not got["ok"] and "did not finish" in got["note"] and "exit 1" in got["note"]
    # The completion line alone is not enough either: the exit status must be 0.
    clean = (RECORDED / "memcheck-clean.txt").read_text()
    assert not gpu_check.parse_sanitizer("memcheck", clean, 139)["ok"]
    # racecheck's summary is its own: memcheck's pattern must not be what reads it.
    race = (RECORDED / "racecheck-clean.txt").read_text()
    assert not gpu_check.parse_sanitizer("memcheck", race, 0)["ok"]


def test_junit_counts_add_up_and_a_missing_file_is_a_failure(tmp_path):
    a = tmp_path / "a.xml"
    a.write_text('<testsuites><testsuite tests="10" failures="1" errors="1" skipped="3"/>'
                 '</testsuites>')
    b = tmp_path / "b.xml"
    b.write_text('<testsuite tests="4" failures="0" errors="0" skipped="0"/>')
    assert gpu_check.junit_counts([a, b]) == {"passed": 9, "failed": 2, "skipped": 3}
    assert gpu_check.junit_counts([tmp_path / "missing.xml"])["failed"] == 1


def _check(tmp_path, monkeypatch, deadline=540, steps=None):
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)
    argv = ["--commit", "0123456789abcdef", "--deadline", str(deadline), "--out",
            str(tmp_path / "out")]
    args = argparse.Namespace(
        commit="0123456789abcdef", deadline=deadline, steps=steps, skip=None, examples="2",
        dry_run=False, out=str(tmp_path / "out"))
    return argv, args


def test_a_timed_out_command_is_killed_with_its_children_and_its_output_kept(tmp_path,
                                                                             monkeypatch):
    _, args = _check(tmp_path, monkeypatch)
    check = gpu_check.Check(args)
    t0 = time.monotonic()
    # The shell's child (sleep) would outlive a kill of the shell alone.
    rc, out = check.run(["bash", "-c", "echo started; sleep 30; echo never"], timeout=1)
    assert rc == 124 and time.monotonic() - t0 < 10
    assert isinstance(out, str) and "started" in out and "TIMEOUT" in out and "never" not in out
    assert "started" in check.log.read_text()


def test_partial_json_after_every_step_and_the_deadline_skips_what_cannot_fit(tmp_path,
                                                                              monkeypatch):
    """Steps replaced by sleeps: each writes a partial JSON into the out folder before
    the next starts; with a 4 s deadline the later steps are recorded as skipped and
    the run ends in time."""
    seen = []
    monkeypatch.setattr(gpu_check, "STEPS", {"info": (1, 30), "memcheck": (1, 30),
                                             "tests": (200, 300), "synccheck": (1, 30)})

    def fake(self, *a):
        # What is in the out folder when a step starts is everything done before it.
        partial = json.loads((tmp_path / "out" / self.json.name).read_text())
        assert partial["complete"] is False and partial["steps"] == self.result["steps"]
        seen.append(a)
        time.sleep(1)
        return {"ok": True}, "fine"

    for name in ("step_info", "step_sanitizer", "step_tests"):
        monkeypatch.setattr(gpu_check.Check, name, fake)
    monkeypatch.setattr(gpu_check, "RESERVE", 1)
    argv, _ = _check(tmp_path, monkeypatch, deadline=4)
    t0 = time.monotonic()
    rc = gpu_check.main(argv)
    assert time.monotonic() - t0 < 4.5
    result = json.loads((tmp_path / "out" / "gpu-check-0123456789.json").read_text())
    assert result["complete"] is True and rc == 1  # no tests ran: not a pass
    assert result["steps"]["info"]["ok"] and result["steps"]["memcheck"]["ok"]
    assert result["steps"]["tests"] == {"not_run": "deadline"}
    assert len(seen) == 3  # info, memcheck and the last, short step
    assert (tmp_path / "out" / "gpu-check-0123456789.log").exists()


def test_steps_are_chosen_and_unknown_names_refused(tmp_path, monkeypatch):
    _, args = _check(tmp_path, monkeypatch, steps="tests,memcheck")
    assert gpu_check.choose_steps(args) == ["memcheck", "tests"]
    args.steps, args.skip = None, "build,bench"
    assert "build" not in gpu_check.choose_steps(args) and "bench" not in gpu_check.choose_steps(args)
    args.skip = "benchh"
    with pytest.raises(SystemExit, match="benchh"):
        gpu_check.choose_steps(args)


def test_dry_run_goes_end_to_end(tmp_path):
    """Every step (build skipped) on the stand-ins: a line each, the JSON and the
    bench's JSON and PNG in the out folder, the commit carried to the bench."""
    out = tmp_path / "out"
    commit = "f" * 40
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                        "--commit", commit, "--out", str(out), "--examples", "1"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for step in ("info", "memcheck", "racecheck", "tests", "sweep", "bench", "synccheck",
                 "initcheck"):
        assert any(line.split("] ", 1)[-1].startswith(step) for line in p.stdout.splitlines()), step
    result = json.loads((out / f"gpu-check-{commit[:10]}.json").read_text())
    assert result["complete"] and result["dry_run"]
    assert result["sanitizer"]["memcheck_errors"] == 0
    assert result["sanitizer"]["racecheck_errors"] == 0
    benches = list(out.glob("gpu-*-dry-run.json"))
    assert len(benches) == 1 and list(out.glob("gpu-*-dry-run.png"))
    bench = json.loads(benches[0].read_text())
    assert bench["commit"] == commit
    assert all("timing" in r for r in bench["rows"])
    sweeps = list(out.glob("sweep-*-dry-run.json"))
    tables = list(out.glob("autotable-*-dry-run.json"))
    assert len(sweeps) == 1 and len(tables) == 1
    rows = json.loads(sweeps[0].read_text())["rows"]
    assert any(r["side"] == "fastconv" and "ms" in r for r in rows)
    assert any(r["side"] == "cudnn-strict" and "ms" in r for r in rows)
    (card,) = json.loads(tables[0].read_text())["cards"].values()
    assert card["commit"] == commit and card["classes"]


def test_a_run_split_over_two_commands_keeps_both_halves(tmp_path):
    """--resume: the second call keeps the first call's steps for the same commit and
    judges them all; a JSON of another commit is refused."""
    commit, results = "e" * 40, tmp_path / "results"

    def run(*extra):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                               "--dry-run", "--commit", commit, "--results", str(results),
                               "--out", str(tmp_path / "out"), *extra],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)

    first = run("--steps", "info,memcheck")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    second = run("--steps", "racecheck", "--resume")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    result = json.loads((results / f"gpu-check-{commit[:10]}.json").read_text())
    assert set(result["steps"]) == {"info", "memcheck", "racecheck"} and result["complete"]
    assert len(result["runs"]) == 2
    assert result["sanitizer"]["memcheck_errors"] == 0 == result["sanitizer"]["racecheck_errors"]
    log = (results / f"gpu-check-{commit[:10]}.log").read_text()
    assert "memcheck" in log and "racecheck" in log  # the log is appended, not restarted
    other_commit = "e" * 10 + "d" * 30  # the same short name, another commit
    other = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                            "--dry-run", "--commit", other_commit, "--results", str(results),
                            "--resume", "--steps", "info"], capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert other.returncode != 0 and f"not {other_commit}" in other.stderr
