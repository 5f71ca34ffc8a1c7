"""converters/ekit_recover.py: the convert step's own threshold check must read the thresholds
exactly as the host gate (edgekiln/plan.py) does, the try schedule, the summary text."""

from __future__ import annotations

import sys

import pytest

from edgekiln.plan import GATES, check_thresholds
from edgekiln.ui import precision_text
from tests.unit.test_ekit_task import CONVERTERS

sys.path.insert(0, str(CONVERTERS))

from ekit import recover as R  # noqa: E402


def test_gate_names_match_the_host():
    for name, (metric, kind, _) in GATES.items():
        assert R.gate(name) == (metric, kind), name


@pytest.mark.parametrize("metrics,limits", [
    ({"top1_agreement": 0.95}, {"min_top1_agreement": 1.0}),
    ({"top1_agreement": 1.0}, {"min_top1_agreement": 1.0}),
    ({"det_f1": 0.857, "det_recall": 0.75}, {"min_det_f1": 0.95, "min_det_recall": 0.9}),
    ({"accuracy": 0.8, "source_accuracy": 0.9}, {"max_accuracy_drop": 5.0}),
    ({"accuracy": 0.9, "source_accuracy": 0.95}, {"max_accuracy_drop": 5.0}),
    ({"max_abs": 0.2}, {"max_abs": 0.1}),
    ({"cosine": 0.99, "nonfinite": 3}, {"min_cosine": 0.9}),
    ({"miou": None}, {"min_miou": 0.9}),
])
def test_misses_agree_with_the_host_gate(metrics, limits):
    assert bool(R.misses(metrics, limits)) == bool(check_thresholds(metrics, limits))


def test_score_orders_by_the_worst_gate():
    limits = {"min_det_f1": 0.95, "min_det_recall": 0.9}
    assert R.score({"det_f1": 0.857, "det_recall": 0.75}, limits) < R.score({"det_f1": 0.9, "det_recall": 0.9}, limits)
    assert R.score({"det_f1": 1.0, "det_recall": 1.0}, limits) == 0.0
    # one gate far below outweighs another slightly better
    two = {"min_region_f1": 0.9, "min_cosine": 0.9}
    assert R.score({"region_f1": 0.857, "cosine": 0.80}, two) > R.score({"region_f1": 0.762, "cosine": 0.81}, two)


def test_schedule():
    assert R.schedule(10) == list(range(1, 11))
    assert R.schedule(3) == [1, 2, 3]
    assert R.schedule(1) == [1]
    assert R.schedule(0) == []


def test_doubling_schedule_reaches_the_limit_in_few_tries():
    assert R.schedule(16, "doubling") == [1, 2, 4, 8, 16]
    assert R.schedule(10, "doubling") == [1, 2, 4, 8, 10]
    assert R.schedule(1, "doubling") == [1]
    assert R.schedule(0, "doubling") == []


def test_rank_per_mac_tries_the_cheapest_fix_first():
    rows = [{"layer": "big", "sensitivity": 0.010}, {"layer": "small", "sensitivity": 0.004},
            {"layer": "unknown", "sensitivity": 0.020}, {"layer": "mid", "sensitivity": 0.006}]
    macs = {"big": 1000, "small": 10, "mid": 100, "unknown": 0}
    assert [r["layer"] for r in R.rank(rows, macs, "sensitivity")] == ["unknown", "big", "mid", "small"]
    assert [r["layer"] for r in R.rank(rows, macs, "per_mac")] == ["small", "mid", "big", "unknown"]
    with pytest.raises(ValueError):
        R.rank(rows, macs, "largest")


def test_no_try_starts_that_would_end_past_the_budget():
    def never(*_):
        raise AssertionError("no try fits the budget")

    ranked = [{"layer": n, "op": "Conv", "sensitivity": 1.0} for n in "abc"]
    out = R.search(ranked, never, never, {}, {"min_cosine": 0.9}, 3, max_seconds=5.0, first_try_seconds=6.0)
    assert out["budget_spent"] and not out["passed"] and out["tries"] == [] and out["float_layers"] == []


def test_no_try_starts_below_the_int8_mac_floor_and_every_try_records_its_share(monkeypatch):
    built = []
    # every try misses (the measuring itself is tested with the gates above): only the schedule is judged
    monkeypatch.setattr(R, "attempt", lambda ref, outputs, names, thresholds, started, what, **row: dict(
        row, metrics={}, misses=["min_cosine"], passed=False, score=-1.0, seconds=0.0))
    macs = {"a": 5, "b": 10, "c": 1, "rest": 84}

    def build(layers):
        built.append(list(layers))
        return "artifact"

    ranked = [{"layer": n, "op": "Conv", "sensitivity": 1.0} for n in "abc"]
    share = lambda layers: (100 - sum(macs[n] for n in layers)) / 100  # noqa: E731
    out = R.search(ranked, build, lambda _: [], {}, {"min_cosine": 0.9}, 3, max_seconds=60.0,
                   share=share, min_share=0.85)
    assert built == [["a"], ["a", "b"]]  # a + b + c float: 84 % int8, never built
    assert [t["int8_mac_share"] for t in out["tries"]] == [0.95, 0.85]
    assert all(t["int8_mac_share"] >= 0.85 for t in out["tries"])


def test_precision_text_never_plain_int8_for_a_mixed_model():
    assert precision_text("int8", {}) == "int8"
    assert precision_text("int8", {"recovery": {"float_layers": [{"layer": "a"}]}}) == "int8 (1 layer float)"
    assert precision_text("int8", {"recovery": {"float_layers": [{}, {}, {}]}}) == "int8 (3 layers float)"


def test_time_budget_is_the_smaller_of_seconds_and_the_plain_time_multiple():
    opts = {"recover_max_seconds": 600, "recover_time_factor": 3.0}
    assert R.time_budget(opts, 10.0, 4.0) == pytest.approx(16.0)  # (3 - 1) x 10 s, 4 s already spent ranking
    assert R.time_budget(opts, 1000.0, 0.0) == 600.0  # the seconds cap wins
    assert R.time_budget(opts, 10.0, 30.0) == 0.0  # spent: no try at all
    assert R.time_budget(opts, None, 5.0) == 600.0  # plain time unknown: the seconds cap only


def _qdq_graph():
    """x -> Q/DQ -> Conv(int8 weights) -> y, the activation region on x feeding the Conv."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), "wq"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(np.array(0, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["wq", "s", "wz"], ["wd"], name="wdq"),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_regions_are_activation_qdq_and_dropping_one_leaves_the_tensor_float():
    pytest.importorskip("onnx")
    from ekit import regions

    m = _qdq_graph()
    found = regions.qdq_regions(m)
    assert [(r["tensor"], r["consumers"], r["compute"]) for r in found] == [("x", ["Conv"], ["conv"])]
    dropped = regions.drop_regions(m, ["x"])
    assert [n.op_type for n in dropped.graph.node] == ["DequantizeLinear", "Conv"]  # the weight DQ stays
    assert list(dropped.graph.node[1].input[:1]) == ["x"]
    assert len(m.graph.node) == 4  # the original is untouched


def test_task_proxy_counts_what_the_task_metric_sees():
    import numpy as np

    from ekit import regions

    ref = [np.array([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])]
    assert regions.task_proxy({"task": "classify"}, ref, ref) == 0.0
    flipped = [np.array([[0.0, 4.0, 0.0], [0.0, 3.0, 0.0]])]
    assert 1.0 < regions.task_proxy({"task": "classify"}, ref, flipped) < 2.0  # one flip + the TV change
    assert regions.task_proxy(None, ref, [ref[0] * 2]) == pytest.approx(0.0, abs=1e-12)  # cosine: scale-free
    assert regions.task_proxy({"task": "classify"}, ref, [np.full((2, 3), np.nan)]) == float("inf")


def test_rank_and_verify_takes_head_regions_verifies_the_best_and_keeps_the_int8_mac_floor(tmp_path, monkeypatch):
    """The runtime-free core of the region search (shared by ORT Q/DQ and OpenVINO FakeQuantize regions):
    a head region is a candidate whatever its noise, the one leaving < 85 % of MACs int8 is never tried,
    the real metric verifies the best by proxy, and the first passing try stops the search."""
    import numpy as np

    from ekit import regions

    monkeypatch.chdir(tmp_path)  # no work/source/task.json: the proxy is 1 - cosine
    rng = np.random.default_rng(0)
    f_out = [rng.normal(size=(4, 32))]
    noise = {"a": 0.5, "b": 0.4, "c": 0.3, "head": 0.0}  # "head" feeds a head conv: lowest noise, still ranked
    # what each region's int8 noise does to the outputs: dropping it removes that much of the error
    harm = {"a": 0.05, "b": 0.0, "c": 0.5, "head": 1.0}
    errs = {k: rng.normal(size=(4, 32)) for k in harm}

    def outputs_without(keys):
        return [f_out[0] + sum(harm[k] * errs[k] for k in harm if k not in keys)]

    regs = [{"tensor": "a", "consumers": ["Conv"], "compute": ["conv_a"]},
            {"tensor": "b", "consumers": ["Conv"], "compute": ["conv_b"]},
            {"tensor": "c", "consumers": ["Conv"], "compute": ["conv_c"]},
            {"tensor": "head", "consumers": ["Conv"], "compute": ["conv_h"]}]
    table = {"conv_a": 10, "conv_b": 10, "conv_c": 20, "conv_h": 5, "rest": 55}
    ref = {"y": f_out, "labels": np.full(4, -1), "x": np.zeros((4, 3, 8, 8), np.float32)}
    saved = []

    def save(model, k):
        saved.append(tuple(model))
        return tuple(model)

    found = regions.rank_and_verify(regs, noise, {"conv_h"}, f_out, outputs_without([]), outputs_without,
                                    lambda keys: list(keys), table, set(), ref, {"min_cosine": 0.999},
                                    save=save, run=outputs_without, max_seconds=600, candidates=2,
                                    min_int8_macs=0.85)
    assert [r["tensor"] for r in found["ranked"]][0] == "head"  # pooled by the head prior, best by proxy
    assert "c" not in {r["tensor"] for r in found["ranked"]}  # neither top-2 noise nor head: not a candidate
    assert saved[0] == ("head",) and found["tries"][0]["int8_mac_share"] == 0.95
    assert all(t["int8_mac_share"] >= 0.85 for t in found["tries"])
    assert found["regions"] == list(saved[-1]) and found["candidates"] == 3 and found["regions_total"] == 4
    if found["passed"]:
        assert len(found["tries"]) == len(saved)


def test_task_proxy_of_a_map_counts_pixels_crossing_its_threshold():
    import numpy as np

    from ekit import regions

    task = {"task": "map", "params": {"threshold": 0.3}}
    ref = np.zeros((2, 1, 20, 20))
    ref[0, 0, 2:12, 2:12] = 0.9  # one 100-pixel text region; image 1 is blank
    assert regions.task_proxy(task, [ref], [ref]) == 0.0
    lost = ref.copy()
    lost[0, 0, 2:12, 2:7] = 0.1  # half the region below 0.3
    half = regions.task_proxy(task, [ref], [lost])
    assert half >= 0.5  # 50 of 100 foreground pixels flipped
    gone = ref.copy()
    gone[0] = 0.0
    assert regions.task_proxy(task, [ref], [gone]) > half
    noisy = ref + 0.05  # every pixel moves, none crosses 0.3: far less than losing half a region
    assert regions.task_proxy(task, [ref], [noisy]) < half
    assert regions.task_proxy(task, [ref], [np.full_like(ref, np.nan)]) == float("inf")
