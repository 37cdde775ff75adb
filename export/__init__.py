"""Export: trained runs -> ONNX (encoder + head, parity-checked) -> Triton repositories -> TensorRT plans.

    python -m export --engine onnx|trt|all [--run RUN] [--output model_repository] [--name NAME]
                     [--max-batch N] [--precision fp32|int8|fp16] [--cpu-output OUTPUT_cpu]
    python -m export.tensorrt --repository /models [--max-batch N]   # inside NVIDIA's container

Modules: onnx_export (graphs), parity (PyTorch vs runtime), quantize (the int8 encoder), agreement (a
reduced precision judged against fp32, numpy only), triton (repository generator, torch-free),
triton_python_model (the CPU flavour's model.py), tensorrt (plans, torch-free), pipeline (one export),
naming (what a model is called). Importing the package imports nothing heavy.
"""
