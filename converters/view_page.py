"""Shard rows as HTML: self-contained pages (inline CSS and PNG data URIs, no script, no network).

The browser view of a shard directory, as the field's dataset viewers show episodes: the index
(the manifest's statistics, rows by task, the pages of rows), a page of rows (one line each), and
a row: its steps, each image observation as a picture, every token a cell coloured by modality,
dark when it is a training target (loss mask 1), with its position, id and decoded value on hover.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tokenizer_kit.episode_decode import decode_episode
from tokenizer_kit.frames import grey_to_rgb
from tokenizer_kit.layout import CONTINUOUS, DISCRETE, IMAGE, MODALITY_NAMES, SEPARATOR, TEXT, VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, Row
from tokenizer_kit.text_rows import decode_caption
from tokenizer_kit.values import tokens_to_continuous, tokens_to_discrete

MAX_TOKENS = 20_000  # token cells drawn per row page (the rest are counted, not drawn)
IMAGE_MIN_PX = 96  # small observations are shown at least this large (pixelated)

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em 2em;color:#222;background:#fff}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.3em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
nav{margin:.5em 0;padding:.3em 0;border-bottom:1px solid #eee}nav a,nav span{margin-right:1em}
.hint{color:#777;font-size:.9em}code{background:#f4f4f4;padding:0 3px}
.steps{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.step{border:1px solid #e3e3e3;border-radius:4px;padding:.4em .6em;max-width:100%;box-sizing:border-box}
.step h3{font-size:1em;margin:0 0 .3em}.imgs{display:flex;flex-wrap:wrap;gap:8px;margin:.2em 0 .4em}
figure{margin:0}figcaption{font-size:.8em;color:#555}
img.obs{image-rendering:pixelated;border:1px solid #ccc}
.toks{display:flex;flex-wrap:wrap;gap:2px;font:12px/1.2 ui-monospace,monospace}
.t{padding:1px 3px;border-radius:2px;border-bottom:3px solid transparent;white-space:pre;cursor:default}
.t.L{border-bottom-color:#000}
.m0{background:#cfe0fa}.m0.L{background:#6f9be6}
.m1{background:#e2e2e2}.m1.L{background:#9a9a9a}
.m2{background:#d3f0d3}.m2.L{background:#5cbf6c}
.m3{background:#fde3c4}.m3.L{background:#f29a3e}
.m4{background:#f6b3b3}.m4.L{background:#d94545}
.legend .t{margin-right:.6em}
"""


def page(title: str, body: str) -> str:
    """A whole HTML document: its style inline, nothing loaded from anywhere."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'\"><title>{esc(title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def table(header: list[str] | None, rows: list[list], numeric: frozenset[int] | set[int] = frozenset()) -> str:
    """Cells are HTML already (escaped by the caller); `numeric` columns align right."""
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def png_data_uri(rgb: np.ndarray) -> str:

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def legend() -> str:
    cells = "".join(f"<span class=\"t m{m}\">{MODALITY_NAMES[m]}</span><span class=\"t m{m} L\">"
                    f"{MODALITY_NAMES[m]} (loss)</span>" for m in (TEXT, IMAGE, DISCRETE, CONTINUOUS, SEPARATOR))
    return (f"<p class=\"legend toks\">{cells}</p><p class=\"hint\">One cell per token, coloured by modality; "
            "dark with a bar underneath: a training target (loss mask 1). Hover a cell for its position, id "
            "and decoded value.</p>")


# --- one row ----------------------------------------------------------------------------------------

@dataclass
class Section:
    """A run of tokens shown together (an RL step, or the whole of a caption or text row)."""

    title: str
    start: int
    stop: int
    images: list[tuple[str, np.ndarray]] = field(default_factory=list)


def action_mask(row: Row, layout: VocabLayout) -> np.ndarray:
    """True for the tokens after their step's separator (actions: no mu-law when decoded)."""
    n = len(row.tokens)
    out = np.zeros(n, bool)
    if not len(row.step_starts):
        return out
    step = np.searchsorted(row.step_starts, np.arange(n), side="right") - 1
    seps = np.flatnonzero(row.modality == SEPARATOR)
    first_sep = np.full(len(row.step_starts), n, np.int64)
    np.minimum.at(first_sep, step[seps], seps)
    return np.arange(n) > first_sep[step]


def token_values(row: Row, layout: VocabLayout | None, tok) -> list[str]:
    """Each token's decoded value, as shown on hover (vectorised per modality)."""
    ids, mod = row.tokens, row.modality
    out = np.array([f"id {i}" for i in ids.tolist()], dtype=object)
    if layout is None:
        return out.tolist()
    t = np.flatnonzero(mod == TEXT)
    if len(t) and tok is not None:
        ok = t[(ids[t] >= 0) & (ids[t] < tok.vocab_size)]
        out[ok] = [f"text {p!r}" for p in tok.sp.IdToPiece(ids[ok].tolist())]
    d = np.flatnonzero(mod == DISCRETE)
    if len(d):
        out[d] = [f"discrete {v}" for v in tokens_to_discrete(ids[d], layout).tolist()]
    act = action_mask(row, layout)
    for mask, mu, what in ((~act, True, "observation"), (act, False, "action")):
        c = np.flatnonzero((mod == CONTINUOUS) & mask)
        if len(c):
            out[c] = [f"continuous {v:.5g} ({what})" for v in tokens_to_continuous(ids[c], layout, mu).tolist()]
    p = np.flatnonzero(mod == IMAGE)
    if len(p):
        pos = row.patch_pos[:len(p)].astype(int)
        out[p] = [f"image patch {k}, rows {a}-{b}, cols {c}-{e} of {layout.position_bins}"
                  for k, (a, b, c, e) in enumerate(pos.tolist())]
    out[mod == SEPARATOR] = "separator (observation | action)"
    return out.tolist()


def cell_text(row: Row, values: list[str]) -> list[str]:
    """The short text inside each cell: a text piece, a number, ▦ for a patch, | for the separator."""
    short = []
    for m, v in zip(row.modality.tolist(), values, strict=True):
        if m == IMAGE:
            short.append("▦")
        elif m == SEPARATOR:
            short.append("|")
        elif v.startswith("text "):
            short.append(v[6:-1].replace("▁", " ") or "·")
        else:
            short.append(v.split(" ")[1])
    return short


def sections(row: Row, layout: VocabLayout | None, spec: EpisodeSpec | None, tok) -> list[Section]:
    """How the row is shown: one section per step (RL), else one for the whole row, with its images."""
    n = len(row.tokens)
    if len(row.step_starts):
        bounds = [int(b) for b in row.step_starts] + [n]
        out = [Section(f"step {t}", bounds[t], bounds[t + 1]) for t in range(len(row.step_starts))]
        if layout is not None and spec is not None:
            for sec, (obs, _) in zip(out, decode_episode(row, spec, layout, tok), strict=True):
                for f in spec.observations:
                    if f.kind == "image" and f.frame_stack is not None:  # grey frames, oldest first
                        k = len(obs[f.name])
                        sec.images += [(f"{f.name} frame {j - k + 1}" if k > 1 else f.name, grey_to_rgb(fr))
                                       for j, fr in enumerate(obs[f.name])]
                    elif f.kind == "image":
                        sec.images.append((f.name, obs[f.name]))
        return out
    if len(row.patches):
        sec = Section("image-caption pair", 0, n)
        if layout is not None:
            images, _ = decode_caption(row, layout, tok)
            sec.images = [(f"image {k}", im) for k, im in enumerate(images)]
        return [sec]
    return [Section("document", 0, n)]


def row_body(row: Row, header: dict, layout: VocabLayout | None, spec: EpisodeSpec | None, tok) -> str:
    """The sections of a row: pictures, then token cells with their hover text."""
    values = token_values(row, layout, tok)
    short = cell_text(row, values)
    step_of = (np.searchsorted(row.step_starts, np.arange(len(row.tokens)), side="right") - 1
               if len(row.step_starts) else None)
    parts, drawn = [], 0
    for sec in sections(row, layout, spec, tok):
        imgs = ""
        if sec.images:
            figs = []
            for label, im in sec.images:
                scale = max(1, -(-IMAGE_MIN_PX // max(im.shape[:2])))
                figs.append(f"<figure><img class=\"obs\" alt=\"{esc(label)}\" width=\"{im.shape[1] * scale}\" "
                            f"height=\"{im.shape[0] * scale}\" src=\"{png_data_uri(im)}\">"
                            f"<figcaption>{esc(label)} {im.shape[0]}x{im.shape[1]}</figcaption></figure>")
            imgs = f"<div class=\"imgs\">{''.join(figs)}</div>"
        stop = min(sec.stop, sec.start + max(0, MAX_TOKENS - drawn))
        cells = []
        for i in range(sec.start, stop):
            m, k = int(row.modality[i]), int(row.loss_mask[i])
            where = f"position {i}" + (f", step {int(step_of[i])}" if step_of is not None else "") + \
                    (f", local {int(row.local_pos[i])}" if row.local_pos[i] >= 0 else "")
            tip = f"{where} | {MODALITY_NAMES.get(m, m)} id {int(row.tokens[i])} | {values[i]} | " + \
                  ("loss target" if k else "context (no loss)")
            cells.append(f"<span class=\"t m{m}{' L' if k else ''}\" title=\"{esc(tip)}\">{esc(short[i])}</span>")
        drawn += stop - sec.start
        more = f"<p class=\"hint\">{sec.stop - stop:,} more tokens not drawn</p>" if stop < sec.stop else ""
        parts.append(f"<section class=\"step\"><h3>{esc(sec.title)} <span class=\"hint\">tokens {sec.start}-"
                     f"{sec.stop - 1}, {len(sec.images)} image(s)</span></h3>{imgs}"
                     f"<div class=\"toks\">{''.join(cells)}</div>{more}</section>")
    facts = table(None, [[esc(k), esc(v)] for k, v in header.items()])
    return facts + legend() + "<div class=\"steps\">" + "\n".join(parts) + "</div>"
