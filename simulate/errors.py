"""Exceptions raised by the simulator, each naming the file or parameter at fault."""


class SimulationError(Exception):
    """Base class of every error the simulator raises on purpose."""


class StructureError(SimulationError, ValueError):
    """A structure file or atom set cannot be used (missing, corrupt, empty, unknown element)."""


class GeometryError(SimulationError, ValueError):
    """Nonsense experimental geometry (zero pixels, distance <= 0, ...) or a particle
    too large to be sampled by the detector."""
