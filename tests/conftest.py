"""Test-wide settings: hypothesis without wall-clock deadlines (a loaded 2-core CI machine
must not turn slowness into failures); in CI, derandomized so a run is reproducible."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")
