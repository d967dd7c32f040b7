"""Registries of tasks, datasets, converters and benchmarks, by name.

Entries are registered as ``"module.path:attribute"`` strings and imported only when used, so the CLI stays fast
and later issues plug in new systems by adding one line here (or calling ``register`` from their own module)
without touching the CLI or the trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

from avatarjax.errors import AvatarError, did_you_mean


class Registry:
    """A name -> object map whose objects may be lazy ``"module:attr"`` import paths."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, target: Any | None = None) -> Any:
        """Register ``target`` (an object or a ``"module:attr"`` string) under ``name``; usable as a decorator."""
        if target is None:
            def decorator(obj):
                self._entries[name] = obj
                return obj
            return decorator
        self._entries[name] = target
        return target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise AvatarError(f"unknown {self.kind} '{name}': {did_you_mean(name, self._entries)}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry


# A task bundles what the trainer needs for one system: model config class, model builder, loss, data, FLOPs.
TASKS = Registry("task")
# Converters turn a local Hugging Face / official checkpoint directory into our Orbax format.
CONVERTERS = Registry("converter")
CONVERTERS.register("clip_text", "avatarjax.encoders.clip_text:CONVERTER")
CONVERTERS.register("bert", "avatarjax.encoders.bert:CONVERTER")
CONVERTERS.register("wav2vec2", "avatarjax.encoders.wav2vec2:CONVERTER")
CONVERTERS.register("umt5", "avatarjax.encoders.umt5:CONVERTER")
CONVERTERS.register("qwen2", "avatarjax.encoders.qwen2:CONVERTER")
CONVERTERS.register("qwen3", "avatarjax.encoders.qwen2:CONVERTER")  # same code path: per-head QK-norm
CONVERTERS.register("wan-dit", "avatarjax.models.cog_portrait:CONVERTER")  # diffusers WanTransformer3DModel
# Benchmarks are functions ``bench(args: list[str]) -> dict`` run by ``avatarjax bench NAME``.
BENCHMARKS = Registry("benchmark")
# Datasets for ``avatarjax data ACTION NAME``: objects with optional build / preview / info(argv) -> dict.
DATASETS = Registry("dataset")

TASKS.register("lm", "avatarjax.train.objectives.lm:LM_TASK")
BENCHMARKS.register("trainer", "avatarjax.train.bench:bench_trainer")
BENCHMARKS.register("cpu_peak", "avatarjax.profiling.peak:bench_cpu_peak")
DATASETS.register("text", "avatarjax.data.text:TEXT_COMMANDS")
DATASETS.register("synthface", "avatarjax.data.synthface.commands:SYNTHFACE_COMMANDS")
DATASETS.register("synthface_dyadic", "avatarjax.data.synthface.commands:DYADIC_COMMANDS")
BENCHMARKS.register("encoders", "avatarjax.encoders.bench:bench_encoders")
BENCHMARKS.register("data", "avatarjax.data.synthface.commands:bench_data")
TASKS.register("motion_vae", "avatarjax.train.objectives.motion_vae:MOTION_VAE_TASK")
TASKS.register("face_reader", "avatarjax.train.objectives.face_reader:FACE_READER_TASK")
TASKS.register("instruct_avatar", "avatarjax.train.objectives.instruct_avatar:INSTRUCT_AVATAR_TASK")
BENCHMARKS.register("instructavatar", "avatarjax.pipelines.instruct_avatar_bench:bench_instructavatar")
TASKS.register("posnet", "avatarjax.train.objectives.posnet:POSNET_TASK")
TASKS.register("reaction", "avatarjax.train.objectives.reaction:REACTION_TASK")
BENCHMARKS.register("posnet", "avatarjax.pipelines.reaction:bench_posnet")
TASKS.register("video_tokenizer", "avatarjax.train.objectives.video_tokenizer:VIDEO_TOKENIZER_TASK")
BENCHMARKS.register("video_tokenizer", "avatarjax.train.objectives.video_tokenizer:bench_video_tokenizer")
TASKS.register("dac", "avatarjax.train.objectives.dac:DAC_TASK")
CONVERTERS.register("dac", "avatarjax.codecs.dac:CONVERTER")
CONVERTERS.register("titok", "avatarjax.codecs.titok_convert:CONVERTER")
BENCHMARKS.register("dac", "avatarjax.codecs.dac:bench_dac")
CONVERTERS.register("wan-vae", "avatarjax.codecs.wan_vae:CONVERTER")
TASKS.register("wan_vae", "avatarjax.train.objectives.wan_vae:WAN_VAE_TASK")
DATASETS.register("synthface_tokens", "avatarjax.data.tokenize:TOKENS_COMMANDS")
TASKS.register("speech_video", "avatarjax.train.objectives.speech_video:SPEECH_VIDEO_TASK")
TASKS.register("cog_portrait", "avatarjax.train.objectives.cog_portrait:COG_PORTRAIT_TASK")
TASKS.register("reward", "avatarjax.train.objectives.alignment:REWARD_TASK")
TASKS.register("ppo", "avatarjax.train.objectives.alignment:PPO_TASK")
TASKS.register("lm_kto", "avatarjax.train.objectives.alignment:LM_KTO_TASK")
BENCHMARKS.register("codecs", "avatarjax.codecs:bench_codecs")
BENCHMARKS.register("cogportrait", "avatarjax.pipelines.cog_portrait_bench:bench_cogportrait")
BENCHMARKS.register("speechvideo", "avatarjax.pipelines.speech_video_bench:bench_speechvideo")
TASKS.register("cog_portrait_kto", "avatarjax.train.objectives.cog_portrait_kto:COG_PORTRAIT_KTO_TASK")
DATASETS.register("cogportrait_kto", "avatarjax.train.objectives.cog_portrait_kto:KTO_RECORD_COMMANDS")
BENCHMARKS.register("streaming", "avatarjax.pipelines.streaming:bench_streaming")
TASKS.register("planner_sft", "avatarjax.train.objectives.planner_sft:PLANNER_SFT_TASK")
DATASETS.register("planner_sft", "avatarjax.planning.synthface_planner:PLANNER_SFT_COMMANDS")
DATASETS.register("mead", "avatarjax.data.tfds.commands:MEAD_COMMANDS")
DATASETS.register("hdtf", "avatarjax.data.tfds.commands:HDTF_COMMANDS")
DATASETS.register("react2024", "avatarjax.data.tfds.commands:REACT2024_COMMANDS")
DATASETS.register("talking_folders", "avatarjax.data.tfds.commands:TALKING_FOLDERS_COMMANDS")
DATASETS.register("cc_v1", "avatarjax.data.tfds.commands:CC_V1_COMMANDS")
BENCHMARKS.register("all", "avatarjax.bench.all:bench_all")
BENCHMARKS.register("train_step", "avatarjax.bench.train_step:bench_train_step")
