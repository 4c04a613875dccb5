"""deepmir: detection of cerebral microbleeds and iron deposits from SWI, QSM and T2w."""

__version__ = "0.1.0"

GAMMA_BAR_HZ_PER_T = 42.577478e6  # proton gyromagnetic ratio / 2π
