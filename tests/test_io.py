import json
import os

import pytest

from selfj_rlhf.core.errors import RecordError
from selfj_rlhf.core.io import _UMASK, ShardWriter, atomic_write_json, read_shards
from selfj_rlhf.data.prompts import load_prompts


def write(path, text):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize("content,message", [
    ('{"instruction": "a"}\n{"input": "b"}\n', r"data.jsonl:2: field 'instruction': missing"),
    ('{"instruction": "a"}\n{"instruction": 3}\n', r"data.jsonl:2: field 'instruction': expected a string, got int"),
    ('{"instruction": "a"}\n{"instruction": "a"\n', r"data.jsonl:2: malformed JSON"),
    ('{"instruction": "  "}\n', r"data.jsonl:1: field 'instruction': empty string"),
    ('["not", "an", "object"]\n', r"data.jsonl:1: expected a JSON object, got list"),
    ('{"id": "x", "instruction": "a"}\n{"id": "x", "instruction": "b"}\n', r"data.jsonl:2: field 'id': duplicate id 'x'"),
    ("\n\n", r"dataset is empty"),
    (b'{"instruction": "\xff"}\n', r"data.jsonl:1: invalid UTF-8"),
])
def test_bad_prompt_files_name_line_and_field(tmp_path, content, message):
    with pytest.raises(RecordError, match=message):
        load_prompts(write(tmp_path / "data.jsonl", content))


def test_json_list_alpacaeval_format(tmp_path):
    rows = [{"instruction": "Hi", "output": "x", "generator": "g", "dataset": "helpful_base"},
            {"instruction": "Bye", "input": "ctx", "dataset": "oasst"}]
    prompts = load_prompts(write(tmp_path / "outputs.json", json.dumps(rows)))
    assert [p.instruction for p in prompts] == ["Hi", "Bye\n\nctx"]
    assert [p.dataset for p in prompts] == ["helpful_base", "oasst"]
    assert [p.id for p in prompts] == ["outputs:1", "outputs:2"]
    with pytest.raises(RecordError, match=r"outputs.json:2: field 'instruction': missing"):
        load_prompts(write(tmp_path / "outputs.json", json.dumps([{"instruction": "a"}, {"output": "b"}])))


def test_bundled_prompts():
    prompts = load_prompts()
    assert 40 <= len(prompts) <= 100
    assert {p.meta["category"] for p in prompts} == {"common", "coding", "academic"}
    assert len(load_prompts(max_prompts=8)) == 8


def test_shard_writer_recovers_from_torn_line(tmp_path):
    shard = tmp_path / "part-000.jsonl"
    with ShardWriter(shard) as writer:
        writer.write({"id": "a", "v": 1})
    with open(shard, "ab") as fh:  # a kill in the middle of a row
        fh.write(b'{"id": "b", "v"')
    assert set(read_shards(tmp_path)) == {"a"}
    with ShardWriter(shard) as writer:
        writer.write({"id": "b", "v": 2})
    assert read_shards(tmp_path) == {"a": {"id": "a", "v": 1}, "b": {"id": "b", "v": 2}}


def test_atomic_write_leaves_no_temp_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"bad": float("nan")})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_UMASK


def test_last_complete_checkpoint_skips_and_removes_torn_ones(tmp_path):
    from selfj_rlhf.core.io import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "missing") is None
    for step, state in ((4, '{"global_step": 4}'), (8, '{"global_step": 8}'), (12, '{"global_st'), (16, None)):
        directory = tmp_path / f"checkpoint-{step}"
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"x")
        if state is not None:
            (directory / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-final-notes").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8", "checkpoint-final-notes"]


def test_atomic_write_removes_temporary_files_of_dead_writers(tmp_path):
    import subprocess
    import sys

    from selfj_rlhf.core.io import atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.json.{dead.stdout.strip()}.abc123.tmp"  # a writer killed before its rename
    stale.write_text("half")
    live = tmp_path / f".out.json.{os.getpid()}.def456.tmp"  # a writer of this process, still writing
    live.write_text("in progress")
    atomic_write_text(tmp_path / "out.json", "{}")
    assert (tmp_path / "out.json").read_text() == "{}"
    assert not stale.exists() and live.exists()


class _OneProcess:
    is_main_process = True

    def wait_for_everyone(self):
        pass


def test_a_run_refuses_to_resume_on_changed_inputs(tmp_path):
    """Resume pins the inputs' content, not only their path: an edited prompt or a changed judge is a clear error,
    never stale rows mixed with new ones; the same inputs resume, and a run may be extended with more prompts."""
    from selfj_rlhf.core.errors import ConfigError
    from selfj_rlhf.core.io import ShardWriter, start_sharded_run
    from selfj_rlhf.data.prompts import PromptRecord, prompt_content

    prompts = [PromptRecord(f"p{i}", f"Question {i}?", "flask", f"Answer {i}.") for i in range(3)]

    def start(items, judge="abc"):
        return start_sharded_run(_OneProcess(), tmp_path / "run", {"n": 2}, items, lambda p: p.id, prompt_content,
                                 {"judge": judge})

    shard_dir, done, todo = start(prompts)
    assert not done and len(todo) == 3
    with ShardWriter(shard_dir / "part-000.jsonl") as writer:
        writer.write({"id": "p0", "text": "done"})
    _, done, todo = start(prompts)  # same inputs: resumes after p0
    assert list(done) == ["p0"] and [p.id for p in todo] == ["p1", "p2"]
    edited = [prompts[0], PromptRecord("p1", "Question 1, edited?", "flask", "Answer 1."), prompts[2]]
    moved = [PromptRecord(p.id, p.instruction, "elsewhere.jsonl", p.reference) for p in prompts]
    assert start(moved)[1].keys() == {"p0"}  # where the prompts were read from is not their content
    for changed, args, match in ((edited, {}, "1 items changed.*'p1'"), (prompts, {"judge": "def"}, "judge")):
        with pytest.raises(ConfigError, match=match + ".*new --output_dir"):
            start(changed, **args)
    extended = prompts + [PromptRecord("p3", "Q3?", "flask", "A3.")]  # a run extended with more prompts
    assert [p.id for p in start(extended)[2]] == ["p1", "p2", "p3"]
    (tmp_path / "run" / "inputs.json").unlink()  # a run started before inputs were pinned: pinned from now on
    assert start(prompts)[1].keys() == {"p0"} and (tmp_path / "run" / "inputs.json").is_file()


PUBLISH_LOOP = """
import sys
from pathlib import Path
from selfj_rlhf.core.io import publish_directory

final = Path(sys.argv[1])
n = 0
while True:
    n += 1
    staging = final.with_name(f".{final.name}.{n}.tmp")
    staging.mkdir()
    for part in range(8):  # a judge's files: all of one version, or the directory is a mix
        (staging / f"part-{part}.bin").write_bytes(str(n).encode() * 50_000)
    (staging / "selfj_config.json").write_text(str(n))
    publish_directory(staging, final)
    print(n, flush=True)
"""


def test_a_published_directory_is_the_old_or_the_new_one_after_any_kill(tmp_path):
    """20 SIGKILLs at random moments while a directory is published again and again: every time, the directory
    read afterwards is one version entirely (never a mix, never missing once published), and the next publish
    removes what the killed one left."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from selfj_rlhf.core.io import publish_directory

    final = tmp_path / "judge"
    script = tmp_path / "publish_loop.py"
    script.write_text(PUBLISH_LOOP)
    rng = random.Random(0)
    for kill in range(20):
        proc = subprocess.Popen([sys.executable, str(script), str(final)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one publish done
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        versions = {path.read_bytes()[:1] for path in final.glob("part-*.bin")}
        config = (final / "selfj_config.json").read_text()
        assert len(list(final.glob("part-*.bin"))) == 8 and len(versions) == 1, (kill, versions)
        assert all(p.read_bytes() == config.encode() * 50_000 for p in final.glob("part-*.bin")), kill
    staging = tmp_path / ".judge.last.tmp"
    staging.mkdir()
    (staging / "selfj_config.json").write_text("last")
    publish_directory(staging, final)
    assert (final / "selfj_config.json").read_text() == "last"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".judge.")]
    assert leftovers == [final.readlink().name]  # only the version the link points to
