"""The page's markup: sections that fold, a table of contents, tables that sort and filter in the
page itself (a few lines of inline JavaScript: no network, no CDN), figures with captions.
Every string from data is HTML-escaped here."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

from ablate.report.tables import Table

CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right} td{white-space:nowrap}
th{background:#f0f3f7} td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"} th[aria-sort=descending]::after{content:" \\25BC"}
td.text{text-align:left;white-space:normal;min-width:16em;max-width:46em} th.text{text-align:left}
.scroll{overflow-x:auto} .note{color:#555;font-size:13px} pre{background:#f6f6f6;padding:.8em;
overflow-x:auto;font-size:12px} img{max-width:100%} ul.summary li{margin:.25em 0}
details>summary{cursor:pointer;list-style:none}
details>summary::-webkit-details-marker{display:none}
details>summary h2{display:inline-block;margin:.7em 0 .3em}
details>summary h2::before{content:"\\25B8 ";color:#888}
details[open]>summary h2::before{content:"\\25BE "}
nav.toc{background:#f6f8fa;border:1px solid #dde;padding:.4em 1em;margin:1em 0;font-size:14px}
nav.toc ol{margin:.3em 0;padding-left:1.4em;columns:2}
input.filter{margin:.2em 0;padding:2px 6px;font-size:13px;width:18em}
p.collapsed{background:#fff8e6;border-left:4px solid #E69F00;padding:.4em .8em;margin:.4em 0}
figure{margin:1em 0} figcaption{font-size:13px;color:#444;max-width:60em}
"""

# Sort on a header click (numbers by value, wherever the cell's first number is; text
# otherwise; n/a last), filter rows by the text typed above a table.
SCRIPT = """
(function(){
function key(cell){var t=cell.textContent.trim();
 var m=t.replace(/,/g,'').match(/[-+]?\\d*\\.?\\d+(?:e[-+]?\\d+)?/i);
 return m&&!/^n\\/a/.test(t)?{n:parseFloat(m[0]),t:t}:{n:null,t:t};}
function sortBy(table,col,th){
 var down=th.getAttribute('aria-sort')==='ascending';
 [].forEach.call(table.tHead.rows[0].cells,function(c){c.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',down?'descending':'ascending');
 var body=table.tBodies[0],rows=[].slice.call(body.rows);
 rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
  if(x.n===null||y.n===null){if(x.n!==y.n)return x.n===null?1:-1;
   return (down?-1:1)*x.t.localeCompare(y.t);}
  return (down?-1:1)*(x.n-y.n);});
 rows.forEach(function(r){body.appendChild(r);});}
document.querySelectorAll('table.sortable').forEach(function(table){
 [].forEach.call(table.tHead.rows[0].cells,function(th,col){
  th.title='sort by this column';
  th.addEventListener('click',function(){sortBy(table,col,th);});});});
document.querySelectorAll('input.filter').forEach(function(input){
 var table=document.getElementById(input.dataset.table);
 input.addEventListener('input',function(){var q=input.value.toLowerCase();
  [].forEach.call(table.tBodies[0].rows,function(r){
   r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});});});
})();
"""
FILTER_FROM_ROWS = 8  # tables with more rows get a filter box


@dataclass(frozen=True)
class Section:
    key: str  # the anchor
    title: str
    content: str  # HTML
    open: bool = True


def section_html(s: Section) -> str:
    state = " open" if s.open else ""
    return (
        f'<section id="{s.key}"><details{state}><summary><h2>{html.escape(s.title)}</h2>'
        f"</summary>{s.content}</details></section>"
    )


def toc_html(sections: list[Section]) -> str:
    items = "".join(f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>' for s in sections)
    return f'<nav class="toc" aria-label="contents"><b>Contents</b><ol>{items}</ol></nav>'


def page_html(title: str, lead: str, sections: list[Section]) -> str:
    esc = html.escape(title)
    body = "".join(map(section_html, sections))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc}</title>'
        f"<style>{CSS}</style></head><body><h1>{esc}</h1>{lead}{toc_html(sections)}{body}"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def table_id(title: str, number: int) -> str:
    """A page-unique id: the table's number on the page, its title for reading."""
    return f"t{number}-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]


def table_html(t: Table, ident: str, text_columns: tuple[str, ...] = ()) -> str:
    """A sortable table with the page-unique id `ident` (and a filter box above it past
    FILTER_FROM_ROWS rows); `links` cells become anchors, `text_columns` left-aligned prose."""
    esc = html.escape
    prose = [str(c) in (*text_columns, *t.wrap) for c in t.frame.columns]
    head = "".join(
        f'<th scope="col"{" class=text" if p else ""}>{esc(str(c))}</th>'
        for c, p in zip(t.frame.columns, prose, strict=True)
    )
    body = []
    for i in range(len(t.frame)):
        cells = []
        for j, value in enumerate(t.frame.iloc[i]):
            text = esc(str(value))
            if (i, j) in t.links:
                text = f'<a href="{esc(t.links[(i, j)])}">{text}</a>'
            if t.bold is not None and bool(t.bold.iat[i, j]):
                text = f"<b>{text}</b>"
            cells.append(f'<td class="text">{text}</td>' if prose[j] else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="note">{esc(t.note)}</p>' if t.note else ""
    box = (
        f'<input type="search" class="filter" data-table="{ident}" placeholder="filter rows" '
        f'aria-label="filter the rows of {esc(t.title)}">'
        if len(t.frame) > FILTER_FROM_ROWS
        else ""
    )
    return (
        f'<h4>{esc(t.title)}</h4>{box}<div class="scroll"><table class="sortable" '
        f'id="{ident}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f"</div>{note}"
    )


def figure_html(caption: str, png: bytes, ident: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    where = f' id="{html.escape(ident)}"' if ident else ""
    return (
        f'<figure{where}><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def pre_html(title: str, text: str) -> str:
    return f"<h3>{html.escape(title)}</h3><pre>{html.escape(text)}</pre>"


def paragraphs(lines, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return "".join(f"<p{attr}>{html.escape(line)}</p>" for line in lines)
