"""Rolling-element bearing defect frequencies as orders of shaft speed.

Orders (multiples of the shaft rotation frequency) follow the shaft speed, so features
located by order work at any speed; this is why the pipeline never uses fixed Hz.

For n rolling elements of diameter d on pitch diameter D with contact angle phi, and the
outer race fixed (Randall & Antoni, "Rolling element bearing diagnostics — A tutorial",
MSSP 25(2), 2011, eq. 1-4):

    FTF  = 1/2 (1 - d/D cos phi)                 cage
    BPFO = n/2 (1 - d/D cos phi)                 outer-race defect
    BPFI = n/2 (1 + d/D cos phi)                 inner-race defect
    BSF  = D/(2d) (1 - (d/D cos phi)^2)          ball spin

A ball defect strikes both races once per spin, so its impulse rate is 2 x BSF
(CWRU quotes 4.7135 for the 6205; the geometry gives 4.71345).

>>> o = BearingGeometry(n_balls=9, ball_diameter=0.3126, pitch_diameter=1.537).orders()
>>> round(o.bpfi, 4), round(o.bpfo, 4), round(o.ftf, 4), round(2 * o.bsf, 4)
(5.4152, 3.5848, 0.3983, 4.7134)
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DefectOrders:
    ftf: float
    bpfo: float
    bpfi: float
    bsf: float


@dataclass(frozen=True, slots=True)
class BearingGeometry:
    n_balls: int
    ball_diameter: float
    pitch_diameter: float
    contact_angle_deg: float = 0.0

    def orders(self) -> DefectOrders:
        r = self.ball_diameter / self.pitch_diameter * math.cos(math.radians(self.contact_angle_deg))
        n = self.n_balls
        return DefectOrders(
            ftf=0.5 * (1.0 - r),
            bpfo=0.5 * n * (1.0 - r),
            bpfi=0.5 * n * (1.0 + r),
            bsf=self.pitch_diameter / (2.0 * self.ball_diameter) * (1.0 - r * r),
        )


# The drive-end bearing of the CWRU rig (SKF 6205-2RS JEM), the emulator's default.
SKF_6205 = BearingGeometry(n_balls=9, ball_diameter=0.3126, pitch_diameter=1.537, contact_angle_deg=0.0)
