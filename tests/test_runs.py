"""Run folders: never overwrite, one process per folder, one-line errors naming the file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from aelab.errors import AelabError
from aelab.runs import (
    LOCK_NAME,
    atomic_write_text,
    check_out_folder,
    load_config,
    lock_run_dir,
    new_run_dir,
    read_json,
    release_run_dir,
)


def test_new_run_dir_refuses_a_folder_with_the_users_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("precious\n")
    with pytest.raises(AelabError, match="not empty"):
        new_run_dir(out, "pretrain")
    assert (out / "metrics.csv").read_text() == "precious\n"
    assert not (out / LOCK_NAME).exists()


def test_new_run_dir_takes_a_new_or_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert new_run_dir(tmp_path / "empty", "x") == tmp_path / "empty"
    assert new_run_dir(tmp_path / "a" / "b", "x").is_dir()
    release_run_dir(tmp_path / "empty")
    release_run_dir(tmp_path / "a" / "b")


def test_new_run_dir_numbers_runs_without_reusing_one(tmp_path):
    first = new_run_dir(None, "verb", root=tmp_path)
    second = new_run_dir(None, "verb", root=tmp_path)
    assert (first.name, second.name) == ("0", "1")
    for p in (first, second):
        release_run_dir(p)


def test_out_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(AelabError, match="is a file, not a folder"):
        check_out_folder(tmp_path / "f")


def _holder(folder, tmp_path):
    """A second process that holds the lock of ``folder`` until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from aelab.runs import lock_run_dir
        lock_run_dir({str(folder)!r})
        print("locked", flush=True)
        sys.stdin.read()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_told_who_holds_the_lock_and_a_dead_holder_frees_it(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder, tmp_path)
    try:
        with pytest.raises(AelabError, match=rf"in use by pid {proc.pid} on host"):
            lock_run_dir(folder)
    finally:
        proc.kill()  # a crash: no clean-up, the lock file stays
        proc.wait()
    assert (folder / LOCK_NAME).exists()
    lock_run_dir(folder)  # stale lock recovered
    assert f"pid={os.getpid()}" in (folder / LOCK_NAME).read_text()
    release_run_dir(folder)
    assert not (folder / LOCK_NAME).exists()


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    folder = tmp_path / "run"
    proc = _holder(folder, tmp_path)
    monkeypatch.setattr(fcntl, "flock", no_flock)  # e.g. a network file system
    try:
        with pytest.raises(AelabError, match=rf"pid {proc.pid}"):
            lock_run_dir(folder)
    finally:
        proc.kill()
        proc.wait()
    lock_run_dir(folder)  # the recorded pid is gone: stale, taken over
    release_run_dir(folder)


def test_aelab_run_refuses_a_folder_another_run_holds(tmp_path):
    from aelab.pipeline import RunConfig, run_all

    folder = tmp_path / "run"
    proc = _holder(folder, tmp_path)
    try:
        with pytest.raises(AelabError, match="in use by pid"):
            run_all(RunConfig(out=str(folder), preset="tiny", device="cpu"))
    finally:
        proc.kill()
        proc.wait()


def test_lock_is_reentrant_in_one_process(tmp_path):
    lock_run_dir(tmp_path / "r")
    lock_run_dir(tmp_path / "r")
    release_run_dir(tmp_path / "r")


def test_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(AelabError, match=r"no space left on device writing .*out\.txt$"):
        atomic_write_text(tmp_path / "out.txt", "x")
    assert os.listdir(tmp_path) == []  # no temporary file left behind


@pytest.mark.parametrize("text", ["a: [1, 2\n", "- just\n- a list\n", "\xff\xfe"])
def test_edited_config_yaml_is_one_line(tmp_path, text):
    (tmp_path / "config.yaml").write_bytes(text.encode("latin-1"))
    with pytest.raises(AelabError, match="config.yaml") as info:
        load_config(tmp_path)
    assert "\n" not in str(info.value)


def test_invalid_json_is_one_line(tmp_path):
    (tmp_path / "stages.json").write_text('{"data": ')
    with pytest.raises(AelabError, match=r"cannot read .*stages\.json") as info:
        read_json(tmp_path / "stages.json")
    assert "\n" not in str(info.value)
    assert read_json(tmp_path / "missing.json", default={}) == {}


def test_a_stages_file_holding_a_list_is_one_line(tmp_path):
    import pytest

    from aelab.errors import AelabError
    from aelab.runs import read_json

    (tmp_path / "stages.json").write_text("[]")
    with pytest.raises(AelabError, match="holds a JSON list"):
        read_json(tmp_path / "stages.json", default={})
    assert read_json(tmp_path / "missing.json", default={}) == {}


def _torch_disk_full(obj, fh):
    """What torch.save does on a full disk: part of the file, then a RuntimeError raised while
    handling the OSError (``[enforce fail at inline_container.cc:672] . unexpected pos``)."""
    fh.write(b"PK\x03\x04 half a checkpoint")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch):
    import torch

    from aelab.train.checkpoint import save_checkpoint

    run = tmp_path / "RUN"
    save_checkpoint(run / "last.ckpt", epoch=3, state_dict={"w": torch.ones(2)})
    old = (run / "last.ckpt").read_bytes()
    monkeypatch.setattr(torch, "save", _torch_disk_full)
    with pytest.raises(AelabError) as info:
        save_checkpoint(run / "last.ckpt", epoch=4, state_dict={"w": torch.zeros(2)})
    assert str(info.value) == f"no space left on device writing {run / 'last.ckpt'}"
    assert (run / "last.ckpt").read_bytes() == old  # the old checkpoint intact
    assert sorted(os.listdir(run)) == ["last.ckpt"]  # no temporary file left behind


def test_a_runtime_error_without_an_os_error_under_it_is_not_hidden(tmp_path, monkeypatch):
    import torch

    from aelab.train.checkpoint import save_checkpoint

    def bug(obj, fh):
        raise RuntimeError("a bug, not the disk")

    monkeypatch.setattr(torch, "save", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        save_checkpoint(tmp_path / "last.ckpt", epoch=0)


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    import time

    (tmp_path / "config.yaml").write_text(_alias_bomb())
    t0 = time.perf_counter()
    with pytest.raises(AelabError, match="expand to more than"):
        load_config(tmp_path)
    assert time.perf_counter() - t0 < 2.0
    (tmp_path / "config.yaml").write_text("a: &x [1, 2]\nb: *x\nseed: 3\n")  # a few aliases are fine
    assert load_config(tmp_path) == {"a": [1, 2], "b": [1, 2], "seed": 3}
