"""Run a command line's main() in the test process: what `python SCRIPT ARGS` runs, minus the
interpreter start and the imports (seconds each on CI's 2 cores)."""
import contextlib
import importlib.util
import io

import pytest
import torch

from core.errors import run_cli
from tests.conftest import ROOT


def run_main(script: str, *args):
    """(exit status, stdout, stderr) of `python SCRIPT ARGS` (`eval.py`, `tools/x.py`) run here,
    from the repo root, under run_cli as the script's own __main__ runs it. Not for commands that
    fork worker processes (make_shards' pool): those run as subprocesses (conftest.run_tool)."""
    spec = importlib.util.spec_from_file_location("cli_" + script.replace("/", "_")[:-3], ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    # what a command may set for its whole process (gt_upper_bound's threads, train_ddp's
    # deterministic mode) is put back for the tests after it
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                pytest.raises(SystemExit) as e:
            run_cli(module.main, [str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return e.value.code, out.getvalue(), err.getvalue()
