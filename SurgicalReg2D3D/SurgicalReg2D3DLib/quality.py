"""How far to trust one registration result: the quality value every module reports.

A :class:`Quality` goes with every result (one US frame, one laparoscopic frame, one
fluoroscopy case or view). It holds

``verdict``    ``"ok"``, ``"doubtful"``, ``"failed"`` or ``"skipped"`` (nothing was
               registered: no overlap, no data under the plane, cancelled...; a skipped item
               is listed as such and never reported as a result);
``estimate``   a calibrated estimate of the error, keyed by unit, e.g.
               ``{"translation_mm": 0.4, "rotation_deg": 0.8}``, ``{"mtre_mm": 0.6}`` or
               ``{"reprojection_px": 12.0}``;
``interval``   for each key of ``estimate``, a ``[low, high]`` interval;
``reasons``    short sentences saying why the verdict is not ``ok`` (empty when it is);
``signals``    the raw measurements the verdict was computed from (similarity at the
               result, iterations used, distance moved, multi-start spread, ...).

A quality value is never NaN: :func:`Quality.to_dict` replaces a non-finite number with
``None`` and, where the estimate could not be computed, the verdict is ``doubtful`` with the
reason (see :func:`sanitize`).

This module is pure Python (no torch, no Qt) so every layer can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

VERDICTS = ("ok", "doubtful", "failed", "skipped")
_RANK = {"ok": 0, "doubtful": 1, "failed": 2, "skipped": 3}


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


@dataclass
class Quality:
    """The trust value of one result (see the module docstring)."""

    verdict: str = "doubtful"
    estimate: Dict[str, float] = field(default_factory=dict)
    interval: Dict[str, List[float]] = field(default_factory=dict)
    reasons: List[str] = field(default_factory=list)
    signals: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"quality verdict: expected one of {VERDICTS}, got {self.verdict!r}")

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready copy; non-finite numbers become ``None``."""
        sane = sanitize(self)

        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return v if math.isfinite(v) else None
            if isinstance(v, dict):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
                try:
                    return clean(v.item())
                except (TypeError, ValueError):
                    return str(v)
            return v

        return {
            "verdict": sane.verdict,
            "estimate": clean(dict(sane.estimate)),
            "interval": clean({k: list(v) for k, v in sane.interval.items()}),
            "reasons": list(sane.reasons),
            "signals": clean(dict(sane.signals)),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Quality":
        return cls(verdict=d.get("verdict", "doubtful"), estimate=dict(d.get("estimate", {})),
                   interval={k: list(v) for k, v in d.get("interval", {}).items()},
                   reasons=list(d.get("reasons", [])), signals=dict(d.get("signals", {})))

    def summary(self) -> str:
        """One line for the CLI / GUI, e.g. ``"failed: est. 6.1 mm [3.2, 11] (LNCC below ...)"``."""
        parts = [self.verdict]
        for k, v in self.estimate.items():
            if _finite(v):
                iv = self.interval.get(k)
                rng = f" [{iv[0]:.3g}, {iv[1]:.3g}]" if iv and all(_finite(x) for x in iv) else ""
                parts.append(f"{k} ~ {float(v):.3g}{rng}")
        text = ", ".join(parts)
        if self.reasons:
            text += " (" + "; ".join(self.reasons) + ")"
        return text


def sanitize(q: Quality) -> Quality:
    """A copy whose estimate has no NaN/inf; a missing estimate makes ``ok`` -> ``doubtful``."""
    est = {k: float(v) for k, v in q.estimate.items() if _finite(v)}
    bad = [k for k in q.estimate if k not in est]
    interval = {k: [float(a), float(b)] for k, (a, b) in q.interval.items()
                if k in est and _finite(a) and _finite(b)}
    reasons = list(q.reasons)
    verdict = q.verdict
    if bad:
        reasons.append("error estimate could not be computed for " + ", ".join(bad))
        if verdict == "ok":
            verdict = "doubtful"
    return Quality(verdict=verdict, estimate=est, interval=interval, reasons=reasons,
                   signals=dict(q.signals))


def skipped(reason: str, **signals: Any) -> Quality:
    """The quality of an item that was not registered at all."""
    return Quality(verdict="skipped", reasons=[reason], signals=dict(signals))


def worst(verdicts: Sequence[str]) -> str:
    """The least trustworthy of several verdicts (``skipped`` counts as worst)."""
    if not verdicts:
        return "doubtful"
    return max(verdicts, key=lambda v: _RANK[v])


def better(a: Quality, b: Quality) -> Quality:
    """The more trustworthy of two results' qualities (the first on a tie)."""
    return b if _RANK[b.verdict] < _RANK[a.verdict] else a


def warning_line(item: str, q: Quality) -> Optional[str]:
    """The one-line CLI warning for a ``doubtful``/``failed``/``skipped`` item, else None."""
    if q.verdict == "ok":
        return None
    return f"warning: {item}: {q.summary()}"
