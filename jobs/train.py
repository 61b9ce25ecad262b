"""Train GLAM on labelled WebDataset shards with Ray Train (DDP: NCCL on GPUs, gloo on CPUs).

    ray job submit -- python jobs/train.py --input 's3://b/gldv2/train-{000000..001580}.tar' \
        --output s3://b/runs/glam-r101

Writes checkpoints to OUTPUT/checkpoints (every --checkpoint-every steps and at each epoch
end), the trained model to OUTPUT/glam.safetensors (for jobs/extract.py --weights) and the run
record to OUTPUT/_train.json. Re-running the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs._cli import add_cluster_arguments, float_list, run_main, setup_logging


def json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    data = p.add_argument_group("data")
    data.add_argument(
        "--input",
        required=True,
        help="labelled shard URI pattern (members jpg + cls), e.g. "
        "'s3://b/gldv2/train-{000000..001580}.tar' (from prepare_gldv2.py)",
    )
    data.add_argument("--output", required=True, help="run folder URI (local path or s3://)")
    data.add_argument(
        "--num-classes", type=int, default=None, help="classes (default: from _dataset.json)"
    )
    data.add_argument(
        "--samples-per-epoch",
        type=int,
        default=None,
        help="samples in an epoch (default: the shards' counts in _dataset.json)",
    )
    data.add_argument(
        "--shuffle-buffer", type=int, default=1000, help="shuffle buffer per worker (1000)"
    )
    data.add_argument("--max-pixels", type=int, default=None, help="larger images are skipped")

    model = p.add_argument_group("model")
    model.add_argument(
        "--weights",
        default="imagenet",
        help="starting weights: 'imagenet' (paper; torchvision's, from torch's cache), "
        "'random', or a GLAM checkpoint URI to fine-tune (default imagenet)",
    )
    model.add_argument("--backbone", default="resnet101", help="torchvision ResNet (resnet101)")
    model.add_argument("--dim", type=int, default=512, help="descriptor dimension (512)")
    model.add_argument(
        "--attention",
        choices=["none", "local", "global", "global-local"],
        default="global-local",
        help="the paper's Table 4 variant: none (GeM baseline), local, global, global-local "
        "(the full model, default)",
    )
    model.add_argument(
        "--glam-config",
        type=json_object,
        default={},
        help="other GlamConfig fields as JSON, e.g. '{\"reduced_channels\": 128}'",
    )

    recipe = p.add_argument_group("recipe (defaults: paper §4)")
    recipe.add_argument("--epochs", type=int, default=10, help="epochs (10; not in paper)")
    recipe.add_argument("--batch-size", type=int, default=64, help="global batch size (64)")
    recipe.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (1e-3)")
    recipe.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    recipe.add_argument("--weight-decay", type=float, default=1e-5, help="weight decay (1e-5)")
    recipe.add_argument(
        "--lr-schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="cosine decay to 0 over the run, or constant (cosine; not in paper)",
    )
    recipe.add_argument("--margin", type=float, default=0.3, help="ArcFace margin m (0.3)")
    recipe.add_argument(
        "--arcface-scale", type=float, default=30.0, help="ArcFace scale s (30; not in paper)"
    )
    recipe.add_argument(
        "--image-size",
        type=int,
        default=512,
        help="longer side of the group-size batches (512; not in paper)",
    )
    recipe.add_argument(
        "--aspect-ratios",
        type=float_list,
        default=None,
        help="W/H of the group-size sampling groups (default 0.5,0.667,0.75,1,1.333,1.5,2)",
    )
    recipe.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto: mixed precision on GPUs (bf16 where supported, else fp16), fp32 on CPUs",
    )

    run = p.add_argument_group("run")
    run.add_argument(
        "--workers", type=int, default=None, help="workers (default: one per GPU, else CPUs/4)"
    )
    run.add_argument(
        "--device",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="auto: GPU workers when the cluster has GPUs; gpu: even before an autoscaling "
        "cluster has any (needs --workers); cpu: CPU workers",
    )
    run.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs per worker for decoding and augmentation (default: the cluster's CPUs "
        "shared out, at most 16 per GPU worker; set it on autoscaling clusters)",
    )
    run.add_argument(
        "--checkpoint-every", type=int, default=1000, help="steps between checkpoints (1000)"
    )
    run.add_argument("--keep-checkpoints", type=int, default=3, help="checkpoints kept (3)")
    run.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="worker-group restarts from the last checkpoint before the run fails (3)",
    )
    run.add_argument("--log-every", type=int, default=50, help="steps between log lines (50)")
    run.add_argument(
        "--decode-threads", type=int, default=None, help="decode threads per worker (its CPUs)"
    )
    run.add_argument("--seed", type=int, default=0, help="seed of data order, augmentation, init")
    add_cluster_arguments(run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        from glam.config import GlamConfig
        from glam.recipe import TrainConfig
        from pipeline.train.driver import run_training
        from pipeline.train.spec import TrainJob

        recipe = {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "momentum": args.momentum,
            "weight_decay": args.weight_decay,
            "lr_schedule": args.lr_schedule,
            "arcface_margin": args.margin,
            "arcface_scale": args.arcface_scale,
            "image_size": args.image_size,
            "precision": args.precision,
        }
        if args.aspect_ratios is not None:
            recipe["aspect_ratios"] = args.aspect_ratios
        glam_kw = {
            "backbone": args.backbone,
            "dim": args.dim,
            "attention": args.attention,
            **args.glam_config,
        }
        optional = {"max_pixels": args.max_pixels} if args.max_pixels is not None else {}
        job = TrainJob(
            input=args.input,
            output=args.output,
            train=TrainConfig.from_dict(recipe),
            glam=GlamConfig.from_dict(glam_kw),
            weights=args.weights,
            seed=args.seed,
            workers=args.workers,
            device=args.device,
            cpus_per_worker=args.cpus_per_worker,
            num_classes=args.num_classes,
            samples_per_epoch=args.samples_per_epoch,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints,
            max_failures=args.max_failures,
            log_every=args.log_every,
            shuffle_buffer=args.shuffle_buffer,
            decode_threads=args.decode_threads,
            ray_address=args.ray_address,
            **optional,
        )
        result = run_training(job)
        state = "already trained" if result.skipped else f"trained {result.steps} steps"
        loss, accuracy = (
            (result.final.loss, result.final.accuracy) if result.final else (float("nan"),) * 2
        )
        print(f"{state}: loss {loss:.4f}, accuracy {accuracy:.3f}; model {result.model_uri}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
