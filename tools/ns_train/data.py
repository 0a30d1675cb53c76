"""Training data for the noise-suppression model: speech, noise pools, room impulse responses.

Speech comes from Debian's synthesizers and from the human recordings that Debian main packages ship
(``REAL_SPEECH_SOURCES``: ``klettres-data``, ``ktuberling-data``: letters, syllables and words read by
volunteers in ~35 languages; ``tuxpaint-stamps-default``: short spoken descriptions, one reader per
language); noise from ``../shared/data/ns``, the ambient recordings of Debian game data packages
(``AMBIENT_NOISE_SOURCES``) and synthesis. Nothing is downloaded. Held out for
evaluation and never touched here: ``clean_freesound_33711`` (speech) and the last 30 % of
``noise_freesound_573577`` (noise); held out for validation only: the alsa-utils phrases and the
speakers in ``REAL_VAL_GROUPS``. ``Corpus.build`` and ``real_speech`` are deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, fftconvolve, lfilter, resample_poly, sosfilt

SR = 16000
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ns"
HELD_OUT_NOISE_FRACTION = 0.3  # tail of noise_freesound_573577 kept for the benchmark


def speaker_folder(rel: Path) -> str:
    """KDE's recordings: one folder per language, each read by its own volunteers."""
    return rel.parts[0]


def speaker_desc_language(rel: Path) -> str:
    """Tux Paint's spoken stamp descriptions, ``NAME_desc_LANG.ogg`` (English: ``NAME_desc.ogg``): one
    reader per language."""
    return rel.name.split("_desc", 1)[1].split(".")[0].lstrip("_") or "en"


# Human speech in Debian main (GPL-2+), read by volunteers.
# name -> (root, file pattern, speaker group of a file's path under root)
SpeechSource = tuple[Path, str, Callable[[Path], str]]
REAL_SPEECH_SOURCES: dict[str, SpeechSource] = {
    "klettres": (Path("/usr/share/klettres"), "*", speaker_folder),
    "ktuberling": (Path("/usr/share/ktuberling/sounds"), "*", speaker_folder),
    "tuxpaint": (Path("/usr/share/tuxpaint/stamps"), "*_desc*.ogg", speaker_desc_language),
}
DEFAULT_SPEECH_SOURCES = ("klettres", "ktuberling")  # the recipe of stages 4-11
REAL_VAL_GROUPS = ("klettres/nl", "klettres/ru", "ktuberling/el", "ktuberling/uk")  # validation speakers
# Training skips the added sources' groups in the validation speakers' languages: a volunteer who read
# for two projects must not reach training through the second one. (The KDE two keep theirs, e.g.
# ktuberling/ru, as stages 4-11 were trained.)
REAL_VAL_LANGUAGES = frozenset(g.split("/")[1] for g in REAL_VAL_GROUPS)
ALSA_PHRASES = Path("/usr/share/sounds/alsa")  # alsa-utils' spoken channel names: validation only
TRAIN_SNR_DB = (-5.0, 20.0)  # mixtures' SNR range (training default; validation always)
TRAIN_LEVEL_DB = (-40.0, -12.0)  # mixtures' RMS level range in dBFS (training default)
MIN_RECORDING_SNR_DB = 30.0  # skip recordings whose own background noise is closer than this to the speech

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please turn off the lights in the kitchen.",
    "Device seven reports a temperature of forty two degrees.",
    "Can you hear me clearly now?",
    "We will meet again at half past nine tomorrow morning.",
    "The camera stream is running fine.",
    "Open the garage door and check the battery level.",
    "Rain is expected later this afternoon.",
    "Numbers one two three four five six seven eight nine ten.",
    "How much does the new sensor cost?",
    "She sells sea shells by the sea shore.",
    "Update the firmware before the weekend.",
    "A large size in stockings is hard to sell.",
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
    "The hogs were fed chopped corn and garbage.",
    "Hoist the load to your left shoulder.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.",
    "What joy there is in living!",
    "Set the thermostat to twenty one degrees and lock the front door.",
    "Who left the window open in the upstairs bedroom?",
    "Call mum and tell her I will be late.",
    "Play some quiet music in the living room.",
    "Remind me to water the plants at six.",
    "The delivery driver is waiting outside with a parcel.",
    "Is anybody there? Please answer me.",
    "Thank you very much, that was really helpful.",
    "Zero, eleven, fifteen, ninety nine, a hundred.",
    "Jack quietly moved up front and seized the big ball of wax.",
    "Heavy trucks rumble past the school every morning.",
    "Show me the video from the back yard camera.",
]
WORDS = sorted(
    {w.strip(".,?!").lower() for s in SENTENCES for w in s.split()}
    | set(
        "alarm baby garden yellow thirty kitchen window system morning evening whisper thunder music"
        " picture seventy bright shadow measure orange purple umbrella breakfast village journey quickly"
        " slowly happy angry chair table school doctor answer listen silver golden jumping sitting".split()
    )
)

ESPEAK_LANGS = [
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "de",
    "fr",
    "es",
    "it",
    "nl",
    "pl",
]
ESPEAK_VARIANTS = [
    "",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "Andy",
    "Annie",
    "anika",
    "david",
    "edward",
    "linda",
    "steph",
    "paul",
    "robert",
    "john",
    "grandma",
    "grandpa",
    "Alicia",
    "max",
    "victor",
    "shelby",
    "travis",
]
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]
FESTIVAL_VOICES = [
    "kal_diphone",
    "ked_diphone",
    "cmu_us_slt_arctic_hts",
    "lp_diphone",
    "pc_diphone",
    "upc_ca_ona_hts",
    "czech_dita",
]


def to16k(x: np.ndarray, sr: int) -> np.ndarray:
    """First channel, resampled to 16 kHz float32."""
    if x.ndim > 1:
        x = x[:, 0]
    return (resample_poly(x, SR, sr) if sr != SR else x).astype(np.float32)


def _text(rng: np.random.Generator) -> str:
    if rng.random() < 0.6:
        return " ".join(SENTENCES[int(i)] for i in rng.integers(0, len(SENTENCES), int(rng.integers(1, 3))))
    words = rng.choice(WORDS, int(rng.integers(5, 16)))
    return " ".join(words).capitalize() + rng.choice([".", "?", "!"])


def _synth_one(rng: np.random.Generator, wav: Path) -> str:
    """Synthesize one random utterance into ``wav``; returns the engine/voice used."""
    text = _text(rng)
    engines = [e for e in ("espeak-ng", "flite", "text2wave") if shutil.which(e)]
    engine = engines[int(rng.choice(len(engines), p=_engine_p(engines)))]
    if engine == "espeak-ng":
        lang = ESPEAK_LANGS[int(rng.integers(len(ESPEAK_LANGS)))] if rng.random() < 0.4 else "en"
        var = ESPEAK_VARIANTS[int(rng.integers(len(ESPEAK_VARIANTS)))]
        voice = lang + (f"+{var}" if var else "")
        cmd = [
            "espeak-ng",
            "-v",
            voice,
            "-p",
            str(int(rng.integers(15, 85))),
            "-s",
            str(int(rng.integers(120, 210))),
            "-g",
            str(int(rng.integers(0, 6))),
            "-w",
            str(wav),
            text,
        ]
    elif engine == "flite":
        voice = FLITE_VOICES[int(rng.integers(len(FLITE_VOICES)))]
        cmd = [
            "flite",
            "-voice",
            voice,
            "--setf",
            f"duration_stretch={rng.uniform(0.8, 1.3):.2f}",
            "--setf",
            f"int_f0_target_mean={rng.uniform(80, 220):.0f}",
            "-t",
            text,
            "-o",
            str(wav),
        ]
    else:
        voice = FESTIVAL_VOICES[int(rng.integers(len(FESTIVAL_VOICES)))]
        txt = wav.with_suffix(".txt")
        txt.write_text(text)
        cmd = [
            "text2wave",
            "-eval",
            f"(voice_{voice})",
            "-eval",
            f"(Parameter.set 'Duration_Stretch {rng.uniform(0.8, 1.3):.2f})",
            str(txt),
            "-o",
            str(wav),
        ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return f"{engine}:{voice}"


def _engine_p(engines: list[str]) -> np.ndarray:
    w = np.array([{"espeak-ng": 0.5, "flite": 0.25, "text2wave": 0.25}[e] for e in engines])
    return w / w.sum()


def perturb_speech(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Speed/pitch change by resampling (+-12 %), a random microphone-like tilt, trimmed silence."""
    f = int(rng.integers(88, 113))
    if f != 100:
        x = resample_poly(x, 100, f).astype(np.float32)
    a = rng.uniform(-0.6, 0.6)  # first-order tilt: >0 brighter, <0 darker
    x = lfilter([1.0, -a], [1.0], x).astype(np.float32) if abs(a) > 0.05 else x
    return _trim(x)


def _trim(x: np.ndarray) -> np.ndarray:
    """Leading/trailing silence cut to 50 ms, unit RMS."""
    e = np.convolve(x**2, np.ones(160) / 160, "same")
    on = np.nonzero(e > 1e-4 * e.max())[0]
    if len(on):
        x = x[max(0, on[0] - 800) : on[-1] + 800]
    return (x / (np.std(x) + 1e-9)).astype(np.float32)


def synth_speech(rng: np.random.Generator, n: int, log=print) -> tuple[list[np.ndarray], dict[str, int]]:
    out, used = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            wav = Path(tmp) / f"{i}.wav"
            try:
                who = _synth_one(rng, wav)
                x, sr = sf.read(wav, dtype="float32")
            except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
                log(f"  synth failed ({exc.__class__.__name__}); skipped")
                continue
            if len(x) < sr // 4 or not np.any(x):
                continue
            out.append(perturb_speech(rng, to16k(x, sr)))
            used[who.split(":")[0]] = used.get(who.split(":")[0], 0) + 1
            if (i + 1) % 100 == 0:
                log(f"  speech {i + 1}/{n}")
    return out, used


def recording_snr_db(x: np.ndarray) -> float:
    """Spread between loud (95th percentile) and quiet (5th) 20 ms frames: the recording's own noise
    margin."""
    fr = x[: len(x) // 320 * 320].reshape(-1, 320)
    e = 10 * np.log10(np.mean(fr.astype(np.float64) ** 2, 1) + 1e-12)
    return float(np.percentile(e, 95) - np.percentile(e, 5)) if len(e) >= 5 else 0.0


def trains_on(group: str) -> bool:
    """Whether a speaker group (``source/speaker``) may be trained on (see ``REAL_VAL_LANGUAGES``)."""
    source, speaker = group.split("/", 1)
    return group not in REAL_VAL_GROUPS and (
        source in DEFAULT_SPEECH_SOURCES or speaker not in REAL_VAL_LANGUAGES
    )


def real_speech(sources: dict[str, SpeechSource]) -> dict[str, list[np.ndarray]]:
    """Human recordings from Debian packages (``sources``: entries of ``REAL_SPEECH_SOURCES``), grouped
    by speaker (``klettres/de``, ``tuxpaint/es``, ...).

    Duplicates (same samples) are dropped, as are recordings below 16 kHz (no 4-8 kHz band to learn
    from) and those with less than ``MIN_RECORDING_SNR_DB`` of their own noise margin. Each utterance is
    trimmed and unit-RMS. Missing packages just give fewer groups.
    """
    seen: set[str] = set()
    groups: dict[str, list[np.ndarray]] = {}
    for name, (root, pattern, speaker) in sorted(sources.items()):
        for f in sorted(p for p in root.rglob(pattern) if p.suffix in (".ogg", ".wav", ".flac")):
            try:
                x, sr = sf.read(f, dtype="float32")
            except (RuntimeError, sf.LibsndfileError):
                continue
            x = x[:, 0] if x.ndim > 1 else x
            digest = hashlib.sha1(x.tobytes()).hexdigest()
            if sr < SR or digest in seen:
                continue
            seen.add(digest)
            x = to16k(x, sr)
            if recording_snr_db(x) < MIN_RECORDING_SNR_DB:
                continue
            key = f"{name}/{speaker(f.relative_to(root))}"
            groups.setdefault(key, []).append(_trim(x))
    return groups


def alsa_phrases() -> list[np.ndarray]:
    """alsa-utils' spoken channel names (one real talker; validation only), or the shared copy of one."""
    files = (
        sorted(p for p in ALSA_PHRASES.glob("*.wav") if p.stem != "Noise") if ALSA_PHRASES.is_dir() else []
    )
    out = []
    for f in files or [DATA / "alsa_front_center.wav"]:
        x, sr = sf.read(f, dtype="float32")
        out.append(_trim(to16k(x, sr)))
    return out


# Real ambient recordings that Debian main's game data packages ship (GPL-2+, flare's CC-BY-SA-3.0+; sound
# effects recorded outdoors and in towns): a second source of real noise next to ../shared/data/ns.
# Each entry: a folder and the file-name patterns taken from it (music, speech-like animal calls,
# beeps and sirens are left out).
AMBIENT_NOISE_SOURCES = {
    "scorched3d": (
        Path("/usr/share/games/scorched3d/data/globalmods"),
        [
            "none/data/wav/misc/" + n
            for n in (
                "oceanwaves.wav",
                "rain.wav",
                "jet.wav",
                "lava?.wav",
                "birds?.wav",
                "frogs.wav",
                "f1[68]_?.wav",
                "apache_1.wav",
                "thunder[23].wav",
                "splash.wav",
            )
        ]
        + [
            "apoc/data/wav/misc/" + n
            for n in (
                "citysounds.wav",
                "factoryloop1.wav",
                "cheeringloop.wav",
                "helicopter.wav",
                "cessna.wav",
                "nuclearloop.wav",
            )
        ],
    ),
    "lincity-ng": (
        Path("/usr/share/games/lincity-ng/sounds"),
        [
            f"{n}*.wav"
            for n in (
                "Trafic",
                "Water",
                "Industry",
                "Harbor",
                "RailTrain",
                "Tip",
                "WindMill",
                "PowerCoal",
                "Farm",
                "Fire",
                "MarketFull",
                "Mill",
                "Recycle",
                "OreMine",
                "CoalMine",
                "Residential",
                "Shanty",
                "SportsCroud",
                "Substation",
            )
        ],
    ),
    "wesnoth": (
        Path("/usr/share/games/wesnoth/1.16/data/core/sounds/ambient"),
        ["campfire.ogg", "ship.ogg", "night.ogg", "morning.ogg", "birds?.ogg"],
    ),
    "etr": (Path("/usr/share/games/etr/sounds"), ["*_slide.wav"]),
    "flare": (
        Path("/usr/share/games/flare/mods"),  # CC-BY-SA; two real wind recordings among them
        [
            "fantasycore/soundfx/environment/" + n
            for n in (
                "wind_loop.ogg",
                "cave_wind_loop.ogg",
                "cave_droplets_loop.ogg",
                "river_loop.ogg",
                "open_fire*.ogg",
                "bird_twitter_loop.ogg",
                "anvil_loop.ogg",
                "stairs.ogg",
                "stone_open.ogg",
            )
        ]
        + ["fantasycore/music/wind_ambient.ogg", "empyrean_campaign/soundfx/environment/*.ogg"],
    ),
}
# Held out of training for the ambient validation set (``evaluate --ambient``): surging, low-frequency
# outdoor noises (sea, jet and traffic roar, wind in a cave and on a ship, rock sliding) -- the kind of
# noise the benchmark's real recording is, without being it.
AMBIENT_VAL_NAMES = (
    "oceanwaves",
    "jet",
    "lava2",
    "ship",
    "TraficHigh1",
    "TraficHigh2",
    "TraficHigh3",
    "WindMill1",
    "WindMill2",
    "rock_slide",
    "cave_wind_loop",
)
MIN_AMBIENT_RATE = 11025  # 8 kHz files carry no noise above 4 kHz at all: skipped
MIN_AMBIENT_SECONDS = 1.5


def ambient_noises(
    sources: dict[str, tuple[Path, list[str]]] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training, validation) lists of the ambient recordings found (16 kHz, unit RMS, first channel);
    ``AMBIENT_VAL_NAMES`` go to validation. Missing packages give shorter lists; files that are too
    short, below ``MIN_AMBIENT_RATE``, silent or unreadable are skipped."""
    train, val = [], []
    for root, patterns in (AMBIENT_NOISE_SOURCES if sources is None else sources).values():
        for f in sorted({p for pat in patterns for p in root.glob(pat)}):
            try:
                x, sr = sf.read(f, dtype="float32")
            except (RuntimeError, sf.LibsndfileError):
                continue
            if sr < MIN_AMBIENT_RATE:
                continue
            x = to16k(x, sr)
            if len(x) >= MIN_AMBIENT_SECONDS * SR and np.std(x) > 1e-5:
                (val if f.stem in AMBIENT_VAL_NAMES else train).append(x / np.std(x))
    return train, val


def real_noises() -> list[np.ndarray]:
    """Real recordings allowed in training (the benchmark's noise tail is cut off)."""
    out = []
    for name in ["noise_cafe_short.wav", "noise_freesound_573577.wav"]:
        x, sr = sf.read(DATA / name, dtype="float32")
        x = to16k(x, sr)
        if "573577" in name:
            x = x[: int((1 - HELD_OUT_NOISE_FRACTION) * len(x))]
        out.append(x / (np.std(x) + 1e-9))
    return out


# ../shared/data/ns-extra: real read speech (LibriSpeech readers, Asterisk's voice talents, CMU ARCTIC) and
# real environmental noise (ESC-10, Blanket, ...), 16 kHz mono FLAC; its MANIFEST.md has the sources and the
# CC-BY credits (docs/noise-suppression.md repeats them). Split into training and validation by a fixed
# hash of whole talkers and whole noise recordings (``extra_split_key``, ``extra_held_out``).
EXTRA = DATA.parent / "ns-extra"
EXTRA_VAL_PERCENT = 15  # share of talkers / noise recordings held out for validation (by hash)


def extra_split_key(rel: Path) -> str:
    """The unit that the ns-extra split keeps whole, from a file's path under ns-extra: a talker for speech
    (``speech:librispeech/1688``), the source recording for an ESC-10 clip (its clips ``CLASS__FOLD-ID-TAKE``
    are takes of freesound recording ID: ``noise:esc10/211527``), else the sound's name regardless of the
    folder (``noise:wind``: the same-named sounds of two sources may be one recording, so they fall on one
    side)."""
    if rel.parts[0] == "speech":
        return f"speech:{rel.parts[1]}/{rel.parts[2]}"
    if rel.parts[1] == "esc10":
        return f"noise:esc10/{rel.stem.split('__', 1)[1].split('-')[1]}"
    return f"noise:{rel.stem}"


def extra_held_out(key: str) -> bool:
    """Whether a split unit (``extra_split_key``) is validation: sha256 of ``ns-extra:KEY`` below
    ``EXTRA_VAL_PERCENT`` (fixed; no seed)."""
    return (
        int(hashlib.sha256(f"ns-extra:{key.split(':', 1)[1]}".encode()).hexdigest()[:8], 16) % 100
        < EXTRA_VAL_PERCENT
    )


@dataclass
class ExtraData:
    """ns-extra split by ``extra_held_out``: speech (trimmed, unit RMS) and noise (unit RMS) for training and
    validation, and which keys went where."""

    speech_train: list[np.ndarray] = field(default_factory=list)
    speech_val: list[np.ndarray] = field(default_factory=list)
    noise_train: list[np.ndarray] = field(default_factory=list)
    noise_val: list[np.ndarray] = field(default_factory=list)
    val_keys: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def extra_data(root: Path = EXTRA, val_only: bool = False) -> ExtraData:
    """Read ns-extra (missing folder: empty lists; ``val_only``: the held-out part alone). Silent or
    unreadable files are skipped."""
    out, keys = ExtraData(), {"train": set(), "val": set()}
    files = (
        sorted(p for p in root.rglob("*.flac") if p.parts[len(root.parts)] in ("speech", "noise"))
        if root.is_dir()
        else []
    )
    for f in files:
        rel = f.relative_to(root)
        key = extra_split_key(rel)
        val = extra_held_out(key)
        if val_only and not val:
            continue
        try:
            x, sr = sf.read(f, dtype="float32")
        except (RuntimeError, sf.LibsndfileError):
            continue
        x = to16k(x, sr)
        if np.std(x) < 1e-5:
            continue
        keys["val" if val else "train"].add(key)
        if rel.parts[0] == "speech":
            (out.speech_val if val else out.speech_train).append(_trim(x))
        else:
            (out.noise_val if val else out.noise_train).append((x / np.std(x)).astype(np.float32))
    minutes = lambda xs: round(sum(map(len, xs)) / SR / 60, 1)  # noqa: E731
    out.val_keys = sorted(keys["val"])
    out.stats = {
        "speech_train": [len(out.speech_train), minutes(out.speech_train)],
        "speech_val": [len(out.speech_val), minutes(out.speech_val)],
        "noise_train": [len(out.noise_train), minutes(out.noise_train)],
        "noise_val": [len(out.noise_val), minutes(out.noise_val)],
        "talkers_train": sum(k.startswith("speech:") for k in keys["train"]),
        "talkers_val": sum(k.startswith("speech:") for k in out.val_keys),
        "noise_recordings_train": sum(k.startswith("noise:") for k in keys["train"]),
        "noise_recordings_val": sum(k.startswith("noise:") for k in out.val_keys),
    }
    return out


EXTRA_VAL_SNRS = (0, 5, 10, 15, 20)  # mixture i of ``extra_validation_set`` is at EXTRA_VAL_SNRS[i % 5] dB
EXTRA_VAL_SEED = 2026


def extra_validation_set(
    extra: ExtraData, count: int = 60, seconds: float | None = None, seed: int = EXTRA_VAL_SEED
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Fixed mixtures of ns-extra's held-out talkers in its held-out noise recordings (never trained on):
    3-6 s of read speech (utterances of one random pick each, 0.2 s apart, a random 6 s excerpt of longer
    ones; exactly ``seconds`` long, zero-padded, if given) at RMS 0.05, noise at ``EXTRA_VAL_SNRS[i % 5]``
    dB below it. Checkpoint choice (``train.py --select extra``), ``evaluate --extra`` and the
    intelligibility guard use it."""
    rng = np.random.default_rng(seed)
    gap, clean, noisy = np.zeros(SR // 5, np.float32), [], []
    for i in range(count):
        parts = [extra.speech_val[int(rng.integers(len(extra.speech_val)))]]
        while sum(map(len, parts)) < 3 * SR:
            parts += [gap, extra.speech_val[int(rng.integers(len(extra.speech_val)))]]
        sp = np.concatenate(parts)
        n = int((seconds or 6.0) * SR)
        if len(sp) > n:
            k = int(rng.integers(len(sp) - n + 1))
            sp = sp[k : k + n]
        if seconds:
            sp = np.pad(sp, (0, n - len(sp)))
        sp = (sp / np.std(sp)).astype(np.float32)
        nz = loop_excerpt(rng, extra.noise_val[int(rng.integers(len(extra.noise_val)))], len(sp))
        nz = nz / (np.std(nz) + 1e-9)
        snr = EXTRA_VAL_SNRS[i % len(EXTRA_VAL_SNRS)]
        clean.append(sp * 0.05)
        noisy.append(((sp + nz * 10 ** (-snr / 20)) * 0.05).astype(np.float32))
    return clean, noisy


def shared_rir() -> np.ndarray | None:
    """The room impulse response in ../shared/data/ns (RT60 0.79 s), direct path at index 0, as
    ``room_irs``."""
    f = DATA / "rir_sim_rt60_0.79.wav"
    if not f.is_file():
        return None
    h, sr = sf.read(f, dtype="float32")
    h = to16k(h, sr)
    pk = int(np.argmax(np.abs(h)))
    h = h[pk : pk + SR]
    return (h / (np.abs(h[0]) + 1e-9)).astype(np.float32)


def microphone(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """A random microphone/channel colouration, applied alike to a mixture and its target: a first-order
    tilt, one or two peaking resonances (+-9 dB, 150-6000 Hz), and sometimes band-limiting (high-pass
    60-300 Hz; low-pass 3.4-7.5 kHz, as a narrowband codec or cheap capsule)."""
    stages = []
    a = rng.uniform(-0.5, 0.5)
    tilt = ([1.0, -a], [1.0])
    for _ in range(int(rng.integers(1, 3))):
        f0, gain, q = (
            np.exp(rng.uniform(np.log(150), np.log(6000))),
            rng.uniform(-9, 9),
            rng.uniform(0.5, 2.5),
        )
        stages.append(_peaking(f0, gain, q))
    if rng.random() < 0.4:
        stages.append(butter(2, rng.uniform(60, 300), "highpass", fs=SR, output="sos"))
    if rng.random() < 0.3:
        stages.append(butter(6, rng.uniform(3400, 7500), "lowpass", fs=SR, output="sos"))
    sos = np.vstack([np.atleast_2d(s) for s in stages])

    def apply(x: np.ndarray) -> np.ndarray:
        return sosfilt(sos, lfilter(*tilt, x)).astype(np.float32)

    return apply


def _peaking(f0: float, gain_db: float, q: float) -> np.ndarray:
    """RBJ peaking-EQ biquad as one second-order section."""
    amp, w = 10 ** (gain_db / 40), 2 * np.pi * f0 / SR
    alpha = np.sin(w) / (2 * q)
    b = [1 + alpha * amp, -2 * np.cos(w), 1 - alpha * amp]
    a = [1 + alpha / amp, -2 * np.cos(w), 1 - alpha / amp]
    return np.array(b + a) / a[0]


def loop_excerpt(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    """``n`` samples of ``x`` played in a loop, from a random start (one draw of ``rng``)."""
    return np.resize(x, n + len(x))[int(rng.integers(len(x))) :][:n]


def _colored(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian noise with a random smooth spectral envelope (slope + a few random bumps)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.linspace(1e-3, 1, len(spec))
    env = f ** rng.uniform(-1.2, 0.5)
    for _ in range(int(rng.integers(0, 4))):
        c, w = rng.uniform(0.005, 0.9), rng.uniform(0.01, 0.2)
        env *= 1 + rng.uniform(0, 6) * np.exp(-0.5 * ((f - c) / w) ** 2)
    return np.fft.irfft(spec * env, n)


def _shaped(rng: np.random.Generator, n: int, corner_hz: float, exponent: float) -> np.ndarray:
    """Gaussian noise, flat below ``corner_hz`` and falling as f**-exponent (amplitude) above it."""
    f = np.fft.rfftfreq(n, 1 / SR)
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / (1 + (f / corner_hz) ** exponent), n)


def wind_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Wind on a microphone port: turbulent low-frequency noise (corner 20-150 Hz, -20..-36 dB/decade
    above it) in log-normal gusts of 50-500 ms, each gust also adding a brighter component (corner
    150-800 Hz) that grows with the square of its strength -- so strong gusts reach into the speech band."""
    k = int(SR * rng.uniform(0.05, 0.5))
    g = np.convolve(rng.standard_normal(n + k), np.hanning(k), "valid")[:n]
    env = np.exp(rng.uniform(0.5, 1.6) * g / (np.std(g) + 1e-9))
    low = _shaped(rng, n, rng.uniform(20, 150), rng.uniform(1.0, 1.8))
    bright = _shaped(rng, n, rng.uniform(150, 800), rng.uniform(1.0, 1.6))
    gust = env**2 / np.mean(env**2) * np.mean(env)
    w = low / np.std(low) * env + rng.uniform(0.03, 0.3) * bright / np.std(bright) * gust
    return sosfilt(butter(2, 20, "highpass", fs=SR, output="sos"), w)  # the microphone's own high-pass


def synth_noise(rng: np.random.Generator, n: int, speech: list[np.ndarray]) -> np.ndarray:
    """One random synthetic noise of ``n`` samples, unit RMS."""
    kind = int(rng.integers(9))
    t = np.arange(n) / SR
    if kind == 0:
        w = rng.standard_normal(n)
    elif kind == 1:
        w = _colored(rng, n)
    elif kind == 2:  # brown / rumble
        w = np.cumsum(rng.standard_normal(n))
        w -= np.convolve(w, np.ones(400) / 400, "same")
    elif kind == 3:  # mains hum or fan: harmonics over coloured noise
        f0 = rng.choice([50.0, 60.0, 100.0, 120.0]) if rng.random() < 0.5 else rng.uniform(80, 400)
        w = sum(
            np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) * rng.uniform(0.1, 1) / k for k in range(1, 10)
        )
        w = w / np.std(w) + rng.uniform(0.05, 1.0) * _colored(rng, n) / 0.5
    elif kind == 4:  # clicks, knocks and other transients over light noise
        w = 0.1 * rng.standard_normal(n)
        for p in rng.integers(0, n, int(rng.integers(2, 20))):
            ln = int(rng.integers(40, 3000))
            b = rng.standard_normal(ln) * np.exp(-np.arange(ln) / (ln / 5))
            w[p : p + ln] += rng.uniform(1, 10) * b[: len(w[p : p + ln])]
    elif kind == 5:  # babble: 3-7 talkers
        w = np.zeros(n)
        for _ in range(int(rng.integers(3, 8))):
            s = speech[int(rng.integers(len(speech)))]
            s = loop_excerpt(rng, s, n)
            w += s * rng.uniform(0.5, 1.0)
    elif kind == 6:  # traffic-like: slowly swelling coloured noise
        env = np.exp(np.interp(t, np.linspace(0, t[-1] + 1e-3, 6), rng.uniform(-2.5, 0.5, 6)))
        w = _colored(rng, n) * env
    elif kind == 7:  # gated / intermittent coloured noise (appliances switching)
        g = np.repeat(rng.random(n // 1600 + 1) < 0.6, 1600)[:n].astype(float)
        g = np.convolve(g, np.ones(160) / 160, "same")
        w = _colored(rng, n) * (0.1 + g)
    else:
        w = wind_noise(rng, n)
    w = np.asarray(w, np.float64)
    return (w / (np.std(w) + 1e-9)).astype(np.float32)


def room_irs(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Shoebox rooms from pyroomacoustics (image method), RT60 0.15-0.9 s; direct path moved to index 0."""
    import pyroomacoustics as pra

    out = []
    while len(out) < n:
        dim = np.array([rng.uniform(3, 9), rng.uniform(3, 7), rng.uniform(2.4, 3.5)])
        rt60 = rng.uniform(0.15, 0.9)
        try:
            absorb, order = pra.inverse_sabine(rt60, dim)
        except ValueError:
            continue
        room = pra.ShoeBox(dim, fs=SR, materials=pra.Material(absorb), max_order=min(order, 12))
        src = rng.uniform(0.5, dim - 0.5)
        mic = rng.uniform(0.5, dim - 0.5)
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        h = np.asarray(room.rir[0][0], np.float32)
        pk = int(np.argmax(np.abs(h)))
        h = h[pk : pk + int(SR * 1.0)]
        out.append(h / (np.abs(h[0]) + 1e-9))
    return out


@dataclass
class Corpus:
    """Speech utterances (train / validation split), noise pools and room impulse responses."""

    train_speech: list[np.ndarray]
    val_speech: list[np.ndarray]
    real_noise: list[np.ndarray]
    rirs: list[np.ndarray]
    stats: dict = field(default_factory=dict)
    real_train: list[np.ndarray] = field(default_factory=list)  # human speech (see ``add_real_speech``)
    real_val: list[np.ndarray] = field(default_factory=list)
    ambient_train: list[np.ndarray] = field(default_factory=list)  # see ``add_ambient_noise``
    ambient_val: list[np.ndarray] = field(default_factory=list)
    extra: ExtraData = field(default_factory=ExtraData)  # see ``add_extra``

    def add_extra(self, log=print) -> None:
        """Load ../shared/data/ns-extra (``extra_data``: talkers and noise recordings split by hash) and add
        the shared real RIR to the rooms. Not cached: it takes seconds."""
        self.extra = extra_data()
        h = shared_rir()
        if h is not None and not any(len(r) == len(h) and np.array_equal(r, h) for r in self.rirs):
            self.rirs.append(h)
        self.stats["extra"] = self.extra.stats
        log("ns-extra", self.extra.stats)

    def add_ambient_noise(self, log=print) -> None:
        """Load the Debian ambient recordings (``ambient_noises``). Not cached: it takes a second."""
        self.ambient_train, self.ambient_val = ambient_noises()
        self.stats["ambient_noise"] = {
            "train_files": len(self.ambient_train),
            "val_files": len(self.ambient_val),
            "train_minutes": round(sum(map(len, self.ambient_train)) / SR / 60, 1),
        }
        log("ambient noise", self.stats["ambient_noise"])

    def add_real_speech(self, seed: int, log=print, sources: Iterable[str] = DEFAULT_SPEECH_SOURCES) -> None:
        """Load the Debian human recordings of ``sources`` (``REAL_SPEECH_SOURCES``; the validation
        speakers' always): ``REAL_VAL_GROUPS`` and the alsa-utils phrases become ``real_val``; every other
        recording outside ``REAL_VAL_LANGUAGES`` goes to ``real_train`` as itself plus one
        speed/tilt-perturbed copy (new pitch and formants: more speakers). Not cached: it takes seconds
        (a minute or two with Tux Paint's)."""
        rng = np.random.default_rng(seed + 7)
        names = sorted(set(DEFAULT_SPEECH_SOURCES) | set(sources))
        groups = real_speech({n: REAL_SPEECH_SOURCES[n] for n in names})
        self.real_val = [x for g in REAL_VAL_GROUPS for x in groups.get(g, [])] + alsa_phrases()
        train = [x for g, xs in sorted(groups.items()) if trains_on(g) for x in xs]
        self.real_train = train + [perturb_speech(rng, x) for x in train]
        self.stats["real_speech"] = {
            "groups": len(groups),
            "train_utterances": len(train),
            "train_minutes": round(sum(map(len, train)) / SR / 60, 1),
            "val_utterances": len(self.real_val),
            "val_groups": [g for g in REAL_VAL_GROUPS if g in groups] + ["alsa-utils"],
        }
        log("real speech", self.stats["real_speech"])

    @classmethod
    def build(cls, seed: int, utterances: int, rirs: int, log=print) -> Corpus:
        rng = np.random.default_rng(seed)
        speech, used = synth_speech(rng, utterances, log)
        n_val = max(2, len(speech) // 10)
        try:
            h = room_irs(rng, rirs)
        except ImportError:  # pyroomacoustics missing: fall back to exponential-decay noise tails
            h = [_decay_ir(rng) for _ in range(rirs)]
        return cls(
            speech[n_val:], speech[:n_val], real_noises(), h, {"engines": used, "utterances": len(speech)}
        )

    def save(self, path: Path) -> None:
        arrays = {f"s{i}": x for i, x in enumerate(self.train_speech)}
        arrays |= {f"v{i}": x for i, x in enumerate(self.val_speech)}
        arrays |= {f"n{i}": x for i, x in enumerate(self.real_noise)}
        arrays |= {f"r{i}": x for i, x in enumerate(self.rirs)}
        np.savez(path, meta=np.array(json.dumps(self.stats)), **arrays)

    @classmethod
    def load(cls, path: Path) -> Corpus:
        z = np.load(path)

        def get(prefix: str) -> list[np.ndarray]:
            return [z[k] for k in sorted((k for k in z.files if k[0] == prefix), key=lambda k: int(k[1:]))]

        stats = json.loads(str(z["meta"])) if "meta" in z.files else {}
        return cls(get("s"), get("v"), get("n"), get("r"), stats)


def _decay_ir(rng: np.random.Generator) -> np.ndarray:
    rt60 = rng.uniform(0.15, 0.9)
    n = int(rt60 * SR)
    h = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
    h[0] = 1.0 / 0.3
    return (h * 0.3).astype(np.float32)


class Mixer:
    """Random (clean target, noisy input) pairs made on the fly from a ``Corpus``."""

    def __init__(
        self,
        corpus: Corpus,
        rng: np.random.Generator,
        speech: list[np.ndarray] | None = None,
        real: list[np.ndarray] | None = None,
        real_fraction: float = 0.0,
        snr_db: tuple[float, float] = TRAIN_SNR_DB,
        ambient: list[np.ndarray] | None = None,
        ambient_fraction: float = 0.0,
        extra_fraction: float = 0.0,
        extra_noise_fraction: float = 0.0,
        shared_noise_fraction: float = 0.45,
        mic_fraction: float = 0.0,
        level_db: tuple[float, float] = TRAIN_LEVEL_DB,
        reverb_target_ms: float = 50.0,
    ) -> None:
        """``extra_fraction``: share of utterances from ns-extra's training talkers (also babble voices);
        noise shares: ``shared_noise_fraction`` the two recordings of ../shared/data/ns, then
        ``ambient_fraction`` the Debian ambient ones, ``extra_noise_fraction`` ns-extra's training
        recordings, the rest synthetic; ``mic_fraction``: share of examples given a random microphone
        colouration (``microphone``); ``level_db``: the mixtures' RMS level range in dBFS;
        ``reverb_target_ms``: how much of a room's response the target keeps (50: direct path and early
        reflections, the model also dereverberates; 0: all of it, the model removes noise only). The
        defaults draw exactly what the earlier recipes drew."""
        self.c, self.rng, self.snr_db, self.level_db = corpus, rng, snr_db, level_db
        self.ambient = ambient if ambient is not None else corpus.ambient_train
        self.ambient_fraction = ambient_fraction if self.ambient else 0.0
        self.speech = speech if speech is not None else corpus.train_speech
        self.real = real if real is not None else corpus.real_train
        self.real_fraction = real_fraction if self.real else 0.0
        self.extra = corpus.extra.speech_train
        self.extra_fraction = extra_fraction if self.extra else 0.0
        self.extra_noise = corpus.extra.noise_train
        self.extra_noise_fraction = extra_noise_fraction if self.extra_noise else 0.0
        self.noise_cuts = np.cumsum([shared_noise_fraction, self.ambient_fraction, self.extra_noise_fraction])
        if self.noise_cuts[-1] > 1.0:
            raise ValueError("noise shares add up to more than 1")
        self.mic_fraction, self.reverb_target = mic_fraction, int(SR * reverb_target_ms / 1000)
        self.talkers = self.speech + self.real + (self.extra if self.extra_fraction else [])  # babble voices

    def _speech(self, n: int) -> np.ndarray:
        rng, out, pos = self.rng, np.zeros(n, np.float32), int(self.rng.integers(-n // 4, n // 8))
        while pos < n:
            u = rng.random()
            pool = (
                self.extra
                if u < self.extra_fraction
                else self.real
                if u < self.extra_fraction + self.real_fraction
                else self.speech
            )
            s = pool[int(rng.integers(len(pool)))]
            if pool is self.extra and len(s) > n:  # read sentences run to 35 s: a random excerpt
                k = int(rng.integers(len(s) - n + 1))
                s = s[k : k + n]
            s = s * rng.uniform(0.5, 1.5)
            a, b = max(pos, 0), min(pos + len(s), n)
            if b > a:
                out[a:b] += s[a - pos : b - pos]
            pos += len(s) + int(rng.integers(0, SR // 2))
        return out

    def _noise(self, n: int) -> np.ndarray:
        """Unit-RMS noise: the shares of the constructor (``noise_cuts``; by default 45 % the shared real
        recordings, ``ambient_fraction`` the Debian ambient ones, the rest synthetic); perturbed, sometimes
        plus a second noise. With the default shares the random draws are exactly those of the earlier
        recipe."""
        rng = self.rng
        u = rng.random()
        if u < self.noise_cuts[-1]:
            pools = (self.c.real_noise, self.ambient, self.extra_noise)
            pool = pools[int(np.searchsorted(self.noise_cuts, u, side="right"))]
            src = pool[int(rng.integers(len(pool)))]
            f = int(rng.integers(85, 118))
            if f != 100:
                src = resample_poly(src, 100, f).astype(np.float32)
            if rng.random() < 0.5:
                src = src[::-1]
            nz = loop_excerpt(rng, src, n)
            if rng.random() < 0.5:
                nz = lfilter([1.0, -rng.uniform(-0.7, 0.7)], [1.0], nz)
        else:
            nz = synth_noise(rng, n, self.talkers)
        if rng.random() < 0.3:  # add a second noise
            nz = nz / (np.std(nz) + 1e-9) + rng.uniform(0.1, 0.7) * synth_noise(rng, n, self.talkers)
        return (nz / (np.std(nz) + 1e-9)).astype(np.float32)

    def pair(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        dry = self._speech(n)
        clean = dry
        if rng.random() < 0.35:  # reverberant input; target keeps direct path + early reflections (or all)
            h = self.c.rirs[int(rng.integers(len(self.c.rirs)))]
            wet = fftconvolve(dry, h)[:n]
            clean = fftconvolve(dry, h[: self.reverb_target])[:n] if self.reverb_target else wet
            dry = wet
        clean, x = clean.astype(np.float32), dry.astype(np.float32)
        ref = np.std(x) + 1e-9
        if rng.random() < 0.05:  # noise only
            clean, x = clean * 0, x * 0
        snr = rng.uniform(*self.snr_db)
        x = x + self._noise(n) * ref * 10 ** (-snr / 20)
        if self.mic_fraction and rng.random() < self.mic_fraction:  # the same capsule for speech and noise
            mic = microphone(rng)
            clean, x = mic(clean), mic(x)
        g = 10 ** (rng.uniform(*self.level_db) / 20) / (np.std(x) + 1e-9)
        peak = np.max(np.abs(x * g))
        if peak > 0.99:
            g *= 0.99 / peak
        return (clean * g).astype(np.float32), (x * g).astype(np.float32)

    def batch(self, size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        cs, xs = zip(*(self.pair(n) for _ in range(size)), strict=True)
        return np.stack(cs), np.stack(xs)
