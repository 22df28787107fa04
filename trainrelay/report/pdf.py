"""Render the report's HTML to PDF so that the same HTML gives the same bytes on any machine.

Two things outside the inputs used to reach the PDF's bytes:

* **The clock.** WeasyPrint subsets every embedded font. Where the system has no
  HarfBuzz-subset library (a fresh Debian/Ubuntu image, Colab, most pods) it subsets with
  fontTools, whose ``TTFont.save`` stamps the current time into each subset's ``head.modified``
  field: two builds a second apart differ inside the font, same length, different bytes.
  fontTools takes that time from ``SOURCE_DATE_EPOCH`` when it is set (the reproducible-builds
  convention), so rendering sets it (the caller's own value wins).
* **The machine.** Which subsetter runs (system HarfBuzz of whatever version, or fontTools) and
  which "DejaVu Sans" fontconfig finds depend on what is installed. The PDF therefore always
  subsets with the pinned fontTools and embeds the DejaVu fonts that the pinned matplotlib
  ships, declared under names of their own so a system font can never stand in for them.

What remains machine-dependent is Pango's layout engine (a system library): the pinned
requirements cannot pin it, so byte identity across distributions is not promised — on one
machine it is, whatever the clock, load, locale, working directory or installed fonts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from trainrelay.atomic import atomic_path

# 2026-01-01T00:00:00Z: the font subsets' "modified" date when the caller sets none.
DEFAULT_SOURCE_DATE_EPOCH = "1767225600"

# (family, weight, style, file in matplotlib's mpl-data/fonts/ttf/)
_FACES = (
    ("trainrelay-sans", "normal", "normal", "DejaVuSans.ttf"),
    ("trainrelay-sans", "bold", "normal", "DejaVuSans-Bold.ttf"),
    ("trainrelay-sans", "normal", "italic", "DejaVuSans-Oblique.ttf"),
    ("trainrelay-sans", "bold", "italic", "DejaVuSans-BoldOblique.ttf"),
    ("trainrelay-mono", "normal", "normal", "DejaVuSansMono.ttf"),
    ("trainrelay-mono", "bold", "normal", "DejaVuSansMono-Bold.ttf"),
)

# Applied after report.css: the same look, with the shipped faces named first everywhere.
_FONT_RULES = """
*, *::before, *::after, *::marker { font-family: "trainrelay-sans" !important; }
pre, code, pre *, code * { font-family: "trainrelay-mono" !important; }
@page {
  @bottom-left { font-family: "trainrelay-sans" !important; }
  @bottom-right { font-family: "trainrelay-sans" !important; }
}
"""


def font_dir() -> Path:
    """The folder of TrueType fonts inside the installed (pinned) matplotlib."""
    return Path(str(resources.files("matplotlib") / "mpl-data" / "fonts" / "ttf"))


def font_stylesheet() -> str:
    """``@font-face`` rules for the shipped fonts plus the rules that select them."""
    folder = font_dir()
    faces = []
    for family, weight, style, name in _FACES:
        path = folder / name
        if not path.is_file():  # a broken matplotlib install, not something to paper over
            raise FileNotFoundError(f"report font {path} is missing: reinstall with `make setup`")
        faces.append(
            f'@font-face {{ font-family: "{family}"; font-weight: {weight}; font-style: {style}; '
            f'src: url("{path.as_uri()}"); }}'
        )
    return "\n".join(faces) + _FONT_RULES


@contextlib.contextmanager
def _source_date_epoch() -> Iterator[None]:
    previous = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = previous or DEFAULT_SOURCE_DATE_EPOCH
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SOURCE_DATE_EPOCH"]


@contextlib.contextmanager
def _fonttools_subsetting() -> Iterator[None]:
    """Make WeasyPrint subset with fontTools even where a system HarfBuzz-subset exists.

    WeasyPrint (pinned at 70.0) picks the subsetter from the module-level ``harfbuzz_subset``
    handle; clearing it for the call is the one switch it has. Its warning that the fontTools
    path is deprecated is expected here and kept out of the run's log.
    """
    # imported here: weasyprint (0.5 s, measured, and the pango system library) only when a PDF is written
    import weasyprint.pdf.fonts as weasy_fonts

    saved = weasy_fonts.harfbuzz_subset
    weasy_fonts.harfbuzz_subset = None
    quiet = _DropMessage("instead of HarfBuzz-Subset")
    weasy_logger = logging.getLogger("weasyprint")
    weasy_logger.addFilter(quiet)
    try:
        yield
    finally:
        weasy_fonts.harfbuzz_subset = saved
        weasy_logger.removeFilter(quiet)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def layout_document(html: str, base_url: str | Path) -> Any:
    """``html`` laid out into pages with the shipped fonts (a ``weasyprint.Document``).

    The PDF is written from exactly this layout, so its pages and boxes (``document.pages``, each
    page's ``anchors`` and ``_page_box`` tree) are what the tests measure: page counts, where a
    view starts, whether a table fits the page.
    """
    # imported here: weasyprint (0.5 s, measured, and the pango system library) only when a PDF is written
    import weasyprint
    from weasyprint.text.fonts import FontConfiguration

    # @font-face rules only take effect through a FontConfiguration shared by CSS and render.
    fonts = FontConfiguration()
    shipped = weasyprint.CSS(string=font_stylesheet(), font_config=fonts)
    document = weasyprint.HTML(string=html, base_url=str(base_url))
    return document.render(stylesheets=[shipped], font_config=fonts)


def render_pdf(html: str, base_url: str | Path) -> bytes:
    """The PDF of ``html`` as bytes; deterministic as described in this module's docstring."""
    # fontTools logs every table it subsets at INFO: that is not what a run's log is for.
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    with _source_date_epoch(), _fonttools_subsetting():
        return layout_document(html, base_url).write_pdf()


def write_pdf(html: str, target: str | Path, base_url: str | Path) -> None:
    """Write the PDF of ``html`` to ``target`` atomically."""
    data = render_pdf(html, base_url)
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)
