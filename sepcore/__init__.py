"""sepcore: the pure library of the separation system (no Ray in here).

Shape vocabulary, used by every module and stated only here
-----------------------------------------------------------
* waveform:     ``(channels, samples)`` for one signal, ``(batch, channels, samples)``
  for a batch. Channels first, always. Samples are float32 in [-1, 1].
* spectrogram:  ``(channels, bins, frames)``, batched ``(batch, channels, bins, frames)``.
* stems:        ``(stems, channels, samples)``, batched ``(batch, stems, channels, samples)``.

Units: time is in seconds (:data:`sepcore.units.Seconds`) or in samples (int) at an
explicit sample rate; never both in one argument. Levels are in dB
(:data:`sepcore.units.Decibels`), dBFS for peaks and LUFS for integrated loudness.
The sample rate travels with the audio (:class:`sepcore.io.audio.Audio`).

Storage locations are URIs: a plain path, ``file://...`` or ``s3://...``
(:mod:`sepcore.io.storage`). Errors raised by the library are subclasses of
:class:`sepcore.errors.SepError` and name the file and the problem.
"""

__version__ = "0.1.0"
