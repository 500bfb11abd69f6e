"""The benchmark scripts still run (tiny sizes; their figures are not checked here: timing
belongs in bench/, not in tests)."""
import pytest

from tests.conftest import run_script


@pytest.mark.slow
def test_overhead_benchmark_runs_every_part():
    result = run_script("bench/overhead.py", "--repeats", "1", "--mnist-samples", "640",
                        "--digits-epochs", "1", "--resnet-samples", "32", "--resnet-epochs", "1",
                        "--whole-process",
                        "--whole-epochs", "1", "--fixed-costs", "--fixed-epochs", "2",
                        "--no-memory")
    lines = result.stdout.splitlines()
    assert lines[1].startswith("whole process, default config, 1 epochs: train.py ")
    assert lines[2].startswith("fixed costs (digits): ") and "us per optimizer step" in lines[2]
    assert "ms per epoch" in lines[2]
    assert lines[3].startswith("digits: ") and "time ratio" in lines[3]
    assert lines[4].startswith("mnist: 576 training samples x 1 epochs")
    assert lines[5].startswith("resnet18: 29 training samples x 1 epochs")
    assert lines[-1].startswith("reproduce: ")


@pytest.mark.slow
def test_throughput_benchmark_runs_on_the_cpu():
    result = run_script("bench/throughput.py", "--epochs", "1", "-o", "trainer.len_epoch=3")
    lines = result.stdout.splitlines()
    assert "as configured" in lines[1] and '{"amp": "bf16"}' in lines[2]
    assert all(float(line.split()[-2]) > 0 for line in lines[1:3])


@pytest.mark.slow
def test_throughput_benchmark_measures_given_settings():
    result = run_script("bench/throughput.py", "--epochs", "1", "-o", "trainer.len_epoch=3",
                        "--setting", '{"tensorboard": true, "watch": {"grad_norm": true}}')
    lines = result.stdout.splitlines()
    assert "as configured" in lines[1] and '"watch": {"grad_norm": true}' in lines[2]
    assert len(lines) == 4 and float(lines[2].split()[-2]) > 0
