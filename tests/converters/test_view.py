"""`gato-tokenize view`: HTML pages of a shard directory, checked in a real headless Chromium
(Debian's `chromium`, driven by Playwright with that executable; no browser is downloaded)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.shards import cartpole_episodes, write_shard_dir

from tests.support.s3 import make_bucket, upload_dir
from converters.cli import main
from tokenizer_kit.sequence import EpisodeSpec, FieldSpec

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("GATO_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def cartpole_dir(tmp_path_factory, sp_model_path, text_tokenizer):
    """RL rows of vectors only: real CartPole episodes (obs continuous (4,), action discrete)."""
    layout = text_tokenizer.layout()
    rows, rets = cartpole_episodes(layout, 5)
    spec = EpisodeSpec((FieldSpec("obs", "continuous", (4,)),), (FieldSpec("action", "discrete", ()),))
    return write_shard_dir(tmp_path_factory.mktemp("cp") / "cartpole", rows, [f"cartpole/{i}" for i in range(5)],
                           layout, "rl", "cartpole", episode_spec=spec, returns=rets, tokenizer_path=sp_model_path)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Chromium, headless, with a fresh profile; nothing it would fetch from the network."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (make test installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")),
                                                   executable_path=CHROMIUM, headless=True, args=FLAGS[1:],
                                                   viewport={"width": 1200, "height": 900})
        yield ctx
        ctx.close()


def load(browser, path: Path, shot: str | None = None) -> dict:
    """Open a page from disk; what it requested, its errors, its steps and images, its hover texts."""
    page = browser.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("requestfailed", lambda r: errors.append(f"failed {r.url}"))
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri(), wait_until="load")
    out = {"requests": requests, "errors": errors, "steps": page.locator("section.step").count(),
           "images": page.locator("img.obs").count(),
           "loaded_images": page.evaluate("[...document.querySelectorAll('img.obs')]"
                                          ".filter(i => i.complete && i.naturalWidth > 0).length"),
           "titles": page.evaluate("[...document.querySelectorAll('section.step span[title]')].map(s => s.title)"),
           "loss_cells": page.locator("section.step span.t.L").count(), "text": page.inner_text("body")}
    if shot:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / shot), full_page=False)
    page.close()
    return out


@pytest.mark.parametrize("kind, steps, images", [("rl_pixels", 0, 0), ("rl_vectors", 0, 0), ("caption", 1, 1),
                                                 ("text", 1, 0)])
def test_a_row_of_each_kind_in_a_real_browser(browser, tmp_path, kind, steps, images, rl_shard_dir, cartpole_dir,
                                              caption_shard_dir, text_shard_dir):
    from schemas.reader import ShardDir
    from schemas.shard import row_from_table

    src = {"rl_pixels": rl_shard_dir, "rl_vectors": cartpole_dir, "caption": caption_shard_dir,
           "text": text_shard_dir}[kind]
    out = tmp_path / "view"
    assert main(["view", str(src), "--out", str(out), "--row", "3", "--page-size", "2"]) == 0
    sd = ShardDir.open(src)
    shard, i = sd.locate(3)
    row = row_from_table(sd.table(shard), i)
    if kind.startswith("rl"):  # one section per step; one picture per step and image field
        steps = len(row.step_starts)
        images = steps * sum(f.kind == "image" for f in EpisodeSpec.from_dict(sd.manifest.episode_spec).observations)
    seen = load(browser, out / "row-000000003.html", f"view-{kind}.png")
    assert seen["errors"] == []
    assert seen["requests"] == [(out / "row-000000003.html").as_uri()]  # nothing else: images are inline
    assert (seen["steps"], seen["images"], seen["loaded_images"]) == (steps, images, images)
    assert images == 0 or kind != "rl_vectors"
    assert len(seen["titles"]) == len(row.tokens) and seen["loss_cells"] == int(row.loss_mask.sum())
    assert seen["titles"][0].startswith("position 0") and ("loss target" in " ".join(seen["titles"]))
    if kind == "rl_vectors":  # decoded values on hover: the observation's bin centre, the action's integer
        assert "continuous" in seen["titles"][0] and "(observation)" in seen["titles"][0]
        assert any("discrete" in t and "loss target" in t for t in seen["titles"])
    if kind == "text":
        assert any(t.split(" | ")[2].startswith("text '") for t in seen["titles"])
    assert (ARTIFACTS / f"view-{kind}.png").stat().st_size > 5000


def test_index_and_paging_never_write_every_row(browser, tmp_path, rl_shard_dir):
    out = tmp_path / "view"
    assert main(["view", str(rl_shard_dir), "--out", str(out), "--page-size", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "page-000000.html", "row-000000000.html",
                                                     "row-000000001.html"]
    assert main(["view", str(rl_shard_dir), "--out", str(out), "--page-size", "2", "--page", "2"]) == 0
    assert {p.name for p in out.glob("row-*")} == {"row-000000000.html", "row-000000001.html", "row-000000004.html"}
    seen = load(browser, out / "index.html", "view-index.png")
    assert seen["errors"] == [] and len(seen["requests"]) == 1
    assert "5 rows in 3 pages of 2" in seen["text"] and "page 0 (rows 0-1)" in seen["text"]
    assert "page 2 (rows 4-4)" in seen["text"] and "pong-like" in seen["text"]
    assert "episode return" in seen["text"] and "image" in seen["text"]
    page = load(browser, out / "page-000002.html")
    assert page["errors"] == [] and "pong-like/episode-4" in page["text"]


def test_bad_page_or_row_is_bad_usage(tmp_path, rl_shard_dir, capsys):
    assert main(["view", str(rl_shard_dir), "--out", str(tmp_path / "v"), "--row", "5"]) == 2
    assert "--row 5 is outside [0, 5)" in capsys.readouterr().err
    assert main(["view", str(tmp_path / "missing"), "--out", str(tmp_path / "v")]) == 1


def test_view_a_url_directory(browser, tmp_path, rl_shard_dir, s3_server):
    url = upload_dir(rl_shard_dir, make_bucket("view-test") + "/pong")
    out = tmp_path / "view"
    assert main(["view", url, "--out", str(out), "--row", "0"]) == 0
    seen = load(browser, out / "row-000000000.html")
    assert seen["errors"] == [] and len(seen["requests"]) == 1
    local = tmp_path / "local"
    assert main(["view", str(rl_shard_dir), "--out", str(local), "--row", "0"]) == 0
    mine = load(browser, local / "row-000000000.html")
    assert (seen["steps"], seen["images"], seen["titles"]) == (mine["steps"], mine["images"], mine["titles"])
    assert seen["images"] > 0
