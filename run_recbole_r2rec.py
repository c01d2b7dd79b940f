#!/usr/bin/env python
"""Run a model under the shared protocol: `python run_recbole_r2rec.py --model=SASRec --dataset=ml-100k`."""
import sys

from recbole_r2rec.config import ConfigError, DatasetNotFoundError
from recbole_r2rec.llm import BackboneError
from recbole_r2rec.prompts import ItemTextError
from recbole_r2rec.protocol import ProtocolError
from recbole_r2rec.registry import UnknownModelError
from recbole_r2rec.runner import main

if __name__ == "__main__":
    try:
        main()
    except (UnknownModelError, DatasetNotFoundError, ConfigError, ProtocolError, ItemTextError,
            BackboneError) as err:
        sys.exit(f"error: {err}")
