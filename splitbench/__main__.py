"""``python -m splitbench`` / ``splitbench``: the Hydra runner (see conf/config.yaml)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .cli import guard_overrides, report_errors
from .paths import CONF_DIR


def main() -> None:
    """Guard the command line, then run each Hydra job over one :class:`~splitbench.job.Loaded`
    (a basic-launcher sweep runs its jobs in this process: the task model loads once)."""
    from .job import Loaded

    guard_overrides(sys.argv[1:], config_name="config")
    loaded = Loaded()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    @report_errors
    def app(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from .run import execute, print_summary

        start = time.perf_counter()
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        rows = execute(cfg, run_dir, loaded)
        print_summary(rows, run_dir, time.perf_counter() - start)

    try:
        app()
    finally:
        loaded.close()  # stop measuring workers before the interpreter exits


if __name__ == "__main__":
    main()
