"""Behaviour of the individual quantization methods beyond the shared contract."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import leanlm
from leanlm.compress.quantize import QuantContext
from leanlm.compress.quantize import _calib as C
from leanlm.compress.quantize._layers import Int4WeightCPU, Int8WeightCPU, is_weight_only
from leanlm.compress.quantize.gptq import GPTQ, gptq_quantize, hessian_error
from leanlm.compress.quantize.int8_dynamic import Int8Dynamic
from leanlm.compress.quantize.mixed import MixedPrecision
from leanlm.compress.quantize.smoothquant import SmoothQuant
from leanlm.compress.quantize.weight_only import Int4WeightOnly, Int8WeightOnly
from leanlm.errors import LeanlmError, UnsupportedError


def _error(base, model, texts) -> float:
    batches = C.calibration_batches(base, texts, 32, 8)
    return C.output_error(C.outputs(base, batches), C.outputs(model, batches), batches)


# --------------------------------------------------------------------------- weight-only kernels

@pytest.mark.parametrize("cls,kwargs", [(Int4WeightCPU, {"group_size": 32}), (Int8WeightCPU, {"group_size": 0}),
                                        (Int8WeightCPU, {"group_size": 32})])
def test_gemv_kernel_and_dequant_paths_agree(cls, kwargs):
    torch.manual_seed(0)
    w = torch.randn(40, 64)  # 40 output rows: the int4 kernel pads to a multiple of 16
    qw = cls.from_float(w, **kwargs)
    x = torch.randn(40, 64)
    one_by_one = torch.cat([torch.nn.functional.linear(x[i: i + 1], qw) for i in range(40)])  # kernel path
    batched = torch.nn.functional.linear(x, qw)  # 40 rows: dequantize + bf16 GEMM path
    ref = x @ qw.dequantize().T
    for out in (one_by_one, batched):  # activations go through bf16: ~0.5% relative error
        assert float((out - ref).norm() / ref.norm()) < 0.01


def test_int4_lm_head_can_be_quantized_and_untied(tiny_lm, tmp_path, sentences):
    q = leanlm.quantize(tiny_lm, Int4WeightOnly(group_size=32, skip=()))
    assert isinstance(q.module.lm_head.weight, Int4WeightCPU)
    assert type(q.module.model.embed_tokens.weight) is torch.nn.Parameter  # lookups stay float
    out = q(**q.encode(sentences))
    q.save(tmp_path / "q")
    back = leanlm.load(tmp_path / "q")
    assert isinstance(back.module.lm_head.weight, Int4WeightCPU)
    assert torch.equal(back(**back.encode(sentences)), out)


def test_weight_only_records_sizes(tiny_lm):
    q = leanlm.quantize(tiny_lm, Int8WeightOnly())
    sizes = q.record.extra["int8-weight-only"]["linear_bytes"]
    assert sizes["quantized"] < sizes["float"] / 3


# --------------------------------------------------------------------------- GPTQ

def test_gptq_core_lowers_layer_error_vs_rounding():
    torch.manual_seed(0)
    mix = torch.randn(128, 128) / 8 + torch.eye(128)
    X = torch.randn(2048, 128) @ mix * torch.linspace(0.2, 3, 128)  # correlated, uneven channels
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(96, 128)
    rtn = Int4WeightCPU.from_float(W, 32).dequantize()
    for act_order in (False, True):
        q, s, z = gptq_quantize(W, H, 32, act_order=act_order)
        gptq = Int4WeightCPU.from_quantized(q, s, z).dequantize()
        assert hessian_error(W, gptq, H) < 0.85 * hessian_error(W, rtn, H)


def test_gptq_beats_round_to_nearest_on_held_out_text(tiny_lm, sentences, calibration):
    ctx = QuantContext(calibration=calibration, max_length=32)
    rtn = leanlm.quantize(tiny_lm, Int4WeightOnly(group_size=32))
    gptq = leanlm.quantize(tiny_lm, GPTQ(group_size=32), ctx)
    assert gptq.record.extra["gptq"]["sequential_blocks"] is True
    assert gptq.record.extra["gptq"]["hessian_error_vs_rtn"] < 0.95
    assert _error(tiny_lm, gptq, sentences) < 0.9 * _error(tiny_lm, rtn, sentences)
    # same kernel, same layout as int4-weight-only
    assert all(type(m.weight) is Int4WeightCPU for m in gptq.module.model.layers.modules()
               if isinstance(m, torch.nn.Linear))


# --------------------------------------------------------------------------- SmoothQuant

def _with_outliers(model):
    m = model.clone()
    with torch.no_grad():  # a few huge input channels, as real pre-norm LMs have
        for layer in m.module.model.layers:
            layer.input_layernorm.weight[:3] *= 40
            layer.post_attention_layernorm.weight[5:7] *= 40
    return m


def test_smoothquant_folds_and_tames_outliers(tiny_lm, sentences, calibration):
    base = _with_outliers(tiny_lm)
    plain = leanlm.quantize(base, Int8Dynamic())
    smooth = leanlm.quantize(base, SmoothQuant(), calibration=calibration)
    extra = smooth.record.extra["smoothquant"]
    assert extra["folded"] > 0 and extra["fold_fallbacks"] == 0 and extra["pre_scaled"] == 0
    assert _error(base, smooth, sentences) < 0.5 * _error(base, plain, sentences)


def test_smoothquant_bert_folds_value_into_output_only(tiny_emb, calibration):
    q = leanlm.quantize(tiny_emb, SmoothQuant(alpha=0.5), calibration=calibration)
    extra = q.record.extra["smoothquant"]
    # per layer: attention.output.dense folds into value; intermediate.dense's LayerNorm also feeds
    # the residual (post-norm), so its fold is detected as inexact and falls back to run-time scaling
    assert extra["folded"] == 2 and extra["fold_fallbacks"] == 2 and extra["pre_scaled"] == 10


# --------------------------------------------------------------------------- mixed precision

def test_mixed_keeps_most_sensitive_layers_float(tiny_emb, tmp_path, calibration):
    q = leanlm.quantize(tiny_emb, MixedPrecision(max_divergence=0.0, max_float_layers=3), calibration=calibration)
    extra = q.record.extra["mixed-precision"]
    assert len(extra["float_layers"]) == 3 and extra["budget_met"] is False
    assert extra["loss"] <= extra["loss_all_quantized"]
    q.save(tmp_path / "q")
    back = leanlm.load(tmp_path / "q")
    for name in extra["float_layers"]:
        assert type(back.module.get_submodule(name).weight) is torch.nn.Parameter
    assert back.record.extra["mixed-precision"]["float_layers"] == extra["float_layers"]


def test_mixed_uses_the_task_metric_when_given(tiny_clf, sentences):
    float_preds = tiny_clf.predict(sentences)

    def agreement(m):  # higher is better, in percent
        return 100.0 * sum(a == b for a, b in zip(m.predict(sentences), float_preds)) / len(sentences)

    q = leanlm.quantize(tiny_clf, MixedPrecision(base=Int4WeightOnly(group_size=32), max_drop=0.0),
                        QuantContext(evaluate=agreement))
    extra = q.record.extra["mixed-precision"]
    assert extra["unit"] == "metric drop" and extra["budget_met"] and agreement(q) == 100.0


def test_mixed_refuses_base_that_changes_other_tensors(tiny_lm, calibration):
    with pytest.raises(UnsupportedError, match="changes more than linear weights"):
        leanlm.quantize(_with_outliers(tiny_lm), MixedPrecision(base=SmoothQuant()), calibration=calibration)


# --------------------------------------------------------------------------- real model

@pytest.mark.integration
def test_minilm_smoothquant_fixes_int8_embedding_loss(minilm):
    """Naive int8-dynamic loses fidelity on MiniLM through activation outliers; SmoothQuant recovers most."""
    from leanlm.data import load_splits

    splits = load_splits("movie-snippets")
    texts = splits.test.texts[:48]
    E0 = leanlm.embed(minilm, texts)

    def loss(m) -> float:
        return 1.0 - float((leanlm.embed(m, texts) * E0).sum(1).mean())

    naive = loss(leanlm.quantize(minilm, Int8Dynamic()))
    smooth = loss(leanlm.quantize(minilm, SmoothQuant(alpha=0.5, calibration_size=24), calibration=splits.train.texts[:24]))
    assert smooth < naive / 2, (naive, smooth)


# --------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from leanlm.models.tiny import tiny_encoder

    path = tmp_path_factory.mktemp("cli") / "tiny"
    tiny_encoder("sequence-classification").save(path)
    return path


def test_cli_quantize(tiny_dir, tmp_path):
    from leanlm.cli import app

    runner = CliRunner()
    listing = runner.invoke(app, ["quantize", "--list"])
    assert listing.exit_code == 0 and "gptq" in listing.output and "--group-size" in listing.output
    assert "leanlm[openvino]" in listing.output  # docstring brackets are not eaten as rich markup

    out = tmp_path / "q"
    r = runner.invoke(app, ["quantize", str(tiny_dir), str(out), "gptq", "--group-size", "32", "--act-order",
                            "--skip", "classifier,pooler", "--calibration", "movie-snippets", "--calibration-size", "16"])
    assert r.exit_code == 0, r.output
    back = leanlm.load(out)
    assert back.record.techniques[-1]["group_size"] == 32 and back.record.techniques[-1]["act_order"] is True
    assert back.record.techniques[-1]["skip"] == ["classifier", "pooler"]
    assert back.record.techniques[-1]["calibration_size"] == 16
    assert back.record.extra["gptq"]["calibration"] == {"dataset": "movie-snippets", "texts": 16}
    assert any(is_weight_only(p) for p in back.module.parameters())

    again = runner.invoke(app, ["quantize", str(tiny_dir), str(out), "int8-weight-only"])
    assert isinstance(again.exception, LeanlmError) and "already exists" in str(again.exception)
    replaced = runner.invoke(app, ["quantize", str(tiny_dir), str(out), "smoothquant", "--alpha", "0.5",
                                   "--no-fold", "--calibration", "movie-snippets", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert leanlm.load(out).record.techniques[-1]["fold"] is False


def test_cli_int8_static_range_method_and_calibration_dataset(tiny_dir, tmp_path):
    # the method option (--range-method) and the calibration dataset (--calibration) are distinct
    from leanlm.cli import app

    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["quantize", str(tiny_dir), str(out), "int8-static", "--backend", "onnxruntime",
                                 "--range-method", "percentile", "--samples", "16", "--calibration", "movie-snippets",
                                 "--calibration-size", "16"])
    assert r.exit_code == 0, r.output
    back = leanlm.load(out)
    assert back.backend == "onnxruntime" and back.record.techniques[-1]["range_method"] == "percentile"
    assert back.record.extra["int8-static"]["calibration"] == {"dataset": "movie-snippets", "texts": 16}


def test_cli_int8_nncf_keep_float(tiny_dir, tmp_path):
    from leanlm.cli import app

    out = tmp_path / "n"
    r = CliRunner().invoke(app, ["quantize", str(tiny_dir), str(out), "int8-nncf", "--keep-float",
                                 "bert.encoder.layer.0.output.dense", "--preset", "mixed", "--calibration", "movie-snippets",
                                 "--calibration-size", "16"])
    assert r.exit_code == 0, r.output
    back = leanlm.load(out)
    assert back.backend == "openvino" and back.record.weights == "model.xml"
    assert back.record.extra["int8-nncf"]["float_linears"] == ["bert.encoder.layer.0.output.dense"]
    assert back.record.techniques[-1]["keep_float"] == ["bert.encoder.layer.0.output.dense"]


def test_cli_int8_nncf_accuracy_guard_uses_the_validation_split(tiny_dir, tmp_path):
    from leanlm.cli import app

    out = tmp_path / "g"
    r = CliRunner().invoke(app, ["quantize", str(tiny_dir), str(out), "int8-nncf", "--max-drop", "100",
                                 "--calibration", "movie-snippets", "--calibration-size", "16"])
    assert r.exit_code == 0, r.output
    guard = leanlm.load(out).record.extra["int8-nncf"]["accuracy_guard"]
    assert guard["budget_met"] and len(guard["steps"]) == 1 and 0 < guard["reference_score"] <= 100
    r = CliRunner().invoke(app, ["quantize", str(tiny_dir), str(tmp_path / "h"), "int8-nncf", "--max-drop", "0.5"])
    assert r.exit_code != 0 and "needs --calibration" in str(r.exception)


@pytest.mark.parametrize("args,needle", [
    (["int5-magic"], "Valid:"),
    (["int4-weight-only", "--group-sise", "32"], "unknown option '--group-sise'"),
    (["int4-weight-only", "--group-size", "many"], "expects int"),
    (["int4-weight-only", "--group-size", "0"], "group_size"),
    (["gptq"], "needs calibration texts"),
])
def test_cli_quantize_errors(tiny_dir, tmp_path, args, needle):
    from leanlm.cli import app

    r = CliRunner().invoke(app, ["quantize", str(tiny_dir), str(tmp_path / "q"), *args])
    assert isinstance(r.exception, LeanlmError) and needle in str(r.exception), r.output
    assert len(str(r.exception).splitlines()) == 1
    assert not (tmp_path / "q").exists()
