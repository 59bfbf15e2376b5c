"""One self-contained HTML page: text, tables and PNG figures embedded as base64 data URIs, so `index.html` can be
mailed, attached to an issue or opened from any folder with nothing beside it. No script and no external resource:
it renders the same in any browser, offline.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f6; }
figure { margin: 0.8rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.82rem; color: #555; }
.note { color: #555; font-size: 0.9rem; }
.row { display: flex; flex-wrap: wrap; gap: 1.2rem; align-items: flex-start; }
.supported { color: #136f2d; font-weight: 600; } .unsupported { color: #a1261b; font-weight: 600; }
.unmeasured { color: #777; font-weight: 600; }
li { margin: 0.3rem 0; }
"""


def page(title: str, blocks: Iterable[str]) -> str:
    """A complete HTML document."""
    body = "\n".join(blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{html.escape(text)}</h{level}>"


def paragraph(text: str, css: str | None = None) -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<p{attribute}>{html.escape(text)}</p>"


def figure(png: bytes | None, caption: str) -> str:
    """The image inline (a data URI); nothing when there is no image."""
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    text = html.escape(caption)
    return f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{text}\"><figcaption>{text}</figcaption></figure>"


def row(blocks: Iterable[str]) -> str:
    """Blocks side by side, wrapping on a narrow screen (small figures such as confusion matrices)."""
    return "<div class=\"row\">" + "".join(blocks) + "</div>"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def items(lines: Iterable[tuple[str, str | None]]) -> str:
    """A list; each item's text with an optional status word in its own style (a claim's verdict)."""
    out = []
    for text, status in lines:
        verdict = f" <span class=\"{_STATUS_CSS.get(status or '', '')}\">{html.escape(status)}</span>" if status else ""
        out.append(f"<li>{html.escape(text)}{verdict}</li>")
    return "<ul>" + "".join(out) + "</ul>"


_STATUS_CSS = {"supported": "supported", "not supported by this study": "unsupported", "not measured": "unmeasured"}
