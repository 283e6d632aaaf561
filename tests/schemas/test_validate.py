"""validate_table (SPEC 7): valid shards pass; each kind of broken shard is found and named."""

import numpy as np
import pyarrow as pa
import pytest

from schemas.shard import full_columns, rows_to_batch, shard_schema
from schemas.validate import Problem, _proof, check_schema, validate_and_count, validate_table
from tokenizer_kit.layout import CONTINUOUS, IMAGE, SEPARATOR, TEXT, VocabLayout
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec, build_episode
from tokenizer_kit.text_rows import build_caption_row, build_text_row

LAYOUT = VocabLayout(32000, eos_id=2)
SPEC = EpisodeSpec((FieldSpec("cam", "image", (16, 32)), FieldSpec("s", "continuous", (2,))),
                   (FieldSpec("a", "discrete", (1,)),))


def episode(steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs = {"cam": rng.integers(0, 256, (steps, 16, 32, 3), dtype=np.uint8), "s": rng.normal(0, 3, (steps, 2))}
    return build_episode(obs, {"a": rng.integers(0, 4, (steps, 1))}, SPEC, LAYOUT)


def rl_table(rows=None) -> pa.Table:
    rows = rows if rows is not None else [episode(3, 0), episode(2, 1), episode(4, 2)]
    ids = [f"episode-{i}" for i in range(len(rows))]
    return pa.Table.from_batches([rows_to_batch(rows, ids, "t", episode_returns=[0.0] * len(rows))])


def mixed_table(rows=None) -> pa.Table:
    img = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rows = rows if rows is not None else [build_text_row([5, 6], LAYOUT), build_caption_row(img, [7], LAYOUT)]
    return pa.Table.from_batches([rows_to_batch(rows, [f"doc-{i}" for i in range(len(rows))], "t")])


def with_column(table: pa.Table, name: str, values, type_=None) -> pa.Table:
    i = table.schema.get_field_index(name)
    arr = pa.array(values, type=type_ or table.schema.field(name).type)
    return table.set_column(i, table.schema.field(name).with_type(arr.type), arr)


def reasons(problems: list[Problem]) -> list[tuple[int | None, str, str]]:
    return [(p.row, p.column, p.reason) for p in problems]


def test_valid_tables_have_no_problems():
    assert validate_table(rl_table(), LAYOUT) == []
    assert validate_table(mixed_table(), LAYOUT) == []
    assert validate_table(rl_table().slice(1, 2), LAYOUT) == []  # sliced arrays: offsets do not start at 0
    assert validate_table(rl_table([]), LAYOUT) == []
    text_only = pa.Table.from_batches([rows_to_batch([build_text_row([], LAYOUT)], ["empty"], "t")])
    assert validate_table(text_only, LAYOUT) == []


def test_episode_with_action_local_positions_is_valid():
    spec = EpisodeSpec(SPEC.observations, SPEC.actions, action_local_pos=True)
    rng = np.random.default_rng(0)
    row = build_episode({"cam": rng.integers(0, 256, (2, 16, 32, 3), dtype=np.uint8), "s": np.zeros((2, 2))},
                        {"a": [[1], [2]]}, spec, LAYOUT)
    assert validate_table(rl_table([row]), LAYOUT) == []


def test_missing_column_and_wrong_type():
    table = rl_table()
    problems = validate_table(table.drop_columns(["modality"]), LAYOUT)
    assert (None, "modality", "column missing") in reasons(problems)
    wrong = with_column(table, "tokens", table.column("tokens").to_pylist(), pa.list_(pa.int64()))
    [p] = check_schema(wrong.schema)
    assert p.column == "tokens" and p.reason.startswith("wrong type list<item: int64>")
    assert validate_table(wrong, LAYOUT) == [p]
    bools = with_column(table, "loss_mask", [[bool(x) for x in r] for r in table.column("loss_mask").to_pylist()],
                        pa.list_(pa.bool_()))
    assert validate_table(bools, LAYOUT) == []  # SPEC 7: list<uint8 or bool>


def test_ids_outside_the_layout():
    rows = [episode(3, 0), episode(2, 1)]
    rows[1].tokens[2] = LAYOUT.continuous_offset - 1  # a continuous token in the text range
    problems = validate_table(rl_table(rows), LAYOUT)
    assert len(problems) == 1 and problems[0].row == 1 and problems[0].column == "tokens"
    assert "id 31999 as modality 3" in problems[0].reason and problems[0].source_id == "episode-1"
    assert str(problems[0]).startswith("row 1 (episode-1), column tokens: id outside its modality's range")
    # the same rows are valid for a model whose text vocab is smaller: the layout decides
    small = VocabLayout(100, eos_id=2)
    assert any(p.column == "tokens" for p in validate_table(rl_table([episode(1)]), small))


def test_text_id_beyond_the_text_vocab():
    rows = [build_text_row([5, 6], LAYOUT)]
    rows[0].tokens[0] = LAYOUT.text_vocab_size
    problems = validate_table(mixed_table(rows), LAYOUT)
    assert [(p.row, p.column) for p in problems] == [(0, "tokens")]


def test_lengths_that_disagree():
    table = rl_table()
    masks = table.column("loss_mask").to_pylist()
    masks[2] = masks[2][:-1]
    problems = validate_table(with_column(table, "loss_mask", masks), LAYOUT)
    assert reasons(problems) == [(2, "loss_mask", "length differs from tokens")]


def test_patch_count_not_matching_the_slots():
    rows = [episode(2, 0), episode(2, 1)]
    rows[0].patches, rows[0].patch_pos = rows[0].patches[:-1], rows[0].patch_pos[:-1]
    problems = validate_table(rl_table(rows), LAYOUT)
    assert (0, "patches", "patch count differs from the number of -1 slots") in reasons(problems)


@pytest.mark.parametrize("bad", [[10, 10, 0, 64], [0, 129, 0, 64], [70, 60, 0, 64]])
def test_bad_patch_positions(bad):
    rows = [episode(2, 0), episode(2, 1)]
    rows[1].patch_pos[3] = bad
    problems = validate_table(rl_table(rows), LAYOUT)
    assert [(p.row, p.column) for p in problems] == [(1, "patch_pos")]
    assert "interval empty or past 128 bins" in problems[0].reason


def test_step_starts_problems():
    base = rl_table()
    starts = base.column("step_starts").to_pylist()
    for change, reason in [(lambda s: s[0].__setitem__(0, 1), "first step does not start at 0"),
                           (lambda s: s[0].__setitem__(2, s[0][1]), "not strictly increasing"),
                           (lambda s: s[1].__setitem__(1, 10_000), "offset outside the row")]:
        s = [list(x) for x in starts]
        change(s)
        problems = reasons(validate_table(with_column(base, "step_starts", s), LAYOUT))
        assert any(column == "step_starts" and r == reason for _, column, r in problems), (reason, problems)


def test_num_steps_must_match_step_starts():
    table = rl_table()
    problems = validate_table(with_column(table, "num_steps", [3, 5, 4], pa.int32()), LAYOUT)
    assert reasons(problems) == [(1, "num_steps", "differs from the number of step_starts")]


def test_missing_separator():
    rows = [episode(3, 0)]
    sep_at = np.flatnonzero(rows[0].modality == SEPARATOR)[1]
    rows[0].tokens[sep_at] = 7  # the second step's separator becomes text
    rows[0].modality[sep_at] = TEXT
    rows[0].loss_mask[sep_at] = 1
    problems = reasons(validate_table(rl_table(rows), LAYOUT))
    assert (0, "modality", "a step without exactly one separator") in problems


def test_local_positions_not_restarting():
    rows = [episode(3, 0), episode(3, 1)]
    start = int(rows[1].step_starts[1])
    step_len = int(rows[1].step_starts[1] - rows[1].step_starts[0])
    rows[1].local_pos[start:start + step_len] = np.where(rows[1].local_pos[:step_len] >= 0,
                                                         rows[1].local_pos[:step_len] + step_len, -1)
    problems = validate_table(rl_table(rows), LAYOUT)
    assert {p.row for p in problems} == {1} and {p.column for p in problems} == {"local_pos"}


def test_loss_on_a_separator_or_image_and_text_without_loss():
    rows = [episode(2, 0)]
    rows[0].loss_mask[np.flatnonzero(rows[0].modality == SEPARATOR)[0]] = 1
    problems = reasons(validate_table(rl_table(rows), LAYOUT))
    assert (0, "loss_mask", "loss on an image patch or separator") in problems
    text = [build_text_row([5, 6], LAYOUT)]
    text[0].loss_mask[1] = 0
    assert (0, "loss_mask", "text token without loss") in reasons(validate_table(mixed_table(text), LAYOUT))


def test_problems_are_capped_per_check():
    rows = [episode(1, i) for i in range(8)]
    for r in rows:
        r.patch_pos[0] = [5, 5, 0, 64]
    problems = validate_table(rl_table(rows), LAYOUT)
    assert [p.row for p in problems] == [0, 1, 2, 3, 4, None]
    assert problems[-1].reason.endswith("3 more rows")


def test_null_values_are_problems():
    table = rl_table()
    ids = table.column("source_id").to_pylist()
    ids[1] = None
    problems = validate_table(with_column(table, "source_id", ids), LAYOUT)
    assert reasons(problems) == [(None, "source_id", "1 null values (columns are not nullable)")]


# --- the fast path (steps of one pattern; plain text) must find everything the general path finds --

def two_batch_table(rows, schema=None) -> pa.Table:
    """Rows 0-1 in one record batch, the rest in a second: a table of two chunks, as verify groups them.
    `schema`: e.g. version 2's lean RL form (uint16 ids)."""
    ids = [f"episode-{i}" for i in range(len(rows))]
    return pa.Table.from_batches([rows_to_batch(rows[:2], ids[:2], "t", episode_returns=[0.0] * 2, schema=schema),
                                  rows_to_batch(rows[2:], ids[2:], "t", episode_returns=[0.0] * (len(rows) - 2),
                                                schema=schema)])


LEAN_RL = shard_schema(True, vocab_size=LAYOUT.vocab_size)  # uint16 ids, 65535 at the patch slots


def test_uniform_steps_and_plain_text_are_proved_without_the_general_path():
    rows = [episode(3, 0), episode(2, 1), episode(4, 2), episode(3, 3)]
    table = two_batch_table(rows)
    counts = _proof(table, LAYOUT)
    assert counts is not None
    assert counts.tolist() == np.bincount(np.concatenate([r.modality for r in rows]), minlength=5).tolist()
    assert validate_and_count(table, LAYOUT)[1].tolist() == counts.tolist()
    rechunked = with_column(table, "local_pos", table.column("local_pos").to_pylist())  # chunks no longer align
    assert _proof(rechunked, LAYOUT).tolist() == counts.tolist()
    assert _proof(table.slice(1, 2), LAYOUT) is not None  # sliced arrays: offsets do not start at 0
    lean = two_batch_table(rows, LEAN_RL)  # version 2's uint16 ids: proved on the version-1 columns they read as
    assert _proof(full_columns(lean), LAYOUT).tolist() == counts.tolist()
    problems, lean_counts = validate_and_count(lean, LAYOUT)
    assert problems == [] and lean_counts.tolist() == counts.tolist()
    text_row = build_text_row([5, 6, 7], LAYOUT)
    text = pa.Table.from_batches([rows_to_batch([text_row], ["d"], "t")])
    assert _proof(text, LAYOUT).tolist() == [len(text_row), 0, 0, 0, 0]
    # a table the fast path does not take (text with captions) is counted by the general path
    problems, counts = validate_and_count(mixed_table(), LAYOUT)
    assert problems == [] and _proof(mixed_table(), LAYOUT) is None
    assert counts.tolist() == np.bincount(mixed_table().column("modality").combine_chunks().flatten().to_numpy(),
                                          minlength=5).tolist()


def _last_step(row) -> slice:
    return slice(int(row.step_starts[-1]), len(row.tokens))


def _corrupt_id(row):
    s = _last_step(row)
    i = s.start + int(np.flatnonzero(row.modality[s] == CONTINUOUS)[-1])
    row.tokens[i] = LAYOUT.continuous_offset - 1


def _corrupt_slot(row):  # a patch slot holding a real id: also one slot fewer than patches
    s = _last_step(row)
    row.tokens[s.start + int(np.flatnonzero(row.modality[s] == IMAGE)[0])] = 5


def _corrupt_mask(row):
    s = _last_step(row)
    row.loss_mask[s.start + int(np.flatnonzero(row.modality[s] == CONTINUOUS)[0])] = 1


def _corrupt_pos(row):
    s = _last_step(row)
    row.local_pos[s.start + 1] += 1


def _corrupt_separator(row):
    s = _last_step(row)
    i = s.start + int(np.flatnonzero(row.modality[s] == SEPARATOR)[0])
    row.modality[i], row.tokens[i] = CONTINUOUS, LAYOUT.continuous_offset


def _corrupt_patch_pos(row):
    row.patch_pos[-1] = [5, 5, 0, 64]


def _corrupt_step_start(row):
    row.step_starts[-1] -= 1


@pytest.mark.parametrize("corrupt, column", [(_corrupt_id, "tokens"), (_corrupt_slot, "patches"),
                                             (_corrupt_mask, "loss_mask"), (_corrupt_pos, "local_pos"),
                                             (_corrupt_separator, "modality"), (_corrupt_patch_pos, "patch_pos"),
                                             (_corrupt_step_start, None)])
def test_fast_path_sends_a_fault_in_a_late_step_to_the_general_path(corrupt, column):
    rows = [episode(3, 0), episode(2, 1), episode(4, 2), episode(3, 3)]
    corrupt(rows[3])  # the last step of the last row of the second batch
    table = two_batch_table(rows)
    assert _proof(table, LAYOUT) is None
    problems = validate_table(table, LAYOUT)
    assert problems and {p.row for p in problems} == {3}, problems
    if column is not None:
        assert column in {p.column for p in problems}, problems
    lean = two_batch_table(rows, LEAN_RL)  # the same fault in version 2's uint16 form: the same problems
    assert _proof(full_columns(lean), LAYOUT) is None and validate_table(lean, LAYOUT) == problems


def test_fast_path_checks_one_position_per_patch():
    table = two_batch_table([episode(3, 0), episode(2, 1), episode(4, 2), episode(3, 3)])
    pos = table.column("patch_pos").to_pylist()
    pos[3] = pos[3][:-1]  # one chunk now, where the other columns have two
    problems = validate_table(with_column(table, "patch_pos", pos), LAYOUT)
    assert reasons(problems) == [(3, "patch_pos", "one position per patch expected")]


@pytest.mark.parametrize("field, value, column", [("tokens", LAYOUT.text_vocab_size, "tokens"),
                                                  ("loss_mask", 0, "loss_mask"), ("local_pos", 0, "local_pos"),
                                                  ("modality", SEPARATOR, "modality")])
def test_text_fast_path_sends_a_fault_to_the_general_path(field, value, column):
    rows = [build_text_row([5, 6, 7], LAYOUT) for _ in range(3)]
    getattr(rows[2], field)[-1] = value
    table = pa.Table.from_batches([rows_to_batch(rows[:2], ["a", "b"], "t"), rows_to_batch(rows[2:], ["c"], "t")])
    assert _proof(table, LAYOUT) is None
    problems = validate_table(table, LAYOUT)
    assert [(p.row, p.column) for p in problems if p.column == column] == [(2, column)], problems


@pytest.mark.parametrize("name", ["tokens", "modality", "loss_mask", "local_pos", "step_starts", "patch_pos"])
def test_null_values_inside_a_list_are_problems(name):
    table = two_batch_table([episode(3, 0), episode(2, 1), episode(4, 2)])
    values = table.column(name).to_pylist()
    if name == "patch_pos":
        values[2][1][3] = None  # one number of one patch's position
    else:
        values[2][1] = None
    field = table.schema.field(name)
    arr = pa.array(values, type=field.type)
    chunked = pa.chunked_array([arr.slice(0, 2), arr.slice(2)])  # the null in a sliced second chunk
    problems = validate_table(table.set_column(table.schema.get_field_index(name), field, chunked), LAYOUT)
    assert reasons(problems) == [(2, name, "null values inside the list (columns are not nullable)")]
    assert problems[0].source_id == "episode-2"
