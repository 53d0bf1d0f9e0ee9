"""backdoor-audit: check and repair backdoored image classifiers delivered as ONNX."""

__version__ = "0.1.0"
