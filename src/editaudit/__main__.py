"""``python -m editaudit``: the same command as ``editaudit`` (handy under ``torchrun -m`` / ``accelerate launch -m``)."""

from editaudit.cli.main import run

if __name__ == "__main__":
    run()
