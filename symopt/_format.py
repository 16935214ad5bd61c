"""Plain-text tables for reports and certificates (no dependency beyond the standard library)."""

from __future__ import annotations

from collections.abc import Sequence


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def readable_log_axes(ax) -> None:
    """Ticks on a log-scaled matplotlib axis that stay legible at any range: labelled decades when
    the data span two or more, labelled 1-2-5 steps when it spans less, and never labels on the
    minor ticks (where narrow ranges otherwise print overlapping ``2×10⁻¹``-style labels)."""
    import math

    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log":
            continue
        low, high = sorted(limits)
        if low > 0 and math.log10(high / low) < 2:
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
        else:
            axis.set_major_locator(LogLocator(base=10, numticks=9))
        axis.set_minor_formatter(NullFormatter())
