"""What both of ESPnet's passes over the data read, stage 10's statistics and stage 11's training:
the dumped training and validation sets and their token list, as ``asr_train`` options."""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional


@dataclass
class AsrInputs:
    token_type: str
    token_list: Path
    train_dir: Path  # dump/raw/<train_set>
    valid_dir: Path  # dump/raw/<valid_set>
    bpemodel: Optional[Path] = None  # with --token_type bpe
    nj: int = 2  # data-loading workers

    def options(self) -> List[str]:
        options = ["--use_preprocessor", "true", "--token_type", self.token_type,
                   "--token_list", str(self.token_list)]
        if self.bpemodel is not None:
            options += ["--bpemodel", str(self.bpemodel)]
        for part, data in (("train", self.train_dir), ("valid", self.valid_dir)):
            options += [f"--{part}_data_path_and_name_and_type", f"{data}/wav.scp,speech,sound",
                        f"--{part}_data_path_and_name_and_type", f"{data}/text,text,text"]
        return options + ["--num_workers", str(self.nj)]

    def marker_inputs(self) -> List[str]:
        """The files a stage made from these inputs must be redone (or refused) after they change."""
        return [str(self.train_dir), str(self.valid_dir), str(self.token_list.parent)]

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--token_type", required=True)
        parser.add_argument("--token_list", type=Path, required=True)
        parser.add_argument("--bpemodel", type=Path)
        parser.add_argument("--train_dir", type=Path, required=True)
        parser.add_argument("--valid_dir", type=Path, required=True)
        parser.add_argument("--nj", type=int, default=2)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "AsrInputs":
        return cls(args.token_type, args.token_list, args.train_dir, args.valid_dir, args.bpemodel, args.nj)
