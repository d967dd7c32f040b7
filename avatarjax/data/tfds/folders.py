"""Folders of clips per identity: TalkVid / DH-FaceVid-1K-style talking-head collections (``talking_folders``)
and CC v1-style instruction + action videos for text-only motion control (``cc_v1``).

``avatarjax data build talking_folders --manual_dir RAW --data_dir OUT`` (or ``cc_v1``). Expected raw layout::

    RAW/<identity>/<clip>.mp4      a clip (any frame rate; converted to 25 fps and cropped)
    RAW/<identity>/<clip>.wav      its audio when the video has no audio track (.wav, .flac, .m4a or .mp3)
    RAW/<identity>/<clip>.txt      its instruction / caption (one per line; required for cc_v1)
    RAW/<identity>/<clip>.json     optional metadata: {"emotion": "happy", "intensity": 2, "instructions": [...]}

Clips with an emotion and no given instructions get InstructAvatar-style ones (``avatarjax.data.tfds.annotate``).

Identities are the folder names; ``eval_identities`` (default: a stable 10%) form the ``eval`` split. For
``talking_folders`` every clip needs audio (in the file or beside it); for ``cc_v1`` the clips are motion clips
(``kind="motion"``, ``audio_flag`` 0, silent audio) and every clip needs its ``.txt`` instruction. A clip without
its required audio or text, an unreadable video or an invalid ``.json`` is reported before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import tensorflow_datasets as tfds

from avatarjax.data.preprocess.video import PreprocessConfig
from avatarjax.data.tfds import common
from avatarjax.data.tfds.annotate import AnnotateConfig
from avatarjax.data.tfds.beam import BeamBuilder, Problems

AUDIO_SUFFIXES = (".wav", ".flac", ".m4a", ".mp3")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")


@dataclasses.dataclass(frozen=True)
class FolderOptions:
    prep: PreprocessConfig = PreprocessConfig(pfl_window=0)  # automatic window: videos of any resolution
    kind: str = "talking"  # "talking" (audio required) or "motion" (text required, audio ignored)
    eval_identities: tuple[str, ...] = ()
    eval_fraction: float = 0.1
    annotate: AnnotateConfig = AnnotateConfig()
    features: str = ""  # pre-computed features, e.g. "motion_vae:CKPT" (avatarjax.data.tfds.features)


@dataclasses.dataclass(frozen=True)
class CcOptions(FolderOptions):
    kind: str = "motion"


def _sidecar(video: Path, suffixes: tuple[str, ...]) -> Path | None:
    return next((video.with_suffix(s) for s in suffixes if video.with_suffix(s).exists()), None)


class TalkingFolders(BeamBuilder):
    """Clips in per-identity folders (see the module docstring for the raw layout)."""

    VERSION = tfds.core.Version("1.0.0")

    def features(self) -> dict:
        return common.clip_features(self.options.prep, extra_features=self.options.features)

    def scan(self, root: Path | None) -> dict[str, list[dict]]:
        opts = self.options
        motion = opts.kind == "motion"
        problems = Problems(self.name, root)
        if opts.prep.crop == "box":
            problems.add(root, "crop 'box' needs per-clip windows and clip folders have none: use "
                               "--config.prep.crop=pfl or center")
        if opts.kind not in ("talking", "motion"):
            problems.add(root, f"unknown kind '{opts.kind}' in options: use talking or motion")
        found = []
        for ident in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for video in sorted(p for p in ident.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
                text = video.with_suffix(".txt")
                if motion and not problems.require(text, "instruction text (metadata)"):
                    continue
                meta = {}
                if video.with_suffix(".json").exists():
                    try:
                        meta = json.loads(video.with_suffix(".json").read_text())
                        if not isinstance(meta, dict):
                            raise ValueError("not a JSON object")
                    except ValueError as err:
                        problems.add(video.with_suffix(".json"), f"malformed metadata ({err})")
                        continue
                found.append((ident.name, video, _sidecar(video, AUDIO_SUFFIXES), text if text.exists() else None,
                              meta))
        infos = common.probe_videos([f[1] for f in found], problems)
        if not motion:
            for _, video, audio, _, _ in found:
                if audio is None and video in infos and not infos[video].has_audio:
                    problems.add(video, f"missing audio: no audio track and no {'/'.join(AUDIO_SUFFIXES)} beside it")
            common.probe_audio([f[2] for f in found if f[2] is not None], problems)
        problems.raise_if_any("add the missing audio / instruction files or remove those clips; re-encode "
                              "unreadable videos with `ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4`")
        index = common.identity_indices(f[0] for f in found)
        splits: dict[str, list[dict]] = {s: [] for s in common.SPLITS}
        for ident, video, audio, text, meta in found:
            split = common.identity_split(ident, opts.eval_identities, opts.eval_fraction)
            clip_id = f"{ident}/{video.stem}"
            emotion = str(meta.get("emotion", ""))
            intensity = int(meta.get("intensity", 0))
            instructions = [line.strip() for line in text.read_text().splitlines() if line.strip()] if text else []
            instructions += [str(t) for t in meta.get("instructions", [])]
            fields = common.clip_fields(clip_id=clip_id, identity=index[ident], identity_name=ident, split=split,
                                        emotion=common.emotion_index(emotion), intensity=intensity,
                                        label=emotion or opts.kind, instructions=instructions, kind=opts.kind,
                                        audio_flag=0 if motion else 1)
            descriptor = {"key": clip_id, "video": str(video), "fields": fields}
            if not instructions and not motion:  # written in the worker, from the emotion and the AUs
                descriptor["annotation"] = common.annotation(emotion, intensity, split)
            if motion:
                descriptor["silent"] = True
            elif audio is not None:
                descriptor["audio"] = str(audio)
            splits[split].append(descriptor)
        return splits

    def processor(self):
        return common.ClipProcessor(self.options.prep, self.options.annotate, self.options.features)


class CcV1(TalkingFolders):
    """CC v1-style instruction + action clips for text-only motion control (see the module docstring)."""
