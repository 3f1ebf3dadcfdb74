"""Band styles for the arranger (:mod:`sepcore.data.arranger`), as declarative records.

A :class:`Style` holds one :class:`Groove` per metre kind it can play (see
:func:`metre_kind`): the tempo range and the patterns of every role. Patterns are
strings on a sixteenth-note grid, one character a step (``"x...x..."``); a pattern
may span one bar or two (a 24-step waltz bass alternates root and fifth). Each
role's tuple runs from sparse to dense: verses draw from the first half, choruses
from the second.

Symbols. Drums (per GM drum note): ``X`` accent, ``x`` hit, ``o`` ghost. Bass:
``R`` root (the chord's bass note for slash chords), ``3``/``5`` the chord's third
and fifth, ``6``/``7`` the major sixth and minor seventh above the root, ``8`` the
octave, ``a`` a chromatic approach to the next chord's root, ``w`` a walking tone,
``g`` a ghosted root. Comping (guitar, piano, strings/pad, brass stabs, arpeggios):
``x``/``X`` the whole voicing (accented), ``c`` the voicing without its lowest note,
``b``/``f`` the root/fifth alone below the voicing (boom-chick), ``p`` a power chord
(root, fifth, octave), ``q`` root and sixth (boogie), ``m`` a muted sixteenth (two top
voices, short), ``1``-``4`` one voice of the voicing, lowest first (arpeggios).
Everywhere ``-`` holds the previous note and ``.`` rests.

Metre kinds: ``duple`` (2/4, 4/4, 2/2; also 5/4, 7/8 and other odd metres, the
pattern restarting at each bar), ``triple`` (3/4, 3/2, 6/4) and ``compound`` (3/8,
6/8, 9/8, 12/8: dotted-quarter beats of six steps). Tempo ranges are in beats per
minute, the beat being a quarter (duple, triple) or a dotted quarter (compound).

The styles:

* ``rock``: straight eighths; kick on 1 and 3 with pushes, backbeat snare, eighth
  hats (ride or open hats in choruses); root-eighths bass; power chords and
  strums; organ, brass section or synth lead on top.
* ``ballad``: pop ballad in 4/4, 3/4 or 6/8; side-stick verses, snare in choruses;
  long bass notes; arpeggiated guitar and piano; sustained strings and pads.
* ``blues``: shuffle (swung eighths) in 4/4 or a 12/8 slow blues; root-fifth-sixth
  boogie bass; boogie dyads on guitar, quarter comping on piano; organ, harmonica,
  horns.
* ``swing``: jazz swing; ride "ding ding-a-ding" with hi-hat on 2 and 4, feathered
  kick; two-feel then walking bass; Freddie Green guitar quarters, Charleston piano
  comping; saxes, brass, vibraphone.
* ``funk``: sixteenths, lightly swung; syncopated kick, ghosted snare, sixteenth
  hats; syncopated octave bass with ghosts; muted-sixteenth guitar, clavinet stabs,
  horn stabs.
* ``latin``: bossa nova; cross-stick clave, kick on 1 and the and of 2, shaker;
  root-fifth bass with anticipations; syncopated nylon-guitar and piano chords;
  flute, saxes, vibraphone.
* ``waltz``: 3/4 (or 6/8 as two slow waltz beats); oom-pah-pah: kick and root on
  one, chords on two and three; accordion, clarinet, flute, celesta.
* ``electronic``: four-on-the-floor kick, clap backbeat, off-beat open hats;
  off-beat or octave synth bass; house stabs, sixteenth arpeggios, synth pads.
* ``country``: folk/country; boom-chick (bass on 1 and 3, chords on 2 and 4),
  train-beat snare, tambourine; a country waltz in 3/4 and a jig feel in 6/8;
  harmonica, accordion, whistle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# General MIDI drum notes
KICK, SIDE, SNARE, CLAP, HAT, PEDAL, OPEN = 36, 37, 38, 39, 42, 44, 46
CRASH, RIDE, TAMB, COWBELL, SHAKER, CLAVES = 49, 51, 54, 56, 70, 75
CONGA_HI, CONGA_LO = 62, 64
TOMS = (50, 47, 45, 43, 41)  # high to low

#: Drum kits (GM program on the drum channel): standard, room, power, electronic,
#: TR-808, jazz, brush.
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)

METRE_KINDS = ("duple", "triple", "compound")

DrumPattern = tuple[tuple[int, str], ...]  # (GM drum note, hits)


@dataclass(frozen=True)
class Groove:
    """The patterns of one style in one metre kind; every tuple sparse to dense."""

    tempo: tuple[float, float]  # beats per minute (see the module docstring)
    drums: tuple[DrumPattern, ...]
    bass: tuple[str, ...]
    guitar: tuple[str, ...]
    piano: tuple[str, ...]
    pad: tuple[str, ...]  # strings and sustained "other" parts
    stab: tuple[str, ...]  # rhythmic hits of brass, organ, reeds
    arp: tuple[str, ...]  # broken chords of synth leads, pipes, mallets


@dataclass(frozen=True)
class Style:
    """One band style: grooves by metre kind, feel, and the programs that suit it.

    ``swing`` is the delay of off-beat ``swing_step`` steps (2: eighths, 1:
    sixteenths) as a fraction of a triplet (1.0: full triplet swing). ``programs``
    lists preferred GM programs per role (``guitar``, ``bass``, ``piano``,
    ``strings``, ``other``); the arranger mixes them with uniform draws of the class.
    """

    name: str
    grooves: Mapping[str, Groove]
    swing: float
    swing_step: int
    kits: tuple[int, ...]
    programs: Mapping[str, tuple[int, ...]]
    fill_rate: float


def metre_kind(meter: tuple[int, int]) -> str:
    """``duple``, ``triple`` or ``compound`` for a time signature ``(num, den)``."""
    num, den = meter
    if den >= 8 and num % 3 == 0:
        return "compound"
    if num % 3 == 0:
        return "triple"
    return "duple"


def _kit(*lines: tuple[int, str]) -> DrumPattern:
    return tuple(lines)


_ROCK = Groove(
    tempo=(100, 150),
    drums=(
        _kit((KICK, "x.......x......."), (SNARE, "....x.......x..."), (HAT, "x.x.x.x.x.x.x.x.")),
        _kit((KICK, "x.......x.x....."), (SNARE, "....x.......x..."), (HAT, "X.x.X.x.X.x.X.x.")),
        _kit((KICK, "x.x.....x.x....."), (SNARE, "....X.......X..."), (RIDE, "X.x.X.x.X.x.X.x.")),
        _kit((KICK, "x.....x.x.x....."), (SNARE, "....X.......X..."), (OPEN, "x.x.x.x.x.x.x.x.")),
    ),
    bass=("R-------R---5---", "R---R---R---R-a-", "R-R-R-R-R-R-R-R-", "R-R-R-R-5-5-R-a-"),
    guitar=("x-------x-------", "p-----p-p-----p-", "p-p-p-p-p-p-p-p-", "x--x--x-x-x-x-x-"),
    piano=("x---------------", "x-------x-------", "x-x-x-x-x-x-x-x-", "x--x--x-x--x--x-"),
    pad=("x---------------", "x-------x-------"),
    stab=("x...............", "x.....x.x......."),
    arp=("1-2-3-4-1-2-3-4-", "1-3-2-4-1-3-2-4-"),
)

_BALLAD_DUPLE = Groove(
    tempo=(62, 84),
    drums=(
        _kit((KICK, "x.......x......."), (SIDE, "....x.......x..."), (HAT, "x.x.x.x.x.x.x.x.")),
        _kit((KICK, "x......xx......."), (SNARE, "....x.......x..."), (HAT, "x.x.x.x.x.x.x.x.")),
        _kit((KICK, "x......xx......."), (SNARE, "....X.......X..."), (RIDE, "x.x.x.x.x.x.x.x.")),
    ),
    bass=("R---------------", "R-------5-------", "R-------R---5-a-"),
    guitar=("1-2-3-4-3-2-1-2-", "1-3-2-3-1-3-2-3-", "x-------x--x-x--"),
    piano=("1-2-3-2-1-2-3-2-", "x-------x-------", "x---x---x---x---"),
    pad=("x---------------",),
    stab=("x-------x-------",),
    arp=("1---2---3---4---", "1-2-3-4-3-2-1-2-"),
)

_BALLAD_TRIPLE = Groove(
    tempo=(60, 84),
    drums=(
        _kit((KICK, "x..........."), (SIDE, "........x..."), (HAT, "x.x.x.x.x.x.")),
        _kit((KICK, "x.....x....."), (SNARE, "........x..."), (RIDE, "x.x.x.x.x.x.")),
    ),
    bass=("R-----------", "R-------5---"),
    guitar=("1-2-3-4-3-2-", "x-----x-x---"),
    piano=("1-2-3-4-3-2-", "x---x---x---"),
    pad=("x-----------",),
    stab=("x-----------",),
    arp=("1-2-3-4-3-2-",),
)

_BALLAD_COMPOUND = Groove(
    tempo=(44, 64),
    drums=(
        _kit((KICK, "x..........."), (SIDE, "......x....."), (HAT, "x.x.x.x.x.x.")),
        _kit((KICK, "x.....x...x."), (SNARE, "......X....."), (RIDE, "x.x.x.x.x.x.")),
    ),
    bass=("R-----------", "R-----5-----", "R---R-5-----"),
    guitar=("1-2-3-4-3-2-", "x-----x-x-x-"),
    piano=("1-3-2-3-1-3-", "x-x-x-x-x-x-"),
    pad=("x-----------",),
    stab=("x-----x-----",),
    arp=("1-2-3-4-3-2-",),
)

_BLUES_DUPLE = Groove(
    tempo=(80, 124),
    drums=(
        _kit((KICK, "x.......x......."), (SNARE, "....x.......x..."), (HAT, "x.x.x.x.x.x.x.x.")),
        _kit((KICK, "x.....x.x......."), (SNARE, "....X.......X..."), (RIDE, "x.x.x.x.x.x.x.x.")),
    ),
    bass=("R---5---R---5---", "R-R-5-5-6-6-5-5-", "R-3-5-6-8-6-5-3-"),
    guitar=("x-------x-------", "p-p-q-q-p-p-q-q-", "p-p-q-q-p-p-q-q-"),
    piano=("x---x---x---x---", "..x...x...x...x.", "x-.x..x.x-.x..x."),
    pad=("x---------------",),
    stab=("x.......x.......", "....x.......x..."),
    arp=("1-2-3-2-1-2-3-2-",),
)

_BLUES_COMPOUND = Groove(
    tempo=(40, 60),
    drums=(
        _kit((KICK, "x..........."), (SNARE, "......x....."), (HAT, "x.x.x.x.x.x.")),
        _kit((KICK, "x.....x...x."), (SNARE, "......X....."), (RIDE, "x.x.x.x.x.x.")),
    ),
    bass=("R-----5-----", "R-R-R-5-5-5-", "R-3-5-6-5-3-"),
    guitar=("x-----x-----", "p-p-p-q-q-q-"),
    piano=("x-----x-----", "x-x-x-x-x-x-"),
    pad=("x-----------",),
    stab=("x.....x.....",),
    arp=("1-2-3-4-3-2-",),
)

_SWING = Groove(
    tempo=(110, 200),
    drums=(
        _kit((RIDE, "x...x.x.x...x.x."), (PEDAL, "....x.......x..."), (KICK, "o...o...o...o...")),
        _kit(
            (RIDE, "X...x.x.X...x.x."),
            (PEDAL, "....x.......x..."),
            (KICK, "o...o...o...o..."),
            (SNARE, "......o.....o..o"),
        ),
    ),
    bass=("R-------5-------", "R---w---w---a---"),
    guitar=("x-..x-..x-..x-..", "x-..x-..x-..x-.."),
    piano=("x.....x.........", "..x.....x...x...", "x.....x...x....."),
    pad=("x---------------",),
    stab=("......x.......x.", "x.....x........."),
    arp=("1-2-3-4-3-2-1-2-",),
)

_FUNK = Groove(
    tempo=(88, 118),
    drums=(
        _kit((KICK, "x.....x...x....."), (SNARE, "....x..o.o..x..o"), (HAT, "XxxxXxxxXxxxXxxx")),
        _kit(
            (KICK, "x..x..x...x..x.."),
            (SNARE, "....X..o.o..X..o"),
            (HAT, "Xxx.Xxx.Xxx.Xx.x"),
            (OPEN, "...x...x...x...."),
        ),  # fmt: skip
    ),
    bass=("R.....R...R.....", "R..8..R...R.5.8.", "R.gR..R.8.gR.5a8"),
    guitar=("....x.......x...", "m.m.x.m.m.m.x.m.", "mmm.xmm.mmm.xmm."),
    piano=("x..x..x...x..x..", "..x...x...x..x.."),
    pad=("x-------x-------",),
    stab=(".......x...x....", "x..x......x.x..."),
    arp=("1.2.3.1.2.3.1.2.",),
)

_LATIN = Groove(
    tempo=(110, 150),
    drums=(
        _kit((KICK, "x.....x.x.....x."), (SIDE, "x..x..x...x..x.."), (HAT, "x.x.x.x.x.x.x.x.")),
        _kit(
            (KICK, "x.....x.x.....x."),
            (SIDE, "x..x..x...x..x.."),
            (SHAKER, "xxxxxxxxxxxxxxxx"),
            (CONGA_HI, "......x.x.....x."),
        ),
        _kit(
            (KICK, "x.....x.x.....x."),
            (SIDE, "x..x..x...x..x.."),
            (RIDE, "x.x.x.x.x.x.x.x."),
            (CONGA_LO, "..x.......x....."),
            (SHAKER, "xxxxxxxxxxxxxxxx"),
        ),  # fmt: skip
    ),
    bass=("R-----5-R-----5-", "R-----R-5-----5-"),
    guitar=("x..x..x...x..x..", "x..x..x.x..x..x."),
    piano=("x..x..x...x..x..", "x-----x-x-----x-"),
    pad=("x---------------",),
    stab=("x..x..x.........",),
    arp=("1-2-3-4-1-2-3-4-",),
)

_WALTZ_TRIPLE = Groove(
    tempo=(90, 160),
    drums=(
        _kit((KICK, "x..........."), (HAT, "....x...x...")),
        _kit((KICK, "x..........."), (SNARE, "....x...x..."), (RIDE, "x...x...x...")),
    ),
    bass=("R-----------5-----------", "R-------R---5-------5---"),
    guitar=("....x...x...", "x...x...x..."),
    piano=("b...c...c...f...c...c...", "x...x...x..."),
    pad=("x-----------",),
    stab=("....x...x...",),
    arp=("1-2-3-4-3-2-",),
)

_WALTZ_COMPOUND = Groove(
    tempo=(40, 60),
    drums=(
        _kit((KICK, "x.....x....."), (HAT, "..x.x...x.x.")),
        _kit((KICK, "x.....x....."), (SNARE, "..x.x...x.x."), (RIDE, "x.x.x.x.x.x.")),
    ),
    bass=("R-----5-----", "R-----R-----"),
    guitar=("..x.x...x.x.", "x-x-x-x-x-x-"),
    piano=("b-c-c-f-c-c-", "x-x-x-x-x-x-"),
    pad=("x-----------",),
    stab=("..x.x...x.x.",),
    arp=("1-2-3-1-2-3-",),
)

_ELECTRONIC = Groove(
    tempo=(118, 130),
    drums=(
        _kit((KICK, "x...x...x...x..."), (HAT, "..x...x...x...x.")),
        _kit((KICK, "x...x...x...x..."), (CLAP, "....x.......x..."), (OPEN, "..x...x...x...x.")),
        _kit(
            (KICK, "x...x...x...x..."),
            (CLAP, "....x.......x..."),
            (OPEN, "..x...x...x...x."),
            (HAT, "xx.xxx.xxx.xxx.x"),
        ),  # fmt: skip
    ),
    bass=("..R...R...R...R.", "R.8.R.8.R.8.R.8.", ".RR..RR..RR..RR."),
    guitar=("..x...x...x...x.", "m.m.m.m.m.m.m.m."),
    piano=("..x...x...x...x.", "x..x..x.x..x..x."),
    pad=("x---------------", "x-------x-------"),
    stab=("x..x..x..x..x.x.", "..x...x...x...x."),
    arp=("1.2.3.4.1.2.3.4.", "1234123412341234"),
)

_COUNTRY_DUPLE = Groove(
    tempo=(100, 150),
    drums=(
        _kit((KICK, "x.......x......."), (SNARE, "....x.......x..."), (HAT, "x.x.x.x.x.x.x.x.")),
        _kit((KICK, "x.......x......."), (SNARE, "ooxoooxoooxoooxo")),
        _kit((KICK, "x.......x......."), (SNARE, "....X.......X..."), (TAMB, "x.x.x.x.x.x.x.x.")),
    ),
    bass=("R-------5-------", "R---5---R---5---", "R---5---R---5-a-"),
    guitar=("b---c---f---c---", "x-x-x-x-x-x-x-x-", "x---x-x-x---x-x-"),
    piano=("b---c---f---c---", "x---x---x---x---"),
    pad=("x---------------",),
    stab=("....x.......x...",),
    arp=("1-2-3-4-1-2-3-4-",),
)

_COUNTRY_TRIPLE = Groove(
    tempo=(100, 150),
    drums=(
        _kit((KICK, "x..........."), (SNARE, "....x...x..."), (HAT, "x...x...x...")),
        _kit((KICK, "x..........."), (SNARE, "....X...X..."), (TAMB, "x.x.x.x.x.x.")),
    ),
    bass=("R-----------5-----------", "R-------R---5-------5---"),
    guitar=("b...c...c...f...c...c...", "x...x-x-x..."),
    piano=("b...c...c...f...c...c...", "x...x...x..."),
    pad=("x-----------",),
    stab=("....x...x...",),
    arp=("1-2-3-4-3-2-",),
)

_COUNTRY_COMPOUND = Groove(
    tempo=(50, 70),
    drums=(
        _kit((KICK, "x.....x....."), (SNARE, "......x....."), (HAT, "x.x.x.x.x.x.")),
        _kit((KICK, "x.....x....."), (SNARE, "......X....."), (TAMB, "x.x.x.x.x.x.")),
    ),
    bass=("R-----5-----", "R---R-5---5-"),
    guitar=("x-x-x-x-x-x-", "x---x-x---x-"),
    piano=("b-c-c-f-c-c-", "x-----x-----"),
    pad=("x-----------",),
    stab=("x-----x-----",),
    arp=("1-2-3-1-2-3-",),
)

STYLES: dict[str, Style] = {
    style.name: style
    for style in (
        Style(
            name="rock",
            grooves={"duple": _ROCK},
            swing=0.0,
            swing_step=2,
            kits=(16, 0, 8),
            programs={
                "guitar": (29, 30, 27, 25),
                "bass": (33, 34),
                "piano": (0, 1, 4),
                "strings": (48, 49, 44),
                "other": (16, 17, 18, 61, 80, 81, 84, 66),
            },
            fill_rate=0.6,
        ),
        Style(
            name="ballad",
            grooves={
                "duple": _BALLAD_DUPLE,
                "triple": _BALLAD_TRIPLE,
                "compound": _BALLAD_COMPOUND,
            },
            swing=0.0,
            swing_step=2,
            kits=(0, 8, 40),
            programs={
                "guitar": (25, 24, 27),
                "bass": (33, 35, 32),
                "piano": (0, 4, 5),
                "strings": (48, 49, 40, 42),
                "other": (88, 89, 91, 94, 73, 65, 66, 11, 8, 16),
            },
            fill_rate=0.4,
        ),
        Style(
            name="blues",
            grooves={"duple": _BLUES_DUPLE, "compound": _BLUES_COMPOUND},
            swing=0.95,
            swing_step=2,
            kits=(0, 8, 32),
            programs={
                "guitar": (26, 27, 29, 25),
                "bass": (33, 32),
                "piano": (0, 3, 4),
                "strings": (48, 49),
                "other": (16, 17, 18, 22, 56, 57, 61, 65, 66),
            },
            fill_rate=0.5,
        ),
        Style(
            name="swing",
            grooves={"duple": _SWING},
            swing=0.7,
            swing_step=2,
            kits=(32, 40),
            programs={
                "guitar": (26,),
                "bass": (32,),
                "piano": (0, 1),
                "strings": (48, 49),
                "other": (64, 65, 66, 67, 71, 56, 57, 59, 61, 11, 16, 73),
            },
            fill_rate=0.5,
        ),
        Style(
            name="funk",
            grooves={"duple": _FUNK},
            swing=0.15,
            swing_step=1,
            kits=(0, 8, 16),
            programs={
                "guitar": (28, 27),
                "bass": (36, 37, 33),
                "piano": (7, 4, 5),
                "strings": (50, 48),
                "other": (61, 56, 62, 16, 17, 80, 81, 87, 66, 65),
            },
            fill_rate=0.6,
        ),
        Style(
            name="latin",
            grooves={"duple": _LATIN},
            swing=0.0,
            swing_step=2,
            kits=(0, 8, 40, 32),
            programs={
                "guitar": (24,),
                "bass": (32, 33),
                "piano": (0, 4),
                "strings": (48, 49),
                "other": (73, 65, 66, 11, 12, 56, 57, 89),
            },
            fill_rate=0.3,
        ),
        Style(
            name="waltz",
            grooves={"triple": _WALTZ_TRIPLE, "compound": _WALTZ_COMPOUND},
            swing=0.0,
            swing_step=2,
            kits=(0, 40, 32),
            programs={
                "guitar": (24, 25),
                "bass": (32, 33),
                "piano": (0, 6),
                "strings": (48, 40, 45, 46),
                "other": (21, 23, 73, 71, 68, 8, 10, 9, 60),
            },
            fill_rate=0.3,
        ),
        Style(
            name="electronic",
            grooves={"duple": _ELECTRONIC},
            swing=0.0,
            swing_step=2,
            kits=(24, 25, 0),
            programs={
                "guitar": (27, 28, 30),
                "bass": (38, 39),
                "piano": (4, 5, 2),
                "strings": (50, 51),
                "other": (80, 81, 84, 85, 87, 88, 89, 90, 91, 94, 95, 8, 62),
            },
            fill_rate=0.5,
        ),
        Style(
            name="country",
            grooves={
                "duple": _COUNTRY_DUPLE,
                "triple": _COUNTRY_TRIPLE,
                "compound": _COUNTRY_COMPOUND,
            },
            swing=0.0,
            swing_step=2,
            kits=(0, 40, 8),
            programs={
                "guitar": (25, 27, 24),
                "bass": (32, 33, 34),
                "piano": (0, 3, 1),
                "strings": (48, 40),
                "other": (22, 21, 78, 73, 75, 16, 56),
            },
            fill_rate=0.5,
        ),
    )
}


def styles_for(meter: tuple[int, int]) -> tuple[str, ...]:
    """Names of the styles that can play a piece in ``meter``, in :data:`STYLES` order."""
    kind = metre_kind(meter)
    return tuple(name for name, style in STYLES.items() if kind in style.grooves)
