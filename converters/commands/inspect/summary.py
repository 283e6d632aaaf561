"""`gato-tokenize inspect DIR` without a row: what a shard directory holds (layout, tokenizer,
converter, shards, tokens per modality and per step, tasks, returns, quantisation errors, the work
still to do), as a dict (`--json`) and as the text table."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from schemas.arrow_numpy import list_offsets, to_numpy
from schemas.manifest import Stats
from schemas.reader import ShardDir
from schemas.split import epoch_tokens
from schemas.storage import OutDir
from schemas.workunit import WorkDir
from tokenizer_kit.layout import MODALITY_NAMES, TEXT, VocabLayout
from tokenizer_kit.rows import step_lengths_of_rows
from tokenizer_kit.sequence import default_prompt_len

from ..listing import head_and_tail, human_bytes


def _modality_counts(sd: ShardDir) -> dict[str, int]:
    """Tokens per modality counted from the complete shards (when the manifest has no statistics)."""
    counts = np.zeros(len(MODALITY_NAMES), np.int64)
    for i in range(len(sd.shards)):
        mod = to_numpy(sd.table(i).column("modality").combine_chunks().flatten())
        counts += np.bincount(mod, minlength=len(counts))[:len(counts)]
    return {MODALITY_NAMES[m]: int(c) for m, c in enumerate(counts)}


def step_tokens(sd: ShardDir) -> dict | None:
    """Tokens per timestep (RL) or per image-caption row over the complete shards: min, median,
    max, and the smallest --seq-len whose sequences hold every one of them whole (the max)."""
    pieces = []
    for i in range(len(sd.shards)):
        t = sd.table(i)
        tok = t.column("tokens").combine_chunks()
        lengths = np.diff(list_offsets(tok))
        ss = t.column("step_starts").combine_chunks()
        nsteps = np.diff(list_offsets(ss))
        if nsteps.any():
            pieces.append(step_lengths_of_rows(to_numpy(ss.flatten()), nsteps, lengths))
        elif len(t.column("patches").combine_chunks().flatten()):
            pieces.append(lengths)
    if not pieces:
        return None  # text: any crop of a document has targets
    x = np.concatenate(pieces)
    rl = sd.manifest is None or sd.manifest.row_kind == "rl"
    longest = int(x.max())
    # an RL sequence of L tokens given its default prompt keeps L + 1 - default_prompt_len(L) for its window
    prompted = next(n for n in range(longest, 2 * longest + 8) if n + 1 - default_prompt_len(n) >= longest) \
        if rl else longest
    return {"unit": "step" if rl else "pair", "count": int(len(x)), "min": int(x.min()), "median": float(np.median(x)),
            "max": longest, "min_seq_len": longest, "min_seq_len_with_prompts": prompted}


def _frame_stacks(st: Stats | None) -> dict | None:
    """{field: {"last": episodes, "split": episodes}} as the RL converter counted them."""
    stacks = (st.frame_stacks if st is not None else None) or {}
    return {name: {"last": c.last, "split": c.split} for name, c in stacks.items()} or None


def _returns(sd: ShardDir) -> dict | None:
    tables = [sd.table(i) for i in range(len(sd.shards))]
    vals = [to_numpy(t.column("episode_return")) for t in tables if "episode_return" in t.schema.names]
    if not vals:
        return None
    r = np.concatenate(vals)
    return {"count": int(len(r)), "mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()),
            "max": float(r.max())} if len(r) else {"count": 0}


def _field_errors(st: Stats | None) -> dict | None:
    """Per-field quantisation error from the manifest, as {field: {max, mean, count}}."""
    return {name: asdict(e) for name, e in st.field_errors.items()} if st is not None and st.field_errors else None


def work_progress(root: str | Path) -> dict | None:
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
        lens = np.concatenate([np.diff(list_offsets(sd.table(i).column("tokens").combine_chunks()))
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
