"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

import pytest

from fixtures.codec_corpus import CORPUS, can_make, encoder_of, make_coded


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")

    def get(name: str):
        case = CORPUS[name]
        if not can_make(case):
            pytest.skip(f"local ffmpeg has no {encoder_of(case)} encoder")
        return case, make_coded(case, folder)

    return get
