"""``longlive train``: teacher-forcing training from a YAML config, single process or torchrun SP × DP.

Usage::

    longlive train --config longlive/configs/train_tiny.yaml
    longlive train --demo          # the same + export EMA weights to longlive/assets/demo/ (longlive generate)
    longlive train --config cfg.yaml --set train.steps=200 --set parallel.sp_size=1
    torchrun --nproc-per-node 4 -m longlive.train.cli --config cfg.yaml --set parallel.sp_size=4
    torchrun --nproc-per-node 4 --no-python longlive train --config cfg.yaml      # same, via the console script

``longlive.cli`` (the console script) delegates ``longlive train ...`` to :func:`main`. Under torchrun
the process group is initialised here (NCCL on GPUs, gloo on CPU; NVLink SHARP/multicast left off).
The run folder (``checkpoint.dir``) receives ``config.json``, ``metrics.jsonl`` and the checkpoints;
re-running the same command resumes from the newest checkpoint (``checkpoint.resume: auto``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="longlive train",
        description="Teacher-forcing training of the chunk-wise AR DiT (Balanced SP, NVFP4 QAT).",
    )
    p.add_argument("--config", help="training YAML (see longlive/configs/train_tiny.yaml)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="train the bundled demo model (longlive/configs/train_tiny.yaml unless --config) and export its EMA "
        "weights to longlive/assets/demo/ for `longlive generate`",
    )
    p.add_argument(
        "--export", metavar="FILE", help="after training, copy the EMA weights to FILE (.safetensors)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config field (repeatable), e.g. --set train.steps=100",
    )
    p.add_argument("--steps", type=int, help="shortcut for --set train.steps=N")
    p.add_argument("--run-dir", help="shortcut for --set checkpoint.dir=DIR")
    p.add_argument("--resume", help="'auto' (default), 'never' or a checkpoint folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def _init_distributed() -> bool:
    """Initialise the default process group when started by torchrun (WORLD_SIZE > 1)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    for k, v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}.items():
        os.environ.setdefault(k, v)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", timeout=datetime.timedelta(minutes=30))
    else:
        dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=30))
    return True


def _export(cfg, out: str, *, demo: bool) -> None:
    """Copy the newest checkpoint's EMA weights to ``out``; for the demo also write ``pipeline.yaml``
    (frame rate and text encoder the pipeline must use with these weights). The other keys of an
    existing ``pipeline.yaml`` (sampling defaults such as ``steps`` / ``guidance_scale``, the default
    prompt) are kept."""
    import yaml

    from longlive.train.checkpoint import export_weights

    path = export_weights(cfg.checkpoint.dir, out)
    print(f"exported {path}")
    if demo:
        meta_path = path.parent / "pipeline.yaml"
        old = {}
        if meta_path.is_file():
            with open(meta_path, encoding="utf-8") as fh:
                old = yaml.safe_load(fh) or {}
        meta = {"fps": float(cfg.data.fps or 8.0), "text_encoder": cfg.text.name or cfg.model.text_encoder}
        meta.update({k: v for k, v in (old.items() if isinstance(old, dict) else ()) if k not in meta})
        with open(meta_path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(meta, fh, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``longlive train`` (``argv`` without the program name; a leading ``train`` is ignored)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is None and not args.demo:
        parser.error("--config FILE is required (or --demo)")
    config_path = args.config or str(Path(__file__).resolve().parents[1] / "configs" / "train_tiny.yaml")
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.run_dir:
        overrides.append(f"checkpoint.dir={args.run_dir}")
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")

    from longlive.train.config import RunConfig

    try:
        cfg = RunConfig.from_yaml(config_path, overrides)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"longlive train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    import torch.distributed as dist

    own = _init_distributed()
    try:
        from longlive.train.trainer import Trainer

        trainer = Trainer(cfg)
        try:
            trainer.train()
            export = args.export or (str(DEMO_DIR / "model.safetensors") if args.demo else None)
            if export and trainer.is_logger:
                _export(cfg, export, demo=args.demo)
        finally:
            trainer.close()
    finally:
        if own and dist.is_initialized():
            from longlive.train.sp import release_parallel_contexts

            release_parallel_contexts()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
