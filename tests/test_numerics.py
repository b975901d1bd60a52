"""Numerics that follow the device: bfloat16 autocast by default for the versions measured to gain from it, where
the device computes in bfloat16; --amp and --no-amp as given; the resolved choice recorded and compared as part
of a run's identity. Compilation fixed for a run's life, uncompiled with one line where no C++ compiler is. Tests
in batches of at least a thousand images, in the run's numerics, timed. Freed memory kept in a CPU run's process, so
that a step's large blocks are not faulted in from the kernel again, and given back after each test and between
runs."""
import dataclasses
import json
import os
import subprocess
import sys
import types

import pytest
import torch

import configs
from conftest import ROOT, make_image_folder, read_metrics, watch_output_dtypes
from runner import devices, loaders


@pytest.fixture
def images(tmp_path):
    return make_image_folder(tmp_path / "images", train=48, test=40)


def tiny(version: str, folder, out, *extra) -> tuple:
    return (version, "--epochs", 1, "--batch-size", 16, "--image-folder", folder, "--out", out, "--quiet", *extra)


def config(run) -> dict:
    return json.loads((run / "config.json").read_text())


def test_amp_resolves_from_the_flag_the_version_and_the_device(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert devices.resolve_amp(True, False, cpu) and not devices.resolve_amp(False, True, cpu)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not devices.resolve_amp(None, True, cpu)  # emulated bfloat16 would be slower than fp32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert devices.resolve_amp(None, True, cpu) and not devices.resolve_amp(None, False, cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: False)
    assert not devices.resolve_amp(None, True, gpu)  # fp32 on a GPU without bfloat16, never an error
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: not including_emulation)
    assert devices.resolve_amp(None, True, gpu)
    assert not devices.resolve_amp(None, True, torch.device("mps"))
    assert [n for n, row in configs.VERSIONS.items() if row.autocast] == [12, 13, 14, 15]


@pytest.mark.slow
def test_a_version_that_gains_trains_in_bfloat16_by_default_and_no_amp_turns_it_off(cli, images, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr(devices, "computes_in_bfloat16", lambda device: True)
    dtypes = watch_output_dtypes(monkeypatch, torch.nn.Linear)
    code, _, err = cli(*tiny("12", images, tmp_path / "auto"))
    assert code == 0, err
    assert dtypes == {torch.bfloat16} and config(tmp_path / "auto")["amp"] is True
    assert "amp" not in config(tmp_path / "auto")["overrides"]
    dtypes.clear()
    assert cli(*tiny("12", images, tmp_path / "off", "--no-amp"))[0] == 0
    assert dtypes == {torch.float32} and config(tmp_path / "off")["amp"] is False
    assert config(tmp_path / "off")["overrides"]["amp"] is False
    dtypes.clear()
    assert cli(*tiny("9", images, tmp_path / "seed-version"))[0] == 0  # versions 1-11 stay in fp32
    assert dtypes == {torch.float32} and config(tmp_path / "seed-version")["amp"] is False
    code, _, err = cli("--resume", tmp_path / "off", "--amp")
    assert code == 2 and "--amp cannot change when resuming" in err


def test_a_results_folder_compares_the_resolved_choice(cli, images, tmp_path, monkeypatch):
    table = tmp_path / "table"
    assert cli("9,12", "--epochs", 1, "--batch-size", 16, "--image-folder", images, "--out", table, "--quiet",
               "--no-amp")[0] == 0
    monkeypatch.setattr(devices, "computes_in_bfloat16", lambda device: True)
    code, _, err = cli("9,12", "--epochs", 1, "--batch-size", 16, "--image-folder", images, "--out", table, "--quiet")
    assert code != 0 and err.count("\n") == 1 and "give --no-amp to continue its folder" in err
    monkeypatch.setattr(devices, "computes_in_bfloat16", lambda device: False)  # auto resolves to fp32: the same runs
    code, out, err = cli("9,12", "--epochs", 1, "--batch-size", 16, "--image-folder", images, "--out", table, "--quiet")
    assert code == 0, err
    assert out.count("; skipped") == 2


def test_compile_without_a_cpp_compiler_trains_uncompiled_with_one_line(cli, images, tmp_path, monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    code, _, err = cli(*tiny("6", images, tmp_path / "run", "--compile", "--device", "cpu"))
    assert code == 0 and err.count("no C++ compiler") == 1
    assert config(tmp_path / "run")["compile"] is False
    code, _, err = cli("--resume", tmp_path / "run", "--epochs", 2, "--compile")
    assert code == 2 and "--compile cannot change when resuming" in err
    saved = config(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(json.dumps(dict(saved, compile=True)))  # compiled elsewhere
    code, _, err = cli("--resume", tmp_path / "run", "--epochs", 2)
    assert code == 0 and err.count("no C++ compiler") == 1, err


def test_tests_take_batches_of_at_least_a_thousand_images_and_are_timed(cli, tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "images", train=48, test=1100)
    sizes, real_batches = [], loaders.ResidentLoader.batches

    def watched(loader, epoch=1):
        for batch in real_batches(loader, epoch):
            if not loader.plan.training:
                sizes.append(len(batch[1]))
            yield batch

    monkeypatch.setattr(loaders.ResidentLoader, "batches", watched)
    assert cli(*tiny("6", folder, tmp_path / "run"))[0] == 0
    assert sizes == [1024, 76]
    assert loaders.eval_batch_size(configs.VERSIONS[12].recipe) == 1024
    assert loaders.eval_batch_size(dataclasses.replace(configs.VERSIONS[12].recipe, batch_size=2000)) == 2000
    assert float(read_metrics(tmp_path / "run")[0]["test_seconds"]) > 0


FAULTS_ON_REUSE = """
import resource
import torch
from runner.devices import prepare_torch

def step():  # three 64 MB blocks made and freed, as a training step's activations are
    first = torch.ones(1 << 24)
    second = first * 2
    (first + second).sum()

def faults_per_step():
    for _ in range(8):  # the heap may take a few steps to grow to the steps' needs
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 6

plain = faults_per_step()
prepare_torch(torch.device("cpu"), None, False)
print(plain, faults_per_step())
"""


@pytest.mark.skipif(not devices.runs_on_glibc(), reason="glibc's allocator only")
@pytest.mark.slow
def test_a_run_reuses_freed_memory_without_faulting_it_in_again():
    pages = (1 << 26) // os.sysconf("SC_PAGESIZE")  # of one block
    done = subprocess.run([sys.executable, "-c", FAULTS_ON_REUSE], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    plain, prepared = map(int, done.stdout.split())
    assert plain > 2 * pages  # by default each block is mapped afresh and faulted in page by page, every step
    assert prepared < pages / 2


GROWTH_ACROSS_RUNS = """
import os
import torch
from runner.devices import prepare_torch

def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGESIZE") >> 20

start, outliving, held, left = resident_mb(), [], [], []
for megabytes in (48, 64, 80, 96, 112):  # runs of a table, each with its own step size
    prepare_torch(torch.device("cpu"), None, False)
    left.append(resident_mb() - start)  # what the runs before left in the process
    block = torch.ones(megabytes << 18)
    outliving.append(torch.ones(16))  # above the block in the heap: the block's hole cannot shrink the heap
    del block
    held.append(resident_mb() - start)
print(*held)
print(*left)
"""


@pytest.mark.skipif(not devices.runs_on_glibc(), reason="glibc's allocator only")
def test_runs_of_different_sizes_do_not_add_up_their_freed_memory():
    done = subprocess.run([sys.executable, "-c", GROWTH_ACROSS_RUNS], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    held, left = ([int(mb) for mb in line.split()] for line in done.stdout.splitlines())
    assert all(mb >= size * 0.9 for mb, size in zip(held, (48, 64, 80, 96, 112)))  # kept while its run lasts
    assert max(left) < 24  # kept, every hole would stay: 48 + 64 + 80 + 96 MB before the last run


class RecordedLibc:
    """The C library's allocator calls, recorded instead of made."""

    def __init__(self):
        self.calls = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch) -> RecordedLibc:
    """glibc, recorded, in a process that keeps no freed memory yet."""
    recorded = RecordedLibc()
    monkeypatch.setattr(devices, "runs_on_glibc", lambda: True)
    monkeypatch.setattr(devices, "ctypes", types.SimpleNamespace(CDLL=lambda *args: recorded))  # devices' own only
    monkeypatch.setattr(devices, "kept_by", None)
    return recorded


def test_a_run_on_another_device_leaves_glibc_as_it_is(cli, mnist_dir, tmp_path, monkeypatch, libc):
    import train
    from runner import commands

    monkeypatch.setenv(commands.TRACEBACK, "1")
    monkeypatch.setattr(train, "resolve_device", lambda name: torch.device("meta"))  # a GPU's code, on no data
    with pytest.raises((NotImplementedError, RuntimeError), match="meta"):
        cli("3", "--epochs", 1, "--batch-size", 16, "--data-dir", mnist_dir, "--out", tmp_path / "run", "--quiet",
            "--no-amp")
    assert libc.calls == []


def test_a_gpu_run_after_a_cpu_run_gets_glibc_settings_back(libc):
    devices.keep_freed_memory(torch.device("cpu"))
    assert libc.calls == [("mallopt", devices.M_MMAP_MAX, 0), ("mallopt", devices.M_TRIM_THRESHOLD, 2**31 - 1)]
    libc.calls.clear()
    devices.keep_freed_memory(torch.device("cuda"))
    assert libc.calls == [("mallopt", devices.M_MMAP_MAX, 65536), ("mallopt", devices.M_TRIM_THRESHOLD, 128 * 1024),
                          ("malloc_trim", 0)]
    libc.calls.clear()
    devices.give_back_freed_memory()
    devices.keep_freed_memory(torch.device("mps"))
    assert libc.calls == []


def test_a_cpu_run_gives_freed_memory_back_after_each_test_and_before_the_next_run(cli, images, tmp_path, libc):
    devices.keep_freed_memory(torch.device("cpu"))  # a run before, in the same process
    libc.calls.clear()
    code, _, err = cli("6", "--epochs", 3, "--eval-every", 2, "--batch-size", 16, "--image-folder", images,
                       "--out", tmp_path / "run", "--quiet", "--device", "cpu", "--no-amp")
    assert code == 0, err
    assert libc.calls == [("malloc_trim", 0)] * 3  # as the run starts, after epoch 2's test and epoch 3's


WORKER_MAPS = """
import ctypes
import torch
from runner import loaders
from runner.devices import keep_freed_memory

class MallocInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo.restype = MallocInfo

class MappedBlocks(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        block = torch.ones(1 << 24)  # 64 MB
        mapped = libc.mallinfo().hblkhd >> 20  # megabytes glibc mapped on their own, outside its heap
        del block
        return mapped, 0

keep_freed_memory(torch.device("cpu"))
loader = loaders.ClassicLoader(MappedBlocks(), loaders.BatchPlan(2, 1), torch.device("cpu"), None, None)
print(*(int(megabytes) for megabytes, _, _ in loader.batches()))
"""


@pytest.mark.skipif(not devices.runs_on_glibc(), reason="glibc's allocator only")
def test_dataloader_workers_keep_glibc_settings():
    done = subprocess.run([sys.executable, "-c", WORKER_MAPS], capture_output=True, text=True, check=True, cwd=ROOT)
    assert all(int(megabytes) >= 64 for megabytes in done.stdout.split())  # a large block mapped on its own


def test_without_glibc_the_c_library_is_left_alone(monkeypatch):
    def unknown_name(name):
        raise ValueError("unrecognized configuration name")  # macOS; musl says the same through OSError

    monkeypatch.setattr(devices.ctypes, "CDLL", lambda *args: pytest.fail("the C library was called"))
    monkeypatch.setattr(devices, "kept_by", None)
    monkeypatch.setattr(devices.os, "confstr", unknown_name)
    devices.keep_freed_memory(torch.device("cpu"))
    devices.give_back_freed_memory()
    devices.stop_keeping_freed_memory()
    monkeypatch.delattr(devices.os, "confstr")  # Windows has no confstr at all
    devices.keep_freed_memory(torch.device("cpu"))
    devices.give_back_freed_memory()
    devices.keep_freed_memory(torch.device("cuda"))
