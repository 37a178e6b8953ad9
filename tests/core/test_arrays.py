"""Running a network over many photos a batch at a time."""

from __future__ import annotations

import numpy as np

from mountainid.arrays import in_batches


def test_a_network_answers_in_batches_exactly_what_it_answers_at_once() -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(37, 8)).astype(np.float32)
    seen: list[int] = []

    def network(rows: np.ndarray):
        seen.append(len(rows))
        return model(rows, training=False)

    np.testing.assert_allclose(in_batches(network, x, 16), np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-7)
    assert seen == [16, 16, 5]  # never more rows at once than asked: memory stays flat however many photos
    seen.clear()
    assert in_batches(network, x[:0], 16).shape == (0, 3) and seen == [0]  # no photo: an empty answer, not an error
