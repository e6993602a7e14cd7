"""Training / evaluation reports: a JSON record, a markdown table and a PNG plot.

`write_report` writes three files into `out_dir`, each atomically (temp file, fsync, rename):

- ``report.json``: ``{"title", "rows", "history", "meta", "baseline", "created_at"}``; values that
  JSON cannot hold are converted (numpy scalars to numbers, NaN/inf to null, anything else to
  ``str()``), so the file is always strict JSON.
- ``report.md``: a heading, the metrics table (see `markdown_table`) and a "Setup" list from meta.
- ``report.png``: grouped bars of the metrics per row and, when a history is given, the training
  curve(s) beside them. Rendered with the Agg canvas directly (no pyplot, no global backend
  switch, no display needed).

matplotlib is imported only when a plot is rendered, so importing this module stays cheap.
"""

from __future__ import annotations

import io
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.fsutil import atomic_write_bytes

JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"
PLOT_NAME = "report.png"

_MAX_META_VALUE_CHARS = 300
_MAX_BAR_VALUE_LABELS = 30  # above this many bars, value labels would only be clutter


# --------------------------------------------------------------------------- helpers


def _metric_names(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Union of the metric names over all rows, in first-seen order."""
    seen: dict[str, None] = {}
    for metrics in rows.values():
        for name in metrics:
            seen.setdefault(str(name), None)
    return list(seen)


def _as_float(value: Any) -> float | None:
    """A real number as float; None for missing or non-numeric values."""
    if value is None:
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:  # numpy 0-d arrays and the like
        return float(value)
    except (TypeError, ValueError):
        return None


def _escape_cell(text: Any) -> str:
    """Make text safe inside a GitHub-flavoured markdown table cell."""
    s = str(text).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(s.splitlines())


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    f = _as_float(value)
    if f is None:
        return _escape_cell(value)
    return f"{f:.3f}"


def _format_delta(value: Any, base: Any) -> str:
    v, b = _as_float(value), _as_float(base)
    if v is None or b is None or not math.isfinite(v) or not math.isfinite(b):
        return ""
    delta = round((v - b) * 100, 1)
    if delta == 0:
        delta = 0.0  # no "-0.0"
    return f"{delta:+.1f}"


def _jsonable(obj: Any) -> Any:
    """Recursively convert `obj` into something `json.dumps(..., allow_nan=False)` accepts."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in items]
    item = getattr(obj, "item", None)  # numpy scalars / 0-d arrays
    if callable(item) and getattr(obj, "ndim", None) == 0:
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    tolist = getattr(obj, "tolist", None)  # numpy arrays
    if callable(tolist):
        try:
            return _jsonable(tolist())
        except (TypeError, ValueError):
            pass
    return str(obj)


def _meta_value(value: Any) -> str:
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        text = json.dumps(_jsonable(value), ensure_ascii=False, separators=(", ", ": "))
    else:
        text = str(value)
    text = " ".join(text.splitlines())
    if len(text) > _MAX_META_VALUE_CHARS:
        text = text[: _MAX_META_VALUE_CHARS - 1] + "…"
    return text


# --------------------------------------------------------------------------- markdown


def markdown_table(
    rows: Mapping[str, Mapping[str, Any]],
    baseline: str | None = None,
    metrics: Sequence[str] | None = None,
) -> str:
    """A GitHub-flavoured markdown table: one row per label, one column per metric.

    `metrics` picks and orders the columns (default: the union of the rows' metric names in
    first-seen order). Values are printed with 3 decimals; a missing value is a blank cell.
    With `baseline` (a row label), a last column gives the difference to the baseline row on the
    first metric, in points (x100), signed: ``+7.6``. The baseline row itself shows ``—``.
    Labels and metric names are escaped (``|`` -> ``\\|``), so they cannot break the table.
    """
    if baseline is not None and baseline not in rows:
        raise ValueError(f"baseline {baseline!r} is not one of the row labels {list(rows)}")
    names = [str(m) for m in metrics] if metrics is not None else _metric_names(rows)

    header = ["", *(_escape_cell(m) for m in names)]
    align = [":---", *("---:" for _ in names)]
    first = names[0] if names else None
    with_delta = baseline is not None and first is not None
    if with_delta:
        header.append(_escape_cell(f"Δ {first} vs baseline (pts)"))
        align.append("---:")

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    base_value = rows[baseline].get(first) if with_delta else None
    for label, values in rows.items():
        cells = [_escape_cell(label), *(_format_value(values.get(m)) for m in names)]
        if with_delta:
            if label == baseline:
                cells.append("—")
            else:
                cells.append(_format_delta(values.get(first), base_value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown_report(
    title: str,
    rows: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any] | None,
    baseline: str | None,
    created_at: str,
    has_plot: bool,
) -> str:
    parts = [f"# {' '.join(str(title).splitlines())}", "", f"_Generated {created_at}._", ""]
    if rows:
        parts.append(markdown_table(rows, baseline=baseline).rstrip("\n"))
        if baseline is not None:
            parts += ["", f"Baseline: {_escape_cell(baseline)}."]
    else:
        parts.append("_No results._")
    if has_plot:
        parts += ["", f"![{_escape_cell(title)}]({PLOT_NAME})"]
    if meta:
        parts += ["", "## Setup", ""]
        parts += [f"- **{k}**: {_meta_value(v)}" for k, v in meta.items()]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- plot


def _history_series(
    history: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, tuple[list[float], list[float]]]]:
    """Split the history into loss series and metric series: name -> (epochs, values).

    Any key containing "loss" is a loss; other ``val_*`` / ``train_*`` keys are metrics; the rest
    (learning rate, timings...) are not plotted. Epochs default to 1, 2, ... when not given.
    """
    losses: dict[str, tuple[list[float], list[float]]] = {}
    metrics: dict[str, tuple[list[float], list[float]]] = {}
    for i, entry in enumerate(history):
        epoch = _as_float(entry.get("epoch"))
        x = float(i + 1) if epoch is None else epoch
        for key, value in entry.items():
            if key == "epoch":
                continue
            y = _as_float(value)
            if y is None or not math.isfinite(y):
                continue
            name = str(key)
            if "loss" in name.lower():
                target = losses
            elif name.startswith(("val_", "train_")):
                target = metrics
            else:
                continue
            xs, ys = target.setdefault(name, ([], []))
            xs.append(x)
            ys.append(y)
    return losses, metrics


def _draw_bars(ax: Any, rows: Mapping[str, Mapping[str, Any]], baseline: str | None) -> None:
    names = _metric_names(rows)
    labels = list(rows)
    if not names or not labels:
        ax.text(0.5, 0.5, "no metrics", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    n = len(labels)
    width = min(0.8 / n, 0.3)
    show_values = n * len(names) <= _MAX_BAR_VALUE_LABELS
    finite_max = 0.0
    for j, label in enumerate(labels):
        values = [_as_float(rows[label].get(m)) for m in names]
        heights = [v if v is not None and math.isfinite(v) else math.nan for v in values]
        finite_max = max([finite_max, *(h for h in heights if not math.isnan(h))])
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(
            xs,
            heights,
            width,
            label=label if len(label) <= 60 else label[:59] + "…",
            hatch="//" if label == baseline else None,
            edgecolor="black" if label == baseline else None,
            linewidth=0.6,
        )
        if show_values:
            texts = ["" if math.isnan(h) else f"{h:.3f}" for h in heights]
            ax.bar_label(bars, labels=texts, fontsize=7, padding=2, rotation=90 if n > 3 else 0)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("score")
    top = finite_max * 1.18 if finite_max > 0 else 1.0
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), top)
    ax.set_title("Metrics")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.07), ncol=min(n, 2))


def _draw_history(ax: Any, history: Sequence[Mapping[str, Any]]) -> None:
    from matplotlib.ticker import MaxNLocator

    losses, metrics = _history_series(history)
    if not losses and not metrics:
        ax.text(0.5, 0.5, "no training curve", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    handles: list[Any] = []
    loss_ax = ax if losses else None
    metric_ax = (ax.twinx() if losses else ax) if metrics else None
    colors = iter(f"C{i}" for i in range(100))
    if loss_ax is not None:
        for name, (xs, ys) in losses.items():
            style = "--" if name.startswith("val") else "-"
            handles += loss_ax.plot(xs, ys, style, marker="o", ms=3, color=next(colors), label=name)
        loss_ax.set_ylabel("loss")
    if metric_ax is not None:
        for name, (xs, ys) in metrics.items():
            handles += metric_ax.plot(xs, ys, "-", marker="s", ms=3, color=next(colors), label=name)
        metric_ax.set_ylabel("metric")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Training curve")
    ax.grid(alpha=0.3)
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="best")


def render_plot(
    title: str,
    rows: Mapping[str, Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]] | None = None,
    baseline: str | None = None,
) -> bytes:
    """The report figure as PNG bytes (Agg canvas, headless, no pyplot state touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with_history = bool(history)
    fig = Figure(figsize=(13, 5.5) if with_history else (7.5, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    if with_history:
        bar_ax, hist_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    else:
        bar_ax, hist_ax = fig.subplots(1, 1), None
    _draw_bars(bar_ax, rows, baseline)
    if hist_ax is not None:
        _draw_history(hist_ax, history or [])
    fig.suptitle(str(title))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------- entry point


def write_report(
    out_dir: Path,
    title: str,
    rows: dict[str, dict[str, float]],
    history: list[dict[str, float]] | None = None,
    meta: dict[str, object] | None = None,
    baseline: str | None = None,
) -> dict[str, Path]:
    """Write report.json, report.md and report.png into `out_dir`; return their paths.

    `rows` maps a row label to {metric name: value}; `history` holds one dict per epoch
    ({"epoch", "train_loss", "val_ndcg@10", "val_loss"...}, any subset); `meta` is free-form
    setup information (config, timings, seeds...); `baseline` names the row the markdown's delta
    column is computed against (a ValueError if it is not a row label, raised before anything
    is written). Each file is written atomically; the JSON first, the plot last.
    """
    if baseline is not None and baseline not in rows:
        raise ValueError(f"baseline {baseline!r} is not one of the row labels {list(rows)}")
    out_dir = Path(out_dir)
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    paths = {
        "json": out_dir / JSON_NAME,
        "markdown": out_dir / MARKDOWN_NAME,
        "plot": out_dir / PLOT_NAME,
    }

    record = {
        "title": str(title),
        "rows": _jsonable(rows),
        "history": _jsonable(history),
        "meta": _jsonable(meta or {}),
        "baseline": baseline,
        "created_at": created_at,
    }
    payload = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(paths["json"], payload.encode("utf-8"))

    md = _markdown_report(title, rows, meta, baseline, created_at, has_plot=True)
    atomic_write_bytes(paths["markdown"], md.encode("utf-8"))

    atomic_write_bytes(paths["plot"], render_plot(title, rows, history, baseline))
    return paths
