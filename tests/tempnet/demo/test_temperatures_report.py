"""The temperature comparison's report spells out the tuning grids the run used, read from the grids themselves."""

from tempnet.demo.temperatures_measure import GRIDS
from tempnet.demo.temperatures_report import describe_grid, render


def _result(grids: dict) -> dict:
    rec = {"kl_to_truth": 0.1, "params": [[1.0]], "grid_size": 41}
    return {"frozen_ce": {"best_fixed": rec}, "joint_tempnet_dro": {"best_fixed": rec},
            "settings": {"seeds": [0], "budget": {"test_docs": 4, "prompts": 2, "new_tokens": 3},
                         "true_logprob_floor": 1e-6, "grids": grids}}


def test_a_grid_is_described_knob_by_knob():
    assert describe_grid("dynatemp", [(t, r, 1.0) for t in (0.5, 2.0) for r in (0.25, 1.0)]) == \
        "dynatemp (T, range, exponent) over T in {0.5, 2} x range in {0.25, 1} x exponent in {1} (4 settings)"
    assert describe_grid("best_fixed", [0.1 * 10 ** (i / 20) for i in range(41)]) == \
        "best_fixed (tau) over tau in 41 log-spaced values in [0.1, 10] (41 settings)"
    assert describe_grid("p_less", [(0.5 + i,) for i in range(12)]) == \
        "p_less (T) over T in 12 values in [0.5, 11.5] (12 settings)"  # evenly, not log-spaced


def test_the_footer_names_the_run_s_grids():
    text = render(_result(GRIDS))
    for method, grid in GRIDS.items():
        assert describe_grid(method, grid) in text, method
    changed = {**GRIDS, "edt": tuple((t0, 0.8, 0.5) for t0 in (1.0, 2.0))}  # another run's EDT grid
    text = render(_result(changed))
    assert "edt (t0, n, theta) over t0 in {1, 2} x n in {0.8} x theta in {0.5} (2 settings)" in text
    assert describe_grid("edt", GRIDS["edt"]) not in text
