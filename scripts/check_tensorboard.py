#!/usr/bin/env python3
"""Checks a `textcraftor train` run folder's TensorBoard events with TensorBoard's own reader.

    /tmp/pyref/bin/python scripts/check_tensorboard.py OUT [--images-every N]

Loads OUT/tensorboard/ with tensorboard.backend.event_processing.event_accumulator.EventAccumulator (everything kept,
no sampling) and checks, for every line of OUT/metrics.jsonl, that each number in it is a scalar of the same name at
that step with the same value (as float32, the type of `simple_value`), that no step is logged twice or missing, and
that every image summary decodes as a PNG of the size its summary states (with PIL). `--images-every N`: also check
that the images are logged at exactly the steps that are multiples of N. Exit status 0 and one line per check group
when all hold; 1 and the first mismatches otherwise.

Reference environment: tensorboard 2.21.0 (with protobuf 7.36.2, tensorboard-data-server 0.7.2), Pillow, numpy,
installed with `pip install --only-binary=:all: tensorboard==2.21.0` into /tmp/pyref. CI never runs this script;
it shows that the files the Swift writer makes are the files TensorBoard reads.
"""

import argparse
import io
import json
import os
import sys

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the run folder (holding metrics.jsonl and tensorboard/)")
    parser.add_argument("--images-every", type=int, default=None, help="expect images at the multiples of N")
    args = parser.parse_args()

    logdir = os.path.join(args.out, "tensorboard")
    problems = []
    # Every record read with TensorBoard's own TFRecord reader, which checks both CRC-32Cs of each (the accumulator
    # logs a bad record and goes on; this stops at it).
    files = sorted(name for name in os.listdir(logdir) if "tfevents" in name)
    records = 0
    for name in files:
        reader = pywrap_tensorflow.PyRecordReader_New(os.path.join(logdir, name))
        first = True
        while True:
            try:
                reader.GetNext()
            except errors.OutOfRangeError:
                break
            except errors.DataLossError as error:
                problems.append(f"{name}: {error.message}")
                break
            event = event_pb2.Event.FromString(reader.record())
            if first and event.file_version != "brain.Event:2":
                problems.append(f"{name}: the first event is not file_version brain.Event:2")
            first = False
            records += 1
    accumulator = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    with open(os.path.join(args.out, "metrics.jsonl")) as file:
        lines = [json.loads(line) for line in file if line.strip()]

    compared = 0
    expected = {}  # tag -> {step: value}
    for line in lines:
        for key, value in line.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            expected.setdefault(key, {})[line["step"]] = value
    for tag, values in sorted(expected.items()):
        if tag not in tags["scalars"]:
            problems.append(f"scalar {tag}: not in the event files (tags: {sorted(tags['scalars'])})")
            continue
        events = accumulator.Scalars(tag)
        steps = [event.step for event in events]
        if len(steps) != len(set(steps)):
            problems.append(f"scalar {tag}: steps logged more than once: {sorted(s for s in set(steps) if steps.count(s) > 1)}")
        logged = {event.step: event.value for event in events}
        if sorted(logged) != sorted(values):
            problems.append(f"scalar {tag}: steps {sorted(logged)} in TensorBoard, {sorted(values)} in metrics.jsonl")
        for step, value in values.items():
            if step in logged and np.float32(logged[step]) != np.float32(value):
                problems.append(f"scalar {tag} step {step}: {logged[step]!r} in TensorBoard, {value!r} in metrics.jsonl")
            compared += 1
    extra = sorted(set(tags["scalars"]) - set(expected))
    if extra:
        problems.append(f"scalars not in metrics.jsonl: {extra}")

    image_steps = []
    for tag in tags["images"]:
        for event in accumulator.Images(tag):
            image = Image.open(io.BytesIO(event.encoded_image_string))
            image.load()
            if image.format != "PNG" or image.size != (event.width, event.height):
                problems.append(f"image {tag} step {event.step}: {image.format} {image.size}, summary says {event.width}x{event.height}")
            image_steps.append(event.step)
    if args.images_every:
        wanted = [line["step"] for line in lines if line["step"] % args.images_every == 0]
        if sorted(image_steps) != wanted:
            problems.append(f"images at steps {sorted(image_steps)}, expected {wanted}")

    if problems:
        print("\n".join(problems[:20]))
        sys.exit(1)
    print(f"{len(files)} event files, {records} records, every CRC-32C verified")
    print(f"{len(lines)} steps, {len(expected)} scalars ({', '.join(sorted(expected))}), {compared} values equal to metrics.jsonl")
    print(f"{len(image_steps)} images decoded as PNG (steps {sorted(image_steps)})")


if __name__ == "__main__":
    main()
