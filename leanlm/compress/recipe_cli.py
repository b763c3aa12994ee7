"""`leanlm compress MODEL_DIR OUT_DIR --recipe FILE`: run a composed recipe (see leanlm.compress.recipe)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("compress")
    def compress_cmd(
        model_dir: Path = typer.Argument(..., help="Input leanlm model directory (also the distillation teacher)."),
        out_dir: Path = typer.Argument(..., help="Output: one model directory per step, recipe.json, final."),
        recipe: Path = typer.Option(..., "--recipe", help="Recipe file (YAML or JSON): data and steps."),
        data: Optional[str] = typer.Option(None, "--data", help="Dataset for calibration/distillation (overrides the recipe's)."),
        calibration_size: Optional[int] = typer.Option(None, "--calibration-size", help="Training texts per step (overrides the recipe's)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redo every step, even those a previous run can reuse."),
    ) -> None:
        """Run a recipe of compression steps (prune, distill, lowrank, quantize ...); each step is its own model directory."""
        from leanlm.compress.recipe import FINAL, RECIPE_FILE, Recipe, load_recipe, run_recipe

        r = load_recipe(recipe)
        if data is not None or calibration_size is not None:
            raw = r.to_dict()
            raw.update({k: v for k, v in (("data", data), ("calibration_size", calibration_size)) if v is not None})
            r = Recipe.from_dict(raw)
        run_recipe(model_dir, out_dir, r, overwrite=overwrite, progress=True)
        typer.echo(f"result: {out_dir / FINAL} (steps and timings in {out_dir / RECIPE_FILE})")
