"""`gato-tokenize inspect DIR --row N`: one row decoded back through tokenizer_kit (text as text,
values de-quantised next to their ids, one line per timestep), and the images `--png` draws."""

from __future__ import annotations

import numpy as np

from schemas.reader import ShardDir
from schemas.shard import ShardError, row_from_table
from tokenizer_kit.episode_decode import decode_episode
from tokenizer_kit.frames import grey_to_rgb
from tokenizer_kit.images import patch_count
from tokenizer_kit.layout import IMAGE, MODALITY_NAMES, SEPARATOR, TEXT, VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, Row
from tokenizer_kit.text_rows import decode_caption

from ...base import SourceError

MAX_VALUES = 8  # values shown per tensor field before "... (+N)"
MAX_IDS = 256  # ids shown for a text row or caption
MAX_TEXT = 4000  # characters of decoded text shown


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
        spec = sd.manifest.spec if sd.manifest is not None else None
        if layout is not None and spec is not None:
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
                     f"caption: {_clip(str(caption))!r}" if tok is not None else "caption: (no tokenizer.model)",
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
