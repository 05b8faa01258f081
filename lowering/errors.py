"""Compile errors: an op or shape the lowering has no GPU path for. Never a silent fallback."""

from common.errors import UserError


class LoweringError(UserError):
    """Raised with the node name and shapes; the CLI prints it as one line."""
