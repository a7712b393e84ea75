"""tools/mutate.py's planted bugs still apply to today's sources: each original text
occurs exactly once in its file, so an edit of a kernel cannot quietly retire a mutant.
(The mutation run itself rebuilds once per mutant and is run by hand: see its docstring.)"""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("mutate", ROOT / "tools" / "mutate.py")
mutate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutate)


def test_every_mutant_applies_exactly_once():
    assert len(mutate.MUTANTS) >= 21
    mutate.check_mutants(mutate.MUTANTS, ROOT)  # exits naming the offenders otherwise


def test_a_mutant_that_no_longer_applies_is_named(tmp_path):
    import pytest

    m = mutate.MUTANTS[0]
    (tmp_path / m.path).parent.mkdir(parents=True)
    (tmp_path / m.path).write_text("nothing of the original here\n")
    with pytest.raises(SystemExit, match=m.name):
        mutate.check_mutants([m], tmp_path)
