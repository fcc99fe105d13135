"""A two-point sweep on a local Ray instance gives the sequential sweep's points (the same perplexities: each
task runs the same deterministic CPU computation in a process of its own). Skipped where Ray is not installed."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

import torch  # noqa: E402

from core import workbench as wb  # noqa: E402
from core.studies.sweep import run_sweep  # noqa: E402
from core.studies.sweep_points import MethodOptions, SweepRequest, load_sweep  # noqa: E402
from core.studies.sweep_ray import run_sweep_ray  # noqa: E402


def test_a_two_point_sweep_on_local_ray_matches_the_sequential_one(tiny_llama_folder, text_file, tmp_path):
    request = SweepRequest(wb.OpenRequest(str(tiny_llama_folder)),
                           wb.CalibrationRequest((str(text_file),), 4, 32, 0), wb.EvaluationRequest(str(text_file), 32, 2),
                           methods=("wanda", "sparsegpt"), sparsities=(0.5,), options=MethodOptions(device="cpu"),
                           out=str(tmp_path / "ray"))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        on_ray = run_sweep_ray(request, "local")         # Ray already up: the sweep joins it and leaves it running
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)              # as a Ray worker of one CPU runs (OMP_NUM_THREADS=1): the same sums
    try:
        sequential = run_sweep(SweepRequest(**{**request.__dict__, "out": None}))
    finally:
        torch.set_num_threads(threads)
    assert [p.point for p in on_ray.points] == [p.point for p in sequential.points]
    assert [(p.ppl, p.sparsity) for p in on_ray.points] == [(p.ppl, p.sparsity) for p in sequential.points]
    assert on_ray.ppl_dense == sequential.ppl_dense and on_ray.ray == "local"
    saved = load_sweep(tmp_path / "ray")
    assert saved.status == "finished" and [p.ppl for p in saved.points] == [p.ppl for p in on_ray.points]
