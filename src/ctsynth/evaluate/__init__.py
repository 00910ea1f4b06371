"""Evaluation of synthetic CT against real CT: fidelity, diversity, anatomy, memorisation, usefulness.

``evaluate(real, synthetic, out)`` (see :mod:`.pipeline`) writes ``metrics.json`` and ``report.html``;
``MemorisationAudit`` (see :mod:`.memorisation`) checks single volumes for ``ctsynth generate --audit``.
Heavy imports (torch, MONAI) happen inside the functions that need them.
"""

from .memorisation import AuditResult, MemorisationAudit
from .pipeline import EvaluateOptions, Report, evaluate

__all__ = ["AuditResult", "EvaluateOptions", "MemorisationAudit", "Report", "evaluate"]
