"""HDTF (Zhang et al. 2021): high-resolution talking heads from YouTube, with the authors' face windows.

``avatarjax data build hdtf --manual_dir RAW --data_dir OUT``. Expected raw layout: the clips cut as the HDTF
README says (each source video split at the times of ``xx_annotion_time.txt``, clip ``k`` named
``<video name>_<k>.mp4``), anywhere under ``RAW``, and the metadata files of the HDTF repository's
``HDTF_dataset/`` folder, in ``RAW/`` or ``RAW/HDTF_dataset/``::

    RAW/HDTF_dataset/{RD,WDA,WRA}_crop_wh.txt      "<video name>_<k>.mp4 min_width width min_height height"
    RAW/HDTF_dataset/{RD,WDA,WRA}_resolution.txt   "<video name>.mp4 <resolution>" (optional: the frame height
                                                   the crop windows refer to; windows are scaled to the clip)
    RAW/**/<video name>_<k>.mp4                    e.g. clips/BarackObama_0.mp4 (audio in the same file)

Clips are cropped to their ``crop_wh`` window (``--config.prep.crop=box``, the default; ``pfl`` and ``center``
also work) and cut into segments of ``prep.segment_frames`` (default 250: 10 s) 25 fps frames. A clip with no
``crop_wh`` line (missing metadata) or that cannot be read is reported before anything is written; windows
listed for clips you do not have are skipped (many HDTF videos are no longer online) and counted in the build
summary. The identity is the video name without its trailing digits (``AmyKlobuchar1`` -> ``AmyKlobuchar``);
identities in ``eval_identities`` (default: a stable 10%) form the ``eval`` split. ``--config.features`` adds
pre-computed features per segment (see ``avatarjax.data.tfds.features``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import tensorflow_datasets as tfds

from avatarjax.data.preprocess.video import PreprocessConfig
from avatarjax.data.tfds import common
from avatarjax.data.tfds.beam import BeamBuilder, Problems

GROUPS = ("RD", "WDA", "WRA")
_CLIP = re.compile(r"^(?P<video>.+)_(?P<k>\d+)$")


@dataclasses.dataclass(frozen=True)
class HdtfOptions:
    prep: PreprocessConfig = PreprocessConfig(crop="box", segment_frames=250)
    eval_identities: tuple[str, ...] = ()
    eval_fraction: float = 0.1
    features: str = ""  # pre-computed features, e.g. "wav2vec2:DIR,dac:CKPT" (avatarjax.data.tfds.features)


def _meta_dir(root: Path) -> Path:
    return root / "HDTF_dataset" if (root / "HDTF_dataset").is_dir() else root


def _read_table(path: Path, columns: int, problems: Problems) -> dict[str, list[str]]:
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns:
            problems.add(path, f"line {number} has {len(parts)} fields, expected {columns}: '{line.strip()}'")
            continue
        table[parts[0]] = parts[1:]
    return table


def identity_of(video_name: str) -> str:
    return video_name.rstrip("0123456789") or video_name


class Hdtf(BeamBuilder):
    """HDTF talking-head clips cropped to the authors' windows (see the module docstring for the raw layout)."""

    VERSION = tfds.core.Version("1.0.0")

    def features(self) -> dict:
        return common.clip_features(self.options.prep, {"group": tfds.features.Text()}, self.options.features)

    def scan(self, root: Path | None) -> dict[str, list[dict]]:
        opts = self.options
        problems = Problems("HDTF", root)
        meta = _meta_dir(root)
        windows, heights = {}, {}
        for group in GROUPS:
            crop_file = meta / f"{group}_crop_wh.txt"
            if crop_file.exists():
                for name, values in _read_table(crop_file, 5, problems).items():
                    try:
                        windows[Path(name).stem] = (group, [float(v) for v in values])
                    except ValueError:
                        problems.add(crop_file, f"non-numeric window for '{name}': {values}")
            res_file = meta / f"{group}_resolution.txt"
            if res_file.exists():
                for name, values in _read_table(res_file, 2, problems).items():
                    try:
                        heights[Path(name).stem] = float(values[0])
                    except ValueError:
                        problems.add(res_file, f"non-numeric resolution for '{name}': {values[0]}")
        if not windows:
            problems.add(meta, f"missing metadata: none of {', '.join(g + '_crop_wh.txt' for g in GROUPS)} (copy "
                               f"them from the HDTF repository's HDTF_dataset/ folder)")
        clips = {}
        for path in sorted(root.rglob("*.mp4")):
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.stem in clips:
                problems.add(path, f"duplicate clip name (also '{clips[path.stem]}')")
                continue
            clips[path.stem] = path
            if _CLIP.match(path.stem) is None:
                problems.add(path, "not named '<video name>_<clip index>.mp4'")
            elif path.stem not in windows and opts.prep.crop == "box":
                problems.add(path, "missing metadata: no line for this clip in any *_crop_wh.txt")
        infos = common.probe_videos(list(clips.values()), problems)
        problems.raise_if_any("add the missing crop_wh lines (or delete clips that are not HDTF clips) and "
                              "re-encode unreadable clips with `ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4`")
        names = {stem: _CLIP.match(stem)["video"] for stem in clips}
        index = common.identity_indices(identity_of(v) for v in names.values())
        splits: dict[str, list[dict]] = {s: [] for s in common.SPLITS}
        for stem, path in clips.items():
            info = infos[path]
            ident = identity_of(names[stem])
            group, box = windows.get(stem, ("", None))
            if box is not None:
                x, w, y, h = box
                scale = info.height / heights[names[stem]] if heights.get(names[stem]) else 1.0
                box = [x * scale, y * scale, (x + w) * scale, (y + h) * scale]
            split = common.identity_split(ident, opts.eval_identities, opts.eval_fraction)
            fields = common.clip_fields(clip_id=stem, identity=index[ident], identity_name=ident, split=split,
                                        label="talking", group=group)
            splits[split].append({"key": stem, "video": str(path), "box": box, "fields": fields})
        missing = sorted(set(windows) - set(clips))
        self.notes = {"listed_but_absent": len(missing), "absent_examples": missing[:5]}
        return splits

    def processor(self):
        return common.ClipProcessor(self.options.prep, features=self.options.features)
