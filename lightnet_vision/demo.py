"""`make demo`: fit the digits config, test the best checkpoint, and say where the curves are.

python -m lightnet_vision.demo [--config configs/classification/digits.yaml] [extra CLI arguments]
"""

import sys

from lightnet_vision.cli import build_cli


def main(argv: list[str] | None = None) -> float:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", "configs/classification/digits.yaml", *argv]
    cli = build_cli(argv, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = cli.trainer.checkpoint_callback.best_model_path
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)
    accuracy = results[0]["test/acc1"]
    print(f"\nbest checkpoint: {best}")
    print(f"test top-1 accuracy: {accuracy:.2%}")
    print(f"curves: tensorboard --logdir {cli.trainer.logger.save_dir}")
    return accuracy


if __name__ == "__main__":
    main()
