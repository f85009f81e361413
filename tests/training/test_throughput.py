"""The id tables' lazy optimiser, sizes chosen by the device, and sparse gradients under DDP (gloo)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from synthetic import make_dataset
from torch import nn

from training import trainer
from training.config import AUTO_BATCH_SIZE, CPU_STUDENT, TeacherConfig
from training.inputs import InputSchema, encode
from training.models import build_model
from training.optim import LazyAdam, SplitOptimizer
from training.trainer import TrainConfig, cohort_configs, resolve_sizes

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_lazy_adam_is_adamw_on_touched_rows_and_leaves_the_others_alone() -> None:
    torch.manual_seed(0)
    init = torch.randn(6, 3)
    sparse_table = nn.Embedding(6, 3, sparse=True)
    dense_table = nn.Embedding(6, 3)
    for table in (sparse_table, dense_table):
        table.weight.data.copy_(init)
    lazy = LazyAdam(sparse_table.parameters(), lr=0.1, weight_decay=0.5)
    dense = torch.optim.AdamW(dense_table.parameters(), lr=0.1, weight_decay=0.5)
    ids = torch.tensor([0, 2, 2, 4, 0, 2])  # duplicates: their gradients add up
    target = torch.randn(len(ids), 3)
    for _ in range(3):
        for table, opt in ((sparse_table, lazy), (dense_table, dense)):
            opt.zero_grad()
            F.mse_loss(table(ids), target).backward()
            opt.step()
    touched = torch.tensor([0, 2, 4])
    torch.testing.assert_close(sparse_table.weight[touched], dense_table.weight[touched])
    # Rows 1, 3, 5 were never looked up: no decay, no update (dense AdamW decays them).
    untouched = torch.tensor([1, 3, 5])
    assert torch.equal(sparse_table.weight[untouched], init[untouched])
    assert not torch.allclose(dense_table.weight[untouched], init[untouched])


def test_split_optimizer_puts_id_tables_in_the_lazy_part_once_even_when_shared() -> None:
    _, manifest = make_dataset(n_rows=20, seed=0)
    schema = InputSchema.from_manifest(manifest, max_seq_len=4)
    teacher = build_model("teacher", TeacherConfig.grade("G0", seq_len=4).to_dict(), schema)
    student = build_model("student", CPU_STUDENT | {"seq_len": 4}, schema, embedding=teacher.inputs.embedding)
    opt = SplitOptimizer([teacher, student], lr=1e-3)
    assert opt.sparse == [teacher.inputs.embedding.table.weight]
    all_params = {id(p) for m in (teacher, student) for p in m.parameters()}
    assert len(opt.dense) + 1 == len(all_params)


def test_auto_sizes_by_device_and_explicit_values_kept() -> None:
    cpu, why = resolve_sizes(TrainConfig(), CPU)
    assert cpu.batch_size == AUTO_BATCH_SIZE["cpu"] and cpu.student_size == "small"
    assert cpu.teacher_grade in trainer.CPU_MS_PER_1K_ROWS and "auto" in why.reason
    cuda, why = resolve_sizes(TrainConfig(), CUDA)
    assert (cuda.teacher_grade, cuda.student_size, cuda.batch_size) == ("G2", "full", AUTO_BATCH_SIZE["cuda"])
    assert why.epoch_estimate_s is None
    given = TrainConfig(teacher_grade="G3", student_size="full", batch_size=77)
    assert resolve_sizes(given, CPU)[0] == given
    # The resolved config names concrete model configs: the small student is the CPU shape.
    specs = cohort_configs(cpu)
    assert {k: specs["student_0"][1][k] for k in CPU_STUDENT} == CPU_STUDENT
    with pytest.raises(ValueError, match="student_size"):
        TrainConfig(student_size="huge")
    with pytest.raises(ValueError, match="teacher grade"):
        TrainConfig(teacher_grade="G9")


def test_cpu_grade_is_the_largest_whose_measured_epoch_fits(monkeypatch) -> None:
    # Two small students at 1 s per 1k rows use 200 s of the 300 s budget: G1 (0.9 s) fits, G2 does not.
    monkeypatch.setattr(trainer, "CPU_MS_PER_1K_ROWS",
                        {"G0": 200.0, "G1": 900.0, "G2": 4000.0, "student_small": 500.0})
    config, why = resolve_sizes(TrainConfig(students=2), CPU)
    assert config.teacher_grade == "G1" and why.epoch_estimate_s == pytest.approx(190.0)
    # Nothing fits: the smallest grade, said so.
    config, why = resolve_sizes(TrainConfig(students=8), CPU)
    assert config.teacher_grade == "G0" and "no CPU grade fits" in why.reason


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    schema, batch = _ddp_data()
    torch.manual_seed(0)
    model = build_model("dnn", {"d_embed": 4, "hidden": [8], "seq_len": 4}, schema)
    ddp = nn.parallel.DistributedDataParallel(_LossOf(model))
    opt = SplitOptimizer([model], lr=1e-2)
    half = len(batch) // world
    opt.zero_grad()
    ddp(batch.slice(rank * half, (rank + 1) * half)).backward()
    grads = {n: p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
             for n, p in model.named_parameters()}
    opt.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.save({"grads": grads, "params": params}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


class _LossOf(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.model.logits(batch), batch.label)


def _ddp_data():
    table, manifest = make_dataset(n_rows=64, seed=2, seq_len=4)
    schema = InputSchema.from_manifest(manifest, max_seq_len=4)
    return schema, encode(table, schema)


def test_sparse_id_gradients_all_reduce_under_ddp_gloo(tmp_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # The reference: one process, the whole batch (the mean of the two halves' mean losses).
    schema, batch = _ddp_data()
    torch.manual_seed(0)
    model = build_model("dnn", {"d_embed": 4, "hidden": [8], "seq_len": 4}, schema)
    assert model.embedding.table.sparse
    F.binary_cross_entropy_with_logits(model.logits(batch), batch.label).backward()
    for name, p in model.named_parameters():
        want = p.grad.to_dense() if p.grad.is_sparse else p.grad
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], want, atol=1e-6, rtol=1e-5)
        # Same averaged gradient on both ranks, so the optimiser step leaves them identical.
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
    assert not torch.equal(ranks[0]["params"]["embedding.table.weight"], model.embedding.table.weight)


def test_eta_is_recorded_after_the_first_steps_and_warns_when_long(monkeypatch, capsys) -> None:
    table, manifest = make_dataset(n_rows=200, seed=1, seq_len=4)
    config = TrainConfig(teacher_grade=None, students=0, baselines=("lr",), batch_size=20, threads=1,
                         baseline={"d_embed": 4, "hidden": [8], "seq_len": 4}, val_fraction=0.0)
    schema = InputSchema.from_manifest(manifest, max_seq_len=4)
    cohort = trainer.build_cohort(config, schema)
    history = trainer.train_window(cohort, encode(table, schema), config, CPU, progress=False)
    assert history.steps == 10 and history.eta_s is not None and history.eta_s > 0
    # The losses reach the host in chunks, yet the history holds one value per step, in order.
    assert len(history.losses["lr"]) == 10 and len(history.bce["lr"]) == 10
    assert "ETA" not in capsys.readouterr().err  # progress off: nothing printed
    monkeypatch.setattr(trainer, "ETA_WARN_S", 0.0)
    cohort = trainer.build_cohort(config, schema)
    trainer.train_window(cohort, encode(table, schema), config, CPU, progress=True)
    err = capsys.readouterr().err
    assert "ETA:" in err and "warning: training is estimated to take over" in err
