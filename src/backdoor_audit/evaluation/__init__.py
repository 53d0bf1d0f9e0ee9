"""Ground-truth evaluation: ACC and ASR under onnxruntime, and the CI gate on them.

This is the one package that reads the attack spec and rebuilds the trigger (through
``attacks``). Repair methods and detectors never import it (tests/test_layering.py).
"""
