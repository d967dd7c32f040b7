"""MEAD (Wang et al. 2020): emotional talking faces, 8 emotions x 3 intensities, 7 camera views.

InstructAvatar's in-domain set and CogPortrait's emotion data. ``avatarjax data build mead --manual_dir RAW
--data_dir OUT``. Expected raw layout (the official download, each identity's ``video.tar`` / ``audio.tar``
unpacked in place)::

    RAW/<identity>/video/<view>/<emotion>/level_<n>/<nnn>.mp4    e.g. M003/video/front/happy/level_2/001.mp4
    RAW/<identity>/audio/<emotion>/level_<n>/<nnn>.m4a           the same take's audio (shared by all views)

identity: ``M003``, ``W009``, ...; view: ``front``, ``down``, ``top``, ``left_30``, ``left_60``, ``right_30``,
``right_60``; emotion: ``angry``, ``contempt``, ``disgusted``, ``fear``, ``happy``, ``neutral``, ``sad``,
``surprised``; level: 1-3 (neutral has level_1 only). Videos are 1920x1080 at 30 fps; they become 25 fps face
crops with 16 kHz audio. Every video of the chosen views needs its audio file; a missing or unreadable audio or
video, an unknown emotion or level folder is reported (all of them at once) before anything is written.

Records: the common clip record (``avatarjax.data.tfds.common``) plus ``view`` (text); ``label`` is the
emotion, ``intensity`` the level, and ``instructions`` InstructAvatar-style instructions written by
``avatarjax.data.tfds.annotate`` (emotion templates, held out in eval; AU sentences from the AU intersection
when ``prep.au_extractor`` is set; LLM paraphrases when ``annotate.llm`` names a backend). Identities listed
in ``eval_identities`` (default: a stable 10% of them) form the ``eval`` split. ``--config.features`` adds
pre-computed features (audio encoder features, motion latents, DAC codes, video latents; see
``avatarjax.data.tfds.features``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import tensorflow_datasets as tfds

from avatarjax.data.preprocess.video import PreprocessConfig
from avatarjax.data.synthface import schema
from avatarjax.data.tfds import common
from avatarjax.data.tfds.annotate import AnnotateConfig
from avatarjax.data.tfds.beam import BeamBuilder, Problems

VIEWS = ("front", "down", "top", "left_30", "left_60", "right_30", "right_60")
_LEVEL = re.compile(r"level_([123])$")


@dataclasses.dataclass(frozen=True)
class MeadOptions:
    prep: PreprocessConfig = PreprocessConfig(pfl_window=640)  # MEAD faces are ~400 px tall at 1080p
    views: tuple[str, ...] = ("front",)
    eval_identities: tuple[str, ...] = ()
    eval_fraction: float = 0.1
    audio_suffix: str = ".m4a"
    annotate: AnnotateConfig = AnnotateConfig()
    features: str = ""  # pre-computed features, e.g. "wav2vec2:DIR,motion_vae:CKPT" (avatarjax.data.tfds.features)


class Mead(BeamBuilder):
    """MEAD emotional talking-face clips (see the module docstring for the raw layout)."""

    VERSION = tfds.core.Version("1.0.0")

    def features(self) -> dict:
        return common.clip_features(self.options.prep, {"view": tfds.features.Text()}, self.options.features)

    def scan(self, root: Path | None) -> dict[str, list[dict]]:
        opts = self.options
        problems = Problems("MEAD", root)
        if opts.prep.crop == "box":
            problems.add(root, "crop 'box' needs per-clip windows and MEAD has none: use --config.prep.crop=pfl "
                               "or center")
        bad_views = [v for v in opts.views if v not in VIEWS]
        if bad_views:
            problems.add(root, f"unknown view(s) {bad_views} in options: use {', '.join(VIEWS)}")
        found = []  # (identity, view, emotion, level, take, video path, audio path)
        for ident in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (ident / "video").is_dir():
                problems.add(ident / "video", "missing video folder (unpack video.tar here)")
                continue
            for view in opts.views:
                for path in sorted((ident / "video" / view).glob("*/*/*.mp4")):
                    emotion, level = path.parent.parent.name, path.parent.name
                    match = _LEVEL.match(level)
                    if emotion not in schema.EMOTIONS:
                        problems.add(path, f"unknown emotion folder '{emotion}' (expected one of "
                                           f"{', '.join(schema.EMOTIONS)})")
                        continue
                    if match is None:
                        problems.add(path, f"unknown level folder '{level}' (expected level_1, level_2, level_3)")
                        continue
                    audio = ident / "audio" / emotion / level / (path.stem + opts.audio_suffix)
                    if problems.require(audio, "audio (unpack audio.tar beside video/)"):
                        found.append((ident.name, view, emotion, int(match.group(1)), path.stem, path, audio))
        infos = common.probe_videos([f[5] for f in found], problems)
        common.probe_audio([f[6] for f in found], problems)
        problems.raise_if_any("restore or re-download the listed files (or delete the incomplete takes) so that "
                              "every video of the chosen views has its audio, as in the official MEAD download")
        index = common.identity_indices(f[0] for f in found)
        splits: dict[str, list[dict]] = {s: [] for s in common.SPLITS}
        for ident, view, emotion, level, take, video, audio in found:
            if video not in infos:
                continue
            split = common.identity_split(ident, opts.eval_identities, opts.eval_fraction)
            clip_id = f"{ident}/{view}/{emotion}/level_{level}/{take}"
            fields = common.clip_fields(
                clip_id=clip_id, identity=index[ident], identity_name=ident, split=split,
                emotion=common.emotion_index(emotion), intensity=level, label=emotion, view=view)
            splits[split].append({"key": clip_id, "video": str(video), "audio": str(audio), "fields": fields,
                                  "annotation": common.annotation(emotion, level, split)})
        return splits

    def processor(self):
        return common.ClipProcessor(self.options.prep, self.options.annotate, self.options.features)
