"""A small Dockerfile reader for tests: instructions with continuations joined, comments and
parser directives dropped; exec-form (JSON) arguments decoded."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the (joined) line
    stage: int  # index of the FROM that this instruction belongs to (-1 before any FROM)

    def exec_form(self) -> list[str]:
        """The JSON array form, e.g. ENTRYPOINT ["resolver"]; fails on the shell form."""
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.args
        return value


def parse(path: Path) -> list[Instruction]:
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # comment lines inside a continuation are removed by Docker too
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def last(instructions: list[Instruction], keyword: str, stage: int | None = None) -> Instruction:
    """The instruction that takes effect (the last one) in the final stage."""
    if stage is None:
        stage = max(i.stage for i in instructions)
    found = [i for i in instructions if i.keyword == keyword and i.stage == stage]
    assert found, f"no {keyword} in stage {stage}"
    return found[-1]


def healthcheck_command(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    """(options such as {"interval": "15s"}, the exec-form CMD) of a HEALTHCHECK."""
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", instruction.args))
    _, _, cmd = instruction.args.partition("CMD ")
    return options, json.loads(cmd)
