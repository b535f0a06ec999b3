"""Prompts: a text file (one per line) or a prompt set shipped in evaluation/prompts/ (named without .txt)."""

from __future__ import annotations

from pathlib import Path

from sla2_train.models import ConfigError

SHIPPED = Path(__file__).with_name("prompts")


def shipped_sets() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.txt"))


def _read(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_prompts(source: str, limit: int | None = None, key: str = "prompts") -> list[str]:
    """The prompts of `source` (a shipped set's name or a file path), the first `limit` of them if given."""
    shipped = SHIPPED / f"{source}.txt"
    path = shipped if shipped.is_file() else Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: {source!r} is neither a prompt file nor a shipped prompt set {shipped_sets()}")
    prompts = _read(path)
    if not prompts:
        raise ConfigError(f"{key}: the prompt file {str(path)!r} holds no prompts (one per line; '#' lines skipped)")
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"max_prompts must be at least 1, got {limit}")
        prompts = prompts[:limit]
    return prompts
