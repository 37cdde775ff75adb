"""int8 export: the encoder quantized (QDQ) on the run's calibration sample, judged by its agreement with the
fp32 graph on the sample's other images, refused below the thresholds, recorded where clients read; the
TensorRT encoding of the same graph; fp16 prepared for TensorRT; the agreement figures themselves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from contract.metadata import ModelMetadata
from contract.names import CALIBRATION_SAMPLE_FILE, split_precision
from export import agreement, parity
from export.__main__ import main
from export.agreement import AgreementTooLow, Thresholds
from export.naming import check_name
from export.pipeline import PrecisionOptions, export_run
from export.quantize import ACTIVATION_ZERO_POINT, read_calibration, tensorrt_encoding
from export.triton import read_config
from tests.support.serving import TINY_MIN_AGREEMENT, exported

LENIENT = PrecisionOptions("int8", Thresholds(min_agreement=TINY_MIN_AGREEMENT))


@pytest.fixture(scope="module")
def int8(tiny_run, tmp_path_factory):
    return exported(tiny_run, tmp_path_factory, "cc", precisions=("fp32", "int8"))


def _graph(repository, model, version=1, file="model.onnx") -> onnx.ModelProto:
    return onnx.load(str(repository / model / str(version) / file))


def _zero_points(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The zero points of the activations' QuantizeLinear nodes, by initializer name."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[2]: inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_int8_is_its_own_model_beside_fp32_with_a_quantized_encoder_and_the_fp32_head(int8):
    base, name = int8.names["fp32"], int8.names["int8"]
    assert name == f"{base}_int8" and split_precision(name) == (base, "int8")
    meta = ModelMetadata.read(int8.repository / name / "1" / "metadata.json")
    assert meta.precision == "int8" and ModelMetadata.read(int8.repository / base / "1" / "metadata.json").precision \
        == "fp32"
    assert meta.quantization["parts"] == ["encoder"] and meta.quantization["calibration_images"] == 512
    encoder = _graph(int8.repository, meta.encoder)
    ops = [n.op_type for n in encoder.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # activations: uint8, ranges from their minimum (0 after a ReLU); weights: int8, one scale per output channel
    assert {(z.dtype, int(z)) for z in _zero_points(encoder).values()} == {(np.dtype(np.uint8), 0)}
    inits = {t.name: t for t in encoder.graph.initializer}
    weights = [inits[n.input[0]] for n in encoder.graph.node
               if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
               and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[0]].dims) == 4]
    assert weights and all(numpy_helper.to_array(inits[n.input[1]]).size == w.dims[0]
                           for w in weights for n in encoder.graph.node
                           if n.op_type == "DequantizeLinear" and n.input[0] == w.name)
    # the head is the fp32 head, byte for byte
    assert (int8.repository / meta.head / "1" / "model.onnx").read_bytes() == \
        (int8.repository / f"{base}_head" / "1" / "model.onnx").read_bytes()
    # one QDQ graph for NVIDIA's onnxruntime backend and the CPU Triton's python backend alike
    assert read_config(int8.repository / meta.encoder).platform == "onnxruntime_onnx"
    assert read_config(int8.cpu_repository / meta.encoder).backend == "python"
    assert (int8.cpu_repository / meta.encoder / "1" / "model.onnx").read_bytes() == \
        (int8.repository / meta.encoder / "1" / "model.onnx").read_bytes()


def _path_to_first_conv(model: onnx.ModelProto) -> tuple[onnx.NodeProto, list[str]]:
    """The first convolution fed (through any nodes) by the graph input, and the op types from the input to it."""
    producer = {out: n for n in model.graph.node for out in n.output}
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[0] not in dequantized)
    ops, tensor = [], conv.input[0]
    while tensor in producer:
        node = producer[tensor]
        ops.insert(0, node.op_type)
        tensor = node.input[0]
    assert tensor == "images"
    return conv, ops


def test_the_preprocessing_stays_exact_and_the_first_convolution_float(tmp_path):
    """A model that standardises its input (mean and std inside the encoder graph): the pixels reach the first
    convolution exactly as in fp32, and that convolution keeps float weights; every other one is int8."""
    import onnxruntime as ort
    import torch

    from export.onnx_export import export_onnx
    from export.quantize import quantize_encoder
    from tests.support.runs import digit_images, tiny_config
    from train.methods import get_method

    torch.manual_seed(0)
    model = get_method("cc")(tiny_config("cc", tmp_path / "run"), 1, 10, [0.3], [0.2])
    fp32_file, _, _ = export_onnx(model, 1, 16, tmp_path)
    images = digit_images(64)
    record = quantize_encoder(fp32_file, tmp_path / "int8.onnx", images)
    encoder, fp32 = onnx.load(str(tmp_path / "int8.onnx")), onnx.load(str(fp32_file))
    conv, ops = _path_to_first_conv(encoder)
    assert ops == _path_to_first_conv(fp32)[1] == ["Cast", "Div", "Sub", "Div"]  # /255, then (x - mean) / std
    assert [line.split()[0] for line in record["float"]][-3:] == ["Sub", "Div", "Conv"]
    weights = {t.name: t for t in encoder.graph.initializer}
    assert weights[conv.input[1]].data_type == onnx.TensorProto.FLOAT
    assert sum(n.op_type == "Conv" and n.input[1] in weights for n in encoder.graph.node) == 1  # the others: int8
    standardised = []
    for graph, name in ((encoder, "int8"), (fp32, "fp32")):
        path = tmp_path / f"pre-{name}.onnx"
        onnx.save(graph, str(tmp_path / f"{name}-full.onnx"))
        onnx.utils.extract_model(str(tmp_path / f"{name}-full.onnx"), str(path), ["images"],
                                 [_path_to_first_conv(graph)[0].input[0]])
        standardised.append(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"images": images})[0])
    np.testing.assert_array_equal(*standardised)


def test_the_recorded_agreement_is_what_the_two_graphs_give_on_images_not_used_for_calibration(int8):
    name = int8.names["int8"]
    version = int8.repository / name / "1"
    meta = ModelMetadata.read(version / "metadata.json")
    images, reference, thresholds = agreement.read_sample(version / "agreement_sample.npz")
    with np.load(int8.run / CALIBRATION_SAMPLE_FILE) as sample:
        calibration = set(sample["sources"][:512].tolist())
        judged = np.load(version / "agreement_sample.npz")["sources"].tolist()
    assert len(judged) == meta.agreement["num_images"] == 512 and not calibration & set(judged)
    fp32, _ = parity.onnx_outputs(int8.repository / f"{int8.names['fp32']}_encoder" / "1" / "model.onnx",
                                  int8.repository / f"{int8.names['fp32']}_head" / "1" / "model.onnx", images)
    got, _ = parity.onnx_outputs(int8.repository / meta.encoder / "1" / "model.onnx",
                                 int8.repository / meta.head / "1" / "model.onnx", images)
    np.testing.assert_array_equal(fp32["cluster"], reference["cluster"])
    again = agreement.measure(reference, got, thresholds)
    for key in ("cluster_agreement", "cluster_mismatches", "embedding_cosine_mean", "embedding_cosine_min",
                "probability_max_abs_diff"):
        assert again[key] == pytest.approx(meta.agreement[key], abs=1e-6), key
    assert meta.agreement["passed"] and meta.agreement["thresholds"] == {"min_agreement": TINY_MIN_AGREEMENT,
                                                                         "min_cosine": 0.99}
    assert meta.agreement["providers"] == ["CPUExecutionProvider"]
    assert 0.9 <= meta.agreement["cluster_agreement"] < 1.0 and meta.agreement["embedding_cosine_mean"] > 0.99
    recorded = json.loads((version / "parity.json").read_text())
    assert recorded["precision"] == "int8" and recorded["agreement"]["cluster_agreement"] == \
        meta.agreement["cluster_agreement"] and recorded["passed"]  # the fp32 graph's parity with PyTorch too
    card = json.loads((version / "card.json").read_text())
    assert card["precision"] == "int8" and card["agreement"]["num_images"] == 512
    assert f"cluster agreement with the fp32 graph {meta.agreement['cluster_agreement']:.2%}" in \
        (version / "card.md").read_text()


def test_the_tensorrt_graph_is_the_same_calibration_with_symmetric_int8_ranges(int8):
    encoder_dir = int8.repository / f"{int8.names['int8']}_encoder" / "1"
    onnxruntime_graph, tensorrt_graph = _graph(encoder_dir.parent.parent, encoder_dir.parent.name), \
        onnx.load(str(encoder_dir / "model.tensorrt.onnx"))
    assert {(z.dtype, int(z)) for z in _zero_points(tensorrt_graph).values()} == {(np.dtype(np.int8), 0)}
    served = {(z.dtype, int(z)) for z in _zero_points(onnxruntime_graph).values()}
    # onnxruntime's: uint8 ranges from each activation's minimum (0 after a ReLU), not centred on 128
    assert {d for d, _ in served} == {np.dtype(np.uint8)} and ACTIVATION_ZERO_POINT not in {z for _, z in served}
    def conv_weights(graph: onnx.ModelProto) -> dict[str, np.ndarray]:  # int8 (O, I, kH, kW)
        return {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer
                if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4}

    weights = conv_weights(onnxruntime_graph)  # symmetric per channel in both: the same int8 weights
    assert weights and {k: v.tolist() for k, v in conv_weights(tensorrt_graph).items()} == \
        {k: v.tolist() for k, v in weights.items()}
    def count(graph: onnx.ModelProto, op: str) -> int:
        return sum(n.op_type == op for n in graph.graph.node)

    assert count(tensorrt_graph, "Conv") == count(onnxruntime_graph, "Conv")
    # a ReLU after a quantized convolution is folded into onnxruntime's range [0, max]; TensorRT's graph keeps it
    assert count(onnxruntime_graph, "Relu") < count(tensorrt_graph, "Relu")
    assert not (int8.cpu_repository / encoder_dir.parent.name / "1" / "model.tensorrt.onnx").exists()
    meta = ModelMetadata.read(encoder_dir.parent.parent / int8.names["int8"] / "1" / "metadata.json")
    encoded = meta.quantization["tensorrt_encoding"]
    assert encoded["cluster_agreement"] >= TINY_MIN_AGREEMENT and encoded["embedding_cosine_mean"] > 0.99
    with pytest.raises(ValueError, match="asymmetric"):  # onnxruntime's graph is not something TensorRT can run
        tensorrt_encoding(onnxruntime_graph)


def test_an_export_below_the_threshold_exits_2_with_the_figures_and_writes_no_version(tiny_run, tmp_path, capsys):
    run = tiny_run("cc")
    code = main(["--run", str(run), "--precision", "int8", "--output", str(tmp_path / "gpu"), "--cpu-output",
                 str(tmp_path / "cpu"), "--projection", "none", "--min-agreement", "1.0", "--min-cosine", "1.0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cc_digits_int8 (int8) is too far from the fp32 graph" in err and "mean embedding cosine" in err
    assert "cluster agreement" in err and "largest probability difference" in err
    for repository in ("gpu", "cpu"):
        assert not list((tmp_path / repository).glob("*/*/metadata.json"))


def test_a_tiny_calibration_set_is_judged_on_all_the_other_images(tiny_run, tmp_path):
    with pytest.raises(AgreementTooLow) as caught:
        export_run(tiny_run("cc"), tmp_path / "gpu", None, log=lambda msg: None,
                   precision=PrecisionOptions("int8", Thresholds(1.0, 1.0), calibration_images=2))
    assert "1022 images" in str(caught.value) and not (tmp_path / "gpu" / "cc_digits_int8").exists()


def test_a_run_without_a_calibration_sample_falls_back_to_its_parity_sample_with_a_warning(tiny_run, tmp_path):
    run = tmp_path / "old-run"
    shutil.copytree(tiny_run("cc"), run)
    (run / CALIBRATION_SAMPLE_FILE).unlink()
    said = []
    result = export_run(run, tmp_path / "gpu", None, log=said.append,
                        precision=PrecisionOptions("int8", Thresholds(0.5, 0.99)))
    assert any(line.startswith("warning:") and "parity_sample.npz" in line for line in said)
    meta = result.models.metadata
    assert meta.agreement["num_images"] == 32 and meta.quantization["calibration_images"] == 32
    assert "no calibration sample" in meta.agreement["images"]
    sample = read_calibration(run, 512, log=lambda msg: None)
    assert len(sample.calibrate) == len(sample.judge) == 32


def test_calibration_needs_images_left_to_judge_on(tiny_run):
    with pytest.raises(ValueError, match="leaves none of the 1024 images"):
        read_calibration(tiny_run("cc"), 1024)


def test_fp16_keeps_the_fp32_graphs_for_tensorrt_in_the_gpu_repository_only(tiny_run, tmp_path):
    said = []
    result = export_run(tiny_run("cc"), tmp_path / "gpu", tmp_path / "cpu", log=said.append,
                        precision=PrecisionOptions("fp16"))
    assert result.name == "cc_digits_fp16" and list(result.repositories) == ["onnxruntime"]
    assert any("CPU repository gets no fp16 model" in line for line in said) and not (tmp_path / "cpu").exists()
    meta = result.models.metadata
    assert meta.precision == "fp16" and meta.agreement is None and meta.quantization is None
    encoder = _graph(tmp_path / "gpu", meta.encoder)
    assert not any(n.op_type == "QuantizeLinear" for n in encoder.graph.node)
    assert (tmp_path / "gpu" / result.name / "1" / "agreement_sample.npz").is_file()


def test_names_and_options_are_checked():
    with pytest.raises(ValueError, match="give --name digits --precision int8"):
        check_name("digits_int8")
    assert check_name("digits_int") == "digits_int"
    for bad in (dict(precision="int4"), dict(calibration_method="mse"), dict(calibration_images=0)):
        with pytest.raises(ValueError):
            PrecisionOptions(**bad)
    with pytest.raises(ValueError, match="within"):
        Thresholds(min_agreement=1.5)


def test_agreement_figures_on_known_cases():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(10, 4)).astype(np.float32)
    probabilities = rng.dirichlet(np.ones(3), size=10).astype(np.float32)
    reference = {"embedding": embedding, "probabilities": probabilities, "cluster": probabilities.argmax(1),
                 "path": np.zeros((10, 2), np.int64)}
    same = agreement.measure(reference, {**reference, "cluster": reference["cluster"][:, None]})  # Triton's (n, 1)
    figures = (same["cluster_agreement"], same["embedding_cosine_min"], same["probability_max_abs_diff"])
    assert figures == (1.0, pytest.approx(1.0), 0.0)
    assert same["passed"] and same["outputs"] == {"path": {"agreement": 1.0, "mismatches": 0}}
    flipped = {**reference, "embedding": embedding * 3.0, "cluster": reference["cluster"].copy(),
               "path": reference["path"].copy()}
    flipped["cluster"][:2] += 1
    flipped["embedding"][0] *= -1  # one image's embedding turned around: cosine -1
    flipped["path"][3, 1] = 5
    report = agreement.measure(reference, flipped)
    assert report["cluster_agreement"] == 0.8 and report["cluster_mismatches"] == 2
    assert report["embedding_cosine_min"] == pytest.approx(-1.0) and report["embedding_cosine_mean"] == \
        pytest.approx(0.8)
    assert report["outputs"]["path"] == {"agreement": 0.9, "mismatches": 1}
    assert not report["passed"] and len(report["problems"]) == 2
    with pytest.raises(AgreementTooLow, match="cluster agreement 80.00% < 99.00%"):
        agreement.check(report, "x")
    assert agreement.measure(reference, flipped, Thresholds(0.8, 0.79))["passed"]  # the limits are inclusive
