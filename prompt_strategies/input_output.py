"""The ``input_output`` dataset strategy: each row is ``segments: [{text, label}]``.

Segments are concatenated as they are (no separator, no EOS added); a segment with ``label: true`` is
trained, one with ``label: false`` is not (unless ``train_on_inputs``). Each segment is tokenized on its
own, so write spaces and newlines inside the texts where they belong.
"""

from __future__ import annotations

from typing import Any

from gym.api import DatasetStrategy, hookimpl

SFT = ("sft",)  # the training method these rows are for

NAME = "input_output"


@hookimpl
def gym_dataset_strategies():
    return [
        DatasetStrategy(
            name=NAME,
            builder=f"{__name__}:build",
            methods=SFT,
            description="Rows of `segments: [{text, label}]`; segments with label true are trained.",
        )
    ]



def build(tokenizer: Any, cfg: Any, dataset: Any):
    return InputOutputStrategy(tokenizer, cfg, dataset)


class InputOutputStrategy:
    def __init__(self, tokenizer: Any, cfg: Any, dataset: Any):
        from gym.api import SegmentEncoder, train_on_inputs_for

        self.encoder = SegmentEncoder(tokenizer)
        self.train_all = train_on_inputs_for(cfg, dataset)

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        from gym.api import column, row_error

        all_segments = column(rows, "segments")
        samples = []
        for i, segments in enumerate(all_segments):
            if not isinstance(segments, list) or not segments:
                raise row_error("'segments' must be a non-empty list of {text, label}", "segments", i)
            sample = []
            for j, segment in enumerate(segments):
                where = f"segments[{j}]"
                if not isinstance(segment, dict):
                    raise row_error(f"{where} must be a mapping with text and label", where, i)
                text, label = segment.get("text"), segment.get("label")
                if not isinstance(text, str):
                    raise row_error(f"{where}.text must be text, got {type(text).__name__}", f"{where}.text", i)
                if not isinstance(label, bool):
                    raise row_error(
                        f"{where}.label must be true or false, got {label!r}", f"{where}.label", i
                    )
                sample.append((text, label or self.train_all))
            samples.append(sample)
        return self.encoder.encode(samples)
