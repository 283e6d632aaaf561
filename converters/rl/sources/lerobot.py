"""LeRobot datasets (v3.0 and v2.1 folders as `LeRobotDataset` writes them), read without lerobot.

`meta/info.json` declares every feature (dtype, shape, names), the fps and the path templates.
v3.0 keeps many episodes per Parquet file (`data/chunk-*/file-*.parquet`, one row per frame) and
per MP4 (`videos/<key>/chunk-*/file-*.mp4`, episodes back to back); `meta/episodes/` says where
each episode's rows and video segment (`from_timestamp`) are, `meta/tasks.parquet` the task
strings, `meta/stats.json` the per-feature min/max. v2.1 keeps one Parquet and one MP4 per episode
(`meta/episodes.jsonl`, `meta/tasks.jsonl`, `meta/episodes_stats.jsonl`).

Fields: `observation.X` -> `obs/X` (video and image features are images, float vectors continuous,
integers discrete, strings text), the frame's task string -> text `obs/task`, `action` -> the
continuous action with bounds from the statistics, `next.reward` -> rewards (absent: no returns);
the bookkeeping columns (timestamp, frame_index, episode_index, index, task_index) and `next.done`
/ `next.success` are not fields. A camera frame is the frame at `from_timestamp + timestamp` of
its video, within `video.TOLERANCE_S`; a work unit opens each video file it needs once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Generator, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from converters.base import SourceError
from converters.read_ahead import read_ahead
from tokenizer_kit.errors import first_line
from tokenizer_kit.fields import ACTION, OBS, field_name

from . import FieldInfo, NoRecordedEnv, RawEpisode
from .robot import inside, stat_bounds
from .table import Ragged, steps_to_numpy
from .video import TOLERANCE_S, VideoError, VideoFile

BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
NOT_FIELDS = ("next.done", "next.success")
REWARD = "next.reward"
TASK_FIELD = field_name(OBS, "task")




def _field_name(key: str) -> str:
    return field_name(OBS, key[len("observation."):]) if key.startswith("observation.") else \
        key if key == ACTION else field_name(OBS, key)


def _image_shape(feature: dict) -> tuple[int, int, int]:
    shape, names = [int(s) for s in feature["shape"]], list(feature.get("names") or [])
    if len(shape) != 3:
        raise ValueError(f"shape {shape} is not an image's")
    if names[:1] in (["channels"], ["channel"]):  # (C, H, W) as some datasets declare it
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


class LeRobotSource(NoRecordedEnv):  # the format records no environment: --env-spec gives it
    """A LeRobot dataset folder; episode positions follow episode_index order."""

    def __init__(self, path: str):
        self.input = self.path = str(path)
        self.root = Path(path)
        self.name = self.root.name
        self.info = self._json("meta/info.json")
        version = str(self.info.get("codebase_version", ""))
        if version.startswith("v3"):
            self.v3 = True
        elif version.startswith("v2"):
            self.v3 = False
        else:
            raise SourceError(f"{self.path}/meta/info.json: codebase_version {version!r} is not v2.x or v3.0")
        try:
            self.fps = float(self.info["fps"])
            self.features: dict = dict(self.info["features"])
            self._data_path, self._video_path = str(self.info["data_path"]), self.info.get("video_path")
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"{self.path}/meta/info.json: missing or bad {first_line(e)}") from None
        self.videos = [k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") == "video"]
        if self.videos and not self._video_path:
            raise SourceError(f"{self.path}/meta/info.json: video features but no video_path")
        self._episodes = self._episode_table()
        self._tasks = self._task_table()
        self._stats = self._stat_table()
        self._fields = self._make_fields()

    # --- metadata ----------------------------------------------------------------------------
    def _json(self, rel: str):
        try:
            return json.loads(inside(self.root, rel, "file").read_text())
        except (OSError, ValueError) as e:
            raise SourceError(f"{self.path}/{rel}: not readable JSON ({first_line(e)})") from None

    def _jsonl(self, rel: str) -> list[dict]:
        p = inside(self.root, rel, "file")
        try:
            return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        except (OSError, ValueError) as e:
            raise SourceError(f"{self.path}/{rel}: not readable JSON lines ({first_line(e)})") from None

    def _episode_table(self) -> dict[str, np.ndarray | list]:
        """Per episode, sorted by episode_index: its index, length, and where its data is."""
        if self.v3:
            files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
            if not files:
                raise SourceError(f"{self.path}/meta/episodes: no chunk-*/file-*.parquet")
            try:
                table = pa.concat_tables([pq.read_table(f, columns=[c for c in pq.read_schema(f).names
                                                                    if not c.startswith("stats/")]) for f in files])
            except (OSError, pa.ArrowException) as e:
                raise SourceError(f"{self.path}/meta/episodes: unreadable ({first_line(e)})") from None
            cols = {c: table.column(c).to_pylist() for c in table.column_names}
        else:
            rows = self._jsonl("meta/episodes.jsonl")
            cols = {"episode_index": [r.get("episode_index") for r in rows], "length": [r.get("length") for r in rows]}
        need = ["episode_index", "length"] + (["data/chunk_index", "data/file_index"] if self.v3 else []) + \
            ([f"videos/{k}/{c}" for k in self.videos for c in ("chunk_index", "file_index", "from_timestamp")]
             if self.v3 else [])
        missing = [c for c in need if c not in cols]
        if missing:
            raise SourceError(f"{self.path}/meta/episodes: no {missing[0]!r} column")
        try:
            out = {c: np.asarray(cols[c], np.float64 if c.endswith("timestamp") else np.int64) for c in need}
        except (TypeError, ValueError):
            raise SourceError(f"{self.path}/meta/episodes: non-numeric episode metadata") from None
        order = np.argsort(out["episode_index"], kind="stable")
        return {c: v[order] for c, v in out.items()}

    def _task_table(self) -> dict[int | None, str | None]:  # from the data: checked where used
        if self.v3:
            p = inside(self.root, "meta/tasks.parquet", "file")
            try:
                t = pq.read_table(p)
            except (OSError, pa.ArrowException) as e:
                raise SourceError(f"{self.path}/meta/tasks.parquet: unreadable ({first_line(e)})") from None
            text = next((c for c in ("task", "__index_level_0__") if c in t.column_names), None)
            if text is None or "task_index" not in t.column_names:
                raise SourceError(f"{self.path}/meta/tasks.parquet: needs task_index and task columns")
            return dict(zip(t.column("task_index").to_pylist(), t.column(text).to_pylist()))
        return {r.get("task_index"): r.get("task") for r in self._jsonl("meta/tasks.jsonl")}

    def _stat_table(self) -> dict[str, tuple]:
        """{feature: (min, max)}: meta/stats.json, or v2.1's per-episode statistics combined."""
        if (self.root / "meta" / "stats.json").is_file():
            stats = self._json("meta/stats.json")
            return {k: (v.get("min"), v.get("max")) for k, v in stats.items() if isinstance(v, dict)}
        if not self.v3 and (self.root / "meta" / "episodes_stats.jsonl").is_file():
            out: dict[str, tuple] = {}
            for row in self._jsonl("meta/episodes_stats.jsonl"):
                for k, v in (row.get("stats") or {}).items():
                    try:
                        lo, hi = np.asarray(v["min"], np.float64), np.asarray(v["max"], np.float64)
                    except (KeyError, TypeError, ValueError):
                        continue
                    if k in out:
                        lo, hi = np.minimum(out[k][0], lo), np.maximum(out[k][1], hi)
                    out[k] = (lo, hi)
            return out
        return {}

    def _make_fields(self) -> tuple[dict[str, FieldInfo], dict[str, FieldInfo]]:
        obs: dict[str, FieldInfo] = {}
        act: dict[str, FieldInfo] = {}
        for key, feat in self.features.items():
            if key in BOOKKEEPING or key in NOT_FIELDS or key == REWARD:
                continue
            where = f"{self.path}/meta/info.json: feature {key!r}"
            try:
                dtype, shape = str(feat["dtype"]), tuple(int(s) for s in feat.get("shape") or ())
                name = _field_name(key)
                if dtype in ("video", "image"):
                    h, w, c = _image_shape(feat)
                    info = FieldInfo(name, "image", (h, w, c) if c != 1 else (h, w))
                elif dtype == "string":
                    info = FieldInfo(name, "text", None)
                else:
                    kind = "continuous" if np.dtype(dtype).kind == "f" else "discrete"
                    bounds = stat_bounds(*self._stats.get(key, (None, None))) \
                        if key == ACTION and kind == "continuous" else None
                    info = FieldInfo(name, kind, shape, bounds)
            except (KeyError, TypeError, ValueError) as e:
                raise SourceError(f"{where}: bad declaration ({first_line(e)})") from None
            (act if key == ACTION else obs)[name] = info
        if "task_index" in self.features:
            obs[TASK_FIELD] = FieldInfo(TASK_FIELD, "text", None)
        if not act:
            raise SourceError(f"{self.path}/meta/info.json: no 'action' feature")
        return obs, act

    # --- the Source protocol -----------------------------------------------------------------
    def fields(self) -> tuple[dict[str, FieldInfo], dict[str, FieldInfo]]:
        return self._fields

    def num_episodes(self) -> int:
        return len(self._episodes["episode_index"])

    def episode_lengths(self) -> np.ndarray:
        return np.array(self._episodes["length"])  # a copy

    def returns(self) -> np.ndarray:
        if REWARD not in self.features:
            raise SourceError(f"{self.path}: no {REWARD!r} feature, so no returns to filter by")
        out = np.zeros(self.num_episodes())
        for ep, raw in zip(range(self.num_episodes()), self.episodes(0, self.num_episodes(), images=False)):
            out[ep] = float(np.sum(raw.rewards)) if raw.rewards is not None else np.nan
        return out

    # --- paths -------------------------------------------------------------------------------
    def _chunk(self, episode: int) -> int:
        return episode // int(self.info.get("chunks_size") or 1000)

    def data_file(self, pos: int) -> Path:
        e = self._episodes
        try:
            rel = self._data_path.format(chunk_index=int(e["data/chunk_index"][pos]),
                                         file_index=int(e["data/file_index"][pos])) if self.v3 else \
                self._data_path.format(episode_chunk=self._chunk(int(e["episode_index"][pos])),
                                       episode_index=int(e["episode_index"][pos]))
        except (KeyError, IndexError, ValueError) as err:
            raise SourceError(f"{self.path}/meta/info.json: data_path {self._data_path!r}: {err}") from None
        return inside(self.root, rel, "data_path")

    def video_file(self, pos: int, key: str) -> Path:
        e = self._episodes
        try:
            rel = self._video_path.format(video_key=key, chunk_index=int(e[f"videos/{key}/chunk_index"][pos]),
                                          file_index=int(e[f"videos/{key}/file_index"][pos])) if self.v3 else \
                self._video_path.format(video_key=key, episode_chunk=self._chunk(int(e["episode_index"][pos])),
                                        episode_index=int(e["episode_index"][pos]))
        except (KeyError, IndexError, ValueError) as err:
            raise SourceError(f"{self.path}/meta/info.json: video_path {self._video_path!r}: {err}") from None
        return inside(self.root, rel, "video_path")

    # --- episodes ----------------------------------------------------------------------------
    def _read_frames(self, path: Path, episodes: np.ndarray) -> pa.Table:
        """The frame rows of `episodes` in one data file, with every column checked against info.json."""
        rel = path.relative_to(self.root.resolve())
        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"{rel}: not a readable Parquet file ({first_line(e)})") from None
        undeclared = [c for c in pf.schema_arrow.names if c not in self.features and c != "__index_level_0__"]
        if undeclared:
            raise SourceError(f"{rel}: column {undeclared[0]!r} is not a feature meta/info.json declares")
        columns = [k for k, f in self.features.items() if f.get("dtype") != "video" and k in pf.schema_arrow.names]
        for need in ("episode_index", "timestamp"):
            if need not in columns:
                raise SourceError(f"{rel}: no {need!r} column")
        try:
            table = pf.read(columns=columns, use_threads=False)
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"{rel}: unreadable ({first_line(e)})") from None
        if self.v3:
            table = table.filter(pc.is_in(table.column("episode_index"), pa.array(episodes, pa.int64())))
        return table

    def episodes(self, start: int, stop: int, images: bool = True) -> Iterator[RawEpisode]:
        """Read (and the cameras decoded) one episode ahead of the consumer, in a thread: PyAV
        decodes without the GIL while the previous episode is tokenised and written."""
        return read_ahead(self._read(start, stop, images))

    def _read(self, start: int, stop: int, images: bool) -> Generator[RawEpisode, None, None]:
        stop = min(stop, self.num_episodes())
        videos: dict[Path, VideoFile | VideoError] = {}  # opened once per unit
        table, table_file, table_error = None, None, None
        try:
            for pos in range(start, stop):
                ep = int(self._episodes["episode_index"][pos])
                try:
                    path = self.data_file(pos)
                    if path != table_file:
                        table_file, table, table_error = path, None, None
                        group = [p for p in range(pos, stop) if not self.v3 or self.data_file(p) == path]
                        try:
                            table = self._read_frames(path, np.asarray(self._episodes["episode_index"])[group])
                        except SourceError as e:
                            table_error = str(e)
                    if table_error:
                        raise SourceError(f"{table_error} (episode {ep})")
                    yield self._episode(pos, ep, table, path, videos if images else None)
                except SourceError as e:
                    yield RawEpisode(ep, error=str(e))
        finally:
            for v in videos.values():
                if isinstance(v, VideoFile):
                    v.close()

    def _episode(self, pos: int, ep: int, table: pa.Table, path: Path, videos: dict | None) -> RawEpisode:
        rel = path.relative_to(self.root.resolve())
        index = table.column("episode_index").to_numpy()
        rows = np.flatnonzero(index == ep)
        if not len(rows):
            raise SourceError(f"{rel}: episode {ep}: no frames")
        if "frame_index" in table.column_names:
            frames = table.column("frame_index").to_numpy()[rows]
            rows = rows[np.argsort(frames, kind="stable")]
        part = table.take(pa.array(rows))
        expected = int(self._episodes["length"][pos])
        if part.num_rows != expected:
            raise SourceError(f"{rel}: episode {ep}: {part.num_rows} frames, meta/episodes says {expected}")
        raw = RawEpisode(ep)
        obs, act = self._fields
        for key in self.features:
            name = _field_name(key)
            if key in self.videos or (name not in obs and name not in act and key != REWARD):
                continue
            if key not in part.column_names:
                raise SourceError(f"{rel}: episode {ep}: declared feature {key!r} has no column")
            try:
                value = steps_to_numpy(part.column(key))
            except (Ragged, SourceError) as e:
                raise SourceError(f"{rel}: episode {ep}, feature {key!r}: {e}") from None
            if key == REWARD:
                raw.rewards = np.asarray(value, np.float64).reshape(-1)
            elif name in act:
                raw.actions[name] = value
            else:
                raw.observations[name] = value
        if TASK_FIELD in obs:
            ids = part.column("task_index").to_numpy()
            unknown = [int(i) for i in np.unique(ids) if int(i) not in self._tasks]
            if unknown:
                raise SourceError(f"{rel}: episode {ep}: task_index {unknown[0]} is not in the tasks table")
            raw.observations[TASK_FIELD] = [self._tasks[int(i)] for i in ids]
        if videos is not None and self.videos:
            times = part.column("timestamp").to_numpy().astype(np.float64)
            for key in self.videos:
                raw.observations[_field_name(key)] = self._camera(pos, ep, key, times, videos)
        return raw

    def _camera(self, pos: int, ep: int, key: str, times: np.ndarray, videos: dict) -> np.ndarray:
        path = self.video_file(pos, key)
        rel = path.relative_to(self.root.resolve())
        if path not in videos:
            if not path.is_file():
                videos[path] = VideoError("video file missing")
            else:
                try:
                    videos[path] = VideoFile(str(path), TOLERANCE_S, _image_shape(self.features[key])[:2])
                except VideoError as e:
                    videos[path] = e
        video = videos[path]
        if isinstance(video, VideoError):
            raise SourceError(f"{rel}: episode {ep}: {video.detail}")
        offset = float(self._episodes[f"videos/{key}/from_timestamp"][pos]) if self.v3 else 0.0
        try:
            return video.frames_at(offset + times)
        except VideoError as e:
            video.reset()
            frame = f", frame {e.frame}" if e.frame is not None else ""
            raise SourceError(f"{rel}: episode {ep}{frame}: {e.detail}") from None
