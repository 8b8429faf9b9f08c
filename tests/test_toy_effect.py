"""The claim the toy world is built to show, with the default recipes (about 12 minutes on 2 cores).

    python -m pytest -m slow tests/test_toy_effect.py
"""
import json

import pytest

from conftest import run_cli


def _unseen_pair_top1(root, recipe):
    proc = run_cli("fit", f"recipe={recipe}", "trainer.enable_progress_bar=false", root=root, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next((root / "runs").glob(f"{recipe}-*/summary.json")).read_text())
    return summary["metrics"]["unseen/pair_top1"], summary["metrics"]["chance/pair_top1"]


@pytest.mark.slow
def test_low_nmi_generalises_to_unseen_pairs_better_than_high_nmi(tmp_path):
    low, chance = _unseen_pair_top1(tmp_path, "toy_low_nmi")
    high, _ = _unseen_pair_top1(tmp_path, "toy_high_nmi")
    assert low >= 3 * chance
    assert high < low
