"""The reference consumer: ``idxlake train`` on MNIST streamed from the table."""

from __future__ import annotations

import sys

import pytest
import torch

from idxlake.cli import main
from idxlake.loaders.train import SmallCNN, train


def test_train_command_quick_run(mnist_table, capsys) -> None:
    code = main(["train", mnist_table, "--epochs", "1", "--limit", "3000", "--batch-size", "64", "--seed", "1"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith(f"training on {mnist_table}@v0: 60000 rows")
    assert out[1].startswith("epoch 1: loss ") and out[1].endswith(" samples/s")
    assert out[-1].startswith("test accuracy: 0.") and float(out[-1].split(": ")[1]) > 0.8


def test_train_with_workers_and_a_pinned_version(mnist_table) -> None:
    lines: list[str] = []
    result = train(mnist_table, epochs=2, batch_size=128, workers=2, limit=1024, version=0, log=lines.append)
    assert result.version == 0 and len(result.losses) == 2 and result.losses[1] < result.losses[0]
    assert len(lines) == 4 and "2 reader(s)" in lines[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--limit", "0"], "limit must be >= 1"),
    (["--version", "7"], "version 7"),
])
def test_train_command_errors(mnist_table, capsys, argv: list[str], message: str) -> None:
    assert main(["train", mnist_table, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idxlake train: error: ") and message in err


def test_cli_does_not_import_torch_for_other_commands() -> None:
    import subprocess

    code = "import sys; from idxlake.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_small_cnn_shapes() -> None:
    assert SmallCNN((28, 28))(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert SmallCNN((3, 32, 32), 5)(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.slow
def test_two_epochs_on_mnist_reach_the_target_accuracy(mnist_table) -> None:
    result = train(mnist_table, epochs=2, log=lambda _line: None)
    assert result.accuracy >= 0.985, result


def test_limit_fetches_no_batch_beyond_it(mnist_table, monkeypatch) -> None:
    import idxlake.loaders.train as train_module

    fetched: list[int] = []

    class CountingLoader(train_module.DataLoader):
        def __iter__(self):
            for batch in super().__iter__():
                fetched.append(len(batch["label"]))
                yield batch

    monkeypatch.setattr(train_module, "DataLoader", CountingLoader)
    train(mnist_table, epochs=2, batch_size=64, limit=128, log=lambda _line: None)
    assert fetched == [64, 64, 64, 64]  # 2 batches per epoch, none decoded and dropped
