"""The plan is a pure function: tested with no environment, no Docker, no files."""

from pathlib import Path

import pytest

from edgekiln.errors import DataError, TargetError, UsageError
from edgekiln.plan import check_thresholds, plan_build, resolve_arch, split_thresholds
from edgekiln.request import BuildRequest, InputSpec
from edgekiln.targets import all_targets, source_kinds


def request(**kw):
    base = dict(model=Path("/m/model.onnx"), model_name="model", source_format="onnx", targets=("onnx",),
                precisions=None, input=InputSpec(shape=(1, 3, 224, 224)))
    base.update(kw)
    return BuildRequest(**base)


@pytest.fixture(scope="module")
def targets():
    return all_targets()


@pytest.fixture(scope="module")
def sources():
    return source_kinds()


def test_onnx_default_precision_plan(targets, sources):
    plan = plan_build(request(), targets, sources)
    assert [s.kind for s in plan.steps] == ["source", "convert", "validate"]
    assert [s.image for s in plan.steps] == ["onnx", "onnx", "onnx"]
    assert [(a.target, a.precision) for a in plan.artifacts] == [("onnx", "fp32")]
    art = plan.artifacts[0]
    assert art.thresholds["min_top1_agreement"] == 1.0
    conv = plan.step(art.convert_step)
    assert conv.needs == (art.source_step,)
    assert conv.params["out_dir"] == "work/onnx/fp32"
    assert conv.params["options"]["quant_activation"] == targets["onnx"].options["quant_activation"]


def test_state_dict_exports_in_the_torch_image_once(targets, sources):
    plan = plan_build(request(source_format="state_dict", arch="mobilenet_v2", precisions=("fp32", "int8"),
                              calib=Path("/photos")), targets, sources)
    sources_steps = [s for s in plan.steps if s.kind == "source"]
    assert len(sources_steps) == 1 and sources_steps[0].image == "torch"
    assert sources_steps[0].params["options"]["arch"] == "zoo/mobilenet_v2.py:mobilenet_v2"
    assert [a.precision for a in plan.artifacts] == ["fp32", "int8"]
    assert len({s.id for s in plan.steps}) == len(plan.steps) == 5


def test_plan_errors(targets, sources):
    with pytest.raises(TargetError, match="unknown target"):
        plan_build(request(targets=("nope",)), targets, sources)
    with pytest.raises(TargetError, match="does not offer"):
        plan_build(request(precisions=("fp8",)), targets, sources)
    with pytest.raises(DataError, match="calibration"):
        plan_build(request(precisions=("int8",)), targets, sources)
    with pytest.raises(UsageError, match="architecture"):
        plan_build(request(source_format="state_dict"), targets, sources)
    with pytest.raises(UsageError, match="no option"):
        plan_build(request(options={"bogus": 1}), targets, sources)
    with pytest.raises(UsageError, match="no target"):
        plan_build(request(targets=()), targets, sources)


def test_option_and_threshold_overrides(targets, sources):
    plan = plan_build(request(precisions=("int8",), calib=Path("/c"), options={"quant_activation": "int8"},
                              thresholds={"int8.min_cosine": 0.5, "fp32.min_cosine": 0.1}), targets, sources)
    art = plan.artifacts[0]
    assert art.thresholds["min_cosine"] == 0.5
    assert plan.step(art.convert_step).params["options"]["quant_activation"] == "int8"


def test_arch_references():
    assert resolve_arch("mobilenet_v2") == "zoo/mobilenet_v2.py:mobilenet_v2"
    assert resolve_arch("/home/me/nets/my_net.py:build") == "arch/my_net.py:build"
    assert resolve_arch("pkg.module:factory") == "pkg.module:factory"
    for bad in ("nocolon", "x.py:", "x.py:not-ident"):
        with pytest.raises(UsageError):
            resolve_arch(bad)


def test_thresholds():
    metrics = {"cosine": 0.98, "top1_agreement": 0.9, "max_abs": 0.5, "accuracy": 0.80, "source_accuracy": 0.85}
    assert check_thresholds(metrics, {"min_cosine": 0.97, "min_top1_agreement": 0.9}) == []
    missed = check_thresholds(metrics, {"min_cosine": 0.99, "max_abs": 0.1, "max_accuracy_drop": 1.0})
    assert len(missed) == 3 and "min cosine" in missed[0]
    assert check_thresholds({"cosine": None}, {"min_cosine": 0.99}) == []  # not measurable
    assert split_thresholds({"min_cosine": 0.9, "int8.max_abs": 1}, "int8") == {"min_cosine": 0.9, "max_abs": 1.0}
    with pytest.raises(UsageError):
        split_thresholds({"min_cosinus": 1}, "fp32")


def test_thresholds_at_the_limit_pass_and_missing_metrics_are_not_applicable():
    from edgekiln.plan import evaluate_thresholds

    # one image in 20 lost: (0.95 - 0.90) * 100 == 5.000000000000004 in floating point
    assert check_thresholds({"accuracy": 0.90, "source_accuracy": 0.95}, {"max_accuracy_drop": 5.0}) == []
    assert check_thresholds({"accuracy": 0.85, "source_accuracy": 0.95}, {"max_accuracy_drop": 5.0})
    verdicts = evaluate_thresholds({"cosine": 0.5}, {"min_cosine": 0.9, "min_top1_agreement": 0.9,
                                                     "max_accuracy_drop": 1.0})
    by = {v["threshold"]: v for v in verdicts}
    assert by["min_cosine"]["passed"] is False
    assert by["min_top1_agreement"]["passed"] is None and "not applicable" in by["min_top1_agreement"]["reason"]
    assert by["max_accuracy_drop"]["passed"] is None and "labelled" in by["max_accuracy_drop"]["reason"]
