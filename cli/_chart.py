"""Bar charts in the terminal, drawn with unicode eighth blocks (for `metrics history`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rich.text import Text

# A cell filled by 0..8 eighths, from the bottom.
EIGHTHS = " ▁▂▃▄▅▆▇█"


def merge_columns(values: Sequence[float], width: int) -> tuple[list[float], int]:
    """At most `width` values, runs of neighbours merged by their max; and the run length.

    The max, not the mean, so that a short spike still shows once the history is squeezed.
    """
    if width < 1:
        raise ValueError("width must be at least 1")
    if len(values) <= width:
        return list(values), 1
    run = math.ceil(len(values) / width)
    return [max(values[i : i + run]) for i in range(0, len(values), run)], run


def bars(values: Sequence[float], height: int) -> list[str]:
    """The rows of a bar chart, top first, one column per value, `height` rows tall.

    The largest value fills the height; any value above 0 shows at least an eighth, so that
    a little is never drawn as nothing. Negative values count as 0.
    """
    if height < 1:
        raise ValueError("height must be at least 1")
    top = max(values, default=0.0)
    eighths = [
        max(1, round(value / top * height * 8)) if top > 0 and value > 0 else 0 for value in values
    ]
    return [
        "".join(EIGHTHS[min(8, max(0, level - row * 8))] for level in eighths)
        for row in reversed(range(height))
    ]


def bar_chart(
    title: str,
    values: Sequence[float],
    *,
    first: str,
    last: str,
    label: Callable[[float], str],
    width: int,
    height: int = 4,
    style: str = "",
) -> Text:
    """A titled bar chart of `values` in at most `width` columns: the y axis labelled with
    the largest value (by `label`) and 0, the x axis with `first` and `last`."""
    top = label(max(values, default=0.0))
    gutter = max(len(top), 1)
    columns, run = merge_columns(values, max(1, width - gutter - 2))
    if run > 1:
        title += f" (each column the max of {run})"
    text = Text(title + "\n", style="bold")
    for index, row in enumerate(bars(columns, height)):
        if index == 0:
            axis = top.rjust(gutter)
        elif index == height - 1:
            axis = "0".rjust(gutter)
        else:
            axis = " " * gutter
        text.append(f"{axis} ┤")
        text.append(row, style=style)
        text.append("\n")
    text.append(" " * gutter + " └" + "─" * len(columns) + "\n")
    span = len(columns)
    if span >= len(first) + len(last) + 1:
        axis_labels = first + last.rjust(span - len(first))
    else:
        axis_labels = first if first == last else f"{first} … {last}"
    text.append(" " * (gutter + 2) + axis_labels)
    return text
