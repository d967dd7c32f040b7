"""Writes the notebooks of this folder from the Python cell sources below, so they stay reviewable as code.

    python notebooks/build.py           # (re)write every .ipynb, outputs stripped
    python notebooks/build.py --check   # exit 1 if a committed .ipynb differs from what this file builds

Edit the cells here, never the .ipynb files. ``tests/e2e/test_notebooks.py`` executes each notebook top to bottom
and checks that the committed files are what this script writes.

The notebooks (each runs top to bottom on tiny configs on a CPU):

    01_instructavatar_sampling      InstructAvatar: portrait + speech + instruction -> video, from a checkpoint
    02_cogportrait_label_to_video   CogPortrait: label -> plan -> keypoints plot -> video (untrained Stage 2)
    03_duplex_agent_streaming       Body of Her duplex agent streaming a synthetic dialogue: talking flag, latency
    04_posnet_seams                 PFLPosNet: seams of an online reaction generator before / after
    05_profiling_sharded_step       a sharded training step on 8 fake CPU devices: shardings, MFU, memory

Every notebook writes to ``$AVATARJAX_OUTPUTS/notebooks/<notebook name>/`` (default: the checkout's
``outputs/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str) -> tuple[str, str]:
    return "markdown", text.strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", text.strip("\n")


def setup(name: str, extra_imports: str = "") -> tuple[str, str]:
    """The first code cell: the checkout and this notebook's output folder."""
    return code(f"""
import os
from pathlib import Path
{extra_imports}
import avatarjax

REPO = Path(avatarjax.__file__).resolve().parents[1]  # the checkout (`pip install -e .`)
OUT = Path(os.environ.get("AVATARJAX_OUTPUTS", REPO / "outputs")) / "notebooks" / "{name}"
OUT.mkdir(parents=True, exist_ok=True)
print("outputs:", OUT)
""")


# ------------------------------------------------------------------------------------------------ 01 InstructAvatar
NB01 = [
    md("""
# 01 · InstructAvatar: sampling from a checkpoint

Portrait + speech + instruction → talking video, and instruction alone → text-only facial motion control, from
the small checkpoints this repository ships in `assets/instructavatar_small/` (what `make demo` samples from).

Everything is made here: the portrait is a held-out synthface identity and the speech is synthetic
(`avatarjax.pipelines.demo_inputs`), so nothing is downloaded. About a minute on a 2-core CPU, most of it loading
the checkpoint and compiling the sampler once.

The checkpoints are small (numbers in `assets/instructavatar_small/README.md`): the VAE blurs fine detail, and the
generator follows the audio (lip sync 0.92 read back by the synthface face reader) but barely the instruction.
"""),
    setup("01_instructavatar_sampling", "import base64\n\nimport numpy as np\nfrom IPython.display import HTML, "
                                         "Image, display"),
    md("""
## Inputs

A neutral portrait (64 px, the checkpoint's frame size) and a 2-second utterance at 16 kHz. Any square RGB image
and any audio file work the same way (`avatarjax.media.read_image(path, 64, resize=True)`,
`avatarjax.media.read_audio(path)` resamples).
"""),
    code("""
from avatarjax import media
from avatarjax.data.synthface import render
from avatarjax.pipelines import demo_inputs

inputs = demo_inputs.make_inputs(OUT / "inputs", size=64, seconds=2.0)
portrait = media.read_image(inputs["portrait"])
speech = media.read_audio(inputs["speech"])
print(f"identity {inputs['identity']}: portrait {portrait.shape} {portrait.dtype}, "
      f"speech {len(speech) / 16000:.2f} s at 16 kHz")
render.contact_sheet(portrait[None], path=OUT / "portrait_large.png")  # nearest-neighbour enlarged to 256 px
display(Image(filename=OUT / "portrait_large.png"))
"""),
    md("""
## Load the checkpoint

`instruct_avatar.load` takes a training workdir or an `avatarjax export` directory; it finds the motion VAE the
generator was trained with (the export stores `../motion_vae`) and the instruction text encoder (MiniLM, shipped
as a package).
"""),
    code("""
from avatarjax.pipelines import instruct_avatar

CHECKPOINT = REPO / "assets" / "instructavatar_small" / "generator"
pipe = instruct_avatar.load(CHECKPOINT)
d = pipe.settings.diffusion
print(f"frame size {pipe.frame_size} px, diffusion {d.formulation} ({d.num_train_steps} training steps), "
      f"default sampler {pipe.cfg.sample.sampler} x {pipe.cfg.sample.num_steps} steps")
"""),
    md("""
## Talking: portrait + speech + instruction

The whole denoising loop runs in one `jax.jit` (classifier-free guidance, when `guidance_scale != 1`, as one
doubled batch). We take 20 DDIM steps instead of the configured 50 to keep the notebook quick; any field of the
`sample` config can be passed this way (`sampler`, `num_steps`, `eta`, `guidance_scale`, `seed`). The first call
compiles; the compiled sampler is cached per (options, length).
"""),
    code("""
STEPS = 20


def video_html(path, width=256):
    \"\"\"An inline HTML5 player for an mp4 (H.264 + AAC plays in every browser).\"\"\"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return HTML(f'<video width="{width}" controls loop><source src="data:video/mp4;base64,{data}" '
                f'type="video/mp4"></video>')


talking = pipe.sample(portrait, speech, "talk with a big happy smile", num_steps=STEPS)
written = pipe.write(talking, OUT / "talking_happy.mp4")  # mp4, contact sheet PNG, motion JSON
print({k: written[k] for k in ("frames", "seconds", "wall_s", "real_time_factor")})
frames, fps, audio, rate = media.read_video(written["video"])
assert frames.shape == (talking.info["frames"], 64, 64, 3) and audio is not None and rate == 16000
display(video_html(written["video"]))
display(Image(filename=written["contact_sheet"]))  # the portrait, then every 3rd frame
"""),
    md("""
## Text-only motion control: instruction, no audio

Without audio the model gets the paper's pseudo-empty audio and follows the instruction alone. Asking for as many
frames as the talking clip reuses the compiled sampler, so this call measures the sampling speed itself.
"""),
    code("""
motion = pipe.sample(portrait, None, "turn your head to the left", num_frames=talking.info["frames"],
                     num_steps=STEPS)
written_motion = pipe.write(motion, OUT / "motion_turn_left.mp4")
print({k: written_motion[k] for k in ("frames", "seconds", "wall_s", "real_time_factor")})
display(video_html(written_motion["video"]))
display(Image(filename=written_motion["contact_sheet"]))
"""),
    md("""
## What came out, in numbers

`Generated` holds the frames, the motion latents (in the VAE's units), the head pose the model's pose head
predicts (degrees: pitch, yaw, roll) and the timing. The time-std of the latents is how much the face moves.
"""),
    code("""
for name, result in (("talking", talking), ("motion control", motion)):
    motion_std = float(result.latents.std(axis=0).mean())
    print(f"{name:>14}: latents {result.latents.shape}, time-std {motion_std:.3f}; "
          f"predicted pose mean (pitch, yaw, roll) {np.round(result.pose.mean(0), 2)} deg; "
          f"{result.info['wall_s']:.2f} s for {result.info['seconds']:.1f} s of video")
    assert np.isfinite(result.latents).all() and result.frames.dtype == np.uint8
print("files:", sorted(p.name for p in OUT.glob("*.*")))
"""),
]

# ------------------------------------------------------------------------------------------------ 02 CogPortrait
NB02 = [
    md("""
# 02 · CogPortrait: label → plan → keypoints → video

CogPortrait turns a label ("drowsiness") and an optional instruction into a talking portrait in two stages:

* **Stage 1** (`avatarjax/planning/`): a planning agent splits the clip into timed events with target ranges on
  the 17 eye-region / head controls (10 AUs, 4 gaze, yaw/pitch/roll), a composition agent retrieves and stitches
  prototype motion from a library, and a critic checks semantic and physiological rules and sends revisions back.
  The refined controls map to the 62 eye-region keypoints.
* **Stage 2**: a Wan2.2-style DiT, conditioned on a pose video drawn from those keypoints, the audio and the
  text, denoises Wan VAE latents by flow matching, with the paper's dynamic eye-region CFG.

Stage 1 here is the real pipeline with the offline deterministic LLM backend (no server, nothing downloaded).
**Stage 2 uses untrained weights**: a tiny randomly initialised DiT (`configs/cogportrait/synthface_tiny.py`)
and a tiny randomly initialised Wan VAE (`configs/wan_vae/synthface_tiny.py`), so the notebook runs in a couple of
minutes on a CPU. The generated video shows the path and the shapes, not a face; the pose video it is conditioned
on does show the planned motion. A trained model drops in by replacing one path (last section).
"""),
    setup("02_cogportrait_label_to_video", "import base64\nimport json\n\nimport matplotlib.pyplot as plt\n"
                                           "import numpy as np\nfrom IPython.display import HTML, Image, display"),
    md("""
## Stage 1 · label + instruction → plan → controls → keypoints

`plan_to_keypoints(label, instruction, duration_s, portrait_pose, cfg)` runs planner, composer and critic and
returns the plan, the critic log (with the refined controls) and keypoints `[T, 62, 2]` at 25 fps. The label is
one of synthface's emotions or states (`avatarjax.planning.templates.LABELS`).
"""),
    code("""
from avatarjax.planning import agents, templates
from avatarjax.planning.controls import ControlSequence

LABEL, INSTRUCTION, SECONDS = "drowsiness", "look slightly left, then lower the head", 2.0
print("labels:", ", ".join(templates.LABELS))
plan, critic_log, keypoints = agents.plan_to_keypoints(LABEL, INSTRUCTION, SECONDS)
controls = ControlSequence.from_dict(critic_log["controls"])
print(f"backend {plan.backend}: {len(plan.events)} events over {plan.num_frames} frames; "
      f"keypoints {keypoints.shape}, controls {controls.values.shape}")
for event in plan.events:
    targets = ", ".join(f"{name} {lo:g}..{hi:g}" for name, (lo, hi) in event.targets.items())
    print(f"  {event.start_s:4.2f}-{event.end_s:4.2f} s  {event.stage}: {targets}")
for review in critic_log["rounds"]:
    print(f"critic round {review['round']}: {len(review['violations'])} violation(s)")
print("final plan approved by the critic:", critic_log["final"]["approved"])
plan_path = OUT / "plan.json"
plan_path.write_text(json.dumps({"plan": plan.to_dict(), "critic": critic_log}, indent=1, default=str))
print("plan and critic log:", plan_path)
"""),
    md("""
## The plan, plotted

A few control channels over time (event boundaries in grey) and the 62 keypoints at three moments. Lid closure
`au45` (0 open, 1 closed), gaze in [0, 1], pitch and yaw in degrees. Keypoints are normalised image coordinates
(y down).
"""),
    code("""
t = np.arange(controls.num_frames) / controls.fps
fig, (lids, angles, face) = plt.subplots(1, 3, figsize=(14, 3.8), width_ratios=(2, 2, 1.3))
for ax in (lids, angles):
    for event in plan.events[1:]:
        ax.axvline(event.start_s, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("seconds")
for name in ("au45_l", "au45_r", "gaze_left", "gaze_down"):
    lids.plot(t, controls.channel(name), label=name)
lids.set_title("lids and gaze")
lids.legend(fontsize=8)
for name in ("pitch", "yaw"):
    angles.plot(t, controls.channel(name), label=name)
angles.set_ylabel("degrees")
angles.set_title("head pose")
angles.legend(fontsize=8)
for frame, color in ((0, "tab:blue"), (len(keypoints) // 2, "tab:orange"), (len(keypoints) - 1, "tab:red")):
    face.scatter(keypoints[frame, :, 0], keypoints[frame, :, 1], s=6, color=color, label=f"{frame / 25:.2f} s")
face.invert_yaxis()
face.set_aspect("equal")
face.set_title("62 eye-region keypoints")
face.legend(fontsize=8)
fig.suptitle(f"Stage 1: '{LABEL}' + '{INSTRUCTION}'")
fig.tight_layout()
fig.savefig(OUT / "stage1_plan.png", dpi=100)
plt.show()
"""),
    md("""
## Stage 2 · an untrained tiny DiT and Wan VAE

A trained run is what `avatarjax train --config configs/wan_vae/synthface_small.py` and `avatarjax train
--config configs/cogportrait/synthface_small.py --config.data.vae=...` produce (about half an hour on this CPU,
numbers in the README). Here both models are built with random weights from the tiny configs and saved as export
directories, the form `avatarjax sample --checkpoint` and `load_model` read. The DiT needs per-channel latent
statistics of its VAE (training writes them beside the VAE); we measure them on a few rendered synthface windows.
"""),
    code("""
import shutil

from flax import nnx

from avatarjax.config import load_config
from avatarjax.data.synthface.loader import source
from avatarjax.registry import TASKS
from avatarjax.train.export import load_model, save_export
from avatarjax.train.objectives import cog_portrait as cog_task

for old in ("wan_vae", "dit"):  # a rerun starts fresh
    shutil.rmtree(OUT / old, ignore_errors=True)
vae_cfg = load_config(REPO / "configs/wan_vae/synthface_tiny.py")
z_dim = vae_cfg.model.vae.z_dim
dit_cfg = load_config(REPO / "configs/cogportrait/synthface_tiny.py",
                      [f"--config.data.vae={OUT / 'wan_vae'}", f"--config.model.net.in_channels={z_dim}",
                       f"--config.model.net.out_channels={z_dim}", f"--config.model.net.pose_channels={z_dim}"])
with nnx.use_eager_sharding(False):  # outside a mesh
    save_export(TASKS.get("wan_vae").build_model(vae_cfg, nnx.Rngs(0)), vae_cfg, OUT / "wan_vae")
    save_export(TASKS.get("cog_portrait").build_model(dit_cfg, nnx.Rngs(0)), dit_cfg, OUT / "dit")

data = dit_cfg.data
train_clips = source(data.synthface, "train")
latents = cog_task.WindowLatents(str(OUT / "wan_vae"))
latents.setup_normalisation(lambda: [cog_task.render_window(train_clips[i], 0, data.synthface.window,
                                                            data.synthface.frame_size, 62)[0] for i in range(4)])
print("latent statistics:", sorted(p.name for p in (OUT / "wan_vae").iterdir()))
"""),
    md("""
## Stage 2 · keypoints → pose video → video

The portrait is a held-out synthface identity and the speech is synthetic (`avatarjax.pipelines.demo_inputs`).
Stage 1 plans keypoints for a canonical face; a thin-plate spline (`pose_video.align_to_reference`) moves them
onto this portrait's face, exactly as `avatarjax sample ... -- --label` does. The DiT's clips are 1 + 4k frames
(the causal VAE compresses time by 4), so we keep the first 49 of the 50 planned frames. The whole sampler (UniPC,
dynamic CFG with conditional and unconditional rows in one batch) runs in one jit.
"""),
    code("""
from avatarjax import media
from avatarjax.data.preprocess import pose_video
from avatarjax.data.synthface import geometry, identity as identity_lib, render, schema
from avatarjax.pipelines import demo_inputs
from avatarjax.pipelines.cog_portrait import CogPortraitPipeline
from avatarjax.planning import keypoints as planning_keypoints

size = data.synthface.frame_size
inputs = demo_inputs.make_inputs(OUT / "inputs", size=size, seconds=SECONDS)
portrait, speech = media.read_image(inputs["portrait"]), media.read_audio(inputs["speech"])
identity = identity_lib.sample_identity(inputs["identity"])
frames = 1 + 4 * ((len(keypoints) - 1) // 4)
neutral = planning_keypoints.controls_to_keypoints(schema.neutral_state(1)[:, schema.CONTROL_SLICE],
                                                   agents.resolve_basis(0))[0]
reference = geometry.keypoints(identity, schema.neutral_state(1))[0, :62]
driving = pose_video.align_to_reference(keypoints[:frames], reference, neutral=neutral)

model, cfg = load_model(OUT / "dit")
pipe = CogPortraitPipeline(model, cfg)
result = pipe.generate(portrait, driving, speech, INSTRUCTION)  # compiles the sampler on the first call
print(f"{result.info}; latents {result.latents.shape}")
again = pipe.generate(portrait, driving, speech, INSTRUCTION)  # compiled: the sampling time itself
print(f"second call {again.info['wall_s']:.2f} s for {frames / 25:.2f} s of video")
assert result.frames.shape == (frames, size, size, 3) and np.isfinite(result.latents).all()
"""),
    code("""
def video_html(path, width=192):
    \"\"\"An inline HTML5 player for an mp4 (H.264 + AAC).\"\"\"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return HTML(f'<video width="{width}" controls loop><source src="data:video/mp4;base64,{data}" '
                f'type="video/mp4"></video>')


video_path = media.write_video(OUT / "drowsiness_untrained.mp4", result.frames, fps=schema.FPS,
                               audio=speech[:frames * schema.SAMPLES_PER_FRAME], sample_rate=schema.SAMPLE_RATE)
pose = pose_video.render_pose_video(driving, size)  # what the DiT is conditioned on
every = slice(0, frames, 6)
render.contact_sheet(pose[every], columns=9, path=OUT / "pose_sheet.png")
render.contact_sheet(result.frames[every], columns=9, path=OUT / "video_sheet.png")
print("pose video (the planned motion on this portrait's face), every 6th frame:")
display(Image(filename=OUT / "pose_sheet.png"))
print("generated frames, every 6th (UNTRAINED weights: noise-like, not a face):")
display(Image(filename=OUT / "video_sheet.png"))
display(video_html(video_path))
"""),
    md("""
## With a trained model

Replace `OUT / "dit"` by a trained run (a workdir or an `avatarjax export`; its config names its Wan VAE). The same
in one command, Stage 1 included (the plan and critic log are written beside the video):

```
avatarjax sample --checkpoint outputs/cogportrait --out outputs/cogportrait/drowsy.mp4 -- --label drowsiness
```
"""),
]

# ---------------------------------------------------------------------------------------------- 03 duplex agent
NB03 = [
    md("""
# 03 · The Body of Her duplex agent, streaming a short dialogue

`DuplexAgent(...).stream(human_audio_chunks, human_video_frames)` is a generator: for every 40 ms frame of the
human it yields one frame of the agent (its audio codes, video tokens, a talking flag and the time the frame took).
Frame `i` of the agent depends on the human's frames `< i` only, and every jitted function compiles once, before
the first frame.

Two agents, both tiny, both made here (about a minute and a half on a busy 2-core CPU):

1. **Stand-in tokens, trained 250 steps** (`configs/speechvideo/synthface_tiny.py`, about a minute): the LM reads
   quantised mel-band powers instead of DAC codes and projected face states instead of video-tokenizer latents.
   Its audio and video cannot be decoded to sound or pixels; we plot its code track and talking flag. Trained on
   8 synthface dialogues for a minute, it is a toy: its turn-taking is measured below on 2 held-out sessions,
   not claimed.
2. **Real tokens, random weights** (`configs/speechvideo/duplex_tiny.py` with a random-init DAC and video
   tokenizer): the full per-frame path (DAC encode, video encode, LM step, DAC decode, video decode) with an
   inline video. **Untrained: its video is noise and its behaviour means nothing**; it is here for the path and
   its latency.
"""),
    setup("03_duplex_agent_streaming", "import base64\nimport json\nimport shutil\n\nimport matplotlib.pyplot as plt\n"
                                       "import numpy as np\nfrom IPython.display import HTML, display"),
    md("""
## The dialogue

A held-out synthface dyadic session (identities of the eval split, which training never sees), 4 seconds: the
human speaks, pauses, speaks. The human's speech activity per frame is its audio level above
`duplex_agent.REAL_TALK_DB` (-40 dBFS), the threshold the agent's evaluation uses.
"""),
    code("""
from avatarjax.data.synthface import audio as synth_audio, schema
from avatarjax.data.synthface.dyadic import generate_session
from avatarjax.pipelines import duplex_agent as da
from avatarjax.train.objectives.speech_video import identity_pool

FRAMES, SPF = 100, schema.SAMPLES_PER_FRAME  # 4 s at 25 fps; 640 samples of 16 kHz audio per frame
human_id, listener_id = (int(i) for i in identity_pool(24, "eval")[:2])
session = generate_session(5, human_id, listener_id, FRAMES, num_reactions=1, split="eval")
human_audio = session.speaker.audio[:FRAMES * SPF].reshape(FRAMES, SPF)  # the chunks the agent receives
human_state = session.speaker.state[:FRAMES]  # [T, 24] face states: the stand-in agent's "video" of the human
level_db = 20 * np.log10(np.maximum(synth_audio.frame_envelope(session.speaker.audio)[:FRAMES], 1e-6))
human_speaks = level_db > da.REAL_TALK_DB
t = np.arange(FRAMES) / schema.FPS
print(f"human: identity {human_id} ({session.speaker.label}), {FRAMES / schema.FPS:.1f} s, speaking "
      f"{human_speaks.mean():.0%} of frames; pauses:",
      [(p["start_s"], p["end_s"]) for p in session.pauses])
"""),
    md("""
## 1 · A stand-in-token LM, trained for 250 steps

The same `Trainer` as `avatarjax train --config configs/speechvideo/synthface_tiny.py`. Per training window the
agent is either the speaker (it talks, the human is silent) or the listener (it is silent while the human talks),
so what it should learn is: be quiet while the human speaks, talk when the human is silent. A learning rate of
3e-3 instead of 1e-3, so that this short run gets somewhere. About a minute, half of it compiling the step.
"""),
    code("""
from avatarjax.config import load_config
from avatarjax.train.export import load_model
from avatarjax.train.loop import Trainer

shutil.rmtree(OUT / "lm", ignore_errors=True)  # a rerun starts fresh (the trainer would resume a finished run)
cfg = load_config(REPO / "configs/speechvideo/synthface_tiny.py",
                  ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false",
                   "--config.mesh.data=1", "--config.train.steps=250", "--config.optim.lr=3e-3",
                   "--config.log.every=50", "--config.checkpoint.every=250"])
Trainer(cfg, OUT / "lm").run()
rows = [json.loads(line) for line in (OUT / "lm" / "metrics.jsonl").read_text().splitlines()]
print("(step, loss):", [(r["step"], round(r["loss"], 3)) for r in rows if "loss" in r])
lm, lm_cfg = load_model(OUT / "lm")
net = lm_cfg.model.net
print(f"{net.num_codebooks} stand-in codebooks of {net.codebook_size}, video tokens {net.video_tokens} x "
      f"{net.video_dim}")
"""),
    md("""
## Streaming, frame by frame

The agent is built once (it compiles its LM step before the first frame) and `stream` is a plain generator: feed
it chunks as they arrive. With `Q` codebooks in the delay pattern, the codes of frame `i` are complete `Q - 1`
steps later, so each yielded frame carries the audio codes and talking flag of `audio_frame = index - (Q - 1)`.
For contrast we also stream a *silent* human (zeros, the session's listener face).
"""),
    code("""
agent = da.DuplexAgent((lm, lm_cfg), max_frames=FRAMES)
print(f"compiled in {agent.warmup_s:.1f} s;", agent.notes[0])

frames_out = []
for item in agent.stream(human_audio, human_state):  # in a live system: one chunk per 40 ms from a microphone
    frames_out.append(item)
silent = list(agent.stream(np.zeros_like(human_audio), session.listeners[0].state[:FRAMES]))
assert [f.index for f in frames_out] == list(range(FRAMES)) and agent.compilations == {"lm_step": 1}

Q = agent.lm.num_codebooks
item = frames_out[50]
print(f"frame {item.index}: codes of frame {item.audio_frame} {item.codes}, talking {item.talking}, "
      f"face state [24] (jaw_open {item.face_state[schema.INDEX['jaw_open']]:.2f}), "
      f"{1000 * item.latency_s:.1f} ms")


def talking_track(items):
    \"\"\"The agent's talking flag per frame of its own audio (NaN where codes are not complete yet).\"\"\"
    track = np.full(FRAMES, np.nan)
    for it in items:
        if it.talking is not None:
            track[it.audio_frame] = float(it.talking)
    return track


agent_talks, agent_talks_silent = talking_track(frames_out), talking_track(silent)
scored = ~np.isnan(agent_talks)
print(f"while the human speaks the agent talks in {np.nanmean(agent_talks[human_speaks & scored]):.0%} of frames; "
      f"in the human's silent frames in {np.nanmean(agent_talks[~human_speaks & scored]):.0%}; "
      f"with a silent human in {np.nanmean(agent_talks_silent):.0%}")
"""),
    code("""
agent_codes = np.full((FRAMES, Q), np.nan)
for it in frames_out:
    if it.codes is not None:
        agent_codes[it.audio_frame] = it.codes
human_codes = np.stack([agent.tokenizers.encode_audio(chunk) for chunk in human_audio])  # what the LM read

fig, axes = plt.subplots(4, 1, figsize=(11, 7.5), sharex=True, height_ratios=(2, 1, 1.4, 1.4))
axes[0].plot(t, level_db, color="0.4", lw=1, label="human level (dBFS)")
axes[0].axhline(da.REAL_TALK_DB, color="0.6", ls=":", lw=1)
axes[0].fill_between(t, -100, 0, where=human_speaks, color="tab:blue", alpha=0.12, step="mid",
                     label="human speaks")
axes[0].set_ylim(-90, 0)
axes[0].set_ylabel("dBFS")
axes[0].legend(loc="lower left", fontsize=8)
axes[0].set_title("the human (shaded: speech activity)")
axes[1].step(t, agent_talks, where="mid", color="tab:red", label="agent talks (this dialogue)")
axes[1].step(t, agent_talks_silent * 0.9 + 0.05, where="mid", color="tab:green", lw=1, alpha=0.7,
             label="agent talks (silent human)")
axes[1].set_yticks([0, 1], ["quiet", "talks"])
axes[1].set_ylim(-0.15, 1.6)
axes[1].legend(loc="upper left", fontsize=8, ncols=2)
extent = (0, FRAMES / schema.FPS, Q - 0.5, -0.5)
for ax, codes, title in ((axes[2], human_codes, "human's stand-in codes (the LM's input)"),
                         (axes[3], agent_codes, "agent's code track (the LM's output)")):
    ax.imshow(codes.T, aspect="auto", extent=extent, cmap="magma", vmin=0, vmax=net.codebook_size - 1,
              interpolation="nearest")
    ax.set_ylabel("band")
    ax.set_title(title, fontsize=9)
axes[3].set_xlabel("seconds")
fig.tight_layout()
fig.savefig(OUT / "turn_taking.png", dpi=100)
plt.show()
"""),
    md("""
What to look for: the red line should stay at *quiet* where the human speaks (shaded). In the training data the
listener stays quiet through the speaker's pauses too, so a half-second pause is no cue to take the turn; a human
who stays silent is (green line). The last `Q - 1` frames have no flag: their codes would complete after the
dialogue ends. Black in the agent's code track is the lowest level, silence.
"""),
    md("""
## Turn-taking on held-out sessions

`avatarjax eval` for this task streams each held-out session twice: (A) the human is the session's speaker, (B)
the human is silent. `quiet_while_human_speaks` (A) and `talks_when_human_silent` (B), beside the training data
itself and an agent that ignores the human (score 0.5). Two sessions of 48 frames: a small sample, and a model
trained for a minute: read the numbers as a check that the loop works, not as a result.
"""),
    code("""
report = da.evaluate_turn_taking(lm, lm_cfg, ["--sessions", "2", "--frames", "48"], agent=agent)
for name, row in report["turn_taking"].items():
    print(f"{name:>10}: quiet while the human speaks {row['quiet_while_human_speaks']:.2f}, "
          f"talks when the human is silent {row['talks_when_human_silent']:.2f}, score {row['score']:.2f}")
"""),
    md("""
## 2 · The real-token path, random weights

The LM of `configs/speechvideo/duplex_tiny.py` runs on the codes of a DAC (16 kHz, hop 640: one code frame per
40 ms, 2 codebooks of 64) and the latents of a video tokenizer (32 px frames, 4 x 4 latents). Trained ones come from
the three `avatarjax train` commands in that config's docstring (about 10 minutes on this CPU). Here all three
models have **random weights** (N(0, 0.05), drawn with numpy, which is faster on a CPU than compiling each
initialiser), so the stream exercises the real per-frame work and its latency, and the agent's face is noise.
The human is now rendered pixels.
"""),
    code("""
import jax
import jax.numpy as jnp
from flax import nnx

from avatarjax.data.synthface.identity import sample_identity
from avatarjax.data.synthface.render import render_frames
from avatarjax.train.export import fresh_model


def random_model(cfg, seed=0):
    \"\"\"The model of ``cfg`` with N(0, 0.05) weights: UNTRAINED.\"\"\"
    return fresh_model(cfg, seed, init="normal")


dac_cfg = load_config(REPO / "configs/dac/synthface_tiny.py",
                      ["--config.model.encoder_rates=(8, 8, 10)", "--config.model.decoder_rates=(10, 8, 8)"])
vt_cfg = load_config(REPO / "configs/video_tokenizer/synthface_tiny.py")
real_cfg = load_config(REPO / "configs/speechvideo/duplex_tiny.py")
real_agent = da.DuplexAgent((random_model(real_cfg), real_cfg), dac=random_model(dac_cfg),
                            video_tokenizer=random_model(vt_cfg), max_frames=FRAMES)
print(f"compiled in {real_agent.warmup_s:.1f} s: {real_agent.compilations}")

human_frames = render_frames(sample_identity(human_id), human_state, size=real_agent.tokenizers.frame_size)
real_out = list(real_agent.stream(human_audio, human_frames))
assert real_out[0].video.shape == (32, 32, 3) and set(real_agent.compilations.values()) == {1}
print(f"{len(real_out)} frames: agent video {real_out[0].video.shape}, audio {real_out[0].audio.shape} per frame")
"""),
    code("""
from avatarjax import media

# the agent's audio frame j arrives with item j + Q - 1: put it under video frame j (as `avatarjax sample` does)
q_real = real_agent.lm.num_codebooks
agent_audio = np.zeros(FRAMES * SPF, np.float32)
for it in real_out:
    if it.audio_frame >= 0:
        agent_audio[it.audio_frame * SPF:(it.audio_frame + 1) * SPF] = it.audio
side_by_side = np.concatenate([human_frames, np.stack([it.video for it in real_out])], axis=2)  # human | agent
mix = np.clip(session.speaker.audio[:FRAMES * SPF] + agent_audio, -1, 1)
video_path = media.write_video(OUT / "dialogue_random_agent.mp4", side_by_side, fps=schema.FPS, audio=mix,
                               sample_rate=real_agent.sample_rate)
data = base64.b64encode(video_path.read_bytes()).decode("ascii")
print("left: the human (rendered synthface, its speech); right: the agent (RANDOM weights: noise); audio: both")
display(HTML(f'<video width="384" controls loop><source src="data:video/mp4;base64,{data}" '
             f'type="video/mp4"></video>'))
"""),
    md("""
## Latency per frame

The time from receiving the human's frame `i` to the agent's frame `i`: tokenizing the human's previous frame,
one LM step, decoding. A live agent keeps up when this stays under 40 ms; the real-time factor is the total
processing time over the media's duration (< 1 keeps up). The real-token agent does the codec work per frame, the
stand-in agent almost none. On a 2-core CPU shared with other jobs, the spikes are other processes.
"""),
    code("""
fig, ax = plt.subplots(figsize=(11, 3.5))
latency = {}
for name, items, color in (("stand-in tokens (trained 250 steps)", frames_out, "tab:blue"),
                           ("real tokens, random DAC + video tokenizer", real_out, "tab:orange")):
    ms = np.array([1000 * it.latency_s for it in items])
    latency[name] = da.latency_report([it.latency_s for it in items], skip_first=False)
    ax.plot(t, ms, color=color, lw=1.2, label=name)
ax.axhline(1000 / schema.FPS, color="tab:red", ls="--", lw=1.2, label="40 ms: real time at 25 fps")
ax.set_xlabel("seconds of dialogue")
ax.set_ylabel("ms per frame")
ax.set_ylim(0, None)
ax.legend(fontsize=8)
ax.set_title(f"per-frame latency on {jax.devices()[0].device_kind}")
fig.tight_layout()
fig.savefig(OUT / "latency.png", dpi=100)
plt.show()
for name, rep in latency.items():
    print(f"{name}: median {rep['median_ms']:.1f} ms, p95 {rep['p95_ms']:.1f} ms, "
          f"real-time factor {rep['real_time_factor']:.3f}")
_ = (OUT / "latency.json").write_text(json.dumps(latency, indent=1))
"""),
    md("""
## With trained models

`configs/speechvideo/duplex_tiny.py` lists the commands that train a DAC, a video tokenizer and the LM on their
tokens on this CPU; then the same agent from the command line, writing the agent's mp4 and a latency report:

```
avatarjax sample --config configs/speechvideo/duplex_tiny.py --human-audio H.wav --human-video H.mp4 --out A.mp4
```
"""),
]

# ------------------------------------------------------------------------------------------------------ 04 PosNet
NB04 = [
    md("""
# 04 · PFLPosNet: smoothing the seams of an online reaction generator

The online reaction generator samples a listener's 58 REACT coefficients (52 expression, 3 rotations in radians, 3
translations) one segment at a time, each conditioned on the previous segment and the speaker. The segments are
sampled separately, so the head pose jumps at their boundaries, the *seams*. PosNet corrects each new segment's
pose online from the last corrected pose and leaves every expression channel untouched.

Here, on this CPU in a couple of minutes:
1. train a tiny reaction generator (`configs/reaction/synthface_tiny.py`: 2 layers, 8-frame segments) for 300 steps;
2. let the frozen generator write a *generated set* (its reactions beside the real ones), PosNet's training data;
3. train a small PosNet on it (`configs/posnet/synthface.py` shrunk);
4. generate a reaction online for a held-out session, smooth it, and plot the yaw before/after with the seams.

Both models are far smaller and shorter-trained than the README's measured rows; the plot shows the mechanism.
"""),
    setup("04_posnet_seams", "import json\nimport shutil\n\nimport matplotlib.pyplot as plt\nimport numpy as np"),
    code("""
from avatarjax.config import load_config
from avatarjax.registry import TASKS
from avatarjax.train.export import load_model
from avatarjax.train.loop import Trainer

QUIET = ["--config.log.progress=false", "--config.log.tensorboard=false"]
for old in ("reaction", "generated", "posnet"):  # a rerun starts fresh (the trainer would resume a finished run)
    shutil.rmtree(OUT / old, ignore_errors=True)


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], round(r["loss"], 4)) for r in rows if "loss" in r]
"""),
    md("""
## 1 · A tiny online reaction generator

The same `Trainer` and config system as `avatarjax train --config configs/reaction/synthface_tiny.py
--workdir ... --config.train.steps=120`; sessions are synthface dyadic conversations generated on the fly.
"""),
    code("""
gen_cfg = load_config(REPO / "configs/reaction/synthface_tiny.py",
                      [*QUIET, "--config.train.steps=120", "--config.optim.lr=3e-3", "--config.log.every=40",
                       "--config.checkpoint.every=120"])
Trainer(gen_cfg, OUT / "reaction").run()
print("generator (step, loss):", losses(OUT / "reaction"))
generator, gen_cfg = load_model(OUT / "reaction")  # the saved run: config and weights
SEGMENT = gen_cfg.model.net.segment
print(f"{SEGMENT}-frame segments, {gen_cfg.model.net.context}-frame speaker context")
"""),
    md("""
## 2 · The generated set

`avatarjax sample --checkpoint RUN -- --dump DIR --split train|eval` in Python: the frozen generator's reactions
for training sessions and for held-out ones (`val`), each beside the session's real reactions.
"""),
    code("""
reaction_task = TASKS.get("reaction")
for split, sessions in (("train", 4), ("eval", 2)):
    print(reaction_task.sample(generator, gen_cfg, OUT / "unused", ["--dump", str(OUT / "generated"),
                                                                   "--split", split, "--sessions", str(sessions),
                                                                   "--reactions", "3"]))
"""),
    md("""
## 3 · PosNet

The released architecture (Conv1d encoder + 3-layer MLP) and the paper's loss (fidelity to the real reaction +
L_connect + L_sm1 + 0.2 L_sm2), trained through the online recurrence. Shrunk for the notebook: hidden 64 instead
of 512, runs of 4 segments, 150 steps instead of the 1500 of `configs/posnet/synthface.py`. With
so few steps we use two options of `PosNetConfig`: `residual` (PosNet starts as the identity and learns a
correction) and `pose_scale` (poses divided by 0.01 rad inside the network, so its inputs are of order 1).
Without them this short run learns a shortcut: a near-constant pose, which has no seams and no motion either.
"""),
    code("""
pos_cfg = load_config(REPO / "configs/posnet/synthface.py",
                      [*QUIET, f"--config.data.generated={OUT / 'generated'}", f"--config.model.net.segment={SEGMENT}",
                       "--config.model.net.hidden=64", "--config.data.segments=4", "--config.train.batch_size=4",
                       "--config.train.steps=150", "--config.optim.name=adam", "--config.optim.lr=1e-3",
                       "--config.model.net.residual=true",
                       "--config.model.net.pose_scale=(0.01,0.01,0.01,0.01,0.01,0.01)",
                       "--config.log.every=50", "--config.checkpoint.every=150"])
Trainer(pos_cfg, OUT / "posnet").run()
print("posnet (step, loss):", losses(OUT / "posnet"))
posnet_model, posnet_cfg = load_model(OUT / "posnet")
report = TASKS.get("posnet").evaluate(posnet_model, posnet_cfg, [])  # `avatarjax eval --checkpoint OUT/posnet`
print("held-out generated set, seam jump before -> after:",
      f"{report['before']['seam_jump']:.5f} -> {report['after']['seam_jump']:.5f}",
      f"({report['seam_jump_reduction']:.2f}x)")
"""),
    md("""
## 4 · Generate online, smooth, plot

A held-out session the generated set never saw (eval session 2), 5 seconds long. `generate_online` samples the
segments one after another, each one's DDIM loop in one jit; `PoseSmoother.smooth` corrects pose channels
52..57 segment by segment as a streaming caller would and copies every other channel bit for bit.
"""),
    code("""
from avatarjax.eval import smoothness
from avatarjax.pipelines.reaction import PoseSmoother
from avatarjax.pipelines.reaction_generate import generate_online
from avatarjax.train.objectives.reaction import make_session

session = make_session(gen_cfg.data, "eval", 2, num_frames=125)
before = generate_online(generator, gen_cfg, session["speaker"], session["audio"], num_reactions=1, seed=0)[0]
after = PoseSmoother.load(OUT / "posnet").smooth(before)  # pose=slice(52, 58), the REACT pose channels
assert np.array_equal(after[:, :52], before[:, :52])  # expression: bit-identical
scores = {name: smoothness.segment_scores(track[None, :, 52:58], SEGMENT) for name, track in
          (("before", before), ("after", after))}
for name, s in scores.items():
    print(f"{name:>6}: seam jump {s['seam_jump']:.5f}, within-segment step {s['within_step']:.5f}")
# smoothing should not erase the motion: how much of the generated yaw survives
yaw_corr = np.corrcoef(before[:, 53], after[:, 53])[0, 1]
print(f"yaw after vs before: correlation {yaw_corr:.3f}, std ratio {after[:, 53].std() / before[:, 53].std():.2f}")
"""),
    code("""
YAW = 53  # REACT rotation order: pitch, yaw, roll
t = np.arange(len(before)) / 25.0
fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, height_ratios=(3, 2))
for ax in (top, bottom):
    for seam in range(SEGMENT, len(before), SEGMENT):
        ax.axvline(seam / 25.0, color="0.85", lw=0.8, zorder=0)
top.plot(t, np.degrees(before[:, YAW]), color="tab:red", lw=1.2, label="generated")
top.plot(t, np.degrees(after[:, YAW]), color="tab:blue", lw=1.4, label="after PosNet")
top.set_ylabel("yaw (degrees)")
top.legend(loc="upper right")
top.set_title(f"Listener head yaw, {SEGMENT}-frame segments (grey lines: seams)")
bottom.plot(t[1:], np.degrees(np.abs(np.diff(before[:, YAW]))), color="tab:red", lw=1.0)
bottom.plot(t[1:], np.degrees(np.abs(np.diff(after[:, YAW]))), color="tab:blue", lw=1.0)
bottom.set_ylabel("|Δ yaw| per frame")
bottom.set_xlabel("seconds")
fig.tight_layout()
fig.savefig(OUT / "yaw_seams.png", dpi=100)
plt.show()
print("plot:", OUT / "yaw_seams.png")
"""),
]

# ---------------------------------------------------------------------------------------------------- 05 profiling
NB05 = [
    md("""
# 05 · Profiling a sharded training step on 8 fake CPU devices

The same code runs on one CPU, a GPU or a pod: only the mesh changes. On a laptop, XLA can pretend to have 8
devices (`--xla_force_host_platform_device_count=8`), which is enough to see how the logical-axis rules shard
parameters, and to profile a step, though all 8 "devices" share this machine's cores.

This notebook builds the tiny decoder LM (`configs/lm/synthface_tiny.py`) on a 2 x 4 mesh (`fsdp=2`, `tensor=4`)
with the `fsdp_tp` rule preset, shows where parameters live, runs a few trainer steps and reads MFU, step time
and memory from the trainer's metrics and `avatarjax.profiling`.
"""),
    code("""
import os
import sys

# Must happen before JAX is imported: XLA reads the flag once, when the CPU backend starts.
if "jax" in sys.modules:
    raise RuntimeError("JAX is already imported in this kernel: restart the kernel and run from the top")
flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
os.environ["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

print(jax.devices())
assert len(jax.devices()) == 8
"""),
    setup("05_profiling_sharded_step", "import json\nimport shutil\n\nimport numpy as np"),
    md("""
## Mesh and rules

`mesh.*` sizes the four mesh axes (`data`, `fsdp`, `tensor`, `sequence`); `mesh.rules` picks the preset that maps
the logical names the model code uses onto them. `fsdp_tp`: `batch` over (`data`, `fsdp`), weights' `embed` over
`fsdp` (ZeRO-3 style), `mlp`/`heads`/`kv_heads`/`vocab` over `tensor` (Megatron style).
"""),
    code("""
from avatarjax.config import load_config
from avatarjax.parallel import rules as rules_lib

OVERRIDES = ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.mesh.data=1",
             "--config.mesh.fsdp=2", "--config.mesh.tensor=4", "--config.mesh.rules=fsdp_tp",
             "--config.train.steps=6", "--config.log.every=2", "--config.checkpoint.every=100"]
cfg = load_config(REPO / "configs/lm/synthface_tiny.py", [*OVERRIDES, "--config.model.num_kv_heads=4"])
for name, axes in rules_lib.resolve(cfg.mesh.rules, cfg.mesh.rules_override):
    if axes is not None:
        print(f"{name:>12} -> {axes}")
"""),
    md("""
A dimension that does not divide its mesh axes fails before anything compiles, naming the parameter and the
axis. The tiny config has 2 key/value heads, which cannot split over `tensor=4`; that is why the cell above sets
`model.num_kv_heads=4`. What the trainer says otherwise:
"""),
    code("""
from avatarjax.errors import ShardingError
from avatarjax.train.loop import Trainer

WORKDIR = OUT / "run"
shutil.rmtree(WORKDIR, ignore_errors=True)  # a rerun starts fresh (the trainer resumes a finished run)
try:
    Trainer(load_config(REPO / "configs/lm/synthface_tiny.py", OVERRIDES), WORKDIR)
except ShardingError as err:
    print("ShardingError:", err)
else:
    raise AssertionError("2 kv heads over tensor=4 should not build")
"""),
    md("""
## Where the parameters live

The trainer builds the state abstractly and initialises it inside one jit whose output shardings come from the
rules, so it is born sharded. `jax.debug.visualize_array_sharding` draws a 1-D or 2-D array's layout: each box
is a shard, labelled with the devices that hold it.
"""),
    code("""
from flax import nnx

from avatarjax.profiling.report import param_sharding_table

trainer = Trainer(cfg, WORKDIR)
print(f"mesh {dict(trainer.mesh.shape)}, {trainer.num_params:,} parameters")
for row in param_sharding_table(trainer, limit=6):
    print(f"{row['param']:<28} {str(row['shape']):<16} {str(tuple(row['logical'])):<40} {row['spec']}")
state = trainer.init_state()
params = dict(nnx.to_flat_state(state.params))
"""),
    code("""
def show(path, value):
    print(f"{path}: shape {value.shape}, spec {value.sharding.spec}")
    jax.debug.visualize_array_sharding(value)


show("embed/embedding  (vocab, embed)", params[("embed", "embedding")][...])
show("lm_head/kernel  (embed, vocab)", params[("lm_head", "kernel")][...])
up = params[("layers", "mlp", "up", "kernel")][...]  # [layers, embed, mlp]: the scanned stack
show("layers/mlp/up/kernel[0]  (embed, mlp)", up[0])
show("final_norm/scale  (norm)", params[("final_norm", "scale")][...])
"""),
    md("""
## A few trainer steps

`Trainer.run` is what `avatarjax train` runs: it logs `steps_per_sec`, `tflops_per_device` and `mfu` (against
this machine's measured matmul peak, `avatarjax bench cpu_peak`) to `metrics.jsonl` every `log.every` steps.
The first interval includes compilation.
"""),
    code("""
result = trainer.run()
rows = [json.loads(line) for line in (WORKDIR / "metrics.jsonl").read_text().splitlines()]
print(f"{'step':>4} {'loss':>7} {'steps/s':>8} {'ms/step':>8} {'TFLOP/s/dev':>12} {'MFU':>7}")
for r in rows:
    print(f"{r['step']:>4} {r['loss']:>7.3f} {r['steps_per_sec']:>8.2f} {1000 / r['steps_per_sec']:>8.1f} "
          f"{r['tflops_per_device']:>12.2e} {r['mfu']:>7.2%}")
assert result.step == cfg.train.steps and np.isfinite(rows[-1]["loss"])
"""),
    md("""
## The profiler's view

`avatarjax.profiling.report.profile_train_step` (the `avatarjax profile --config ...` command) compiles the step
ahead of time and reads XLA's own numbers: memory per device (arguments, outputs, temporaries, minus what
donation aliases), FLOPs, then times a few steps after compilation. Pass `trace_dir=...` for a `jax.profiler`
trace (TensorBoard / Perfetto).
"""),
    code("""
from avatarjax.profiling.report import profile_train_step

report = profile_train_step(cfg, steps=5)
mem = report["memory_per_device"]
print(f"mesh {report['mesh']}, rules {report['rules']}, batch {report['batch_size']}")
print(f"compile {report['compile_s']:.1f} s; step {1000 * report['step_s_median']:.1f} ms (median of 5)")
print(f"analytic {report['analytic_tflop_per_step'] * 1e3:.3f} GFLOP/step; XLA counts "
      f"{report['xla_tflop_per_step_per_device'] * 1e3:.3f} GFLOP/step per device")
print(f"{report['tflops_per_device']:.2e} TFLOP/s per device of a {report['peak_tflops_per_device']:.3f} TFLOP/s "
      f"peak: MFU {report['mfu']:.2%}")
print("memory per device (MiB):", {k.removesuffix("_gib"): round(v * 1024, 3) for k, v in mem.items()})
assert report["step_s_median"] > 0 and mem["peak_estimate_gib"] > 0
"""),
    md("""
Reading these on fake devices: the 8 devices share this CPU's cores, so MFU per device is tiny and says little
about a real accelerator; the memory split and the shardings are what carry over. On a GPU or TPU the same cells
(without the `XLA_FLAGS` line) report real numbers.
"""),
]

NOTEBOOKS = {
    "01_instructavatar_sampling.ipynb": NB01,
    "02_cogportrait_label_to_video.ipynb": NB02,
    "03_duplex_agent_streaming.ipynb": NB03,
    "04_posnet_seams.ipynb": NB04,
    "05_profiling_sharded_step.ipynb": NB05,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for index, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell.id = f"cell-{index:02d}"  # stable ids: rebuilding an unchanged notebook changes no byte
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(cells: list[tuple[str, str]]) -> str:
    return nbformat.writes(build(cells)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    ns = p.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path, text = HERE / name, render(cells)
        if ns.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print("wrote", path)
    if stale:
        print(f"out of date: {', '.join(stale)}: run python notebooks/build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
