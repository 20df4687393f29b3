"""A small report builder: headings, paragraphs, tables and figures -> Markdown or HTML + JSON.

The same list of blocks renders to ``report.md`` (GitHub-flavoured tables, relative PNG links)
or ``report.html`` (one self-contained page apart from the PNGs); every number goes to
``report.json`` alongside. Files are written atomically (temporary sibling, then rename).

Examples
--------
>>> r = Report("Demo", stamp={"seed": 0})
>>> r.heading("Numbers"); r.table(["K", "accuracy"], [[5, 0.91]])
>>> "| 5 | 0.910 |" in r.markdown()
True
"""
from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speckle_embed.atomic import write_bytes_atomically

__all__ = ["Report", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, Paths and tuples -> plain JSON types (NaN -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


class Report:
    """Blocks of a report, rendered to Markdown or HTML.

    Parameters
    ----------
    title : str
    stamp : mapping
        Provenance shown at the top and stored in the JSON (config, seed, commit, checkpoint...).
    """

    def __init__(self, title: str, stamp: Mapping | None = None):
        self.title = title
        self.stamp = dict(stamp or {})
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def figure(self, path, caption: str) -> None:
        self.blocks.append(("figure", (Path(os.fspath(path)).name, caption)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # ------------------------------------------------------------------ rendering
    def _stamp_rows(self) -> list[tuple[str, str]]:
        return [(k, str(v)) for k, v in self.stamp.items() if k != "config_yaml"]

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        out += [f"- **{k}**: `{v}`" for k, v in self._stamp_rows()] + [""]
        for kind, b in self.blocks:
            if kind == "heading":
                out += ["#" * b[0] + " " + b[1], ""]
            elif kind == "text":
                out += [b, ""]
            elif kind == "table":
                header, rows = b
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
                out.append("")
            elif kind == "figure":
                out += [f"![{b[1]}]({b[0]})", "", f"*{b[1]}*", ""]
            elif kind == "code":
                out += ["```", b.rstrip(), "```", ""]
        if "config_yaml" in self.stamp:
            out += ["## Configuration", "", "```yaml", str(self.stamp["config_yaml"]).rstrip(), "```", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        out = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{e(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:"
               "collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
               "img{max-width:100%}</style></head><body>", f"<h1>{e(self.title)}</h1><ul>"]
        out += [f"<li><b>{e(k)}</b>: <code>{e(v)}</code></li>" for k, v in self._stamp_rows()]
        out.append("</ul>")
        for kind, b in self.blocks:
            if kind == "heading":
                out.append(f"<h{b[0]}>{e(b[1])}</h{b[0]}>")
            elif kind == "text":
                out.append(f"<p>{e(b)}</p>")
            elif kind == "table":
                header, rows = b
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(_cell(v))}</td>" for v in r) + "</tr>" for r in rows]
                out.append("</table>")
            elif kind == "figure":
                out.append(f"<figure><img src='{e(b[0])}' alt='{e(b[1])}'><figcaption>{e(b[1])}"
                           "</figcaption></figure>")
            elif kind == "code":
                out.append(f"<pre>{e(b)}</pre>")
        if "config_yaml" in self.stamp:
            out.append(f"<h2>Configuration</h2><pre>{e(str(self.stamp['config_yaml']))}</pre>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, directory, numbers: Mapping, fmt: str = "markdown") -> dict[str, Path]:
        """Write ``report.md`` or ``report.html`` and ``report.json`` into ``directory``."""
        if fmt not in ("markdown", "html", "both"):
            raise ValueError(f"report format must be markdown, html or both, got {fmt!r}")
        d = Path(os.fspath(directory))
        d.mkdir(parents=True, exist_ok=True)
        paths = {}
        if fmt in ("markdown", "both"):
            paths["markdown"] = d / "report.md"
            write_bytes_atomically(self.markdown().encode(), paths["markdown"])
        if fmt in ("html", "both"):
            paths["html"] = d / "report.html"
            write_bytes_atomically(self.html().encode(), paths["html"])
        paths["json"] = d / "report.json"
        payload = {"title": self.title, "stamp": self.stamp, **numbers}
        write_bytes_atomically(json.dumps(to_jsonable(payload), indent=2).encode(), paths["json"])
        return paths
