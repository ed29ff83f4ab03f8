"""``python -m splitbench`` / ``splitbench``: the Hydra runner (see conf/config.yaml)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .cli import guard_overrides, report_errors
from .paths import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@report_errors
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .run import execute, print_summary

    start = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    rows = execute(cfg, run_dir)
    print_summary(rows, run_dir, time.perf_counter() - start)


def main() -> None:
    guard_overrides(sys.argv[1:], config_name="config")
    _app()


if __name__ == "__main__":
    main()
