"""`gato-tokenize view DIR --out VIEW [--page N ...] [--row N ...]`: a shard directory in a browser.

Writes self-contained HTML pages into VIEW (open VIEW/index.html; no server, no network): the
index (the manifest's statistics, rows by task, the pages rendered so far), each page of rows asked
for (`--page-size` rows, one line each) and a page per row of those pages (its steps, images and
tokens). Only the pages asked for are read and written, so a directory of any size (a URL too)
views in the time of the pages shown; run it again with other pages to add them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
import sys
from pathlib import Path

import numpy as np

from schemas.reader import ShardDir
from schemas.shard import ShardError, row_from_table
from tokenizer_kit.files import atomic_path
from tokenizer_kit.layout import MODALITY_NAMES
from tokenizer_kit.options import add_command, opt

from ..base import SourceError
from ..view_page import esc, page, row_body, table
from .inspect.summary import summary
from .listing import human_bytes

INDEX = "index.html"
PAGE_RE = re.compile(r"^page-(\d{6})\.html$")


def page_name(p: int) -> str:
    return f"page-{p:06d}.html"


def row_name(r: int) -> str:
    return f"row-{r:09d}.html"


def _write(path: Path, text: str) -> None:
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _nav(links: list[tuple[str, str | None]]) -> str:
    return "<nav>" + "".join(f"<a href=\"{esc(h)}\">{esc(t)}</a>" if h else f"<span class=\"hint\">{esc(t)}</span>"
                             for t, h in links) + "</nav>"


def index_body(s: dict, pages: list[int], page_size: int, num_rows: int, src: str) -> str:
    """The manifest's statistics, rows by task and the rendered pages."""
    facts = [["directory", esc(s["path"])], ["converter", esc(s["converter"] or "-")],
             ["rows", f"{s['rows']:,}"], ["tokens", f"{s['tokens']:,}"], ["bytes", human_bytes(s["bytes"])],
             ["shards", f"{len(s['shards']):,}"]]
    if s.get("options"):
        facts.append(["options", esc(", ".join(f"{k}={v}" for k, v in sorted(s["options"].items())))])
    if s.get("episode_spec"):
        spec = s["episode_spec"]
        for group in ("observations", "actions"):
            facts.append([group, esc(", ".join(f"{f['name']} {f['kind']}{tuple(f['shape']) if f.get('shape') else ''}"
                                               for f in spec[group]))])
    if s.get("episode_return"):
        facts.append(["episode return", esc("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in s["episode_return"].items()))])
    st = s.get("step_tokens")
    if st:
        facts.append([f"tokens per {st['unit']}", f"min {st['min']:,}, median {st['median']:g}, max {st['max']:,}"])
    if s.get("test_rows") is not None:
        facts.append(["test rows", f"{s['test_rows']:,}"])
    total = max(1, sum(s["tokens_by_modality"].values()))
    mods = [[esc(k), f"{v:,}", f"{100 * v / total:.1f}%"] for k, v in s["tokens_by_modality"].items()]
    per_task = s.get("rows_per_task") or {}
    tasks = [[esc(t), f"{n:,}"] for t, n in sorted(per_task.items())] or [[esc(t), "-"] for t in s["tasks"] or []]
    n_pages = -(-num_rows // page_size)
    links = ", ".join(f"<a href=\"{page_name(p)}\">page {p} (rows {p * page_size}-"
                      f"{min(num_rows, (p + 1) * page_size) - 1})</a>" for p in pages)
    body = [f"<h1>{esc(Path(s['path']).name or s['path'])}</h1>", table(None, facts),
            "<h2>Tokens by modality</h2>", table(["modality", "tokens", "share"], mods, {1, 2}),
            "<h2>Rows by task</h2>", table(["task", "rows"], tasks, {1}),
            f"<h2>Rows</h2><p>{num_rows:,} rows in {n_pages:,} pages of {page_size}. Rendered: {links or 'none'}.</p>",
            f"<p class=\"hint\">Add pages: <code>gato-tokenize view {esc(src)} --out VIEW --page N</code> "
            f"(or <code>--row N</code> for the page holding row N).</p>"]
    if s["skipped"]:
        body.append(f"<p>{s['skipped']:,} records skipped by the converter (listed in manifest.json).</p>")
    return "\n".join(body)


def render_page(sd: ShardDir, out: Path, p: int, page_size: int, pages: set[int], spec, layout, tok) -> None:
    """Page p: its rows' list, and one page per row."""
    first, last = p * page_size, min(sd.num_rows, (p + 1) * page_size)
    lines = []
    for r in range(first, last):
        shard, i = sd.locate(r)
        t = sd.table(shard)
        try:
            row = row_from_table(t, i)
        except ShardError as e:
            raise SourceError(f"{sd.shards[shard].path}: {e}") from None
        scalars = {k: t.column(k)[i].as_py() for k in ("source_id", "task", "num_steps", "episode_return", "split")
                   if k in t.schema.names}
        kind = "rl" if len(row.step_starts) else "caption" if len(row.patches) else "text"
        header = {"row": r, "shard": f"{sd.shards[shard].name} row {i}", "kind": kind, **scalars,
                  "tokens": len(row), "loss targets": int(row.loss_mask.sum()), "patches": len(row.patches),
                  "steps": len(row.step_starts)}
        nav = _nav([("index", INDEX), (f"page {p}", page_name(p)),
                    ("previous row", row_name(r - 1) if r > first else None),
                    ("next row", row_name(r + 1) if r + 1 < last else None)])
        title = f"{sd.name} row {r}"
        _write(out / row_name(r), page(title, f"{nav}<h1>{esc(title)}</h1>" +
                                       row_body(row, header, layout, spec if kind == "rl" else None, tok)))
        mods, counts = np.unique(row.modality, return_counts=True)
        by_mod = "  ".join(f"{MODALITY_NAMES[m]} {c}" for m, c in zip(mods.tolist(), counts.tolist(), strict=True))
        ret = scalars.get("episode_return")
        lines.append([f"<a href=\"{row_name(r)}\">{r}</a>", esc(scalars.get("task", "")),
                      esc(scalars.get("source_id", "")), kind, f"{len(row):,}", str(len(row.step_starts) or "-"),
                      str(len(row.patches)), "-" if ret is None else f"{ret:.4g}", esc(by_mod)])
    nav = _nav([("index", INDEX), ("previous page", page_name(p - 1) if p - 1 in pages else None),
                ("next page", page_name(p + 1) if p + 1 in pages else None)])
    body = (f"{nav}<h1>{esc(sd.name)}: rows {first}-{last - 1}</h1>" +
            table(["row", "task", "source id", "kind", "tokens", "steps", "patches", "return", "tokens by modality"],
                  lines, {4, 5, 6, 7}))
    _write(out / page_name(p), page(f"{sd.name} page {p}", body))


def run(args: ViewOptions) -> int:
    sd = ShardDir.open(args.dir)
    if sd.num_rows == 0:
        raise SourceError(f"{args.dir}: no rows to view (no complete shard)")
    n_pages = -(-sd.num_rows // args.page_size)
    wanted = set(args.page or []) | {r // args.page_size for r in args.row or []}
    for r in args.row or []:
        if not 0 <= r < sd.num_rows:
            print(f"gato-tokenize view: --row {r} is outside [0, {sd.num_rows})", file=sys.stderr)
            return 2
    for p in wanted:
        if not 0 <= p < n_pages:
            print(f"gato-tokenize view: --page {p} is outside [0, {n_pages})", file=sys.stderr)
            return 2
    wanted = wanted or {0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pages = {int(m.group(1)) for f in out.iterdir() if (m := PAGE_RE.match(f.name))} | wanted
    layout = sd.layout if sd.manifest is not None else None
    spec = sd.manifest.spec if sd.manifest else None
    tok = sd.text_tokenizer()
    for p in sorted(wanted):
        render_page(sd, out, p, args.page_size, pages, spec, layout, tok)
    s = summary(sd)
    st = sd.manifest.typed_stats if sd.manifest is not None else None
    s["rows_per_task"] = dict(st.rows_per_task) if st is not None and st.rows_per_task else None
    _write(out / INDEX, page(f"{sd.name}: shards", index_body(s, sorted(pages), args.page_size, sd.num_rows,
                                                              args.dir)))
    print(f"wrote {out / INDEX} ({len(wanted)} page(s) of {args.page_size} rows)", file=sys.stderr)
    return 0


@dataclass
class ViewOptions:
    """The options of `gato-tokenize view`."""

    dir: str = opt("", "shard directory, a path or a URL (s3://...)", positional=True)
    out: str = opt("", "folder of the HTML pages (open VIEW/index.html)", metavar="VIEW", required=True)
    page: list[int] | None = opt(None, "render page N of the rows (repeatable; default: page 0)", lo=0, cli="append",
                                 metavar="N")
    row: list[int] | None = opt(None, "render the page holding row N (repeatable)", lo=0, cli="append", metavar="N")
    page_size: int = opt(20, "rows per page (default 20)", lo=1, metavar="ROWS")


def register(subparsers) -> None:
    add_command(subparsers, "view", ViewOptions, run, help="write HTML pages to look at a shard directory in a browser",
                description=__doc__.split("\n\n")[0])
