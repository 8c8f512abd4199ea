import pytest

from selfj_rlhf.cli import launch


def test_flag_values_stop_at_the_script():
    argv = ["python", "accelerate", "launch", "--cpu", "--num_processes", "2", "recipes/best_of_n.py", "--n", "4"]
    assert launch._flag_values(argv)["--num_processes"] == "2"
    assert "--n" not in launch._flag_values(argv)
    assert launch._flag_values(["accelerate", "launch", "--num_processes=3", "x.py"])["--num_processes"] == "3"


def test_requested_processes_from_config_file(tmp_path, monkeypatch):
    config = tmp_path / "acc.yaml"
    config.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\nuse_cpu: true\n")

    class Parent:
        def cmdline(self):
            return ["accelerate", "launch", "--config_file", str(config), "recipes/best_of_n.py"]

    import psutil

    monkeypatch.delenv("SELFJ_CPU_NUM_PROCESSES", raising=False)
    monkeypatch.setattr(psutil, "Process", lambda pid: Parent())
    assert launch._requested_num_processes() == 2


@pytest.mark.parametrize("env,expected", [
    ({}, None),  # not an accelerate --cpu launch
    ({"ACCELERATE_USE_CPU": "True"}, None),  # single process requested: no MASTER_PORT
    ({"ACCELERATE_USE_CPU": "True", "MASTER_PORT": "29500", "RANK": "0"}, None),  # already a worker
])
def test_no_fan_out_outside_multi_process_cpu_launches(monkeypatch, env, expected):
    for name in ("ACCELERATE_USE_CPU", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launch.spawn_cpu_workers_if_requested() is expected


def test_selfj_env_reports_the_stack(capsys):
    import json

    from selfj_rlhf.cli.main import main

    main(["env"])
    found = json.loads(capsys.readouterr().out)
    assert found["torch"] and found["gpus"] == len(found["gpu_names"])
    assert {"vllm", "deepspeed", "flash-attn", "transformers", "trl"} <= set(found)
