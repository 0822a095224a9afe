"""A CPU run on cores other jobs keep busy says how to keep two jobs from slowing each other down."""

from __future__ import annotations

import os

from gym.run import busy_cpu_note


def test_a_busy_machine_gets_a_note_naming_the_setting_and_an_idle_one_none(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 1.0, 0.5))
    note = busy_cpu_note()
    assert note and "load average 2.1 on 2 cores" in note and "OMP_WAIT_POLICY=PASSIVE" in note
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 1.0, 0.5))
    assert busy_cpu_note() is None
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 1.0, 0.5))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the user chose: nothing to say
    assert busy_cpu_note() is None
