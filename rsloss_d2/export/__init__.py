"""Export of rsloss_d2 models to TorchScript and ONNX (``tools/deploy/export_model.py``).

``families`` holds one traceable inference function per meta-architecture family and the order
of its output tensors; ``exporter`` writes the files as Detectron2's export tool does. Importing
this package needs neither ``onnx`` nor ``onnxruntime`` (the ``deploy`` extra).
"""
from .exporter import ONNX_OPSET, ExportError, build_adapter, check_exportable, export_model  # noqa: F401
from .families import FAMILIES, OUTPUT_NAMES, eager_outputs, family_of, output_names  # noqa: F401
