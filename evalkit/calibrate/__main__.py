"""`python -m evalkit.calibrate RUN_DIR ...`: the calibrate command on its own (same as `evalkit calibrate`)."""

from __future__ import annotations

import argparse
import sys

from evalkit.calibrate.cli import add_calibrate_arguments, calibrate_main
from evalkit.errors import EvalkitError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evalkit calibrate",
                                     description="Measure the reference's noise floor (RUN_DIR/calibration.json).")
    add_calibrate_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return calibrate_main(args)
    except EvalkitError as e:
        print(f"evalkit: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
