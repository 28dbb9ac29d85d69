"""Click options of the data pipeline, shared by `scaling train`, launchers/train.py and `scaling distill`;
generated from `DataConfig` (scaling.config.cli_options)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scaling.config.cli_options import from_params, section_options, with_options
from scaling.data.config import DataConfig


def data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    return with_options(section_options(DataConfig))(func)


def data_config_from_options(params: dict[str, Any]) -> DataConfig:
    return from_params(DataConfig, params)
