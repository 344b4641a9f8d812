"""How long the simulated switch plays a prompt: the scenario's length for it, a FreeSWITCH
``tone_stream`` (a voicemail beep) as long as its tones (a 250 ms beep took the 3 s default prompt
length before, which the office example's voicemail test caught), else the default."""

from __future__ import annotations

from sim.core import tone_stream_s


def test_tone_stream_lengths() -> None:
    assert tone_stream_s("tone_stream://%(250,0,1000)") == 0.25
    assert tone_stream_s("tone_stream://%(300,200,600);loops=2") == 1.0
    assert tone_stream_s("tone_stream://%(500,500,440);%(100,0,880)") == 1.1
    assert tone_stream_s("tone_stream://%(500,500,440);loops=-1") == 1.0  # forever: one cycle
