"""The one exception family the CLI turns into exit code 2 and a single clear line.

Library code raises these with a message that names the problem (file, op, node, shape);
it never prints. Anything else escaping to the CLI is a bug, not bad input.
"""


class AuditError(Exception):
    """Bad input or a request the tool cannot honour; the message is shown to the user as is."""


class ModelError(AuditError):
    """The ONNX file cannot be read, checked or executed."""


class UnsupportedOpError(ModelError):
    """An operator the executor has no implementation for."""


class DataError(AuditError):
    """The data cannot be read or does not fit the model."""


class SpecError(AuditError):
    """An attack spec, method name or option value is invalid."""
