"""The six data-parallel strategies behind ``Trainer``: one small class per family, same optimiser.

- ``zero1`` / ``zero2`` / ``zero3``: ``deepspeed.initialize`` with the client AdamW and LambdaLR, ZeRO
  stage 1, 2 or 3 (buckets, ``overlap_comm``, ``contiguous_gradients``, bf16 from ``parallel``).
- ``ddp``: torch ``DistributedDataParallel``; ``no_sync`` on every micro-batch but the last.
- ``fsdp_full`` / ``fsdp_grad_op``: torch FSDP2 ``fully_shard`` per transformer block and on the root,
  ``reshard_after_forward`` True (FULL_SHARD, ≈ ZeRO-3) or False (SHARD_GRAD_OP, ≈ ZeRO-2).

All clip the global gradient norm at ``GRAD_CLIP`` and average gradients over ranks and micro-batches,
so that one optimiser step sees the gradient of the mean loss over the global batch.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

GRAD_CLIP = 1.0
DEEPSPEED_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}
FSDP_MODES = ("fsdp_full", "fsdp_grad_op")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules each made one FSDP unit: ``model.blocks`` if it is a ModuleList, else the items of
    every ModuleList in the model."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return list(blocks)
    return [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]


def fp32_cpu(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy, floating tensors in float32."""
    t = t.detach().cpu()
    return t.float().clone() if t.is_floating_point() else t.clone()


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.float(), y.float())


class Strategy:
    """One training strategy: wraps the model, does micro-batch forward/backward and optimiser steps,
    checkpoints (collective) and gathers the full fp32 state."""

    model: nn.Module  # the wrapped model (call it for forward passes)
    module: nn.Module  # the plain module inside (parameters may be shards: zero3, fsdp_full)

    def micro_step(self, x: torch.Tensor, y: torch.Tensor, n_micro: int, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch x, y [b, C, H, W]; returns its mean loss (detached)."""
        raise NotImplementedError

    def optimizer_step(self) -> None:
        """Clip, step the optimiser and the schedule, zero the gradients."""
        raise NotImplementedError

    def save(self, path: Path) -> None:
        raise NotImplementedError

    def load(self, path: Path) -> None:
        raise NotImplementedError

    def full_state_dict(self, rank0_only: bool = True) -> dict[str, torch.Tensor]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------- DeepSpeed


def deepspeed_config(stage: int, surrogate, parallel, world_size: int) -> dict:
    """The DeepSpeed config dict of a ZeRO stage (batch sizes from ``surrogate``, knobs from ``parallel``)."""
    bucket = int(parallel.bucket_size)
    zero = {
        "stage": stage,
        "overlap_comm": bool(parallel.overlap_comm),
        "contiguous_gradients": bool(parallel.contiguous_gradients),
        "reduce_bucket_size": bucket,
    }
    if stage < 3:
        zero |= {"allgather_bucket_size": bucket, "reduce_scatter": True}
    else:
        zero |= {
            "stage3_prefetch_bucket_size": bucket,
            # tensors below 10·D elements (norms, biases) stay whole on every rank, as HF's "auto" does;
            # D: the ViT's embedding width, the score network's widest level
            "stage3_param_persistence_threshold": 10
            * int(surrogate.embed_dim if "embed_dim" in surrogate else max(surrogate.hidden)),
            "stage3_max_live_parameters": max(bucket, int(1e9)),
            "stage3_max_reuse_distance": max(bucket, int(1e9)),
            "stage3_gather_16bit_weights_on_model_save": False,
        }
    batch, accum = int(surrogate.batch_size), int(surrogate.grad_accum)
    return {
        "train_batch_size": batch,
        "train_micro_batch_size_per_gpu": batch // (world_size * accum),
        "gradient_accumulation_steps": accum,
        "gradient_clipping": GRAD_CLIP,
        "zero_optimization": zero,
        "bf16": {"enabled": parallel.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedStrategy(Strategy):
    """ZeRO stage 1, 2 or 3 through ``deepspeed.initialize`` with the client optimiser and schedule."""

    TAG = "deepspeed"

    def __init__(self, stage, model, optimizer, scheduler, surrogate, parallel, world_size):
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        warnings.filterwarnings(  # DeepSpeed's collectives, renamed in torch 2.13; repeated every step
            "ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning, r"torch\.distributed"
        )
        self.stage = stage
        self.dtype = torch.bfloat16 if parallel.precision == "bf16" else torch.float32
        config = deepspeed_config(stage, surrogate, parallel, world_size)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.model = self.engine
        self.module = self.engine.module

    def micro_step(self, x, y, n_micro, last):
        loss = _mse(self.engine(x.to(self.dtype)), y)
        self.engine.backward(loss)  # scales by 1/gradient_accumulation_steps itself
        self.engine.step()  # steps optimiser and schedule at the accumulation boundary only
        if last and not self.engine.was_step_applied():
            raise RuntimeError("DeepSpeed skipped the optimiser step at the accumulation boundary")
        return loss.detach()

    def optimizer_step(self):
        pass

    def save(self, path):
        self.engine.save_checkpoint(str(path), tag=self.TAG, save_latest=False)

    def load(self, path):
        load_path, _ = self.engine.load_checkpoint(
            str(path), tag=self.TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint {self.TAG!r}")

    def full_state_dict(self, rank0_only=True):
        from deepspeed.utils import safe_get_full_fp32_param

        rank = dist.get_rank()
        out = {}
        for name, p in self.module.named_parameters():
            full = safe_get_full_fp32_param(p)  # collective under ZeRO: every rank, same order
            if full is None:
                full = p.detach()
            if rank == 0 or not rank0_only:
                out[name] = fp32_cpu(full)
        for name, b in self.module.named_buffers():
            if rank == 0 or not rank0_only:
                out[name] = fp32_cpu(b)
        order = list(self.module.state_dict().keys())
        return {k: out[k] for k in order if k in out} | {k: v for k, v in out.items() if k not in order}


# ---------------------------------------------------------------------------------------- torch ones


class _TorchStrategy(Strategy):
    """Shared by DDP and FSDP: explicit accumulation with ``no_sync``, autocast for bf16."""

    def __init__(self, parallel, device):
        self.bf16 = parallel.precision == "bf16"
        self.device = torch.device(device)

    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def micro_step(self, x, y, n_micro, last):
        with self.model.no_sync() if not last else nullcontext():
            with self._autocast():
                loss = _mse(self.model(x), y)
            (loss / n_micro).backward()
        return loss.detach()

    def _clip(self):
        nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)

    def optimizer_step(self):
        self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


class DDPStrategy(_TorchStrategy):
    """torch DistributedDataParallel: whole model on every rank, gradients all-reduced."""

    def __init__(self, model, make_optimizer, make_scheduler, parallel, device):
        super().__init__(parallel, device)
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        self.model = DDP(model.to(self.device), device_ids=ids)
        self.module = self.model.module
        self.optimizer = make_optimizer(self.model.parameters())
        self.scheduler = make_scheduler(self.optimizer)

    def save(self, path):
        if dist.get_rank() == 0:
            state = {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            }
            torch.save(state, path / "ddp.pt")

    def load(self, path):
        state = torch.load(path / "ddp.pt", map_location=self.device, weights_only=False)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def full_state_dict(self, rank0_only=True):
        if rank0_only and dist.get_rank() != 0:
            return {}
        return {k: fp32_cpu(v) for k, v in self.module.state_dict().items()}


class FSDPStrategy(_TorchStrategy):
    """torch FSDP2 (``fully_shard``) on each transformer block and on the root.

    ``fsdp_full``: ``reshard_after_forward=True``, parameters freed after use and gathered again for
    backward (FSDP1's FULL_SHARD, ≈ ZeRO-3). ``fsdp_grad_op``: ``reshard_after_forward=False``, parameters
    kept gathered from forward to backward (FSDP1's SHARD_GRAD_OP, ≈ ZeRO-2). FSDP2, not the FSDP1
    ``FullyShardedDataParallel`` class: FSDP1 refuses CPU in this torch (no accelerator; with a CPU
    ``device_id`` it segfaults under gloo). Checkpoints are sharded (``torch.distributed.checkpoint``)."""

    def __init__(self, mode, model, make_optimizer, make_scheduler, parallel, device):
        super().__init__(parallel, device)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (dist.get_world_size(),))
        kwargs = {"mesh": mesh, "reshard_after_forward": mode == "fsdp_full"}
        if self.bf16:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        model = model.to(self.device)
        for block in transformer_blocks(model):
            fully_shard(block, **kwargs)
        self.model = self.module = fully_shard(model, **kwargs)
        self.optimizer = make_optimizer(self.model.parameters())
        self.scheduler = make_scheduler(self.optimizer)

    def micro_step(self, x, y, n_micro, last):
        self.model.set_requires_gradient_sync(last)  # FSDP2's no_sync: accumulate unsharded grads
        with self._autocast():
            loss = _mse(self.model(x), y)
        (loss / n_micro).backward()
        return loss.detach()

    def save(self, path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(path / "fsdp"))
        if dist.get_rank() == 0:
            torch.save({"scheduler": self.scheduler.state_dict()}, path / "scheduler.pt")

    def load(self, path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer)
        state = {"model": msd, "optimizer": osd}
        dcp.load(state, checkpoint_id=str(path / "fsdp"))
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
        sched = torch.load(path / "scheduler.pt", weights_only=False)
        self.scheduler.load_state_dict(sched["scheduler"])

    def full_state_dict(self, rank0_only=True):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
        sd = get_model_state_dict(self.model, options=opts)  # collective; {} off rank 0 with cpu_offload
        if rank0_only and dist.get_rank() != 0:
            return {}
        return {k: fp32_cpu(v) for k, v in sd.items()}


def make_strategy(name, model, make_optimizer, make_scheduler, surrogate, parallel, world_size, device):
    """The ``Strategy`` for ``parallel.name`` around ``model`` (identical on every rank)."""
    if name in DEEPSPEED_STAGES:
        opt = make_optimizer(model.parameters())
        return DeepSpeedStrategy(
            DEEPSPEED_STAGES[name], model, opt, make_scheduler(opt), surrogate, parallel, world_size
        )
    if name == "ddp":
        return DDPStrategy(model, make_optimizer, make_scheduler, parallel, device)
    if name in FSDP_MODES:
        return FSDPStrategy(name, model, make_optimizer, make_scheduler, parallel, device)
    raise ValueError(f"parallel.name: unknown strategy {name!r}")
