"""Hostile HDF5 files, written with h5py itself (issue 20): external storage, external links and
virtual datasets would pull a local file into the shards, so `rl` refuses them unless
--allow-hdf5-external-files is given; a tiny file declaring 10^10 steps is refused before anything
is allocated. The real CLI runs in a child process under an address-space limit."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.support.hostile_run import GiB, check_one_line, run, snapshot

SECRET = b"TOP-SECRET-LOCAL-FILE-0123456789" * 4  # 128 bytes: 32 float32 values


def _plain(f: h5py.File, n: int = 32) -> None:
    """The D4RL arrays other than observations, n steps, one episode."""
    f["actions"] = np.zeros((n, 1), np.float32)
    f["rewards"] = np.ones(n, np.float32)
    f["terminals"] = np.zeros(n, bool)
    f["timeouts"] = np.r_[np.zeros(n - 1, bool), True]


def _external_storage(path: Path, secret: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", shape=(32, 1), dtype=np.float32, external=[(str(secret), 0, 128)])
        _plain(f)


def _external_link(path: Path, secret: Path) -> None:
    other = secret.with_suffix(".h5")
    with h5py.File(other, "w") as g:
        g["obs"] = np.frombuffer(SECRET, np.float32).reshape(32, 1)
    with h5py.File(path, "w") as f:
        f["observations"] = h5py.ExternalLink(str(other), "/obs")
        _plain(f)


def _virtual(path: Path, secret: Path) -> None:
    other = secret.with_suffix(".vds.h5")
    with h5py.File(other, "w") as g:
        g["obs"] = np.frombuffer(SECRET, np.float32).reshape(32, 1)
    layout = h5py.VirtualLayout(shape=(32, 1), dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(other), "obs", shape=(32, 1))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("observations", layout)
        _plain(f)


MAKERS = {"external-storage": _external_storage, "external-link": _external_link, "virtual": _virtual}


@pytest.mark.parametrize("case", sorted(MAKERS))
def test_hdf5_reading_another_file_is_refused_unless_the_flag_names_the_risk(case, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    src = tmp_path / "box" / "d4rl.hdf5"
    src.parent.mkdir()
    MAKERS[case](src, secret)
    before = snapshot(tmp_path)
    r = run("converters.cli", ["rl", str(src), "--out", str(tmp_path / "box" / "out"), "--no-progress"],
            tmp_path / "box", mem=2 * GiB)
    check_one_line(r, 1, str(src), "--allow-hdf5-external-files")
    assert not (tmp_path / "box" / "out" / "manifest.json").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("box")} == \
        {k: v for k, v in before.items() if not k.startswith("box")}
    # the door, opened on purpose: the same file converts
    ok = run("converters.cli", ["rl", str(src), "--out", str(tmp_path / "box" / "out2"), "--no-progress",
                                "--allow-hdf5-external-files"], tmp_path / "box", mem=2 * GiB)
    assert ok.code == 0, str(ok)
    assert (tmp_path / "box" / "out2" / "manifest.json").is_file()


def test_a_tiny_file_declaring_ten_billion_steps_allocates_nothing(tmp_path):
    src = tmp_path / "box" / "huge.hdf5"
    src.parent.mkdir()
    n = 10 ** 10
    with h5py.File(src, "w") as f:
        for name, dtype, shape in (("observations", np.float32, (n, 1)), ("actions", np.float32, (n, 1)),
                                   ("rewards", np.float32, (n,)), ("terminals", bool, (n,)), ("timeouts", bool, (n,))):
            f.create_dataset(name, shape=shape, dtype=dtype, chunks=(1024,) + shape[1:])
    assert src.stat().st_size < 20_000
    r = run("converters.cli", ["rl", str(src), "--out", str(tmp_path / "box" / "out"), "--no-progress"],
            tmp_path / "box", mem=1 * GiB)
    check_one_line(r, 1, str(src), "declares", "stores only")


def test_a_minari_file_with_an_external_link_is_refused(tmp_path, minari_root):
    import gymnasium as gym

    from tests.support.rl_data import make_minari, rollouts
    env = gym.make("CartPole-v1")
    data = make_minari("hostile/cartpole-v0", env, rollouts(env, 2, 20))
    main = Path(data) / "data" / "main_data.hdf5" if (Path(data) / "data").is_dir() else Path(data) / "main_data.hdf5"
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as g:
        g["x"] = np.frombuffer(SECRET, np.float32)
    with h5py.File(main, "a") as f:
        f["episode_0/extra"] = h5py.ExternalLink(str(secret), "/x")
    r = run("converters.cli", ["rl", str(data), "--out", str(tmp_path / "box" / "out"), "--no-progress"],
            tmp_path / "box", mem=2 * GiB)
    check_one_line(r, 1, "external link", "--allow-hdf5-external-files")


def test_a_group_linked_into_itself_is_walked_once(tmp_path):
    from converters.base import SourceError
    from converters.rl.sources.h5check import check_hdf5
    src = tmp_path / "cycle.hdf5"
    with h5py.File(src, "w") as f:
        _plain(f)
        g = f.create_group("observations")
        g["x"] = np.zeros((32, 1), np.float32)
        g["loop"] = g  # a hard link: the group contains itself
        f["soft"] = h5py.SoftLink("/observations")
    check_hdf5(str(src))  # finishes, nothing refused
    with h5py.File(src, "a") as f:
        f["observations/leak"] = h5py.ExternalLink("/etc/hostname", "/")
    with pytest.raises(SourceError, match="external link"):
        check_hdf5(str(src))


def test_minari_total_steps_must_be_what_the_file_holds(tmp_path, minari_root):
    import gymnasium as gym

    from tests.support.rl_data import make_minari, rollouts
    env = gym.make("CartPole-v1")
    data = make_minari("hostile/steps-v0", env, rollouts(env, 2, 15))
    with h5py.File(Path(data) / "data" / "main_data.hdf5", "a") as f:
        f["episode_1"].attrs["total_steps"] = 10 ** 12  # the arrays hold 15 or fewer
    r = run("converters.cli", ["rl", str(data), "--out", str(tmp_path / "box" / "out"), "--no-progress"],
            tmp_path / "box", mem=2 * GiB)
    check_one_line(r, 1, "episode 1", "total_steps")
