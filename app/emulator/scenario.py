"""A scenario driver: plays a realistic conference through the emulator's own operations.

Members join over time, one is muted and unmuted, one held and resumed, audio is played and
spoken, then members leave one by one (the last one's leaving completes the conference) or
the conference is terminated with members still in it.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.emulator.model import ProviderError, bad_request

if TYPE_CHECKING:
    from app.emulator import Emulator


@dataclass(frozen=True)
class Scenario:
    conference_id: str | None = None
    create: dict[str, Any] | None = None
    members: int = 3
    step_ms: int = 50
    mute: bool = True
    hold: bool = True
    playback: bool = True
    speak: bool = True
    terminate: bool = False

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Scenario:
        known = {"conferenceId", "create", "members", "stepMs", "mute", "hold", "playback",
                 "speak", "terminate"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise bad_request("invalid-property", f"unknown scenario field {unknown[0]}",
                              unknown[0], "")
        conference_id, create = body.get("conferenceId"), body.get("create")
        if (conference_id is None) == (create is None):
            raise bad_request("invalid-property",
                              "give conferenceId (an existing conference) or create "
                              "(the body of a new one)", "conferenceId", "")
        if create is not None and not isinstance(create, dict):
            raise bad_request("invalid-property", "create must be an object", "create", "")
        members = body.get("members", 3)
        step_ms = body.get("stepMs", 50)
        for name, value, hi in (("members", members, 20), ("stepMs", step_ms, 60_000)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
                raise bad_request("invalid-property", f"{name} must be 0 to {hi}", name, value)
        flags = {}
        for name in ("mute", "hold", "playback", "speak", "terminate"):
            value = body.get(name, name != "terminate")
            if not isinstance(value, bool):
                raise bad_request("invalid-property", f"{name} must be a boolean", name, value)
            flags[name] = value
        return cls(conference_id=conference_id, create=create, members=members,
                   step_ms=step_ms, **flags)


@dataclass
class Run:
    id: int
    scenario: Scenario
    status: str = "running"
    conference_id: str | None = None
    steps: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "conferenceId": self.conference_id,
                "steps": list(self.steps), "error": self.error}


class ScenarioRunner:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.runs: dict[int, Run] = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()

    def start(self, scenario: Scenario) -> Run:
        with self.lock:
            run = Run(id=next(self.ids), scenario=scenario,
                      conference_id=scenario.conference_id)
            self.runs[run.id] = run
        if scenario.conference_id is not None:
            self.emulator.store.get(scenario.conference_id)  # 404 now, not in the background
        thread = threading.Thread(target=self._play, args=(run,), daemon=True,
                                  name=f"scenario-{run.id}")
        thread.start()
        return run

    def get(self, run_id: int) -> Run | None:
        return self.runs.get(run_id)

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for run in list(self.runs.values()):
            if not run.done.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def _play(self, run: Run) -> None:
        emulator, scenario = self.emulator, run.scenario
        user = emulator.config.user_id
        pause = scenario.step_ms / 1000

        def step(name: str) -> None:
            run.steps.append(name)
            time.sleep(pause)

        try:
            if scenario.create is not None:
                run.conference_id = emulator.create(user, scenario.create)
                step("created")
            cid = run.conference_id
            assert cid is not None
            members = []
            for _ in range(scenario.members):
                members.append(emulator.add_member(
                    user, cid, {"callId": f"c-{secrets.token_hex(8)}", "joinTone": True}))
                step("member joined")
            if members and scenario.mute:
                emulator.update_member(user, cid, members[0], {"mute": True})
                step("member muted")
                emulator.update_member(user, cid, members[0], {"mute": False})
                step("member unmuted")
            if members and scenario.hold:
                emulator.update_member(user, cid, members[-1], {"hold": True})
                step("member held")
                emulator.update_member(user, cid, members[-1], {"hold": False})
                step("member resumed")
            media_pause = emulator.config.media_ms / 1000 + 0.05
            if members and scenario.playback:
                # Audio requests carry tags of their own, as their events then do.
                emulator.audio(user, cid, {"fileUrl": "https://audio.example.com/hold.mp3",
                                           "tag": "hold-music"})
                time.sleep(media_pause)
                step("audio played")
            if members and scenario.speak:
                emulator.audio(user, cid, {"sentence": "This call is being recorded.",
                                           "voice": "kate", "tag": "recording-notice"})
                time.sleep(media_pause)
                step("sentence spoken")
            if scenario.terminate or not members:
                emulator.update(user, cid, {"state": "completed"})
                step("conference terminated")
            else:
                for member in members:
                    emulator.update_member(user, cid, member, {"state": "completed"})
                    step("member left")
            run.status = "done"
        except ProviderError as exc:
            run.status, run.error = "failed", exc.body()
        finally:
            run.done.set()
