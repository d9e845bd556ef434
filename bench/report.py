"""The benchmark report: figures grouped by section, rendered as one Markdown document and as JSON.

A :class:`Figure` is one measured number with its unit and, where issue 7 sets one, the target and
whether it was met (✅/❌). A section that cannot run (a piece it needs has not landed, or it failed)
records ``unavailable = "<reason>"`` and prints ``not available: <reason>``: it never prints a number
it did not measure.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Figure", "Report", "Section"]


@dataclass
class Figure:
    """One measured value. ``ok`` is None when no target applies."""

    name: str
    value: float | None
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Section:
    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    unavailable: str | None = None
    seconds: float = 0.0

    def add(self, name: str, value: float | None, unit: str, *, target: str = "", ok: bool | None = None,
            note: str = "") -> Figure:
        fig = Figure(name, value, unit, target, ok, note)
        self.figures.append(fig)
        return fig

    def get(self, name: str) -> float | None:
        for f in self.figures:
            if f.name == name:
                return f.value
        return None


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit in ("ratio", "×"):
        return f"{value:.2f}×"
    if unit == "%":
        return f"{value:.0f}%"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1])
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Report:
    quick: bool
    params: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    total_seconds: float = 0.0

    def section(self, key: str) -> Section | None:
        for s in self.sections:
            if s.key == key:
                return s
        return None

    def figure(self, key: str, name: str) -> float | None:
        s = self.section(key)
        return s.get(name) if s else None

    def meta(self) -> dict[str, Any]:
        import os
        return {"started_utc": self.started, "git_commit": _git_commit(), "python": platform.python_version(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform(terse=True)}",
                "quick": self.quick, "total_seconds": round(self.total_seconds, 1), **self.params}

    def to_json(self) -> bytes:
        return orjson.dumps({"meta": self.meta(), "sections": [asdict(s) for s in self.sections]},
                            option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)

    def to_markdown(self) -> str:
        m = self.meta()
        lines = [f"# actionstream benchmark report{' (quick smoke run: small sizes, figures are indicative only)' if self.quick else ''}",
                 "",
                 f"{m['started_utc']} · commit `{m['git_commit']}` · Python {m['python']} · {m['machine']} · "
                 f"total {m['total_seconds']:.0f} s",
                 ""]
        params = {k: v for k, v in self.params.items()}
        if params:
            lines += ["Parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()), ""]
        import os
        load = self.params.get("load_1min_at_start")
        cpus = os.cpu_count() or 1
        if isinstance(load, float) and load > 0.5 * cpus:
            lines += [f"> ⚠ The machine was busy when this run started (1-minute load average {load:.1f} on {cpus} "
                      "CPUs, before the benchmark's own broker and workers): throughput and latency figures are "
                      "pessimistic. Re-run `make bench` on an idle machine for figures to publish.", ""]
        for s in self.sections:
            lines.append(f"## {s.title}")
            lines.append("")
            if s.unavailable:
                lines += [f"not available: {s.unavailable}", ""]
            if s.figures:
                with_target = any(f.target for f in s.figures)
                head = "| measure | value | target | |" if with_target else "| measure | value |"
                lines += [head, "|---|---:|---|---|" if with_target else "|---|---:|"]
                for f in s.figures:
                    name = f.name + (f" ({f.note})" if f.note else "")
                    if with_target:
                        mark = "" if f.ok is None else ("✅" if f.ok else "❌")
                        lines.append(f"| {name} | {_fmt(f.value, f.unit)} | {f.target} | {mark} |")
                    else:
                        lines.append(f"| {name} | {_fmt(f.value, f.unit)} |")
                lines.append("")
            for n in s.notes:
                lines.append(f"- {n}")
            if s.notes:
                lines.append("")
            for p in s.plots:
                lines += [f"![{Path(p).stem}]({Path(p).name})", ""]
            lines += [f"<sub>section took {s.seconds:.1f} s</sub>", ""]
        return "\n".join(lines)

    def save(self, out_dir: Path) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        md, js = out_dir / "report.md", out_dir / "report.json"
        md.write_text(self.to_markdown())
        js.write_bytes(self.to_json())
        return md, js
