"""Detached children: exited ones are forgotten, whichever thread reaps them first."""

from __future__ import annotations

import subprocess
import threading

from pyro_loop import procutil


def test_a_child_reaped_by_two_callers_at_once_is_forgotten_once() -> None:
    done = subprocess.Popen(["true"])
    done.wait()

    class ReapedMeanwhile:
        """An exited child whose first status check lets another reaper run first (the
        race, made sure): that one takes both children."""

        checked = False

        def poll(self) -> int:
            if not self.checked:
                self.checked = True
                procutil.reap_finished()
            return 0

    racing = ReapedMeanwhile()
    others = list(procutil._DETACHED)  # the suite's own, still running: kept listed
    procutil._DETACHED[:] = [racing, done]  # type: ignore[list-item]
    try:
        procutil.reap_finished()
        assert procutil._DETACHED == []
    finally:
        procutil._DETACHED[:] = others


def test_exited_children_are_forgotten_and_running_ones_kept() -> None:
    running = subprocess.Popen(["sleep", "30"])
    finished = [subprocess.Popen(["true"]) for _ in range(20)]
    for proc in finished:
        proc.wait()
    others = list(procutil._DETACHED)  # the suite's own, still running: kept listed
    procutil._DETACHED[:] = [*finished, running]
    try:
        threads = [threading.Thread(target=procutil.reap_finished) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [running] == procutil._DETACHED
    finally:
        running.kill()
        running.wait()
        procutil._DETACHED[:] = others
