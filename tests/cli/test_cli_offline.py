"""CLI errors that need no server: each is one line that says what to do, with exit code 1 (2 for usage)."""

from __future__ import annotations

import json

import pytest

from rlft.cli import main
from rlft_contracts.localproc import free_port
from rlft_contracts.settings import get_settings


@pytest.fixture
def rlft(monkeypatch, tmp_path, capsys):
    for name in ("RLFT_API_URL", "RLFT_API_KEY", "RLFT_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RLFT_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str]:
        get_settings.cache_clear()
        capsys.readouterr()
        code = main(list(args))
        return code, capsys.readouterr().err

    yield run
    get_settings.cache_clear()


def test_keys_before_migrate_says_to_migrate(rlft):
    code, err = rlft("keys", "create", "--tenant", "acme")
    assert code == 1 and err.strip() == "error: the database has no tables yet: run `rlft migrate` first"


def test_migrate_then_keys_works_on_the_embedded_database(rlft, capsys):
    assert rlft("migrate")[0] == 0
    assert rlft("keys", "create", "--tenant", "acme")[0] == 0


def test_an_unreachable_database_names_the_variable_and_hides_the_password(rlft, monkeypatch):
    monkeypatch.setenv("RLFT_DATABASE_URL", f"postgresql://me:s3cret@127.0.0.1:{free_port()}/db")
    code, err = rlft("migrate")
    assert code == 1 and "RLFT_DATABASE_URL" in err and "s3cret" not in err and err.count("\n") == 1


def test_a_bad_setting_is_one_line(rlft, monkeypatch):
    monkeypatch.setenv("RLFT_API_URL", "localhost:8000")
    code, err = rlft("jobs", "--api-key", "k")
    assert code == 1 and "RLFT_API_URL must start with http://" in err


def test_a_missing_spec_file(rlft, tmp_path):
    code, err = rlft("submit", str(tmp_path / "nope.yaml"), "--api-key", "k")
    assert code == 1 and err.strip() == f"error: no such spec file: {tmp_path / 'nope.yaml'}"


def test_a_spec_that_is_not_yaml(rlft, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    code, err = rlft("submit", str(bad), "--api-key", "k")
    assert code == 1 and err.startswith(f"error: {bad} is not valid YAML") and err.count("\n") == 1


def test_a_yaml_alias_bomb_is_refused_not_expanded(rlft, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    levels = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
    bomb.write_text("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + levels)
    code, err = rlft("submit", str(bomb), "--api-key", "k")
    assert code == 1 and err.startswith(f"error: {bomb} expands to more than") and "aliases" in err


def test_a_missing_dataset_file(rlft, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {name_or_path: m}\nreward: {url: 'http://127.0.0.1:1'}\n")  # no dataset: --file
    code, err = rlft("submit", str(spec), "--file", str(tmp_path / "none.jsonl"), "--api-key", "k")
    assert code == 1 and err.strip() == f"error: no such dataset file: {tmp_path / 'none.jsonl'}"


def test_train_needs_local(rlft, tmp_path):
    code, err = rlft("train", str(tmp_path / "spec.yaml"))
    assert code == 1 and "--local" in err


def test_usage_errors_exit_2(rlft):
    with pytest.raises(SystemExit) as info:
        rlft("download", "job_x")  # -o DIR is required
    assert info.value.code == 2


def test_keys_list_revoke_rotate(rlft, capsys):
    assert rlft("migrate")[0] == 0
    assert rlft("keys", "create", "--tenant", "acme", "--quiet")[0] == 0
    get_settings.cache_clear()
    assert main(["keys", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [k["tenant"] for k in listed] == ["acme"] and listed[0]["revoked_at"] is None
    key_id = listed[0]["id"]

    get_settings.cache_clear()
    assert main(["keys", "rotate", key_id, "--quiet"]) == 0
    new_key = capsys.readouterr().out.strip()
    assert new_key.startswith("rlft_") and len(new_key.split()) == 1
    get_settings.cache_clear()
    assert main(["keys", "list", "--json"]) == 0
    after = {k["id"]: k for k in json.loads(capsys.readouterr().out)}
    assert after[key_id]["revoked_at"] is not None and len(after) == 2

    code, err = rlft("keys", "revoke", "key_nope")
    assert code == 1 and "rlft keys list" in err and err.count("\n") == 1
    code, err = rlft("keys", "revoke", key_id)  # again: not an error
    assert code == 0 and "revoked" in err


@pytest.mark.parametrize(
    "rewards,words",
    [
        ("[{type: bleu, name: a}]", "rewards.0: type must be one of http, string_check"),
        ('[{type: regex, name: a, pattern: "(("}]', "rewards.0.regex: Value error, pattern is not a valid"),
        (
            "[{type: length, name: a, target: 3}, {type: length, name: a, target: 4}]",
            "each reward name must be",
        ),
        ("[]", "rewards: List should have at least 1 item"),
    ],
)
@pytest.mark.parametrize("command", ["submit", "reward"])
def test_bad_rewards_are_refused_before_sending(rlft, tmp_path, rewards, words, command):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"model: {{name_or_path: m}}\ndataset: {{rows: [{{prompt: p, label: a}}]}}\nrewards: {rewards}\n"
    )
    # No server listens there: the spec is refused before any request.
    url = f"http://127.0.0.1:{free_port()}"
    args = ["submit", str(spec)] if command == "submit" else ["reward", "validate", str(spec)]
    code, err = rlft(*args, "--api-key", "k", "--api-url", url)
    assert code == 1 and words in err and err.count("\n") == 1
