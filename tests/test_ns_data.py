"""The noise-suppression training data: human-speech loading rules and the wind-noise generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from tools.ns_train import data
from tools.ns_train.data import (
    SR,
    Corpus,
    Mixer,
    ambient_noises,
    real_speech,
    recording_snr_db,
    speaker_desc_language,
    speaker_folder,
    wind_noise,
)


def _voice(rng: np.random.Generator, seconds: float, sr: int, hiss_db: float) -> np.ndarray:
    """A vowel-like harmonic burst between silences, over a hiss ``hiss_db`` below it."""
    t = np.arange(int(seconds * sr)) / sr
    v = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12)) * np.hanning(len(t))
    v = np.concatenate([np.zeros(sr // 4), v, np.zeros(sr // 4)])
    v = v / np.std(v) * 0.1
    return (v + rng.standard_normal(len(v)) * 0.1 * 10 ** (hiss_db / 20)).astype(np.float32)


def test_real_speech_groups_by_folder_and_drops_duplicates_narrowband_and_noisy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = _voice(rng, 0.6, 44100, -60)
    (tmp_path / "de" / "alpha").mkdir(parents=True)
    (tmp_path / "fr").mkdir()
    sf.write(tmp_path / "de" / "alpha" / "a.wav", good, 44100)
    sf.write(tmp_path / "de" / "alpha" / "b.wav", np.stack([good, good], 1), 44100)  # same samples, stereo
    sf.write(tmp_path / "de" / "c.wav", _voice(rng, 0.6, 8000, -60), 8000)  # telephone band: no 4-8 kHz
    sf.write(tmp_path / "fr" / "d.wav", _voice(rng, 0.6, 22050, -12), 22050)  # its own hiss 12 dB down
    sf.write(tmp_path / "fr" / "e.wav", _voice(rng, 0.8, 22050, -60), 22050)
    (tmp_path / "fr" / "notes.txt").write_text("not audio")
    groups = real_speech({"pkg": (tmp_path, "*", speaker_folder)})
    assert sorted(groups) == ["pkg/de", "pkg/fr"]
    assert len(groups["pkg/de"]) == 1 and len(groups["pkg/fr"]) == 1
    for x in groups["pkg/de"] + groups["pkg/fr"]:
        assert x.dtype == np.float32 and abs(np.std(x) - 1) < 1e-3
        assert len(x) < 1.3 * SR  # silences trimmed to 50 ms each side


def test_tux_paint_descriptions_are_grouped_by_language_and_its_sound_effects_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    (tmp_path / "animals" / "birds").mkdir(parents=True)
    (tmp_path / "vehicles").mkdir()
    for name in (
        "animals/birds/owl_desc_es.ogg",
        "vehicles/bus_desc_es.ogg",
        "vehicles/bus_desc.ogg",
        "vehicles/bus.ogg",
    ):  # the last: the stamp's sound effect, not speech
        sf.write(tmp_path / name, _voice(rng, 0.6, 44100, -60), 44100)
    groups = real_speech({"tuxpaint": (tmp_path, "*_desc*.ogg", speaker_desc_language)})
    assert {k: len(v) for k, v in groups.items()} == {"tuxpaint/es": 2, "tuxpaint/en": 1}


def test_added_speech_sources_keep_the_validation_speakers_languages_out_of_training(monkeypatch) -> None:
    voice = np.ones(SR, np.float32)
    found = {
        "klettres/ru": [voice],
        "klettres/de": [voice],
        "ktuberling/el": [voice],
        "ktuberling/fr": [voice],
        "tuxpaint/ru": [voice * 2],
        "tuxpaint/es": [voice * 3],
        "tuxpaint/el": [voice * 2],
    }
    asked = []
    monkeypatch.setattr(data, "real_speech", lambda sources: asked.append(sorted(sources)) or found)
    monkeypatch.setattr(data, "alsa_phrases", lambda: [])
    corpus = data.Corpus([], [], [], [])
    corpus.add_real_speech(0, log=lambda *_: None, sources=["tuxpaint"])
    assert asked == [["klettres", "ktuberling", "tuxpaint"]]
    assert len(corpus.real_val) == 2  # klettres/ru and ktuberling/el
    originals = corpus.real_train[: len(corpus.real_train) // 2]  # then one perturbed copy of each
    assert sorted(float(x[0]) for x in originals) == [1.0, 1.0, 3.0]  # de, fr and tuxpaint/es only


def test_recording_snr_separates_clean_from_hissy_recordings() -> None:
    rng = np.random.default_rng(1)
    assert recording_snr_db(_voice(rng, 1.0, SR, -60)) > 40
    assert recording_snr_db(_voice(rng, 1.0, SR, -12)) < 20


def test_wind_noise_is_low_frequency_and_gusty() -> None:
    rng = np.random.default_rng(2)
    for _ in range(5):
        w = wind_noise(rng, 4 * SR)
        p = np.abs(np.fft.rfft(w)) ** 2
        f = np.fft.rfftfreq(len(w), 1 / SR)
        low, mid = p[(f > 20) & (f < 200)].sum(), p[(f > 1000) & (f < 4000)].sum()
        assert low > 5 * mid  # most energy sits below the speech band
        assert p[f < 10].sum() < 0.01 * p.sum()  # the port's high-pass: no DC drift
        frames = (w[: len(w) // 1600 * 1600].reshape(-1, 1600) ** 2).mean(1)
        assert 10 * np.log10(frames.max() / frames.min()) > 6  # gusts, not a steady hum


def test_mixer_draws_human_speech_at_the_requested_share() -> None:
    rng = np.random.default_rng(3)
    synth = [np.full(SR // 2, 1.0, np.float32)]
    human = [np.full(SR // 2, -1.0, np.float32)]
    corpus = Corpus([], [], [np.ones(SR, np.float32)], [np.r_[1.0, np.zeros(99)].astype(np.float32)])
    mixer = Mixer(corpus, rng, speech=synth, real=human, real_fraction=0.3)
    signs = [np.sign(mixer._speech(SR // 2 + 1)[SR // 4]) for _ in range(400)]  # noqa: SLF001
    share = np.mean([s < 0 for s in signs if s != 0])
    assert 0.2 < share < 0.4
    assert Mixer(corpus, rng, speech=synth, real=[], real_fraction=0.9).real_fraction == 0.0


def test_mixer_keeps_the_snr_in_the_requested_range() -> None:
    rng = np.random.default_rng(5)
    speech = [rng.standard_normal(SR // 2).astype(np.float32)]  # not DC: babble is made of it too
    corpus = Corpus(
        [], [], [rng.standard_normal(SR).astype(np.float32)], [np.r_[1.0, np.zeros(99)].astype(np.float32)]
    )
    mixer = Mixer(corpus, rng, speech=speech, real=[], snr_db=(3.0, 7.0))
    snrs = []
    for _ in range(60):
        clean, noisy = mixer.pair(SR)
        if np.std(clean) > 0:  # not one of the noise-only examples
            snrs.append(20 * np.log10(np.std(clean) / np.std(noisy - clean)))
    assert 2.9 < min(snrs) and max(snrs) < 7.1  # the default range (-5..20 dB) would fall outside
    assert max(snrs) - min(snrs) > 2


def _gru_step(x: np.ndarray, h: np.ndarray, wk: np.ndarray, wr: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One Keras GRU step (gate order z, r, h; reset_after), as the exported graph computes it."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    xz, xr, xh = np.split(x @ wk + b[0], 3, -1)
    hz, hr, hh = np.split(h @ wr + b[1], 3, -1)
    z, r = sig(xz + hz), sig(xr + hr)
    return z * h + (1 - z) * np.tanh(xh + r * hh)


def test_widening_keeps_what_the_trained_network_computes() -> None:
    from tools.ns_train.train import _widen

    rng = np.random.default_rng(4)
    small, big, n_in, n_out = 6, 10, 5, 4
    shapes = {
        "enc": [(n_in, small), (small,)],
        "gru": [(small, 3 * small), (small, 3 * small), (2, 3 * small)],
        "mask": [(small, n_out), (n_out,)],
    }
    trained = {k: [rng.standard_normal(s) for s in v] for k, v in shapes.items()}
    fresh = {
        "enc": [rng.standard_normal((n_in, big)), np.zeros(big)],
        "gru": [
            rng.standard_normal((big, 3 * big)),
            rng.standard_normal((big, 3 * big)),
            np.zeros((2, 3 * big)),
        ],
        "mask": [rng.standard_normal((big, n_out)), np.zeros(n_out)],
    }
    wide = {
        k: [_widen(t, f, 3 if k == "gru" else 1) for t, f in zip(trained[k], fresh[k], strict=True)]
        for k in trained
    }
    assert [w.shape for w in wide["gru"]] == [(big, 3 * big), (big, 3 * big), (2, 3 * big)]

    def run(w: dict, hidden: int) -> np.ndarray:
        h, outs = np.zeros(hidden), []
        for x in rng_in:
            e = np.tanh(x @ w["enc"][0] + w["enc"][1])
            h = _gru_step(e, h, *w["gru"])
            outs.append(h @ w["mask"][0] + w["mask"][1])
        return np.array(outs)

    rng_in = rng.standard_normal((12, n_in))
    np.testing.assert_allclose(run(wide, big), run(trained, small), atol=1e-12)
    assert np.any(wide["gru"][0][:, small : small + 1] != 0)  # new units do learn from the old ones


def test_rebinning_interpolates_between_frequency_grids() -> None:
    from tools.ns_train.train import _rebin

    m = _rebin(161, 257)
    assert m.shape == (257, 161) and np.allclose(m.sum(1), 1)
    ramp = np.linspace(0, 8000, 161)  # a quantity linear in frequency is carried over exactly
    np.testing.assert_allclose(m @ ramp, np.linspace(0, 8000, 257), atol=1e-3)
    np.testing.assert_allclose(_rebin(257, 161) @ (m @ ramp), ramp, atol=1e-3)


def test_ambient_noises_split_held_out_names_and_skip_unusable_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sf.write(tmp_path / "a" / "rain.wav", rng.standard_normal(3 * 22050) * 0.2, 22050)
    sf.write(
        tmp_path / "a" / "oceanwaves.wav", np.stack([rng.standard_normal(2 * 44100)] * 2, 1) * 0.1, 44100
    )
    sf.write(tmp_path / "a" / "phone.wav", rng.standard_normal(3 * 8000) * 0.2, 8000)  # nothing above 4 kHz
    sf.write(tmp_path / "a" / "blip.wav", rng.standard_normal(SR // 2) * 0.2, SR)  # too short to loop
    sf.write(tmp_path / "b" / "silence.wav", np.zeros(2 * SR), SR)
    (tmp_path / "b" / "broken.wav").write_bytes(b"RIFF not audio")
    sources = {
        "x": (tmp_path / "a", ["*.wav"]),
        "y": (tmp_path / "b", ["*.wav"]),
        "gone": (tmp_path / "no", ["*"]),
    }
    train, val = ambient_noises(sources)
    assert len(train) == 1 and len(val) == 1  # rain trains; oceanwaves is a held-out validation name
    assert len(train[0]) == 3 * SR and len(val[0]) == 2 * SR  # resampled to 16 kHz, first channel
    for x in train + val:
        assert x.dtype == np.float32 and abs(np.std(x) - 1) < 1e-3


def test_mixer_draws_ambient_noise_at_its_share_and_leaves_the_old_recipe_alone() -> None:
    speech = [np.random.default_rng(7).standard_normal(SR // 2).astype(np.float32)]
    tone = lambda hz: np.sin(2 * np.pi * hz * np.arange(SR) / SR).astype(np.float32)  # noqa: E731
    # the pools told apart by a tone each (the recipe resamples them by at most 15 %)
    corpus = Corpus([], [], [tone(1000)], [np.r_[1.0, np.zeros(99)].astype(np.float32)])
    ambient = [tone(3000)]

    def is_ambient(n: np.ndarray) -> bool:
        p, f = np.abs(np.fft.rfft(n)) ** 2, np.fft.rfftfreq(len(n), 1 / SR)
        return p[(f > 2400) & (f < 3600)].sum() > 0.5 * p.sum()

    def draws(fraction: float, pool: list[np.ndarray] | None) -> list[np.ndarray]:
        mixer = Mixer(
            corpus, np.random.default_rng(8), speech=speech, real=[], ambient=pool, ambient_fraction=fraction
        )
        return [mixer._noise(SR // 4) for _ in range(300)]  # noqa: SLF001

    with_ambient = draws(0.3, ambient)
    share = np.mean([is_ambient(n) for n in with_ambient])
    assert 0.2 < share < 0.4
    # no ambient share: the random draws, so the noises, are exactly those of a mixer without the pool
    # (the earlier stages of reproduce.sh depend on it)
    assert all(np.array_equal(p, q) for p, q in zip(draws(0.0, ambient), draws(0.0, None), strict=True))
    assert (
        Mixer(
            corpus, np.random.default_rng(0), speech=speech, real=[], ambient=[], ambient_fraction=0.5
        ).ambient_fraction
        == 0.0
    )


def test_extra_split_keeps_talkers_and_recordings_whole(tmp_path: Path) -> None:
    from tools.ns_train.data import extra_data, extra_held_out, extra_split_key

    rel = Path
    assert extra_split_key(rel("speech/librispeech/1688/1688-142285-0003.flac")) == "speech:librispeech/1688"
    # ESC-10 takes of one freesound recording stay together; same-named sounds of two folders too
    assert (
        extra_split_key(rel("noise/esc10/rain__1-17367-A.flac"))
        == extra_split_key(rel("noise/esc10/rain__1-17367-B.flac"))
        == "noise:esc10/17367"
    )
    assert extra_split_key(rel("noise/blanket/wind.flac")) == extra_split_key(
        rel("noise/modern-alarm-clock/wind.flac")
    )
    # the fixed split that docs/noise-suppression.md describes (no seed: the same on every machine)
    assert extra_held_out("speech:asterisk-core-sounds/maxim_topal")
    assert not extra_held_out("speech:asterisk-core-sounds/allison_smith") and extra_held_out(
        "noise:construction"
    )
    # a tree of talkers and recordings: every file lands on its unit's side; val_only reads that side alone
    rng = np.random.default_rng(9)
    talkers = [f"spk{i}" for i in range(40)]
    for t in talkers:
        for k in range(2):
            f = tmp_path / "speech" / "src" / t / f"{t}-{k}.flac"
            f.parent.mkdir(parents=True, exist_ok=True)
            sf.write(f, _voice(rng, 0.5, SR, -60), SR)
    (tmp_path / "noise" / "esc10").mkdir(parents=True)
    for i in range(30):
        for take in "AB":
            sf.write(
                tmp_path / "noise" / "esc10" / f"rain__1-{1000 + i}-{take}.flac",
                rng.standard_normal(SR) * 0.1,
                SR,
            )
    split = extra_data(tmp_path)
    val_talkers = [t for t in talkers if extra_held_out(f"speech:src/{t}")]
    val_noises = [i for i in range(30) if extra_held_out(f"noise:esc10/{1000 + i}")]
    assert 0 < len(val_talkers) < len(talkers) and 0 < len(val_noises) < 30
    assert len(split.speech_val) == 2 * len(val_talkers) and len(split.speech_train) == 2 * (
        40 - len(val_talkers)
    )
    assert len(split.noise_val) == 2 * len(val_noises) and len(split.noise_train) == 2 * (
        30 - len(val_noises)
    )
    assert split.stats["talkers_val"] == len(val_talkers) and split.stats["noise_recordings_val"] == len(
        val_noises
    )
    only = extra_data(tmp_path, val_only=True)
    assert not only.speech_train and not only.noise_train and len(only.speech_val) == len(split.speech_val)
    assert all(np.array_equal(a, b) for a, b in zip(only.noise_val, split.noise_val, strict=True))


def test_extra_validation_set_mixes_at_its_fixed_snrs() -> None:
    from tools.ns_train.data import EXTRA_VAL_SNRS, ExtraData, extra_validation_set

    rng = np.random.default_rng(10)
    extra = ExtraData(
        speech_val=[rng.standard_normal(int(SR * s)).astype(np.float32) for s in (1.0, 2.5, 9.0)],
        noise_val=[rng.standard_normal(SR).astype(np.float32)],
    )
    clean, noisy = extra_validation_set(extra, 10)
    again = extra_validation_set(extra, 10)
    assert all(np.array_equal(a, b) for a, b in zip(noisy, again[1], strict=True))  # fixed
    for i, (c, x) in enumerate(zip(clean, noisy, strict=True)):
        assert 3 * SR <= len(c) <= 6 * SR and abs(np.std(c) - 0.05) < 1e-3
        assert abs(20 * np.log10(np.std(c) / np.std(x - c)) - EXTRA_VAL_SNRS[i % 5]) < 0.2
    fixed = extra_validation_set(extra, 5, seconds=4.0)[1]
    assert {len(x) for x in fixed} == {4 * SR}


def test_microphone_colouration_is_one_linear_filter_for_target_and_mixture() -> None:
    from tools.ns_train.data import microphone

    rng = np.random.default_rng(11)
    a, b = rng.standard_normal(SR).astype(np.float32), rng.standard_normal(SR).astype(np.float32)
    lowpassed = 0
    for _ in range(40):
        mic = microphone(rng)
        np.testing.assert_allclose(mic(a + b), mic(a) + mic(b), atol=1e-4)  # noise and speech coloured alike
        y = mic(a)
        assert np.all(np.isfinite(y)) and 0.05 < np.std(y) / np.std(a) < 5
        p, f = np.abs(np.fft.rfft(y)) ** 2, np.fft.rfftfreq(len(y), 1 / SR)
        lowpassed += p[f > 7600].sum() < 0.01 * p[f < 3000].sum() * (400 / 3000)
    assert 3 <= lowpassed <= 25  # band-limiting on some, not all


def test_mixer_draws_extra_speech_and_noise_at_their_shares_and_leaves_the_old_recipe_alone() -> None:
    from tools.ns_train.data import ExtraData

    rng = np.random.default_rng(12)
    tone = lambda hz, n=SR: np.sin(2 * np.pi * hz * np.arange(n) / SR).astype(np.float32)  # noqa: E731
    base = Corpus([], [], [tone(1000)], [np.r_[1.0, np.zeros(99)].astype(np.float32)])
    loaded = Corpus(
        [],
        [],
        [tone(1000)],
        [np.r_[1.0, np.zeros(99)].astype(np.float32)],
        extra=ExtraData(speech_train=[np.full(20 * SR, -1.0, np.float32)], noise_train=[tone(3000)]),
    )
    speech = [np.full(SR // 2, 1.0, np.float32)]
    old = Mixer(base, np.random.default_rng(13), speech=speech, real=[])
    new = Mixer(loaded, np.random.default_rng(13), speech=speech, real=[])  # ns-extra loaded, shares zero
    assert all(
        np.array_equal(p, q)
        for _ in range(30)
        for p, q in zip(old.pair(SR // 2), new.pair(SR // 2), strict=True)
    )
    mixer = Mixer(
        loaded,
        rng,
        speech=speech,
        real=[],
        extra_fraction=0.4,
        extra_noise_fraction=0.3,
        shared_noise_fraction=0.2,
    )
    signs = [np.sign(mixer._speech(SR // 2 + 1)[SR // 4]) for _ in range(400)]  # noqa: SLF001
    assert 0.3 < np.mean([s < 0 for s in signs if s != 0]) < 0.5
    assert len(mixer._speech(SR)) == SR  # noqa: SLF001 - a 20 s utterance is cut to an excerpt

    def share(hz: float) -> float:
        hits = []
        for _ in range(300):
            n = mixer._noise(SR // 4).astype(np.float64)  # noqa: SLF001
            p, f = np.abs(np.fft.rfft(n)) ** 2, np.fft.rfftfreq(len(n), 1 / SR)
            hits.append(p[(f > 0.8 * hz) & (f < 1.2 * hz)].sum() > 0.5 * p.sum())
        return float(np.mean(hits))

    assert 0.2 < share(3000) < 0.4 and 0.1 < share(1000) < 0.3


def test_reverb_target_keeps_the_whole_room_when_asked() -> None:
    rng = np.random.default_rng(14)
    speech = [rng.standard_normal(SR // 2).astype(np.float32)]
    room = (rng.standard_normal(SR // 2) * np.exp(-np.arange(SR // 2) / 1600)).astype(np.float32)
    room[0] = 1.0
    corpus = Corpus([], [], [rng.standard_normal(SR).astype(np.float32)], [room])

    def residue(ms: float) -> list[float]:  # at 200 dB SNR the input is the reverberant speech itself
        mixer = Mixer(
            corpus,
            np.random.default_rng(15),
            speech=speech,
            real=[],
            snr_db=(200.0, 200.0),
            reverb_target_ms=ms,
        )
        pairs = [mixer.pair(SR) for _ in range(40)]
        return [float(np.std(x - c) / (np.std(x) + 1e-12)) for c, x in pairs if np.std(c) > 0]

    early = residue(50.0)
    assert max(residue(0.0)) < 1e-4  # the target is what the microphone heard, minus the noise
    assert sum(r > 0.05 for r in early) >= 5  # by default the late reverb is left out of the target (35 %)
