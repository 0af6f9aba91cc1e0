"""COCO's ECDF plots of a BBOB grid, drawn by cocopp itself from the optimizers' COCO folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from gfo.coco._grid import Grid, algo_folder


def run_cocopp(grid: Grid, out: Path, *, timeout: float | None = None) -> list[Path]:
    """COCO's ECDF plots of every optimizer, by cocopp itself (in its own process: it changes
    matplotlib's and its own global settings). PNG copies go to `out/ecdf/`; its log to cocopp.log."""
    folders = [str(algo_folder(out, a)) for a in grid.algos if algo_folder(out, a).exists()]
    if not folders:
        return []
    target = out / "cocopp"
    shutil.rmtree(target, ignore_errors=True)
    # cocopp saves at 60 dpi unless in_a_hurry=0, which also takes its bootstrap from 30 samples to
    # 1000: so the PNGs alone are saved at 150 dpi.
    code = """if True:
        import sys, warnings
        warnings.simplefilter("ignore")
        import matplotlib.pyplot as plt
        import cocopp
        save = plt.savefig
        def savefig(name, *args, **kwargs):
            return save(name, *args, **{**kwargs, **({"dpi": 150} if str(name).endswith(".png") else {})})
        plt.savefig = savefig
        cocopp.genericsettings.figure_file_formats = ["svg", "png"]
        cocopp.main(sys.argv[1:])
    """
    argv = ["-o", str(target), "--rld-only", "--no-rld-single-fcts", *folders]
    with (out / "cocopp.log").open("w") as log:
        subprocess.run(
            [sys.executable, "-c", code, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=timeout,
        )
    ecdf = out / "ecdf"
    shutil.rmtree(ecdf, ignore_errors=True)
    ecdf.mkdir()
    copies = []
    for png in sorted(target.rglob("pprldmany*.png")):
        copies.append(Path(shutil.copy2(png, ecdf / png.name)))
    return copies
