"""``sde-diffusion bench interop --quick``: the report files, finite positive times, and our loop computing
diffusers' samples (max |ours − diffusers| / max |x| ≤ 1e-4) for every row."""
import json
import math

import pytest

from sde_diffusion import cli

pytest.importorskip("diffusers")

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def test_quick_report_files(tmp_path):
    assert cli.main(["bench", "interop", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "interop.json").read_text())
    rows = data["rows"]
    assert {(r["scheduler"], r["steps"]) for r in rows} == {("DDIMScheduler", 10), ("DPMSolverMultistepScheduler", 10)}
    for r in rows:
        assert r["nfe"] == r["steps"]
        for key in ("diffusers_ms_per_step", "ours_ms_per_step", "net_only_ms_per_step", "ratio", "net_fraction"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["scheduler"], key)
        assert 0 <= r["max_rel_diff"] <= 1e-4, r["scheduler"]
    assert data["meta"]["command"] == f"sde-diffusion bench interop --quick --out {tmp_path}"
    md = (tmp_path / "interop.md").read_text()
    assert md.startswith("# diffusers interop") and "sde-diffusion bench interop --quick" in md
    assert all(f"| {r['scheduler']} |" in md for r in rows)
