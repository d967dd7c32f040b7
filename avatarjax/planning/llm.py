"""LLM backends for the Stage 1 agents, behind one interface, with JSON-mode prompting and checked replies.

A backend turns chat messages (``[{"role": ..., "content": ...}]``) into reply text:

- :class:`OfflineBackend` (the default): deterministic, no network. It reads the machine-readable request the
  agents append to their prompt (a line ``REQUEST_JSON: {...}``) and answers from the category templates
  (``templates.py``), seeded by the request's ``seed``.
- :class:`HTTPBackend`: any OpenAI-compatible ``/chat/completions`` server (``response_format`` json_object),
  base URL and model from arguments or ``AVATARJAX_LLM_BASE_URL`` / ``AVATARJAX_LLM_MODEL`` (key:
  ``AVATARJAX_LLM_API_KEY``); timeouts, bounded retries with backoff on timeouts / 429 / 5xx, clear errors on
  other non-200 replies. Only ``urllib`` is used.
  Messages may carry images in the OpenAI form (``content`` a list of ``{"type": "text", "text"}`` and
  ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` parts; :func:`encode_image`,
  :func:`user_message`) for vision-language endpoints; ``vision=False`` flattens them to text for text-only ones.
- :class:`QwenBackend`: our Qwen2 decoder (``encoders/qwen2.py`` + ``models/decoder_lm.generate``) from a
  converted checkpoint directory and a tokenizer directory, greedy decoding; text only (image parts of a message
  become ``[image N]`` placeholders: describe keyframes in the text instead).

:func:`ask_json` sends the messages, repairs near-JSON locally (code fences, prose around the object, trailing
commas), validates with the caller's schema check and, when the reply is still unusable, re-asks with the error
appended, at most ``max_repairs`` times; then raises :class:`LLMReplyError` naming the backend, the problem and
the fix.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from avatarjax.errors import AvatarError, ConfigError
from avatarjax.planning import templates as TPL

REQUEST_MARKER = "REQUEST_JSON:"
ENV_BASE_URL, ENV_MODEL, ENV_API_KEY = "AVATARJAX_LLM_BASE_URL", "AVATARJAX_LLM_MODEL", "AVATARJAX_LLM_API_KEY"
T = TypeVar("T")


class LLMError(AvatarError):
    """The LLM backend failed (unreachable, timed out, non-200) or never gave a usable reply."""


class LLMBackendError(LLMError):
    """Transport-level failure of a backend."""


class LLMReplyError(LLMError):
    """Replies stayed invalid after the bounded re-asks."""


class Backend(Protocol):
    name: str

    def complete(self, messages: list[dict], *, seed: int = 0) -> str: ...


# ------------------------------------------------------------------------------------------- multi-part content

def encode_image(image: np.ndarray, fmt: str = "png") -> str:
    """uint8 RGB ``[H, W, 3]`` -> a ``data:image/...;base64,...`` URL (the OpenAI ``image_url`` form)."""
    import base64

    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise AvatarError(f"an image for the LLM must be uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    fmt = fmt.lower()
    ok, buf = cv2.imencode("." + fmt, np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise AvatarError(f"cv2 could not encode a {image.shape} image as {fmt}: use png or jpeg")
    mime = "jpeg" if fmt in ("jpg", "jpeg") else fmt
    return f"data:image/{mime};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def user_message(text: str, images: list[np.ndarray] | tuple = (), fmt: str = "png") -> dict:
    """A user turn: plain text, or text followed by one ``image_url`` part per image (base64 data URLs)."""
    if not len(images):
        return {"role": "user", "content": text}
    parts: list[dict] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": encode_image(im, fmt)}} for im in images]
    return {"role": "user", "content": parts}


def content_text(content: Any) -> str:
    """A message's content as text: a string as is; for a list of parts the text parts joined by newlines and
    each image part as ``[image N]``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return str(content)
    out, n = [], 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            out.append(str(part.get("text", "")))
        elif kind in ("image_url", "image"):
            out.append(f"[image {n}]")
            n += 1
    return "\n".join(out)


def text_only(messages: list[dict]) -> list[dict]:
    """The messages with every content flattened by :func:`content_text` (for text-only models)."""
    return [{**m, "content": content_text(m.get("content", ""))} for m in messages]


def count_images(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") in ("image_url", "image"))


# ----------------------------------------------------------------------------------------------- JSON replies

def extract_json(text: str) -> Any:
    """Parse a JSON object from an LLM reply, repairing common damage: code fences, prose around the object,
    trailing commas. Raises ``ValueError`` with the parser's message when nothing parses."""
    s = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", s, re.DOTALL)
    if fence:
        s = fence.group(1).strip()
    candidates = [s]
    start, end = s.find("{"), s.rfind("}")
    if start >= 0 and end > start:
        candidates.append(s[start:end + 1])
    last = None
    for cand in candidates:
        for variant in (cand, re.sub(r",\s*([}\]])", r"\1", cand)):
            try:
                obj = json.loads(variant)
            except json.JSONDecodeError as err:
                last = err
                continue
            if isinstance(obj, dict):
                return obj
            last = ValueError(f"expected a JSON object, got {type(obj).__name__}")
    raise ValueError(f"no JSON object in the reply ({last})")


def ask_json(backend: Backend, messages: list[dict], check: Callable[[dict], T], *, max_repairs: int = 2,
             seed: int = 0, log: list | None = None) -> T:
    """Ask ``backend`` and return ``check(parsed_reply)``; on invalid JSON or a failed check (any exception from
    ``check``), re-ask with the error at most ``max_repairs`` times, then raise :class:`LLMReplyError`."""
    history = list(messages)
    errors = []
    for attempt in range(max_repairs + 1):
        reply = backend.complete(history, seed=seed)
        try:
            result = check(extract_json(reply))
            if log is not None:
                log.append({"backend": backend.name, "attempts": attempt + 1, "errors": errors})
            return result
        except Exception as err:  # noqa: BLE001 - every invalid reply is re-asked
            problem = f"{type(err).__name__}: {err}"
            errors.append(problem[:400])
            history = history + [{"role": "assistant", "content": reply[:4000]},
                                 {"role": "user", "content": "Your reply could not be used: " + problem[:800] +
                                  "\nReply again with ONE JSON object only, no prose, matching the schema."}]
    excerpt = reply[:160].replace("\n", " ")
    raise LLMReplyError(f"LLM backend '{backend.name}' gave no valid JSON reply after {max_repairs + 1} attempts "
                        f"({max_repairs} re-asks); last problem: {errors[-1]}; last reply starts {excerpt!r}; fix: "
                        "use a stronger / JSON-mode model, raise planning.max_repairs, or use the offline backend")


def request_of(messages: list[dict]) -> dict:
    """The ``REQUEST_JSON`` payload of the last user message that has one."""
    for msg in reversed(messages):
        if msg.get("role") == "user":
            for line in content_text(msg.get("content", "")).splitlines():
                if line.startswith(REQUEST_MARKER):
                    return json.loads(line[len(REQUEST_MARKER):])
    raise LLMBackendError(f"the offline backend found no '{REQUEST_MARKER}' line in the prompt: it only answers "
                          "requests built by avatarjax.planning.agents")


# ----------------------------------------------------------------------------------------------- offline backend

class OfflineBackend:
    """Deterministic template planner / composer (no network). Same request + seed -> same reply."""

    name = "offline"

    def complete(self, messages: list[dict], *, seed: int = 0) -> str:
        req = request_of(messages)
        task = req.get("task")
        if task == "plan":
            return json.dumps(offline_plan(req))
        if task == "compose":
            return json.dumps(offline_compose(req))
        raise LLMBackendError(f"the offline backend does not know task {task!r} (plan, compose)")


def _split_frames(num_frames: int, fractions: list[float], min_frames: int = 3) -> list[int]:
    """Integer frame counts proportional to ``fractions`` summing to ``num_frames`` (each >= min_frames if possible)."""
    f = np.asarray(fractions, np.float64)
    f = f / f.sum()
    bounds = np.round(np.cumsum(f) * num_frames).astype(int)
    counts = np.diff(np.concatenate([[0], bounds]))
    while len(counts) > 1 and counts.min() < min_frames and num_frames >= min_frames * len(counts):
        i, j = int(counts.argmin()), int(counts.argmax())
        counts[i] += 1
        counts[j] -= 1
    return counts.tolist()


def offline_plan(req: dict) -> dict:
    """The staged events of ``req`` (label, instruction, num_frames, fps, seed; optional ``revise`` list of
    {event, drop_targets / merge / split} from the critic) as a plan dict."""
    label = TPL.check_label(req["label"])
    fps, n, seed = float(req["fps"]), int(req["num_frames"]), int(req.get("seed", 0))
    rng = np.random.default_rng([seed, 0x9A7])
    intensity = TPL.intensity_from_text(req.get("instruction"))
    stages = TPL.stage_templates(label, rng, intensity)
    steps, unparsed = TPL.parse_instruction(req.get("instruction"))
    notes = [f"instruction clause not understood: '{c}'" for c in unparsed]
    if steps:  # first category stage (onset), then one event per instruction step carrying the category apex
        apex = max(stages, key=lambda s: s.fraction)
        held: dict = {}
        new = [stages[0]]
        share = (1.0 - stages[0].fraction) / len(steps)
        for k, st in enumerate(steps):
            au_apex = {k: v for k, v in apex.targets.items() if k in TPL.C.AU_CHANNELS}
            targets = {**au_apex, **held, **st.targets}
            new.append(TPL.StageTemplate(f"instruction step {k + 1}: {st.clause}", share, targets,
                                         list(st.actions), [f"instruction: {st.clause}"]))
            if st.held:
                held.update(st.targets)
        stages = new
    counts = _split_frames(n, [s.fraction for s in stages])
    revise = {int(r["event"]): r for r in req.get("revise", [])}
    events, start = [], 0
    for i, (st, cnt) in enumerate(zip(stages, counts)):
        targets = {k: list(v) for k, v in st.targets.items()}
        for ch in revise.get(i, {}).get("drop_targets", []):
            targets.pop(ch, None)
        for ch, rng_ in revise.get(i, {}).get("set_targets", {}).items():
            targets[ch] = list(rng_)
        end = start + cnt
        events.append({"index": i, "start_s": round(start / fps, 4), "end_s": round(end / fps, 4),
                       "start_frame": start, "end_frame": end, "stage": st.stage, "targets": targets,
                       "actions": list(st.actions), "constraints": list(st.constraints)})
        start = end
    return {"label": label, "instruction": req.get("instruction"), "duration_s": n / fps, "num_frames": n,
            "fps": fps, "seed": seed, "backend": "offline", "events": events, "notes": notes}


def offline_compose(req: dict) -> dict:
    """Per-event composition instructions: valid channel ranges (the event's targets over the category prior),
    the prototype rank to start from and edits (from the critic's feedback, if any)."""
    prior = req.get("category_prior", {})
    feedback = {int(f["event"]): f for f in req.get("feedback", [])}
    stages = []
    for ev in req["events"]:
        k = int(ev["index"])
        ranges = {ch: list(v) for ch, v in prior.items()}
        ranges.update({ch: list(v) for ch, v in ev.get("targets", {}).items()})
        fb = feedback.get(k, {})
        stages.append({"event": k, "ranges": ranges, "rank": int(fb.get("rank", 0)),
                       "edits": sorted(set(fb.get("edits", [])))})
    return {"stages": stages}


# -------------------------------------------------------------------------------------------------- HTTP backend

class HTTPBackend:
    """An OpenAI-compatible chat-completions endpoint (JSON mode), stdlib ``urllib`` only."""

    def __init__(self, base_url: str | None = None, model: str | None = None, *, api_key: str | None = None,
                 timeout_s: float = 30.0, retries: int = 2, backoff_s: float = 0.5, temperature: float = 0.0,
                 json_mode: bool = True, vision: bool = True):
        self.base_url = (base_url or os.environ.get(ENV_BASE_URL) or "").rstrip("/")
        self.model = model or os.environ.get(ENV_MODEL) or ""
        if not self.base_url:
            raise ConfigError(f"the http LLM backend needs a base URL: set planning.llm.base_url or {ENV_BASE_URL} "
                              "(e.g. http://127.0.0.1:8000/v1)")
        if not self.model:
            raise ConfigError(f"the http LLM backend needs a model name: set planning.llm.model or {ENV_MODEL}")
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), int(retries), float(backoff_s)
        self.temperature, self.json_mode, self.vision = float(temperature), bool(json_mode), bool(vision)
        self.name = f"http:{self.model}"

    def _post(self, body: dict) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode("utf-8", "replace")

    def complete(self, messages: list[dict], *, seed: int = 0) -> str:
        if not self.vision and count_images(messages):
            messages = text_only(messages)  # a text-only endpoint rejects image parts
        body = {"model": self.model, "messages": messages, "temperature": self.temperature, "seed": int(seed)}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                status, text = self._post(body)
            except (socket.timeout, TimeoutError):
                problem = f"timed out after {self.timeout_s:g} s"
                continue
            except urllib.error.URLError as err:
                if isinstance(err.reason, (socket.timeout, TimeoutError)):
                    problem = f"timed out after {self.timeout_s:g} s"
                    continue
                raise LLMBackendError(f"LLM server {self.base_url} is unreachable ({err.reason}); fix: start it or "
                                      f"correct planning.llm.base_url / {ENV_BASE_URL}") from None
            if status == 200:
                try:
                    return json.loads(text)["choices"][0]["message"]["content"]
                except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                    raise LLMBackendError(f"LLM server {self.base_url} answered 200 but not in the chat-completions "
                                          f"format (starts {text[:120]!r}); fix: point base_url at an OpenAI-"
                                          "compatible /v1 endpoint") from None
            if status == 429 or status >= 500:
                problem = f"HTTP {status}: {text[:200]}"
                continue
            hint = (" (the request carried images: use a vision-language model, or vision=False / "
                    "planning.llm.vision=false to send text only)" if count_images(messages) else "")
            raise LLMBackendError(f"LLM server {self.base_url} answered HTTP {status} ({text[:200]!r}){hint}; fix: "
                                  f"check the model name '{self.model}', the API key ({ENV_API_KEY}) and base_url")
        raise LLMBackendError(f"LLM server {self.base_url}: {problem} on all {self.retries + 1} attempts; fix: check "
                              "the server, or raise planning.llm.timeout_s / planning.llm.retries")


# ------------------------------------------------------------------------------------------ local Qwen2 backend

class QwenBackend:
    """Our Qwen2 decoder from a converted checkpoint (``avatarjax convert qwen2``) + a Hugging Face tokenizer
    directory; greedy decoding of up to ``max_new_tokens`` tokens (prompts are the chat-templated messages)."""

    def __init__(self, checkpoint_dir: str | Path, tokenizer_dir: str | Path, *, max_new_tokens: int = 512):
        from avatarjax.checkpoint.convert import load_converted
        from avatarjax.encoders import qwen2

        self.model, self.cfg, _ = load_converted(checkpoint_dir)
        self.tokenizer = qwen2.load_tokenizer(tokenizer_dir)
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        self.eos = eos + [e for e in qwen2.eos_token_ids(tokenizer_dir) if e not in eos]
        self.max_new_tokens = int(max_new_tokens)
        self.name = f"qwen2:{Path(checkpoint_dir).name}"

    def complete(self, messages: list[dict], *, seed: int = 0) -> str:
        from avatarjax.encoders import qwen2
        from avatarjax.models.decoder_lm import generate

        ids, mask = qwen2.encode_prompts(self.tokenizer, [text_only(messages)], chat=True, pad_to_multiple=64)
        out = generate(self.model, ids, mask, self.max_new_tokens, eos_token_id=self.eos or None,
                       pad_token_id=int(self.tokenizer.pad_token_id or 0))
        return qwen2.decode_generated(self.tokenizer, np.asarray(out.tokens), np.asarray(out.lengths))[0]


def make_backend(cfg: dict | None = None) -> Backend:
    """A backend from a config mapping: ``{"backend": "offline" | "http" | "qwen2", ...}`` (http: base_url, model,
    timeout_s, retries, vision; qwen2: checkpoint_dir, tokenizer_dir, max_new_tokens)."""
    cfg = dict(cfg or {})
    kind = cfg.pop("backend", "offline")
    if kind == "offline":
        return OfflineBackend()
    if kind == "http":
        return HTTPBackend(**{k: v for k, v in cfg.items() if k in ("base_url", "model", "api_key", "timeout_s",
                                                                      "retries", "backoff_s", "temperature",
                                                                      "json_mode", "vision")})
    if kind == "qwen2":
        for key in ("checkpoint_dir", "tokenizer_dir"):
            if not cfg.get(key):
                raise ConfigError(f"the qwen2 LLM backend needs planning.llm.{key}")
        return QwenBackend(cfg["checkpoint_dir"], cfg["tokenizer_dir"],
                           max_new_tokens=int(cfg.get("max_new_tokens", 512)))
    raise ConfigError(f"unknown LLM backend '{kind}': choose offline, http or qwen2")
