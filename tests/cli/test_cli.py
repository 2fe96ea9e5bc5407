"""The `rlft` command line against a real API process: what a user types, what they read, the exit code."""

from __future__ import annotations

import json

import pytest
import yaml

from rlft.cli import main
from rlft_contracts.localproc import free_port
from rlft_contracts.settings import get_settings
from tests.cli.conftest import letter_spec

pytestmark = pytest.mark.e2e


@pytest.fixture
def rlft(api, monkeypatch, tmp_path, capsys):
    """Run `rlft ARGS` in-process against the test API; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("RLFT_API_URL", api.url)
    monkeypatch.setenv("RLFT_API_KEY", api.key)
    monkeypatch.setenv("RLFT_DATA_DIR", str(tmp_path / "cli-data"))
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    get_settings.cache_clear()


@pytest.fixture
def spec_file(api, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(letter_spec(api.reward_url)))
    return path


def test_submit_list_status_cancel(rlft, spec_file):
    code, out, err = rlft("submit", str(spec_file))
    job_id = out.strip()
    assert code == 0 and job_id.startswith("job_") and f"rlft logs {job_id} -f" in err
    code, out, _ = rlft("jobs")
    assert code == 0 and job_id in out and "queued" in out
    code, out, _ = rlft("status", job_id)
    assert code == 0 and "queued" in out and "step 0/3" in out
    code, out, _ = rlft("cancel", job_id)
    assert code == 0 and out.split() == [job_id, "cancelled"]
    code, out, _ = rlft("status", job_id, "--json")
    assert json.loads(out)["status"] == "cancelled"


def test_jobs_filters_on_metadata(rlft, api, tmp_path):
    spec = tmp_path / "tagged.yaml"
    spec.write_text(yaml.safe_dump({**letter_spec(api.reward_url), "metadata": {"team": "tagged"}}))
    job_id = rlft("submit", str(spec))[1].strip()
    code, out, _ = rlft("jobs", "--metadata", "team=tagged", "--json")
    assert code == 0 and [j["id"] for j in json.loads(out)["data"]] == [job_id]
    code, _, err = rlft("jobs", "--metadata", "team")
    assert code == 1 and "KEY=VALUE" in err


def test_submit_with_a_dataset_file_uploads_it_first(rlft, spec_file, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Q{i}:", "label": "a"}) for i in range(5)) + "\n")
    code, out, err = rlft("submit", str(spec_file), "--file", str(data), "--json")
    assert code == 0, err
    job = json.loads(out)
    assert job["spec"]["dataset"]["file_id"].startswith("file")
    assert "rows" not in job["spec"]["dataset"] or job["spec"]["dataset"]["rows"] is None


def test_a_bad_spec_is_refused_before_sending_with_its_field(rlft, tmp_path, api):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(letter_spec(api.reward_url, learning_rate=-1)))
    code, out, err = rlft("submit", str(bad))
    assert code == 1 and out == ""
    assert "hyperparameters.learning_rate" in err and err.count("\n") == 1


def test_logs_follow_streams_to_the_end_of_the_job(rlft, finished_job):
    job_id, _ = finished_job
    code, _, err = rlft("logs", job_id, "-f")
    assert code == 0
    assert f"job {job_id} succeeded" in err
    assert "step    3/3" in err  # the bar reached the last step


def test_logs_prints_the_events(rlft, finished_job):
    code, out, _ = rlft("logs", finished_job[0])
    assert code == 0
    assert "step 3: kl/mean=0.03 reward/mean=0.3" in out
    assert "checkpoint saved at step 3" in out


def test_checkpoints_and_download(rlft, finished_job, tmp_path):
    job_id, _ = finished_job
    code, out, _ = rlft("checkpoints", job_id)
    assert code == 0 and out.split("\n")[1].split()[1] == "3"
    code, _, err = rlft("download", job_id, "--step", "3", "-o", str(tmp_path / "m"))
    assert code == 0 and "from_pretrained" in err
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "model.safetensors").is_file()
    code, _, err = rlft("download", job_id, "--step", "9", "-o", str(tmp_path / "n"))
    assert code == 1 and "no checkpoint at step 9" in err


def test_reward_validate_dry_runs_the_endpoint(rlft, spec_file, tmp_path, api):
    code, out, _ = rlft("reward", "validate", str(spec_file))
    assert code == 0 and json.loads(out)["ok"] is True
    dead = tmp_path / "dead.yaml"
    dead.write_text(
        yaml.safe_dump(
            {
                **letter_spec(api.reward_url),
                "reward": {"url": f"http://127.0.0.1:{free_port()}", "max_retries": 0},
            }
        )
    )
    code, out, err = rlft("reward", "validate", str(dead))
    assert code == 1 and "failed the dry run" in err


def test_reward_validate_dry_runs_a_rewards_list_and_shows_each_component(rlft, tmp_path, api):
    spec = {k: v for k, v in letter_spec(api.reward_url).items() if k != "reward"}
    spec["rewards"] = [
        {"type": "http", "name": "letter", "url": api.reward_url},
        {"type": "string_check", "name": "has_a", "operation": "like", "weight": 0.5},
    ]
    path = tmp_path / "rewards.yaml"
    path.write_text(yaml.safe_dump(spec))
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"prompt": "Go:", "completion": "aa", "label": "a"}) + "\n")
    code, out, _ = rlft("reward", "validate", str(path), "--items", str(items))
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert report["components"] == [{"letter": 1.0, "has_a": 1.0}] and report["rewards"] == [1.5]


def test_an_unreachable_api_is_one_line_that_says_what_to_do(rlft, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = rlft("jobs", "--api-url", url)
    assert code == 1
    expected = f"error: cannot reach the API at {url} — start it with `rlft up` or set RLFT_API_URL"
    assert err.strip() == expected


def test_a_wrong_key_says_which_variable_to_fix(rlft):
    code, _, err = rlft("jobs", "--api-key", "rlft_wrong")
    assert code == 1 and "refused the key" in err and "RLFT_API_KEY" in err and err.count("\n") == 1


def test_no_key_at_all_says_how_to_get_one(rlft, monkeypatch):
    monkeypatch.delenv("RLFT_API_KEY")
    get_settings.cache_clear()
    code, _, err = rlft("jobs")
    assert code == 1 and "rlft keys create --tenant NAME" in err


def test_keys_create_quiet_prints_only_the_key(rlft, monkeypatch, api):
    monkeypatch.setenv("RLFT_DATA_DIR", str(api.data_dir))
    for name, value in api.backends.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    code, out, _ = rlft("keys", "create", "--tenant", "tenant-c", "--quiet")
    assert code == 0 and out.startswith("rlft_") and len(out.split()) == 1
    monkeypatch.setenv("RLFT_API_KEY", out.strip())
    get_settings.cache_clear()
    assert rlft("jobs")[0] == 0
