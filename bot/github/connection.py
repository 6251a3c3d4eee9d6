"""How the bot reaches GitHub (plain data, no PyGithub import: the CLI parser stays light)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_API", "Connection"]

DEFAULT_API = "https://api.github.com"


@dataclass(frozen=True)
class Connection:
    """How to reach GitHub. Defaults suit github.com; tests shorten the waits."""

    api_url: str = DEFAULT_API
    per_page: int = 100
    total: int = 8
    backoff: float = 1.0
    backoff_max: float = 60.0
    secondary_wait: float = 60.0
    max_wait: float | None = 900.0
    throttle: bool = True
    """PyGithub's pauses between requests (0.25 s) and writes (1 s), which GitHub asks for to stay
    under the secondary rate limit."""
    timeout: int = 30
