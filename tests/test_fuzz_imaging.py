"""Bounded fuzzing of the intake in CI: a few thousand mutations of a generated seed corpus (fixed
seed, about 30 s) raise ``InvalidImage`` or nothing. ``scripts/fuzz_imaging.py`` runs it longer."""

from __future__ import annotations

import sys

import pytest

from fruitpipe import imaging

from .conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import fuzz_imaging  # noqa: E402

ACCEPTED_SEEDS = {"jpeg", "jpeg_exif", "jpeg_progressive_grey", "jpeg_cmyk", "png", "png_exif", "png_rgba",
                  "png_palette", "png_16bit", "apng", "webp_lossy", "webp_lossless_alpha", "webp_animated",
                  "mpo", "heic", "avif"}


def test_seed_corpus_covers_every_format_and_decodes_as_specified():
    corpus = fuzz_imaging.seed_corpus()
    for name, data in corpus.items():
        if name in ACCEPTED_SEEDS:
            assert imaging.load_image(data).shape == (224, 224, 3), name
        else:
            with pytest.raises(imaging.InvalidImage) as info:
                imaging.load_image(data)
            assert info.value.code == "unsupported_format", name
    assert {imaging.open_image(corpus[n]).format for n in ACCEPTED_SEEDS} == set(imaging.ACCEPTED_FORMATS)
    assert {"gif", "tiff", "bmp"} <= set(corpus) - ACCEPTED_SEEDS


def test_inputs_are_reproducible():
    corpus = fuzz_imaging.seed_corpus()
    names, blobs = list(corpus), list(corpus.values())
    assert fuzz_imaging.input_for(7, 123, names, blobs) == fuzz_imaging.input_for(7, 123, names, blobs)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_mutated_images_raise_only_the_typed_error(tmp_path):
    result = fuzz_imaging.run(inputs=200_000, seed=20261130, workers=1, seconds=30, out=tmp_path)
    assert result["findings"] == [], result["findings"][:5]
    assert result["inputs"] >= 2000, result
    assert result["accepted"] > 0 and len(result["codes"]) >= 4  # the mutants reach the decoders
