"""Follow the training data through saudial: which modules it enters from the train entry to the saved adapter.

Runs `saudial train` in-process on the tiny LFM2 and the synthetic sample (CPU, a few steps) under a profile
hook. Every call of a saudial function that receives or returns the data in flight (the table of rows, the
cleaned Dataset, the split, the trainer's examples) is one step on the path; the report lists the modules in
the order the data visits them, how many there are, and how often the data goes back up to a module it
had already left. Used for the house plan's measure (docs/architecture.md):

    python scripts/data_path.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import datasets
    import pandas as pd

    from saudial.config.settings import Settings
    from saudial.data.examples import Split
    from saudial.data.workbook import Dataset
    from saudial.devtools import synthetic, tiny
    from saudial.jobs import train

    data_types = (pd.DataFrame, Dataset, Split, datasets.Dataset)
    package = str(ROOT / "saudial")
    visits: list[str] = []

    def module_of(frame: FrameType) -> str | None:
        path = frame.f_code.co_filename
        if not path.startswith(package):
            return None
        return str(Path(path).relative_to(ROOT).with_suffix(""))

    def carries_data(value: Any) -> bool:
        return isinstance(value, data_types) or (isinstance(value, tuple) and any(map(carries_data, value)))

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        module = module_of(frame)
        if module is None:
            return
        if event == "call" and any(carries_data(v) for v in frame.f_locals.values()):
            visits.append(module)
        elif event == "return" and carries_data(arg) and frame.f_back is not None:
            caller = module_of(frame.f_back)
            if caller and caller != module:
                visits.append(caller)

    with tempfile.TemporaryDirectory() as work:
        model = tiny.build(Path(work) / "tiny")
        data = synthetic.write(synthetic.make_rows(60, seed=0), Path(work) / "SauDial Dataset.xlsx")
        settings = Settings(
            data=data,
            model_name_or_path=str(model),
            quantization="none",
            output_dir=Path(work) / "out",
            max_steps=2,
            per_device_train_batch_size=4,
            report_to="none",
            eval="none",
            logging_steps=1,
        )
        sys.setprofile(hook)
        try:
            code = train.run(settings)
        finally:
            sys.setprofile(None)
        assert code == 0 and (settings.output_dir / "adapter_model.safetensors").is_file()

    path = [m for i, m in enumerate(visits) if i == 0 or m != visits[i - 1]]
    entered, returns = [], 0
    for i, module in enumerate(path):
        if module in entered and module != path[i - 1]:
            returns += 1
        if module not in entered:
            entered.append(module)
    print("path:", " -> ".join(path))
    print(f"modules entered: {len(entered)}; moves: {len(path) - 1}; moves back to a module already left: {returns}")


if __name__ == "__main__":
    main()
