"""The report: ``report.html`` (self-contained, figures as relative PNG/SVG files, a table of
checks with every failure marked) and ``metrics.json`` (the checks and the analyses' data).

``metrics.json`` holds ``{"title", "summary", "checks": [{"claim", "measured", "expected",
"passed"}, ...], <metric name>: <JSON-safe data>, ...}``: the reserved keys "title", "summary"
and "checks" sit beside the caller's per-analysis entries.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from matplotlib.figure import Figure

from .._checks import check_str
from .._files import check_replaceable_folder, copy_file_atomic, replaced_folder, write_text_atomic
from .checks import Check, summarize
from .plots import save_figure
from .serialize import to_jsonable

RESERVED = ("title", "summary", "checks")
FIGURE_DIR = "figures"
REPORT_ENTRIES = ("report.html", "metrics.json", FIGURE_DIR)  # what a report folder holds


@dataclass(frozen=True)
class Table:
    """A table of a section: column headers and rows of values (formatted like measurements)."""

    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """A part of the report: a title, text (paragraphs separated by blank lines, plain text),
    figures (matplotlib Figures, saved into the report, or paths of PNG/SVG files) with
    optional captions, and tables."""

    title: str
    text: str = ""
    figures: Sequence[Figure | str | Path] = ()
    captions: Sequence[str] = ()
    tables: Sequence[Table] = ()


@dataclass(frozen=True)
class ReportFiles:
    """The files a report wrote."""

    html: Path
    metrics: Path
    figures: list[Path] = field(default_factory=list)


def check_report_folder(out_dir: str | Path, flag: str = "report folder") -> Path:
    """Check, before any work, that a report can be written at ``out_dir``; a ValueError naming
    ``flag``, the path and the reason otherwise. A report replaces its folder as a whole, so the
    folder must be new or hold a report only (report.html, metrics.json, figures/), and its
    parent must be writable."""
    return check_replaceable_folder(out_dir, REPORT_ENTRIES, flag, what="report")


def write_report(
    out_dir: str | Path,
    title: str,
    sections: Sequence[Section] = (),
    checks: Sequence[Check] = (),
    metrics: Mapping[str, object] | None = None,
    description: str = "",
) -> ReportFiles:
    """Write ``out_dir/report.html`` and ``out_dir/metrics.json`` (and the sections' figures
    under ``out_dir/figures/``); return their paths.

    The report is written into a temporary sibling folder and swapped in as ``out_dir`` when
    complete: ``out_dir`` holds this report's files only (no figure of an earlier report stays),
    and a write that fails or is interrupted leaves the earlier report as it was. ``out_dir``
    must be new or hold a report only (see :func:`check_report_folder`)."""
    check_str("title", title, "Channel collapse")
    if isinstance(sections, Section) or not isinstance(sections, Sequence):
        raise TypeError(
            f"sections must be a sequence of Section objects, got {type(sections).__name__}"
        )
    for index, section in enumerate(sections):
        if not isinstance(section, Section):
            raise TypeError(
                f"sections must be Section objects, but sections[{index}] is a "
                f"{type(section).__name__}"
            )
        check_str(f"sections[{index}].title", section.title, "Power decomposition")
    if metrics is not None and not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping (a dict), got {type(metrics).__name__}")
    metrics = dict(metrics or {})
    clash = [key for key in RESERVED if key in metrics]
    if clash:
        raise ValueError(f"metrics may not use the reserved keys {clash}; rename them")
    if isinstance(checks, Check) or not isinstance(checks, Sequence):
        raise TypeError(f"checks must be a sequence of Check objects, got {type(checks).__name__}")
    for check in checks:
        if not isinstance(check, Check):
            raise TypeError(f"checks must be Check objects, got a {type(check).__name__}")
    payload = {"title": title, "summary": summarize(checks)}
    payload["checks"] = [to_jsonable(c.to_dict(), f"checks[{i}]") for i, c in enumerate(checks)]
    payload |= {key: to_jsonable(value, key) for key, value in metrics.items()}
    text = json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False)
    out = check_report_folder(out_dir)
    with replaced_folder(out) as temp:
        placed = [
            _place_figures(temp, out, index, section) for index, section in enumerate(sections)
        ]
        write_text_atomic(
            temp / "report.html", render_html(title, sections, placed, checks, description)
        )
        write_text_atomic(temp / "metrics.json", text)
    figures = [out / p for pairs in placed for pair in pairs for p in pair if p is not None]
    return ReportFiles(out / "report.html", out / "metrics.json", figures)


# -- figures ---------------------------------------------------------------------------------

FigureFiles = tuple[str | None, str | None]  # (png, svg), relative to the report


def _place_figures(temp: Path, out: Path, index: int, section: Section) -> list[FigureFiles]:
    """Save or copy the section's figures into ``temp``, the report being written, which
    becomes ``out``."""
    placed = []
    for number, item in enumerate(section.figures):
        if isinstance(item, Figure):
            base = temp / FIGURE_DIR / f"{index + 1:02d}-{_slug(section.title)}-{number + 1}"
            written = save_figure(item, base)
            placed.append(_pair(temp, written))
        elif isinstance(item, (str, Path)):
            placed.append(_pair(temp, _existing(temp, out, Path(item))))
        else:
            raise TypeError(
                f"section {section.title!r}: figure {number} is a {type(item).__name__}; give "
                f"a matplotlib Figure or the path of a PNG/SVG file"
            )
    return placed


def _existing(temp: Path, out: Path, path: Path) -> list[Path]:
    """The PNG/SVG files of ``path`` (with or without suffix), copied into the report: at the
    same place when they lie in ``out`` (the report being replaced), else under figures/."""
    base = path.with_suffix("") if path.suffix in (".png", ".svg") else path
    files = [f for f in (base.with_suffix(".png"), base.with_suffix(".svg")) if f.is_file()]
    if path.suffix in (".png", ".svg") and path.is_file():
        files = [path, *[f for f in files if f != path]]
    if not files:
        raise ValueError(f"figure file {str(path)!r} not found (looked for .png and .svg)")
    placed = []
    for file in files:
        inside = _relative(file, out)
        target = temp / (inside if inside is not None else Path(FIGURE_DIR) / file.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_file_atomic(file, target)
        placed.append(target)
    return placed


def _relative(path: Path, directory: Path) -> Path | None:
    try:
        return path.resolve().relative_to(directory.resolve())
    except ValueError:
        return None


def _pair(out: Path, files: list[Path]) -> FigureFiles:
    def rel(suffix: str) -> str | None:
        match = next((f for f in files if f.suffix == suffix), None)
        return None if match is None else os.path.relpath(match, out).replace(os.sep, "/")

    return rel(".png"), rel(".svg")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "section"


# -- HTML ------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.fail td { background: #fdecea; }
td.result.pass { color: #1e7e34; font-weight: 600; }
td.result.fail { color: #b00020; font-weight: 700; }
.verdict { padding: 0.6em 0.9em; border-radius: 4px; font-weight: 600; }
.verdict.pass { background: #e6f4ea; color: #1e7e34; }
.verdict.fail { background: #fdecea; color: #b00020; border: 2px solid #b00020; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
"""


def render_html(
    title: str,
    sections: Sequence[Section],
    figures: Sequence[Sequence[FigureFiles]],
    checks: Sequence[Check],
    description: str = "",
) -> str:
    """The report page (a complete HTML document; figures referenced by relative paths)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        _paragraphs(description),
        _checks_html(checks),
    ]
    for section, placed in zip(sections, figures, strict=True):
        parts.append(_section_html(section, placed))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _checks_html(checks: Sequence[Check]) -> str:
    summary = summarize(checks)
    if not checks:
        verdict = '<p class="verdict pass">No checks were run.</p>'
    elif summary["all_passed"]:
        verdict = f'<p class="verdict pass">All {summary["checks"]} checks passed.</p>'
    else:
        failed = "; ".join(_e(c.claim) for c in checks if not c.passed)
        verdict = (
            f'<p class="verdict fail">{summary["failed"]} of {summary["checks"]} checks FAILED: '
            f"{failed}</p>"
        )
    rows = []
    for check in checks:
        status = "pass" if check.passed else "fail"
        mark = "✓ pass" if check.passed else "✗ FAIL"
        rows.append(
            f'<tr class="{status}"><td>{_e(check.claim)}</td>'
            f"<td>{_e(format_value(check.measured))}</td><td>{_e(check.expected)}</td>"
            f'<td class="result {status}">{mark}</td></tr>'
        )
    table = (
        "<table><thead><tr><th>claim</th><th>measured</th><th>expected</th><th>result</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else ""
    )
    return f'<section id="checks"><h2>Checks</h2>{verdict}{table}</section>'


def _section_html(section: Section, placed: Sequence[FigureFiles]) -> str:
    parts = [f"<section><h2>{_e(section.title)}</h2>", _paragraphs(section.text)]
    for number, (png, svg) in enumerate(placed):
        caption = section.captions[number] if number < len(section.captions) else ""
        image = png or svg
        img = f'<img src="{_url(image)}" alt="{_e(caption or section.title)}">'
        if svg and png:
            img = f'<a href="{_url(svg)}">{img}</a>'
        links = " · ".join(
            f'<a href="{_url(f)}">{f.rsplit(".", 1)[1].upper()}</a>' for f in (png, svg) if f
        )
        parts.append(f"<figure>{img}<figcaption>{_e(caption)} [{links}]</figcaption></figure>")
    for table in section.tables:
        parts.append(_table_html(table))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{_e(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(format_value(v))}</td>" for v in row) + "</tr>"
        for row in table.rows
    )
    caption = f"<caption>{_e(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def format_value(value: object, items: int = 6) -> str:
    """A measurement as text: 4 significant digits, 'n/a' for None or NaN, short lists."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(format_value(v) for v in value[:items])
        return f"[{shown}{', …' if len(value) > items else ''}]"
    try:
        jsonable = to_jsonable(value, "value")
    except TypeError:
        return str(value)
    if isinstance(jsonable, list):
        return format_value(jsonable, items)
    if isinstance(jsonable, float):
        return format_value(jsonable)
    return str(value)


def _paragraphs(text: str) -> str:
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    return "".join(f"<p>{_e(b)}</p>" for b in blocks)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _url(path: str) -> str:
    return _e(quote(path))
