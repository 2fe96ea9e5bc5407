"""The README's commands are the ones that work: every `rlft ...` line parses, every path it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from rlft.cli import parser as _parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _shell_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [ln.split("  #")[0].strip() for b in blocks for ln in b.splitlines() if ln.strip()]


def _rlft_commands() -> list[list[str]]:
    commands = [shlex.split(ln) for ln in _shell_lines() if ln.startswith("rlft ")]
    # Table rows too, e.g. `rlft submit SPEC.yaml [--file DATA.jsonl] [-f]`: without and with the options.
    for cell in re.findall(r"^\| (`rlft [^|]+)\|", README, flags=re.M):
        for alternative in re.findall(r"`(rlft [^`]+)`", cell):
            commands.append(shlex.split(re.sub(r"\[[^\]]*\]", "", alternative)))
            every_option = re.sub(r"\bN\b", "1", re.sub(r"\[([^\]]*)\]", r"\1", alternative))
            commands.append(shlex.split(every_option))
    return commands


def test_readme_has_the_two_commands():
    lines = _shell_lines()
    assert any(ln.startswith("make demo") for ln in lines)
    assert any(ln.startswith("make test") for ln in lines)


@pytest.mark.parametrize("argv", _rlft_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_rlft_command_in_the_readme_parses(argv):
    _parser().parse_args([a.replace("...", "") for a in argv[1:]])  # a usage error exits 2 and fails


def test_paths_the_readme_names_exist():
    named = set(re.findall(r"`((?:examples|rlcore|rlft|service|worker|docs)/[\w./-]+)`", README))
    assert named, "the README should point at the code"
    missing = [p for p in sorted(named) if not (ROOT / p.rstrip("/")).exists()]
    assert not missing


def test_configuration_table_lists_every_setting():
    from rlft_contracts.settings import Settings

    for name in Settings.model_fields:
        assert f"`RLFT_{name.upper()}`" in README, name


def test_spec_reference_lists_every_field():
    from rlcore.spec import DatasetSpec, Hyperparameters, ModelSpec, ResourcesSpec, RewardSpec

    for prefix, model in (
        ("model.", ModelSpec),
        ("dataset.", DatasetSpec),
        ("reward.", RewardSpec),
        ("hyperparameters.", Hyperparameters),
        ("resources.", ResourcesSpec),
    ):
        for name in model.model_fields:
            assert f"`{prefix}{name}`" in README, prefix + name


def test_the_readme_reward_server_speaks_the_protocol():
    """The dozen-line server of the README, fed the engine's own request and read by its own parser."""
    from fastapi.testclient import TestClient

    from rlcore.rewards.base import RewardItem
    from rlcore.rewards.protocol import PROTOCOL_V1, parse_response, request_body

    [code] = [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "my_reward.py" in b]
    namespace: dict = {}
    exec(compile(code, "README.md:my_reward.py", "exec", dont_inherit=True), namespace)  # no __future__
    batch = [
        RewardItem(id="1-0-0", prompt="Name a fruit:", completion=" an apple", group=0, label="apple"),
        RewardItem(id="1-0-1", prompt="Name a fruit:", completion=" a pear", group=0, label="apple"),
    ]
    with TestClient(namespace["app"]) as http:
        resp = http.post("/", json=request_body(PROTOCOL_V1, "job_x", 1, "req", batch))
    result = parse_response(PROTOCOL_V1, "fail", "README server", resp.status_code, resp.text, batch)
    assert result.rewards == [1.0, 0.0]
