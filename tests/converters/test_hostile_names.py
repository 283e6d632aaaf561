"""Names from data that would lead outside their folder (issue 20): a saved HF datasets folder whose
`state.json` (or `dataset_dict.json`) names files outside it, written by `datasets` itself and
then edited as a hub could; and entries of an input folder named `*.txt` that are not files (a
dangling symlink, a FIFO) are said, not skipped. Real CLI, child process, memory-capped."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.hostile_run import GiB, check_one_line, run, snapshot


def _saved(path, docs):
    import datasets
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("how", ["dotdot", "absolute", "subdir"])
def test_state_json_naming_a_file_outside_the_folder_is_refused(how, tmp_path, sp_model_path):
    secret = _saved(tmp_path / "secret_ds", ["the secret document nobody passed"])
    secret_file = next(secret.glob("*.arrow"))
    ds = _saved(tmp_path / "box" / "ds", ["a public document"])
    state = json.loads((ds / "state.json").read_text())
    name = {"dotdot": f"../../secret_ds/{secret_file.name}", "absolute": str(secret_file),
            "subdir": f"sub/{secret_file.name}"}[how]
    if how == "subdir":
        (ds / "sub").mkdir()
        os.link(secret_file, ds / "sub" / secret_file.name)
    state["_data_files"][0]["filename"] = name
    (ds / "state.json").write_text(json.dumps(state))
    before = snapshot(tmp_path)
    r = run("converters.cli", ["text", str(ds), "--text-tokenizer", sp_model_path, "--out",
                               str(tmp_path / "box" / "out"), "--no-progress"], tmp_path / "box", mem=2 * GiB)
    check_one_line(r, 1, "state.json", "_data_files[0].filename")
    assert not (tmp_path / "box" / "out" / "manifest.json").exists()
    outside = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("box")}
    assert outside == {k: v for k, v in before.items() if not k.startswith("box")}


def test_a_dataset_dict_split_leading_outside_is_refused(tmp_path, sp_model_path):
    import datasets
    dd = tmp_path / "box" / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"]})}).save_to_disk(str(dd))
    _saved(tmp_path / "elsewhere", ["not in the dict"])
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "../../elsewhere"]}))
    r = run("converters.cli", ["text", str(dd), "--text-tokenizer", sp_model_path, "--out",
                               str(tmp_path / "box" / "out"), "--no-progress"], tmp_path / "box", mem=2 * GiB)
    check_one_line(r, 1, "dataset_dict.json: splits[1]")


@pytest.mark.parametrize("kind", ["dangling", "fifo"])
def test_a_txt_entry_that_is_not_a_file_is_reported(kind, tmp_path, sp_model_path):
    folder = tmp_path / "box" / "docs"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("a real document\n")
    odd = folder / "b.txt"
    if kind == "dangling":
        odd.symlink_to(tmp_path / "gone.txt")
    else:
        os.mkfifo(odd)
    r = run("converters.cli", ["text", str(folder), "--text-tokenizer", sp_model_path, "--out",
                               str(tmp_path / "box" / "out"), "--no-progress"], tmp_path / "box", mem=2 * GiB,
            timeout=60)
    line = check_one_line(r, 1, str(odd))
    assert ("dangling symlink" if kind == "dangling" else "not a regular file") in line
