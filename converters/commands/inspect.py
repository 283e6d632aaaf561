"""`gato-tokenize inspect DIR [--row N | --source-id ID] [--png FILE] [--json]`.

Without a row: what the directory holds (layout, tokenizer, converter, shards, tokens per modality,
tasks, returns, the quantisation error of each field). With a row: the row decoded back through
tokenizer_kit (text as text, values de-quantised next to their ids, one line per timestep) and,
with --png, its images and a strip of its tokens. Works while a converter is still writing: only
complete shards are read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from schemas.manifest import Stats
from schemas.reader import ShardDir
from schemas.shard import ShardError, row_from_table
from schemas.split import epoch_tokens
from schemas.storage import OutDir
from schemas.workunit import WorkDir
from tokenizer_kit.episode_decode import decode_episode
from tokenizer_kit.argtypes import positive_int
from tokenizer_kit.frames import grey_to_rgb
from tokenizer_kit.images import patch_count
from tokenizer_kit.layout import IMAGE, MODALITY_NAMES, SEPARATOR, TEXT, VocabLayout
from tokenizer_kit.rows import step_lengths_of_rows
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, Row
from tokenizer_kit.text_rows import decode_caption

from ..base import SourceError
from .listing import head_and_tail, human_bytes

MAX_VALUES = 8  # values shown per tensor field before "... (+N)"
MAX_IDS = 256  # ids shown for a text row or caption
MAX_TEXT = 4000  # characters of decoded text shown


# --- the summary -------------------------------------------------------------------------------------

def _modality_counts(sd: ShardDir) -> dict[str, int]:
    """Tokens per modality counted from the complete shards (when the manifest has no statistics)."""
    counts = np.zeros(len(MODALITY_NAMES), np.int64)
    for i in range(len(sd.shards)):
        mod = sd.table(i).column("modality").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        counts += np.bincount(mod, minlength=len(counts))[:len(counts)]
    return {MODALITY_NAMES[m]: int(c) for m, c in enumerate(counts)}


def step_tokens(sd: ShardDir) -> dict | None:
    """Tokens per timestep (RL) or per image-caption row over the complete shards: min, median,
    max, and the smallest --seq-len whose sequences hold every one of them whole (the max)."""
    pieces = []
    for i in range(len(sd.shards)):
        t = sd.table(i)
        tok = t.column("tokens").combine_chunks()
        lengths = np.diff(tok.offsets.to_numpy())
        ss = t.column("step_starts").combine_chunks()
        nsteps = np.diff(ss.offsets.to_numpy())
        if nsteps.any():
            pieces.append(step_lengths_of_rows(ss.flatten().to_numpy(), nsteps, lengths))
        elif len(t.column("patches").combine_chunks().flatten()):
            pieces.append(lengths)
    if not pieces:
        return None  # text: any crop of a document has targets
    x = np.concatenate(pieces)
    rl = sd.manifest is None or sd.manifest.row_kind == "rl"
    longest = int(x.max())
    # an RL sequence given a prompt (a quarter of --seq-len by default) keeps L + 1 - L // 4 tokens for its window
    prompted = next(n for n in range(longest, 2 * longest + 8) if n + 1 - n // 4 >= longest) if rl else longest
    return {"unit": "step" if rl else "pair", "count": int(len(x)), "min": int(x.min()), "median": float(np.median(x)),
            "max": longest, "min_seq_len": longest, "min_seq_len_with_prompts": prompted}


def _frame_stacks(st: Stats | None) -> dict | None:
    """{field: {"last": episodes, "split": episodes}} as the RL converter counted them."""
    stacks = (st.frame_stacks if st is not None else None) or {}
    return {name: {"last": c.last, "split": c.split} for name, c in stacks.items()} or None


def _returns(sd: ShardDir) -> dict | None:
    tables = [sd.table(i) for i in range(len(sd.shards))]
    vals = [t.column("episode_return").to_numpy() for t in tables if "episode_return" in t.schema.names]
    if not vals:
        return None
    r = np.concatenate(vals)
    return {"count": int(len(r)), "mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()),
            "max": float(r.max())} if len(r) else {"count": 0}


def _field_errors(st: Stats | None) -> dict | None:
    """Per-field quantisation error from the manifest, as {field: {max, mean, count}}."""
    return {name: asdict(e) for name, e in st.field_errors.items()} if st is not None and st.field_errors else None


def work_progress(root: Path) -> dict | None:
    """How far an unfinished conversion is, as the writer itself would resume it."""
    p = WorkDir(OutDir(root)).progress()
    return None if p is None else {"units_total": p.units_total, "units_done": p.units_done, "shards": p.shards,
                                   "rows": p.rows}


def epoch(sd: ShardDir, shards: list[dict], seq_len: int) -> dict | None:
    """What one training epoch of the directory delivers at `seq_len` (schemas.split.epoch_tokens,
    the loader's rule): text predicts every token but each shard's first once."""
    m = sd.manifest
    if m is None:
        return None
    kind = m.row_kind or "text"
    lens = None
    if kind != "text":
        lens = np.concatenate([np.diff(sd.table(i).column("tokens").combine_chunks().offsets.to_numpy())
                               for i in range(len(sd.shards))] or [np.zeros(0, np.int64)])
    return {"seq_len": seq_len, "kind": kind, **epoch_tokens(kind, [s["tokens"] for s in shards], lens, seq_len)}


def summary(sd: ShardDir, seq_len: int = 1024) -> dict:
    """Everything the summary shows, as plain JSON-able data."""
    m = sd.manifest
    st = m.typed_stats if m is not None else None
    shards = []
    for i, s in enumerate(sd.shards):
        if s.info is not None:
            shards.append({"name": s.name, "rows": s.info.rows, "tokens": s.info.tokens, "bytes": s.info.bytes,
                           "sha256": s.info.sha256})
        else:
            t = sd.table(i)
            off = t.column("tokens").combine_chunks().offsets
            shards.append({"name": s.name, "rows": t.num_rows, "tokens": int(off[-1].as_py() - off[0].as_py()),
                           "bytes": sd.file(i).stat().st_size, "sha256": None})
    by_mod = st.tokens_by_modality if st is not None and st.tokens_by_modality else _modality_counts(sd)
    by_mod = {name: by_mod.get(name, 0) for name in MODALITY_NAMES.values()}
    ret = asdict(st.episode_return) if st is not None and st.episode_return is not None else None
    if ret is None and (m is None or m.episode_spec is not None):
        ret = _returns(sd)
    if ret is not None:
        ret = {k: ret[k] for k in ("count", "mean", "std", "min", "max") if ret.get(k) is not None}
    tok = None
    if sd.tokenizer_path is not None:
        t = sd.text_tokenizer()
        tok = {"file": sd.tokenizer_path.name, "vocab_size": t.vocab_size, "eos_id": t.eos_id, "sha256": t.sha256,
               "matches_manifest": None if m is None else t.sha256 == m.tokenizer_sha256}
    return {
        "path": str(sd.path),
        "manifest": m is not None,
        "created": m.created if m else None,
        "schema_version": m.schema_version if m else None,
        "converter": m.converter if m else None,
        "options": m.options if m else None,
        "layout": m.layout if m else None,
        "tokenizer": tok,
        "episode_spec": m.episode_spec if m else None,
        "tasks": m.tasks if m else None,
        "shards": shards,
        "rows": sum(s["rows"] for s in shards),
        "test_rows": m.rows_in("test") if m is not None else None,
        "tokens": sum(s["tokens"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "tokens_by_modality": by_mod,
        "episode_return": ret,
        "field_errors": _field_errors(st),
        "frame_stacks": _frame_stacks(st),
        "outside_unit_range": st.outside_unit_range if st is not None else None,
        "step_tokens": step_tokens(sd),
        "epoch": epoch(sd, shards, seq_len) if not sd.missing else None,
        "skipped": len(m.skipped) if m else None,
        "work": work_progress(sd.path) if m is None else None,
        "missing_shards": sd.missing,
        "unlisted_shards": sd.unlisted,
    }


def _layout_line(d: dict) -> str:
    lay = VocabLayout.from_dict(d)
    r = {MODALITY_NAMES[m]: lay.id_range(m) for m in (TEXT, 2, 3)}
    ranges = ", ".join(f"{k} [{lo}, {hi})" for k, (lo, hi) in r.items())
    return (f"profile {lay.profile}: {ranges}, separator {lay.separator_id}; vocab {lay.vocab_size}\n"
            f"{'':16}mu {lay.mu:g}, M {lay.m:g}, {lay.num_bins} bins, {lay.patch_size}px patches, "
            f"{lay.position_bins} position bins, {lay.local_positions} local positions, eos {lay.eos_id}")


def _work_line(w: dict) -> str:
    """What an unfinished conversion has finished so far (see work_progress)."""
    return (f"{w['units_done']} of {w['units_total']} work units converted ({w['shards']} shards, "
            f"{w['rows']:,} rows)")


def format_summary(s: dict) -> str:
    out = [f"shard directory {s['path']}"]
    kv = lambda k, v: out.append(f"  {k:<14}{v}")  # noqa: E731
    if not s["manifest"]:
        out.append(f"  no manifest yet (conversion running or interrupted): showing the {len(s['shards'])} "
                   "complete shards" + (f"; {_work_line(s['work'])}" if s.get("work") else ""))
    else:
        kv("manifest", f"schema v{s['schema_version']}, written {s['created']}")
        kv("converter", f"{s['converter']}  " + " ".join(f"{k}={v}" for k, v in sorted((s["options"] or {}).items())))
        kv("layout", _layout_line(s["layout"]))
    t = s["tokenizer"]
    if t:
        ok = {True: "matches the manifest", False: "DIFFERS from the manifest", None: ""}[t["matches_manifest"]]
        kv("tokenizer", f"{t['file']}: SentencePiece, {t['vocab_size']} pieces, eos {t['eos_id']}, "
                        f"sha256 {t['sha256'][:12]} {ok}")
    else:
        kv("tokenizer", "none in the directory (text shows as ids)")
    spec = s["episode_spec"]
    if spec:
        fmt = lambda fs: ", ".join(f"{f['name']} {f['kind']}{tuple(f['shape']) if f.get('shape') else ''}"  # noqa: E731
                                   for f in fs)
        kv("observations", fmt(spec["observations"]))
        kv("actions", fmt(spec["actions"]))
    if s["tasks"] is not None:
        kv("tasks", ", ".join(s["tasks"]) or "-")
    kv("shards", f"{len(s['shards'])} complete, {s['rows']:,} rows, {s['tokens']:,} tokens, {human_bytes(s['bytes'])}")
    if s.get("test_rows"):
        kv("test split", f"{s['test_rows']:,} rows held out (shards marked test in the manifest)")
    for n in s["missing_shards"]:
        out.append(f"    {n}: listed in the manifest but MISSING")
    for n in s["unlisted_shards"]:
        out.append(f"    {n}: on disk, not in the manifest (being written?)")
    if s["shards"]:
        out.append(f"    {'name':<20}{'rows':>8}{'tokens':>12}{'bytes':>11}  sha256")
        for sh in head_and_tail(s["shards"], 5, up_to=12):
            if sh is None:
                out.append(f"    ... {len(s['shards']) - 10} more")
                continue
            out.append(f"    {sh['name']:<20}{sh['rows']:>8,}{sh['tokens']:>12,}{human_bytes(sh['bytes']):>11}  "
                       f"{(sh['sha256'] or '-')[:12]}")
    total = max(1, sum(v for v in s["tokens_by_modality"].values() if isinstance(v, (int, float))))
    kv("tokens", "  ".join(f"{k} {v:,} ({100 * v / total:.1f}%)" for k, v in s["tokens_by_modality"].items()
                           if isinstance(v, (int, float))))
    st = s.get("step_tokens")
    if st:
        prompts = (f" ({st['min_seq_len_with_prompts']:,} for prompted sequences too)"
                   if st["min_seq_len_with_prompts"] != st["min_seq_len"] else "")
        kv(f"tokens/{st['unit']}", f"min {st['min']:,}  median {st['median']:g}  max {st['max']:,} over "
                                  f"{st['count']:,}; smallest --seq-len that fits: {st['min_seq_len']:,}{prompts}")
    e = s.get("epoch")
    if e:
        d = max(1, e["directory_tokens"])
        what = (f"{e['distinct_targets']:,} of {e['directory_tokens']:,} tokens as targets, each once "
                f"({100 * e['distinct_targets'] / d:.2f}%: all but each shard's first)"
                if e["distinct_targets"] is not None else
                f"windows holding {e['tokens']:,} tokens for {e['directory_tokens']:,} "
                f"({100 * e['tokens'] / d:.1f}%, overlaps counted)")
        kv("epoch", f"at --seq-len {e['seq_len']:,}: {e['sequences']:,} sequences, {what}")
    if s.get("frame_stacks"):
        kv("frame stacks", "  ".join(f"{name}: last {v['last']}, split {v['split']} episodes"
                                     for name, v in sorted(s["frame_stacks"].items())))
    if s.get("outside_unit_range"):
        kv("clipped", "continuous action values outside [-1, 1]: "
           + ", ".join(f"{k} {v:,}" for k, v in sorted(s["outside_unit_range"].items())))
    r = s["episode_return"]
    if r:
        kv("returns", "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                                if isinstance(v, (int, float))))
    fe = s["field_errors"]
    if fe:
        out.append("  quantisation error of the 1024-bin round trip (absolute):")
        out.append(f"    {'field':<28}{'max':>12}{'mean':>12}{'values':>12}")
        for name, v in sorted(fe.items()):
            f = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
            out.append(f"    {name:<28}{f(v['max']):>12}{f(v['mean']):>12}"
                       f"{'-' if v['count'] is None else format(v['count'], ','):>12}")
    elif s["manifest"]:
        kv("quantisation", "no per-field error recorded")
    if s["skipped"]:
        kv("skipped", f"{s['skipped']} records (listed in manifest.json)")
    return "\n".join(out)


# --- one row -----------------------------------------------------------------------------------------

def _ids(ids: np.ndarray, mask: np.ndarray, limit: int | None = None) -> list[str]:
    """`id` or `id*` (loss target); past `limit` ids, a count of the rest."""
    n = len(ids) if limit is None else min(len(ids), limit)
    out = [f"{i}{'*' if m else ''}" for i, m in zip(ids[:n].tolist(), mask[:n].tolist(), strict=True)]
    return out + ([f"... (+{len(ids) - n} ids)"] if n < len(ids) else [])


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + f"... (+{len(text) - limit} characters)"


def _show_field(f: FieldSpec, value, ids: np.ndarray, mask: np.ndarray) -> str:
    """`name=...`: images by size, text as text, tensors as value:id pairs ('*' = loss target)."""
    if f.kind == "image" and f.frame_stack is not None:
        mode = "last" if value.shape[0] == 1 else "split"
        return f"{f.name}=<frames {mode} {value.shape[0]}x{value.shape[1]}x{value.shape[2]}, {len(ids)} patches>"
    if f.kind == "image":
        return f"{f.name}=<image {value.shape[0]}x{value.shape[1]}, {len(ids)} patches>"
    if f.kind == "text":
        return f"{f.name}={value!r}" + (f"(ids {' '.join(_ids(ids, mask))})" if len(ids) <= MAX_VALUES else
                                        f"({len(ids)} ids{', loss' if mask.any() else ''})")
    vals = np.asarray(value).reshape(-1)
    pairs = [f"{v:.4g}:{p}" if f.kind == "continuous" else f"{int(v)}:{p}"
             for v, p in zip(vals[:MAX_VALUES].tolist(), _ids(ids[:MAX_VALUES], mask[:MAX_VALUES]), strict=True)]
    more = f" ... (+{len(vals) - MAX_VALUES})" if len(vals) > MAX_VALUES else ""
    return f"{f.name}=[{' '.join(pairs)}{more}]"


def _field_len(f: FieldSpec, value, row: Row, pos: int, layout: VocabLayout) -> int:
    """Tokens the decoded field took (its ids are shown beside its values)."""
    if f.kind == "image" and f.frame_stack is not None:  # (frames, H, W) grey
        return value.shape[0] * patch_count(value.shape[1], value.shape[2], layout.patch_size)
    if f.kind == "image":
        return patch_count(value.shape[0], value.shape[1], layout.patch_size)
    if f.kind == "text":
        return int(np.argmax(row.tokens[pos:] == layout.eos_id)) + 1
    return f.size


def episode_lines(row: Row, spec: EpisodeSpec, layout: VocabLayout, steps: list[tuple[dict, dict]]) -> list[str]:
    """`t=3 obs{...} | act[...]` per step: `steps` from tokenizer_kit's decode_episode, shown with their ids."""
    lines = []
    for t, (obs, act) in enumerate(steps):
        pos = int(row.step_starts[t])
        parts = []
        for group, values in ((spec.observations, obs), (spec.actions, act)):
            shown = []
            for f in group:
                if f.name not in values:
                    continue
                n = _field_len(f, values[f.name], row, pos, layout)
                shown.append(_show_field(f, values[f.name], row.tokens[pos:pos + n], row.loss_mask[pos:pos + n]))
                pos += n
            parts.append(", ".join(shown))
            if group is spec.observations:
                pos += 1  # the separator
        lines.append(f"t={t} obs{{{parts[0]}}} | act[{parts[1]}]")
    return lines


def _raw(mod: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> str:
    return " ".join("patch" if m == IMAGE else f"{MODALITY_NAMES[m][0]}{i}{'*' if k else ''}"
                    for m, i, k in zip(mod.tolist(), ids.tolist(), mask.tolist(), strict=True))


def raw_step_lines(row: Row) -> list[str]:
    """Steps without an episode spec (no manifest yet): ids with their modality, '*' = loss."""
    bounds = list(map(int, row.step_starts)) + [len(row)]
    out = []
    for t in range(len(row.step_starts)):
        sl = slice(bounds[t], bounds[t + 1])
        mod, ids, mask = row.modality[sl], row.tokens[sl], row.loss_mask[sl]
        sep = int(np.argmax(mod == SEPARATOR)) if (mod == SEPARATOR).any() else len(mod)
        obs, act = _raw(mod[:sep], ids[:sep], mask[:sep]), _raw(mod[sep + 1:], ids[sep + 1:], mask[sep + 1:])
        out.append(f"t={t} obs{{{obs}}} | act[{act}]")
    return out


def row_view(sd: ShardDir, shard: int, index: int) -> tuple[Row, dict, list[str], list[tuple[str, np.ndarray]]]:
    """(row, its scalars, text lines, labelled images) of row `index` of shard `shard`."""
    table = sd.table(shard)
    try:
        row = row_from_table(table, index)
    except ShardError as e:  # a damaged shard (its sha256 is not checked here): one line, never an abort
        raise SourceError(f"{sd.shards[shard].path}: {e}") from None
    scalars = {k: table.column(k)[index].as_py() for k in ("source_id", "task", "num_steps", "episode_return")
               if k in table.schema.names}
    tok = sd.text_tokenizer()
    layout = sd.layout if sd.manifest is not None else None
    images: list[tuple[str, np.ndarray]] = []
    if len(row.step_starts):
        if layout is not None and sd.manifest.episode_spec:
            spec = sd.manifest.spec
            steps = decode_episode(row, spec, layout, tok)
            lines = episode_lines(row, spec, layout, steps)
            images = []
            for t, (obs, _) in enumerate(steps):
                for f in spec.observations:
                    if f.kind == "image" and f.frame_stack is not None:  # grey frames, oldest first
                        k = len(obs[f.name])
                        images += [(f"t={t} {f.name}" + (f" frame {j - k + 1}" if k > 1 else " newest"),
                                    grey_to_rgb(frame)) for j, frame in enumerate(obs[f.name])]
                    elif f.kind == "image":
                        images.append((f"t={t} {f.name}", obs[f.name]))
        else:
            lines = ["(no manifest yet: values shown as ids; t=text i=image d=discrete c=continuous)"]
            lines += raw_step_lines(row)
    elif len(row.patches):
        if layout is None:
            lines = [f"{len(row.patches)} image patches, then ids "
                     f"{' '.join(_ids(row.tokens[len(row.patches):], row.loss_mask[len(row.patches):], MAX_IDS))}"]
        else:
            imgs, caption = decode_caption(row, layout, tok)
            images = [(f"image {k}", im) for k, im in enumerate(imgs)]
            text_mask = row.modality == TEXT
            lines = ["images: " + ", ".join(f"{im.shape[0]}x{im.shape[1]} ({patch_count(*im.shape[:2])} "
                                             "patches)" for im in imgs),
                     f"caption: {_clip(caption)!r}" if tok is not None else "caption: (no tokenizer.model)",
                     "caption ids (* = loss): "
                     + " ".join(_ids(row.tokens[text_mask], row.loss_mask[text_mask], MAX_IDS))]
    else:
        ids = row.tokens
        text = tok.decode(ids) if tok is not None else None
        lines = ([f"text: {_clip(text)!r}"] if text is not None else []) + \
                [f"ids (* = loss): {' '.join(_ids(ids, row.loss_mask, MAX_IDS))}"]
    return row, scalars, lines, images


def _row_header(sd: ShardDir, shard: int, index: int, row: Row, scalars: dict) -> str:
    name = sd.shards[shard].name
    glob = sd.global_row(shard, index)
    extra = "".join(f", {k} {v}" for k, v in scalars.items() if k != "source_id")
    return (f"row {glob} = {name} row {index}: source_id {scalars.get('source_id')!r}{extra}; {len(row)} tokens, "
            f"{int(row.loss_mask.sum())} with loss ('*' marks them), {len(row.patches)} patches")


def run(args: argparse.Namespace) -> int:
    sd = ShardDir.open(args.dir, listing=True)
    if args.row is None and args.source_id is None:
        if args.png:
            print("gato-tokenize inspect: --png needs --row or --source-id", file=sys.stderr)
            return 2
        s = summary(sd, args.seq_len)
        _print(json.dumps(s, indent=1) if args.json else format_summary(s))
        return 0
    shard, index = sd.find_source(args.source_id) if args.source_id is not None else sd.locate(args.row)
    row, scalars, lines, images = row_view(sd, shard, index)
    header = _row_header(sd, shard, index, row, scalars)
    if args.png:  # before the listing: a reader that stops early (`| head`) must not lose the picture
        from ..render import render_row
        caption = [line for line in lines if line.startswith("caption: ")]
        title = f"{sd.name}: {header.split(';')[0]}" + "".join(f"\n{c}" for c in caption)
        render_row(args.png, row, images, title)
        print(f"wrote {args.png}", file=sys.stderr)
    if args.json:
        _print(json.dumps({"header": header, **scalars, "lines": lines, "tokens": row.tokens.tolist(),
                           "loss_mask": row.loss_mask.tolist(), "modality": row.modality.tolist(),
                           "local_pos": row.local_pos.tolist(), "step_starts": row.step_starts.tolist()}))
    else:
        _print(header + "\n" + "\n".join(lines))
    return 0


def _print(text: str) -> None:
    """Print; a reader that closed the pipe (`| head`) ends the listing quietly, not with a traceback."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not raise again


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="summarise a shard directory, or decode one row back",
                              description=__doc__.splitlines()[0])
    p.add_argument("dir", help="shard directory, a path or a URL (s3://...); may still be being written")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--row", type=int, metavar="N", help="decode row N (counting over the shards in order)")
    which.add_argument("--source-id", metavar="ID", help="decode the row whose source_id is ID")
    p.add_argument("--png", metavar="FILE", help="with --row: write the row's images and token strip to FILE")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--seq-len", type=positive_int, default=1024,
                   help="sequence length the tokens-per-epoch line counts with (gato-train's --seq-len; default 1024)")
    p.set_defaults(func=run)
