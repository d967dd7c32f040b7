"""InstructAvatar-style instruction text for synthface clips (pure Python + numpy Generator).

Families, each with a TRAIN template set and a disjoint held-out EVAL paraphrase set (``split='eval'``):

- emotional talking: :data:`EMOTION_TEMPLATES` (60, with intensity) and :data:`NEUTRAL_TEMPLATES` (no intensity;
  used for neutral, which in MEAD has only intensity 1), filled with an emotion synonym (:data:`EMOTION_WORDS`:
  ``adj`` / ``noun`` / ``ly``) and an intensity word (:data:`INTENSITY_WORDS`, canonical adverbs slightly /
  moderately / extremely from ``schema.INTENSITY_ADVERBS`` drawn half of the time);
- Action-Unit sentences: :data:`AU_PHRASES` (:func:`au_sentences`);
- text-only motion scripts: :data:`PRIMITIVE_PHRASES` joined by connectors (:func:`motion_instruction`);
- beyond-emotion states: :data:`STATE_PROMPTS` (:func:`state_instruction`);
- listening: :data:`LISTENER_PROMPTS` (:func:`listener_instruction`).

Every held-out (eval) template or phrase contains at least one marker of :data:`EVAL_ONLY_MARKERS` (words that no
train template, phrase or synonym contains), so "held-out text never appears in the train split" is checkable
by substring. No function returns an empty string.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

from . import schema as S

SPLITS = ("train", "eval")

# ----------------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------------

#: Emotion -> synonyms: ``adj`` (adjectives), ``noun`` (nouns), ``ly`` (manner adverbs; empty for "surprised",
#: whose adverbs are unnatural, so templates needing ``{ly}`` are skipped for it).
EMOTION_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "neutral": {"adj": ("neutral", "calm", "composed", "impassive", "relaxed"),
                "noun": ("neutrality", "calmness", "composure"), "ly": ("calmly", "neutrally", "evenly")},
    "happy": {"adj": ("happy", "joyful", "cheerful", "delighted", "glad", "pleased"),
              "noun": ("happiness", "joy", "cheerfulness", "delight"),
              "ly": ("happily", "joyfully", "cheerfully", "gladly")},
    "sad": {"adj": ("sad", "unhappy", "sorrowful", "gloomy", "downcast", "melancholy"),
            "noun": ("sadness", "sorrow", "gloom", "melancholy"), "ly": ("sadly", "sorrowfully", "gloomily")},
    "angry": {"adj": ("angry", "furious", "irritated", "annoyed", "mad", "irate"),
              "noun": ("anger", "fury", "irritation", "rage"), "ly": ("angrily", "furiously", "irritably")},
    "surprised": {"adj": ("surprised", "astonished", "amazed", "startled", "stunned"),
                  "noun": ("surprise", "astonishment", "amazement"), "ly": ()},
    "fear": {"adj": ("fearful", "scared", "afraid", "frightened", "nervous"),
             "noun": ("fear", "fright", "anxiety", "dread"), "ly": ("fearfully", "nervously", "anxiously")},
    "disgusted": {"adj": ("disgusted", "repulsed", "revolted", "grossed out"),
                  "noun": ("disgust", "revulsion", "distaste"), "ly": ("disgustedly",)},
    "contempt": {"adj": ("contemptuous", "scornful", "disdainful", "dismissive"),
                 "noun": ("contempt", "scorn", "disdain"), "ly": ("contemptuously", "scornfully", "disdainfully")},
}

#: Intensity level -> ``adv`` (modifies an adjective / adverb) and ``adj`` (modifies a noun) words. The first
#: adverb is the canonical InstructAvatar one (``schema.INTENSITY_ADVERBS``).
INTENSITY_WORDS: dict[int, dict[str, tuple[str, ...]]] = {
    1: {"adv": ("slightly", "a little", "mildly", "somewhat"), "adj": ("slight", "mild", "subtle", "light")},
    2: {"adv": ("moderately", "fairly", "reasonably"), "adj": ("moderate", "medium", "noticeable")},
    3: {"adv": ("extremely", "very", "intensely", "highly"), "adj": ("extreme", "intense", "strong", "overwhelming")},
}

#: Words that mark held-out (eval-only) text; no train template, phrase or synonym contains any of them.
EVAL_ONLY_MARKERS = ("monologue", "recite", "portray", "address the camera", "demeanour", "radiate", "audience",
                     "imagine", "chat", "swivel", "bob your", "glance", "afterwards", "to begin with",
                     "pull your brows", "perk up", "crinkle")

# ----------------------------------------------------------------------------------------------------------------
# Emotion templates: {adj} {noun} {ly} emotion words; {iadv} {iadj} intensity words.
# ----------------------------------------------------------------------------------------------------------------

EMOTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "Talk with {iadv} {adj} emotion.", "Speak {iadv} {ly}.", "Talk {iadv} {ly}.", "Say this with {iadj} {noun}.",
        "Speak with {iadj} {noun}.", "Talk with {iadj} {noun} on your face.", "Speak in a {iadv} {adj} manner.",
        "Talk in a {iadv} {adj} way.", "Look {iadv} {adj} while talking.", "Look {iadv} {adj} while you speak.",
        "Be {iadv} {adj} as you talk.", "Show {iadj} {noun} while speaking.", "Express {iadj} {noun} while you talk.",
        "Deliver the line with {iadj} {noun}.", "Read the sentence {iadv} {ly}.", "Say it {iadv} {ly}.",
        "Please talk with {iadv} {adj} emotion.", "Please speak {iadv} {ly}.",
        "Your emotion is {iadv} {adj}; keep talking.", "Talk as if you feel {iadv} {adj}.",
        "Speak as someone who is {iadv} {adj}.", "Keep a {iadv} {adj} expression while talking.",
        "Wear a {iadv} {adj} expression as you speak.", "Make a {iadv} {adj} face while speaking.",
        "Put on a {iadv} {adj} face and talk.", "Talk, looking {iadv} {adj}.", "Speak, showing {iadj} {noun}.",
        "With {iadj} {noun}, say the words.", "Narrate {iadv} {ly}.", "Have a conversation {iadv} {ly}.",
        "Give a {iadv} {adj} talk.", "The speaker feels {iadv} {adj}.", "A {iadv} {adj} person talking.",
        "Talking face with {iadj} {noun}.", "Generate a talking face that is {iadv} {adj}.",
        "Animate the face speaking with {iadj} {noun}.", "Make the avatar talk with {iadj} {noun}.",
        "Make the avatar look {iadv} {adj} while speaking.", "Let your face show {iadj} {noun} as you speak.",
        "Convey {iadj} {noun} while talking.", "Convey {iadj} {noun} through your expression as you speak.",
        "Your face should look {iadv} {adj} as you talk.", "Emotion: {adj}. Intensity: {iadj}.",
        "Speak with an emotion of {iadj} {noun}.", "Talk while feeling {iadv} {adj}.",
        "Speak while feeling {iadv} {adj}.", "Say the words in a {iadv} {adj} tone.",
        "Use a {iadv} {adj} expression when talking.", "Talk and appear {iadv} {adj}.",
        "Speak and seem {iadv} {adj}.", "Show that you are {iadv} {adj} while talking.",
        "Act {iadv} {adj} as you talk.", "Talk in a {iadv} {adj} mood.", "Speak in a {iadv} {adj} mood.",
        "With a {iadv} {adj} look, talk.", "{iadj} {noun}, talking.", "Talk with {iadj} {noun}.",
        "Speak {iadv} {ly} throughout.", "Talk to me {iadv} {ly}.", "Tell the story {iadv} {ly}.",
    ),
    "eval": (
        "Could you chat with me while appearing {iadv} {adj}?", "Recite the passage, letting {iadj} {noun} show.",
        "Portray {iadj} {noun} during your monologue.", "Imagine you are {iadv} {adj}, then begin speaking.",
        "While you recite, appear {iadv} {adj}.", "Your monologue should radiate {iadj} {noun}.",
        "Let the audience see {iadj} {noun} as you address them.", "Address the camera {iadv} {ly}.",
        "Chat {iadv} {ly} with your friend.", "Recite the lines in a {iadv} {adj} demeanour.",
        "Imagine feeling {iadj} {noun} and chat away.", "Portray a {iadv} {adj} narrator reading to an audience.",
    ),
}

NEUTRAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "Talk with {adj} emotion.", "Speak {ly}.", "Talk with a {adj} expression.", "Speak with a {adj} face.",
        "Keep a {adj} face while talking.", "Talk {ly}, without showing emotion.", "Speak in a {adj} manner.",
        "Say this with {noun}.", "Look {adj} while you speak.", "Talk normally with a {adj} expression.",
        "Deliver the line with {noun}.", "Make the avatar talk with a {adj} face.", "Read the sentence {ly}.",
        "Narrate {ly}, showing no particular emotion.",
    ),
    "eval": (
        "Address the camera {ly}.", "Recite the passage with a {adj} demeanour.",
        "Could you chat with me while appearing {adj}?", "Portray a {adj} narrator during your monologue.",
    ),
}

# ----------------------------------------------------------------------------------------------------------------
# AU sentences
# ----------------------------------------------------------------------------------------------------------------

#: AU group -> imperative phrases (first = canonical). Bilateral AUs active on one side only use the ``_side``
#: phrases with ``{side}`` = "left" / "right" (the subject's side). Mouth keys: smile (smile > 0), frown
#: (smile < 0, AU15), jaw_open, lip_stretch, pucker.
AU_PHRASES: dict[str, tuple[str, ...]] = {
    "au1": ("raise your inner eyebrows", "lift the inner corners of your brows", "raise the inner ends of your brows"),
    "au1_side": ("raise your {side} inner eyebrow",),
    "au2": ("raise your outer eyebrows", "lift the outer corners of your brows"),
    "au2_side": ("raise your {side} outer eyebrow",),
    "au4": ("lower your eyebrows", "furrow your brows", "knit your brows together"),
    "au5": ("raise your upper eyelids", "widen your eyes", "open your eyes wide"),
    "au6": ("raise your cheeks", "lift your cheeks"),
    "au7": ("tighten your eyelids", "narrow your eyelids"),
    "au45": ("close your eyes", "shut your eyes"),
    "au45_side": ("close your {side} eye",),
    "smile": ("pull up the corners of your lips", "raise the corners of your mouth", "smile"),
    "frown": ("pull down the corners of your lips", "turn down the corners of your mouth"),
    "jaw_open": ("open your mouth", "drop your jaw"),
    "lip_stretch": ("stretch your lips horizontally", "pull your lips wide"),
    "pucker": ("pucker your lips", "purse your lips"),
}
#: Clip-level thresholds used to turn mouth channels into phrases (max over time of smile / -smile / ...).
MOUTH_THRESHOLDS = {"smile": 0.2, "frown": 0.2, "jaw_open": 0.3, "lip_stretch": 0.2, "pucker": 0.2}


def _names_from_active(active_aus) -> list[str]:
    if isinstance(active_aus, np.ndarray) and active_aus.dtype == bool:
        if active_aus.shape != (len(S.AU_CHANNELS),):
            raise ValueError(f"active_aus must be bool [{len(S.AU_CHANNELS)}], got {active_aus.shape}")
        return [n for n, a in zip(S.AU_CHANNELS, active_aus) if a]
    return [str(n) for n in active_aus]


def au_phrases(active_aus, rng: np.random.Generator | None = None) -> list[str]:
    """Imperative phrases (lower case, no period) for active AUs / mouth actions, in AU order.

    ``active_aus``: bool ``[10]`` (``schema.AU_CHANNELS`` order) or channel / mouth names (``au1_l`` ...,
    ``smile``, ``frown``, ``jaw_open``, ``lip_stretch``, ``pucker``). Left + right of a bilateral AU merge into
    one phrase; one side alone gives a side phrase. ``rng`` picks paraphrases (None = canonical first phrase).
    """
    names = set(_names_from_active(active_aus))
    unknown = names - set(S.AU_CHANNELS) - set(MOUTH_THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown AU / mouth names {sorted(unknown)}")

    def pick(key: str) -> str:
        opts = AU_PHRASES[key]
        return opts[0] if rng is None else opts[int(rng.integers(len(opts)))]

    out = []
    for group in ("au1", "au2", "au4", "au5", "au6", "au7", "au45"):
        if group in ("au1", "au2", "au45"):
            left, right = f"{group}_l" in names, f"{group}_r" in names
            if left and right:
                out.append(pick(group))
            elif left or right:
                out.append(pick(group + "_side").format(side="left" if left else "right"))
        elif group in names:
            out.append(pick(group))
    out += [pick(k) for k in ("smile", "frown", "jaw_open", "lip_stretch", "pucker") if k in names]
    return out


def _sentence(phrase: str) -> str:
    phrase = phrase.strip()
    return phrase[:1].upper() + phrase[1:] + ("" if phrase.endswith((".", "?", "!")) else ".")


def au_sentences(active_aus, rng: np.random.Generator | None = None) -> list[str]:
    """One sentence per active AU / mouth action, e.g. ``["Raise your inner eyebrows.", "Lower your eyebrows."]``.

    See :func:`au_phrases` for the accepted inputs; returns ``[]`` when nothing is active.
    """
    return [_sentence(p) for p in au_phrases(active_aus, rng)]


def _join_phrases(phrases: Sequence[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# ----------------------------------------------------------------------------------------------------------------
# Motion scripts
# ----------------------------------------------------------------------------------------------------------------

#: Primitive -> (train phrases, eval-only paraphrases). "left" / "right" are the subject's.
PRIMITIVE_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "turn_head_left": (("turn your head to the left", "turn your head left", "look over to your left side"),
                       ("swivel your head to the left",)),
    "turn_head_right": (("turn your head to the right", "turn your head right", "look over to your right side"),
                        ("swivel your head to the right",)),
    "raise_head": (("raise your head", "tilt your head back", "lift your chin"), ("perk up your chin",)),
    "lower_head": (("lower your head", "bow your head", "drop your chin"), ("swivel your head downward",)),
    "tilt_head_left": (("tilt your head to the left", "lean your head toward your left shoulder"),
                       ("swivel your head sideways to the left",)),
    "tilt_head_right": (("tilt your head to the right", "lean your head toward your right shoulder"),
                        ("swivel your head sideways to the right",)),
    "face_forward": (("face forward again", "turn your head back to the front", "return your head to the center"),
                     ("swivel back to face the front",)),
    "lean_forward": (("lean forward", "move closer to the camera"), ("perk up and lean in",)),
    "lean_back": (("lean back", "move away from the camera"), ("swivel backward, away from the lens",)),
    "nod": (("nod", "nod your head", "nod twice"), ("bob your head up and down",)),
    "shake_head": (("shake your head", "shake your head from side to side"), ("swivel your head no",)),
    "look_left": (("look to the left", "look left", "move your eyes to the left"), ("glance to the left",)),
    "look_right": (("look to the right", "look right", "move your eyes to the right"), ("glance to the right",)),
    "look_up": (("look up", "raise your eyes", "look upward"), ("glance upward",)),
    "look_down": (("look down", "lower your eyes", "look downward"), ("glance downward",)),
    "look_at_camera": (("look at the camera", "look straight ahead", "look back at me"),
                       ("glance back at the lens",)),
    "raise_eyebrows": (("raise your eyebrows", "lift your eyebrows", "raise your brows"),
                       ("perk up your eyebrows",)),
    "frown": (("frown", "furrow your brows", "knit your brows"), ("pull your brows down into a scowl",)),
    "close_eyes": (("close your eyes", "shut your eyes for a moment", "close your eyes briefly"),
                   ("crinkle your eyes shut",)),
    "widen_eyes": (("widen your eyes", "open your eyes wide"), ("perk up your eyelids",)),
    "squint": (("squint", "narrow your eyes"), ("crinkle your eyelids",)),
    "smile": (("smile", "give a smile", "break into a smile"), ("crinkle into a grin",)),
    "open_mouth": (("open your mouth", "drop your jaw", "open your mouth wide"), ("bob your jaw open",)),
    "pucker_lips": (("pucker your lips", "purse your lips"), ("perk up your lips into a pout",)),
    "blink": (("blink", "blink once", "blink your eyes"), ("bob your eyelids shut once",)),
    "wink_left": (("wink with your left eye", "wink your left eye"), ("crinkle your left eye shut",)),
    "wink_right": (("wink with your right eye", "wink your right eye"), ("crinkle your right eye shut",)),
}
MOTION_CONNECTORS = {"train": (", then ", ", and then ", ". Then ", ", after that ", ", next "),
                     "eval": (", and afterwards ", "; afterwards, ")}
MOTION_PREFIXES = {"train": ("", "", "Please ", "Without speaking, ", "Silently, ", "In silence, "),
                   "eval": ("To begin with, ", "Without a word to the audience, ")}
MOTION_FIRST = {"train": ("First ", "First, "), "eval": ("To begin with, ",)}

# ----------------------------------------------------------------------------------------------------------------
# States and listening
# ----------------------------------------------------------------------------------------------------------------

STATE_PROMPTS: dict[str, dict[str, tuple[str, ...]]] = {
    "laughter": {
        "train": ("Laugh heartily.", "Burst out laughing.", "Laugh while talking.", "Talk and laugh at the same time.",
                  "Crack up laughing.", "Giggle as you speak.", "Laugh out loud at a joke."),
        "eval": ("Portray someone who cannot stop laughing.", "Chat with me while giggling uncontrollably.")},
    "cognitive_effort": {
        "train": ("Think hard while talking.", "Look like you are concentrating on a difficult problem.",
                  "Speak while trying to recall something.", "Frown in concentration and look away as you think.",
                  "Talk as if solving a puzzle in your head.", "Show mental effort while speaking."),
        "eval": ("Portray someone deep in thought.", "Recite while struggling to remember the words.")},
    "drowsiness": {
        "train": ("Talk as if you are very sleepy.", "Look drowsy while speaking.",
                  "Speak with heavy, droopy eyelids.", "Act tired and about to doze off.",
                  "Talk while fighting to stay awake.", "Look exhausted and sleepy."),
        "eval": ("Portray someone nodding off mid-sentence.", "Chat with me as though you barely slept.")},
    "low_arousal_negative": {
        "train": ("Talk in a flat, downcast way.", "Speak listlessly with your eyes lowered.",
                  "Look dejected and low on energy.", "Talk as if you feel down and tired.",
                  "Speak with low energy and a gloomy gaze.", "Appear subdued and disheartened."),
        "eval": ("Portray quiet dejection.", "Recite the lines listlessly, eyes cast down.")},
    "social_engagement": {
        "train": ("Talk warmly and keep eye contact.", "Be friendly and engaged while speaking.",
                  "Speak with warmth, nodding and raising your brows.", "Look interested and attentive as you talk.",
                  "Talk like you enjoy the conversation.", "Engage the listener warmly."),
        "eval": ("Portray an engaged, warm conversational partner.", "Chat with me like an old friend.")},
    "evasive_response": {
        "train": ("Avoid eye contact while answering.", "Talk evasively, looking away.",
                  "Speak as if hiding something.", "Look away shiftily while talking.",
                  "Answer evasively and avoid my gaze.", "Talk like you do not want to answer."),
        "eval": ("Portray someone dodging a question.", "Address the camera while refusing to meet its gaze.")},
}

LISTENER_PROMPTS: dict[str, tuple[str, ...]] = {
    "train": ("Listen attentively.", "Listen and nod along.", "Listen to the speaker and react naturally.",
              "Be an attentive listener.", "Listen quietly and respond with nods and smiles.",
              "Pay attention to the speaker.", "Listen and mirror the speaker's smiles."),
    "eval": ("Portray an attentive audience member.", "Imagine a friend is talking to you; just listen.",
             "Be the quiet half of a chat: listen and react."),
}

# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------

_FIELD = re.compile(r"\{(\w+)\}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def template_regex(template: str) -> re.Pattern:
    """A regex fully matching any rendering of ``template`` (each ``{field}`` becomes ``.+``), case-insensitive."""
    parts = _FIELD.split(template)
    pat = "".join(re.escape(p) if i % 2 == 0 else ".+" for i, p in enumerate(parts))
    return re.compile(pat, re.IGNORECASE)


def _fill(template: str, values: dict[str, str]) -> str:
    text = _FIELD.sub(lambda m: values[m.group(1)], template)
    return text[:1].upper() + text[1:]


def _emotion_name(emotion) -> str:
    name = S.EMOTIONS[emotion] if isinstance(emotion, (int, np.integer)) else str(emotion)
    if name not in EMOTION_WORDS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {S.EMOTIONS}")
    return name


def emotion_instruction(rng: np.random.Generator, emotion, intensity: int, split: str = "train") -> str:
    """An emotional-talking instruction, e.g. "Speak extremely happily." or "Talk with slight sadness.".

    ``emotion``: name or index in ``schema.EMOTIONS``; ``intensity`` 1-3 (ignored for neutral, whose instructions
    never state an intensity; for other emotions it must be 1-3). Templates come from the ``split`` set; the
    intensity adverb is the canonical ``schema.INTENSITY_ADVERBS`` word with probability 0.5.
    """
    _check_split(split)
    name = _emotion_name(emotion)
    words = EMOTION_WORDS[name]
    if name == "neutral":
        templates = NEUTRAL_TEMPLATES[split]
        iwords = {"adv": ("",), "adj": ("",)}
    else:
        if intensity not in INTENSITY_WORDS:
            raise ValueError(f"intensity must be 1, 2 or 3 for {name!r}, got {intensity!r}")
        templates = EMOTION_TEMPLATES[split]
        iwords = INTENSITY_WORDS[intensity]
    eligible = [t for t in templates if "{ly}" not in t or words["ly"]]
    template = _choice(rng, eligible)
    canonical = name != "neutral" and rng.random() < 0.5
    values = {"adj": _choice(rng, words["adj"]), "noun": _choice(rng, words["noun"]),
              "ly": _choice(rng, words["ly"]) if words["ly"] else "",
              "iadv": S.INTENSITY_ADVERBS[intensity] if canonical else _choice(rng, iwords["adv"]),
              "iadj": _choice(rng, iwords["adj"])}
    return _fill(template, values)


def motion_instruction(script, rng: np.random.Generator, split: str = "train") -> str:
    """Text-only motion instruction for a script, e.g. "Turn your head to the left, then nod.".

    ``script``: a sequence of primitive names, ``dynamics.Step`` objects or step dicts (key ``primitive``).
    Phrases, connectors and prefixes come from the ``split`` sets (eval: held-out paraphrases).
    """
    _check_split(split)
    names = [s if isinstance(s, str) else (s["primitive"] if isinstance(s, dict) else s.primitive) for s in script]
    if not names:
        raise ValueError("empty motion script")
    col = 0 if split == "train" else 1
    phrases = [_choice(rng, PRIMITIVE_PHRASES[n][col]) for n in names]
    if split == "eval" and len(phrases) > 1:  # one held-out paraphrase is enough; keep the rest varied
        keep = int(rng.integers(len(phrases)))
        phrases = [p if i == keep else _choice(rng, PRIMITIVE_PHRASES[n][0]) for i, (n, p) in
                   enumerate(zip(names, phrases))]
    text = phrases[0]
    for p in phrases[1:]:
        conn = _choice(rng, MOTION_CONNECTORS[split])
        text += conn + (p[:1].upper() + p[1:] if conn.endswith(". ") else p)
    if len(phrases) > 1 and rng.random() < 0.3:
        text = _choice(rng, MOTION_FIRST[split]) + text
    else:
        text = _choice(rng, MOTION_PREFIXES[split]) + text
    return _sentence(text)


def state_instruction(rng: np.random.Generator, state: str, split: str = "train") -> str:
    """A beyond-emotion state prompt (``state`` in ``schema.STATES``), e.g. "Look drowsy while speaking."."""
    _check_split(split)
    if state not in STATE_PROMPTS:
        raise ValueError(f"unknown state {state!r}; expected one of {S.STATES}")
    return _choice(rng, STATE_PROMPTS[state][split])


def listener_instruction(rng: np.random.Generator, split: str = "train") -> str:
    """A listening prompt for dyadic listener clips."""
    _check_split(split)
    return _choice(rng, LISTENER_PROMPTS[split])


def clip_mouth_actions(state: np.ndarray) -> list[str]:
    """Mouth action names whose clip maximum exceeds :data:`MOUTH_THRESHOLDS` (``state`` ``[T, 24]``)."""
    ix = S.INDEX
    peaks = {"smile": state[:, ix["smile"]].max(), "frown": (-state[:, ix["smile"]]).max(),
             "jaw_open": state[:, ix["jaw_open"]].max(), "lip_stretch": state[:, ix["lip_stretch"]].max(),
             "pucker": state[:, ix["pucker"]].max()}
    return [k for k, v in peaks.items() if v > MOUTH_THRESHOLDS[k]]


def _au_clause(rng: np.random.Generator, names: list[str], min_k: int = 1) -> str:
    """A random non-empty subset of the AU phrases as one sentence (or "" when there are none)."""
    phrases = au_phrases(names, rng)
    if not phrases:
        return ""
    k = int(rng.integers(min(min_k, len(phrases)), len(phrases) + 1))
    idx = np.sort(rng.choice(len(phrases), size=k, replace=False))
    return _sentence(_join_phrases([phrases[i] for i in idx]))


def sample_instructions(clip, rng: np.random.Generator, split: str = "train", k: int = 4) -> list[str]:
    """``k`` instruction variants for a clip (for per-step instruction sampling); never empty strings.

    ``clip`` needs ``kind``, ``label``, ``intensity``, ``au_active`` (bool [10]), ``state`` ([T, 24]) and, for
    motion clips, ``events['motion_steps']``. Variants (distinct where possible, repeats only when a clip has
    fewer than ``k`` distinct renderings):

    - emotion talking: the emotion instruction; emotion + a random subset of AU sentences; "While talking, ..."
      with AU phrases only (when the clip has active AUs); paraphrases.
    - beyond-emotion state talking: the state prompt; state prompt + AU subset.
    - motion: motion instructions with different phrasing (AU45 from blinks is never described).
    - listening: listener prompts.

    AU45 is never described (clip-level AU45 comes from spontaneous blinks, so "close your eyes" would mislead),
    nor is the speech-driven jaw of talking clips.
    """
    _check_split(split)
    if k < 1:
        raise ValueError("k must be >= 1")
    label, kind = clip.label, clip.kind
    au_names = [n for n, a in zip(S.AU_CHANNELS, np.asarray(clip.au_active, bool)) if a and not n.startswith("au45")]
    mouth = [m for m in clip_mouth_actions(np.asarray(clip.state)) if not (kind == "talking" and m == "jaw_open")]
    desc = au_names + mouth

    def one() -> str:
        if kind == "motion":
            return motion_instruction(clip.events["motion_steps"], rng, split)
        if kind == "listening":
            return listener_instruction(rng, split)
        if label in S.STATES:
            base = state_instruction(rng, label, split)
            if desc and rng.random() < 0.4:
                return base + " " + _au_clause(rng, desc)
            return base
        base = emotion_instruction(rng, label, clip.intensity, split)
        r = rng.random()
        if desc and r < 0.3:
            return base + " " + _au_clause(rng, desc)
        if desc and r < 0.45:
            clause = _au_clause(rng, desc, min_k=len(desc))
            return "While talking, " + clause[:1].lower() + clause[1:]
        return base

    out: list[str] = []
    for _ in range(8 * k):
        text = one().strip()
        if text and text not in out:
            out.append(text)
        if len(out) == k:
            break
    n = len(out)  # fewer distinct renderings than k: cycle through them
    out += [out[i % n] for i in range(k - n)]
    assert all(out), "empty instruction"
    return out


def all_templates(split: str) -> list[str]:
    """Every emotion / neutral template of a split (for held-out checks)."""
    _check_split(split)
    return list(EMOTION_TEMPLATES[split]) + list(NEUTRAL_TEMPLATES[split])


def mentions_emotion(text: str, emotion) -> bool:
    """Whether ``text`` contains a synonym (adjective, noun or adverb) of ``emotion`` as a whole word."""
    words = EMOTION_WORDS[_emotion_name(emotion)]
    return any(re.search(r"\b" + re.escape(w) + r"\b", text, re.IGNORECASE)
               for w in words["adj"] + words["noun"] + words["ly"])


def mentions_intensity(text: str, intensity: int) -> bool:
    """Whether ``text`` contains an intensity word of level ``intensity`` as a whole word."""
    words = INTENSITY_WORDS[intensity]
    return any(re.search(r"\b" + re.escape(w) + r"\b", text, re.IGNORECASE) for w in words["adv"] + words["adj"])


def _iter_train_text() -> Iterable[str]:
    for tpl in all_templates("train"):
        yield tpl
    for v in EMOTION_WORDS.values():
        yield from (w for ws in v.values() for w in ws)
    for v in INTENSITY_WORDS.values():
        yield from (w for ws in v.values() for w in ws)
    for tr, _ev in PRIMITIVE_PHRASES.values():
        yield from tr
    yield from MOTION_CONNECTORS["train"] + MOTION_PREFIXES["train"] + MOTION_FIRST["train"]
    for v in STATE_PROMPTS.values():
        yield from v["train"]
    yield from LISTENER_PROMPTS["train"]
    for v in AU_PHRASES.values():
        yield from v
