"""MQTT topic names of one device: ``{prefix}/{site}/{device}/{kind}`` (see CONTRACT.md)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    site: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.device}"

    def of(self, kind: str) -> str:
        """Topic for a message kind: ``status``, ``alert``, ``summary``, ..."""
        return f"{self.base}/{kind}"
