"""The README's "Scaling out" command lines are real: every ctrflow flag exists on its command, and every
pass-through Beam flag is an option Beam knows, with the value written (a typo would be dropped by Beam
as an unparseable argument and the job would silently run elsewhere)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer
from torch.distributed.run import get_args_parser as torchrun_parser

from orchestration.cli import app
from pipelines.beam.options import pipeline_options

README = Path(__file__).resolve().parents[2] / "README.md"


def _section_commands() -> list[list[str]]:
    text = README.read_text()
    section = text[text.index("## Scaling out\n"):]
    section = section[:section.index("\n## ", 3)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line.replace("$(date +%Y%m%d)", "20261202")))
    return commands


def _ctrflow_args(words: list[str]) -> list[str]:
    """The ctrflow arguments of a `ctrflow ...` or `torchrun ... -m orchestration.cli ...` line."""
    if words[0] == "ctrflow":
        return words[1:]
    return words[words.index("orchestration.cli") + 1:]


def _check_flags(args: list[str]):
    """Walk the command path; every option given must be one of the command's options."""
    command = typer.main.get_command(app)
    ctx_options = {o for p in command.params for o in getattr(p, "opts", [])}
    words = list(args)
    while words:
        word = words.pop(0)
        name = word.split("=", 1)[0]
        if name.startswith("--"):
            assert name in ctx_options, f"{name} is not an option of {command.name}"
            takes_value = not any(name in p.opts and p.is_flag for p in command.params
                                  if hasattr(p, "is_flag"))
            if takes_value and "=" not in word:
                words.pop(0)
        elif hasattr(command, "commands"):
            assert word in command.commands, f"{word} is not a command of {command.name}"
            command = command.commands[word]
            ctx_options = {o for p in command.params for o in getattr(p, "opts", [])}
    return command


def test_every_scaling_out_command_line_parses() -> None:
    commands = _section_commands()
    runners = set()
    trains = 0
    for words in commands:
        if words[0] not in ("ctrflow", "torchrun"):
            continue
        args = _ctrflow_args(words)
        command = _check_flags(args)
        if command.name == "train":
            trains += 1
            launch = torchrun_parser().parse_args(words[1:])  # exits on a flag torchrun lacks
            assert launch.module and launch.training_script == "orchestration.cli"
        beam = [w.split("=", 1)[1] for w in args if w.startswith("--beam-arg=")]
        if beam:
            options = pipeline_options(beam).get_all_options(drop_default=True)  # unknown flags dropped
            for flag in beam:
                key, value = flag[2:].split("=", 1)
                assert str(options.get(key)) == value, f"Beam does not take {flag} as written"
            runners.add(options["runner"])
    assert runners == {"FlinkRunner", "SparkRunner", "DataflowRunner"}
    assert trains == 2


def test_torchrun_can_start_the_cli_as_a_module() -> None:
    assert (Path(__file__).resolve().parents[2] / "orchestration" / "cli" / "__main__.py").is_file()
