"""`python -m cli` runs the `stageflow` command."""

from stageflow.cli.main import app

if __name__ == "__main__":
    app()
