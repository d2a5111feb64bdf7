"""Offline speech synthesis with libespeak-ng through ctypes.

The library and its voice data come in the PyPI package ``espeakng-loader``:
no system package, no sudo. libespeak-ng keeps global state: it hangs when
initialised twice, so :func:`espeak` hands out one :class:`Espeak` per process,
and an utterance's samples depend on what was spoken before it in the same
process, so reproducible audio needs the same sequence from a fresh process.
"""

import functools

import ctypes
from typing import List

import numpy as np

from espnet_lowrank.errors import InputError

_AUDIO_OUTPUT_RETRIEVAL = 1
_POS_CHARACTER = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@functools.lru_cache(maxsize=None)
def espeak() -> "Espeak":
    """The process's one synthesiser."""
    return Espeak()


class Espeak:
    def __init__(self):
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_RETRIEVAL, 0, data, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"libespeak-ng failed to initialise with data at {data!r}")
        self._chunks: List[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as we are
        self._lib.espeak_SetSynthCallback(self._callback)

    def seed(self, value: int) -> None:
        """Seed the noise espeak-ng draws (aspiration, some variants' voicing): its own generator, which
        it seeds from the clock, and the C library's ``rand()``, which a forked process inherits."""
        self._lib.espeak_ng_SetRandSeed(ctypes.c_long(value))
        ctypes.CDLL(None).srand(ctypes.c_uint(value))

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int = 50) -> np.ndarray:
        """int16 samples at :attr:`sample_rate` of ``text`` spoken by ``voice``
        (e.g. ``en+m3``) at ``rate`` words per minute and ``pitch`` 0-99."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise InputError(f"espeak-ng has no voice {voice!r}")
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(parameter, value, 0)
        self._chunks = []
        encoded = text.encode()
        status = self._lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, 0, None, None
        )
        self._lib.espeak_Synchronize()
        if status != 0 or not self._chunks:
            raise RuntimeError(f"espeak-ng could not synthesise {text!r} (status {status})")
        return np.concatenate(self._chunks)
