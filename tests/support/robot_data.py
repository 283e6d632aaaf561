"""Robot datasets written to the published layouts, for the LeRobot and RLDS reader tests.

LeRobot's own writer does not install beside the pinned CPU torch 2.13.0 (lerobot >= 0.4, the
v3.0 writer, needs torch < 2.11; 0.3.x writes only v2.1 and would downgrade gymnasium and datasets
in the shared environment), so the folders are written here exactly as `LeRobotDataset.create /
add_frame / save_episode` lays them out: pyarrow Parquet with HF `Sequence(length=n)` columns
(fixed-size lists), MP4s encoded by PyAV (AV1 with libsvtav1 as LeRobot's default, H.264 with
libx264), several episodes back to back in one v3.0 video file. RLDS episodes are written with the
`tfrecord` package's writer (an independent TFRecord/Example writer) in the feature layout of an
Open X-Embodiment `features.json`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
H, W = 48, 64
CAMERAS = {"observation.images.top": "libsvtav1", "observation.images.wrist": "libx264"}
TASKS = ["pick up the red cube", "push the blue block to the left"]
STATE, ACTION = 6, 6
ACTION_LOW = np.array([-2.0, -1.0, 0.0, -3.0, -0.5, 0.0], np.float32)
ACTION_HIGH = np.array([2.0, 1.0, 5.0, 3.0, 0.5, 1.0], np.float32)


@dataclass
class Episode:
    state: np.ndarray  # (T, 6) float32
    action: np.ndarray  # (T, 6) float32
    task_index: int
    frames: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (T, H, W, 3) uint8
    reward: np.ndarray | None = None

    @property
    def length(self) -> int:
        return len(self.state)


def frame(camera: int, episode: int, t: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """A smooth picture that moves with t (codecs keep it recognisable), different per camera."""
    y, x = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    img = np.empty((*size, 3), np.float32)
    img[..., 0] = 128 + 100 * np.sin((x + 4 * t) / 9.0 + episode)
    img[..., 1] = 128 + 100 * np.cos((y - 3 * t) / 7.0 + camera)
    img[..., 2] = (40 * camera + 20 * episode + 8 * t) % 256
    return img.clip(0, 255).astype(np.uint8)


def make_episodes(lengths: list[int], seed: int = 0, rewards: bool = False,
                  size: tuple[int, int] = (H, W)) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for e, n in enumerate(lengths):
        u = rng.uniform(size=(n, ACTION)).astype(np.float32)
        action = (ACTION_LOW + u * (ACTION_HIGH - ACTION_LOW)).astype(np.float32)
        action[:, 5] = (u[:, 5] > 0.5).astype(np.float32)  # a gripper: open or closed
        ep = Episode(rng.normal(size=(n, STATE)).astype(np.float32), action, e % len(TASKS),
                     {cam: np.stack([frame(c, e, t, size) for t in range(n)]) for c, cam in enumerate(CAMERAS)},
                     rng.uniform(size=n).astype(np.float32) if rewards else None)
        out.append(ep)
    return out


def encode(path: Path, frames: np.ndarray, codec: str, drop: tuple[int, ...] = ()) -> None:
    """Frames as one MP4 at FPS (frame g at g / FPS seconds), as LeRobot encodes (yuv420p, g=2)."""
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=FPS)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        s.options = {"g": "2", "crf": "30", **({"preset": "12"} if codec == "libsvtav1" else {})}
        for g, img in enumerate(frames):
            if g in drop:
                continue
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = g
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _vec(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def _features(episodes: list[Episode]) -> dict:
    rewards = episodes[0].reward is not None
    h, w = episodes[0].frames[next(iter(CAMERAS))].shape[1:3]
    feats = {}
    for cam, codec in CAMERAS.items():
        feats[cam] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                      "info": {"video.height": h, "video.width": w, "video.codec": "av1" if "av1" in codec else "h264",
                               "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": FPS,
                               "video.channels": 3, "has_audio": False}}
    feats["observation.state"] = {"dtype": "float32", "shape": [STATE], "names": [f"joint_{i}" for i in range(STATE)]}
    feats["action"] = {"dtype": "float32", "shape": [ACTION], "names": [f"motor_{i}" for i in range(ACTION)]}
    if rewards:
        feats["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    for k, t in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                 ("index", "int64"), ("task_index", "int64")):
        feats[k] = {"dtype": t, "shape": [1], "names": None}
    return feats


def _frame_table(episodes: list[Episode], first_index: int, ids: list[int], extra: dict | None = None) -> pa.Table:
    cols = {
        "observation.state": _vec(np.concatenate([e.state for e in episodes])),
        "action": _vec(np.concatenate([e.action for e in episodes])),
        "timestamp": pa.array(np.concatenate([np.arange(e.length) / FPS for e in episodes]).astype(np.float32)),
        "frame_index": pa.array(np.concatenate([np.arange(e.length) for e in episodes]).astype(np.int64)),
        "episode_index": pa.array(np.concatenate([np.full(e.length, i) for e, i in zip(episodes, ids)]).astype(np.int64)),
        "index": pa.array(first_index + np.arange(sum(e.length for e in episodes), dtype=np.int64)),
        "task_index": pa.array(np.concatenate([np.full(e.length, e.task_index) for e in episodes]).astype(np.int64)),
    }
    if episodes[0].reward is not None:
        cols["next.reward"] = pa.array(np.concatenate([e.reward for e in episodes]))
    cols.update(extra or {})
    return pa.table(cols)


def _stats(episodes: list[Episode]) -> dict:
    out = {}
    for key, values in (("action", np.concatenate([e.action for e in episodes])),
                        ("observation.state", np.concatenate([e.state for e in episodes]))):
        out[key] = {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
                    "std": values.std(0).tolist(), "count": [len(values)]}
    return out


def write_lerobot_v3(root: Path, episodes: list[Episode], data_files: int = 2, drop: dict | None = None,
                     codecs: dict | None = None) -> Path:
    """A v3.0 folder: episodes split over `data_files` Parquet files, every camera's episodes back to
    back in one MP4. `drop` {camera: global frame numbers} leaves frames out of a video."""
    root.mkdir(parents=True, exist_ok=True)
    info = {"codebase_version": "v3.0", "robot_type": "so100", "total_episodes": len(episodes),
            "total_frames": sum(e.length for e in episodes), "total_tasks": len(TASKS), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": FPS,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": _features(episodes)}
    (root / "meta").mkdir(exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    groups = np.array_split(np.arange(len(episodes)), data_files)
    index, file_of = 0, {}
    for f, group in enumerate(groups):
        eps = [episodes[i] for i in group]
        path = root / "data" / "chunk-000" / f"file-{f:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frame_table(eps, index, [int(i) for i in group]), path)
        for i in group:
            file_of[int(i)] = (f, index)
            index += episodes[i].length
    starts = np.concatenate([[0], np.cumsum([e.length for e in episodes])])
    for cam, codec in (codecs or CAMERAS).items():
        encode(root / "videos" / cam / "chunk-000" / "file-000.mp4",
               np.concatenate([e.frames[cam] for e in episodes]), codec, tuple((drop or {}).get(cam, ())))
    meta = {"episode_index": list(range(len(episodes))), "tasks": [[TASKS[e.task_index]] for e in episodes],
            "length": [e.length for e in episodes],
            "data/chunk_index": [0] * len(episodes), "data/file_index": [file_of[i][0] for i in range(len(episodes))],
            "dataset_from_index": [int(starts[i]) for i in range(len(episodes))],
            "dataset_to_index": [int(starts[i + 1]) for i in range(len(episodes))]}
    for cam in CAMERAS:
        meta[f"videos/{cam}/chunk_index"] = [0] * len(episodes)
        meta[f"videos/{cam}/file_index"] = [0] * len(episodes)
        meta[f"videos/{cam}/from_timestamp"] = [float(starts[i] / FPS) for i in range(len(episodes))]
        meta[f"videos/{cam}/to_timestamp"] = [float(starts[i + 1] / FPS) for i in range(len(episodes))]
    meta["meta/episodes/chunk_index"] = [0] * len(episodes)
    meta["meta/episodes/file_index"] = [0] * len(episodes)
    meta["stats/action/min"] = [e.action.min(0).tolist() for e in episodes]
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(meta), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "task": TASKS}),
                   root / "meta" / "tasks.parquet")
    (root / "meta" / "stats.json").write_text(json.dumps(_stats(episodes), indent=4))
    return root


def write_lerobot_v21(root: Path, episodes: list[Episode]) -> Path:
    """A v2.1 folder: one Parquet and one MP4 per camera per episode, JSON-lines metadata."""
    root.mkdir(parents=True, exist_ok=True)
    info = {"codebase_version": "v2.1", "robot_type": "so100", "total_episodes": len(episodes),
            "total_frames": sum(e.length for e in episodes), "total_tasks": len(TASKS), "total_chunks": 1,
            "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": _features(episodes)}
    (root / "meta").mkdir(exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    index = 0
    lines, stats = [], []
    for i, e in enumerate(episodes):
        path = root / "data" / "chunk-000" / f"episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frame_table([e], index, [i]), path)
        index += e.length
        for cam, codec in CAMERAS.items():
            encode(root / "videos" / "chunk-000" / cam / f"episode_{i:06d}.mp4", e.frames[cam], codec)
        lines.append(json.dumps({"episode_index": i, "tasks": [TASKS[e.task_index]], "length": e.length}))
        stats.append(json.dumps({"episode_index": i, "stats": _stats([e])}))
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    (root / "meta" / "episodes_stats.jsonl").write_text("\n".join(stats) + "\n")
    (root / "meta" / "tasks.jsonl").write_text("\n".join(json.dumps({"task_index": i, "task": t})
                                                         for i, t in enumerate(TASKS)) + "\n")
    return root


# --- RLDS ----------------------------------------------------------------------------------------

def _tensor(shape, dtype: str) -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
            "tensor": {"shape": {"dimensions": [str(s) for s in shape]}, "dtype": dtype, "encoding": "none"}}


def _scalar(dtype: str) -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.scalar.Scalar",
            "tensor": {"shape": {}, "dtype": dtype, "encoding": "none"}}


def _image(size) -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
            "image": {"shape": {"dimensions": [str(s) for s in size]}, "dtype": "uint8", "encodingFormat": "jpeg"}}


def _text() -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}


def _dict(features: dict) -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "featuresDict": {"features": features}}


RLDS_IMAGE = (64, 80, 3)


def rlds_features() -> dict:
    """features.json as an Open X-Embodiment dataset publishes it (the layout of e.g.
    `berkeley_autolab_ur5`: two cameras, a state vector, a 7-d action, a language instruction)."""
    steps = _dict({
        "observation": _dict({"image": _image(RLDS_IMAGE), "hand_image": _image(RLDS_IMAGE),
                              "state": _tensor([STATE + 1], "float32")}),
        "action": _tensor([7], "float32"),
        "language_instruction": _text(),
        "reward": _scalar("float32"), "discount": _scalar("float32"),
        "is_first": _scalar("bool"), "is_last": _scalar("bool"), "is_terminal": _scalar("bool"),
    })
    return _dict({
        "steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                  "sequence": {"feature": steps, "length": "-1"}},
        "episode_metadata": _dict({"file_path": _text()}),
    })


@dataclass
class RLDSEpisode:
    images: dict[str, list[bytes]]  # camera -> JPEG per step
    state: np.ndarray  # (T, 7)
    action: np.ndarray  # (T, 7)
    instruction: str
    reward: np.ndarray

    @property
    def length(self) -> int:
        return len(self.state)


def make_rlds_episodes(lengths: list[int], seed: int = 0) -> list[RLDSEpisode]:
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for e, n in enumerate(lengths):
        imgs = {}
        for c, cam in enumerate(("image", "hand_image")):
            blobs = []
            for t in range(n):
                pic = np.asarray(Image.fromarray(frame(c, e, t)).resize((RLDS_IMAGE[1], RLDS_IMAGE[0])))
                buf = io.BytesIO()
                Image.fromarray(pic).save(buf, format="JPEG", quality=90)
                blobs.append(buf.getvalue())
            imgs[cam] = blobs
        action = rng.uniform(-1, 1, size=(n, 7)).astype(np.float32)
        out.append(RLDSEpisode(imgs, rng.normal(size=(n, STATE + 1)).astype(np.float32), action, TASKS[e % len(TASKS)],
                               (np.arange(n) == n - 1).astype(np.float32)))
    return out


def rlds_example(ep: RLDSEpisode, extra: dict | None = None) -> dict:
    """The flattened features of one episode as TFDS serialises them (tfrecord package's datum)."""
    n = ep.length
    first = np.zeros(n, np.int64)
    first[0] = 1
    last = np.zeros(n, np.int64)
    last[-1] = 1
    datum = {
        "steps/observation/image": (ep.images["image"], "byte"),
        "steps/observation/hand_image": (ep.images["hand_image"], "byte"),
        "steps/observation/state": (ep.state.ravel().tolist(), "float"),
        "steps/action": (ep.action.ravel().tolist(), "float"),
        "steps/language_instruction": ([ep.instruction.encode()] * n, "byte"),
        "steps/reward": (ep.reward.tolist(), "float"),
        "steps/discount": ([1.0] * n, "float"),
        "steps/is_first": (first.tolist(), "int"),
        "steps/is_last": (last.tolist(), "int"),
        "steps/is_terminal": (last.tolist(), "int"),
        "episode_metadata/file_path": ([b"/data/raw/episode.npy"], "byte"),
    }
    datum.update(extra or {})
    return datum


def write_rlds(root: Path, episodes: list[RLDSEpisode], shards: int = 2, name: str = "ur5_demo",
               extra: dict | None = None) -> Path:
    """A TFDS builder folder: dataset_info.json, features.json, NAME-train.tfrecord-NNNNN-of-NNNNN.
    `extra` {episode: {key: datum}} adds features to single episodes."""
    from tfrecord.writer import TFRecordWriter
    root.mkdir(parents=True, exist_ok=True)
    (root / "features.json").write_text(json.dumps(rlds_features(), indent=2))
    groups = np.array_split(np.arange(len(episodes)), shards)
    (root / "dataset_info.json").write_text(json.dumps({
        "name": name, "version": "0.1.0", "fileFormat": "tfrecord", "moduleName": f"{name}.{name}_dataset_builder",
        "splits": [{"name": "train", "numBytes": "0", "shardLengths": [str(len(g)) for g in groups],
                    "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}]}, indent=2))
    for s, group in enumerate(groups):
        w = TFRecordWriter(str(root / f"{name}-train.tfrecord-{s:05d}-of-{shards:05d}"))
        for i in group:
            w.write(rlds_example(episodes[i], (extra or {}).get(int(i))))
        w.close()
    return root
