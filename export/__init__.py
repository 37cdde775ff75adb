"""Export: trained runs -> ONNX (encoder + head, parity-checked) -> Triton repositories -> TensorRT plans.

    python -m export --engine onnx|trt|all [--run RUN] [--output model_repository] [--name NAME]
                     [--max-batch N] [--fp16] [--cpu-output OUTPUT_cpu]
    python -m export.tensorrt --repository /models [--fp16] [--max-batch N]   # inside NVIDIA's container

Modules: onnx_export (graphs), parity (PyTorch vs runtime), triton (repository generator, torch-free),
triton_python_model (the CPU flavour's model.py), tensorrt (plans, torch-free), pipeline (one export),
runs (which run, which name). Importing the package imports nothing heavy.
"""
