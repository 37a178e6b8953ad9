"""Fine-tuning the top of the backbone: trains, keeps BN frozen, and serves through the predictor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mountainid.events import InProcessBus
from mountainid.predict import Predictor
from mountainid.registry import Registry
from mountainid.store import LocalBlobStore
from mountainid.training.job import JobConfig, train_and_register
from mountainid.training.train import HeadConfig
from mountainid.vision.features import FeatureSpec

# Smallest useful fine-tune: block 16 and the last convolution, one augmented view, two epochs.
TINY = JobConfig(FeatureSpec(cut="block_15_add"), HeadConfig(dropout=0.5, learning_rate=3e-4, epochs=2,
                                                             augment_views=1), lease_s=600)


def test_fine_tuned_model_is_registered_served_and_keeps_bn_in_inference_mode(local_seeded: LocalBlobStore,
                                                                              settings) -> None:
    import keras

    store = local_seeded
    result = train_and_register(settings, store, InProcessBus(), TINY)
    assert result.status == "promoted"
    features = {name.split("/")[1] for name in store.list_names("embeddings/")}
    assert len(features) == 2  # the filter's embeddings (gallery) + the cut activations (with views)
    assert any(name.endswith("-v1.npy") for name in store.list_names("embeddings/"))
    predictor = Predictor.load(store, result.version, settings)
    trained = predictor.info  # metrics.json
    assert trained["feature_id"] == predictor.extractors[0].feature_id
    bn = [layer for layer in _model(store, result.version).layers
          if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and all(not layer.trainable for layer in bn)
    for layer in bn:  # still the folded identity statistics of the shared weights
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), 0.0, atol=1e-6)
    photo = store.get(store.list_names("accepted/lhotse/")[0])
    prediction = predictor.predict(photo)
    assert prediction.model_version == result.version
    assert abs(sum(g.probability for g in prediction.guesses) - 1.0) < 1e-3  # three classes, all listed


def test_a_companion_head_is_served_from_the_filters_own_pass(local_seeded: LocalBlobStore, settings,
                                                             monkeypatch) -> None:
    """``--companion``: a second head on the fast tier's features, saved with the version; at serving its
    features are the backbone pass's maps, which must be what its own extractor gives for the same upload,
    and its extractor's network is never built."""
    from dataclasses import replace

    from mountainid.vision import features
    from mountainid.vision.backbone import INPUT_SIZE, SHARED_CUT
    from mountainid.vision.image import to_model_input

    store = local_seeded
    companion = JobConfig(FeatureSpec(cut=SHARED_CUT), HeadConfig(epochs=2))
    # No calibration folds: a fold trains both heads again, and this test is about serving them.
    result = train_and_register(settings, store, InProcessBus(), replace(TINY, companion=companion,
                                                                         calibration_folds=0))
    registry = Registry(store)
    assert registry.read(result.version, "companion.keras")
    photo = store.get(store.list_names("accepted/lhotse/")[0])
    built: list[str] = []
    with monkeypatch.context() as patched:
        patched.setattr(features, "mobilenet", lambda *args, build=features.mobilenet: built.append("network")
                        or build(*args))
        predictor = Predictor.load(store, result.version, settings)
        assert len(predictor.predict(photo).guesses) == 3
    assert built == ["network"]  # the first head's (cut after block 15); never the companion's
    assert [e.spec for e in predictor.extractors] == [TINY.features, companion.features]
    assert [e.in_backbone_pass for e in predictor.extractors] == [False, True]
    image = predictor.decode(photo)
    model_input = to_model_input(image, INPUT_SIZE)
    _, embedding, maps = predictor.backbone.analyze_all(model_input)
    served = predictor.features(image, model_input, embedding, maps)
    own = [extractor.features(to_model_input(image, extractor.input_size)) for extractor in predictor.extractors]
    for mine, theirs in zip(served, own, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(predictor.probabilities(served), predictor.probabilities(own), atol=1e-4)


def _model(store, version):
    from mountainid.predict import load_keras

    return load_keras(Registry(store).read(version, "model.keras"))


def _maps(seed: int, n: int = 6, shape: tuple[int, int, int] = (5, 5, 3)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, int(np.prod(shape)))).astype(np.float32)


def test_map_augmentation_is_deterministic_in_its_seed_and_new_each_epoch() -> None:
    from mountainid.training.train import _augmented_batches

    x, shape = _maps(0, 10), (5, 5, 3)
    targets, weights = np.eye(2, dtype=np.float32)[np.arange(10) % 2], np.ones(10, np.float32)
    config = HeadConfig(batch_size=4, map_augment=True, mixup=0.4, seed=3)

    def epochs(config: HeadConfig) -> list[list[tuple[np.ndarray, ...]]]:
        batches = _augmented_batches(x, targets, weights, shape, config)
        seen = []
        for _ in range(2):
            seen.append([batches[i] for i in range(len(batches))])
            batches.on_epoch_end()
        return seen

    first, again, other = epochs(config), epochs(config), epochs(HeadConfig(**{**config.to_dict(), "seed": 4}))
    flat = [array for epoch in first for batch in epoch for array in batch]
    assert all(np.array_equal(a, b) for a, b in zip(flat, [a for e in again for b in e for a in b], strict=True))
    assert not np.array_equal(first[0][0][0], other[0][0][0])  # another seed, other views
    assert not np.array_equal(first[0][0][0], first[1][0][0])  # each epoch new views of the same maps
    assert len(first[0]) == 3 and sum(len(batch[0]) for batch in first[0]) == 10  # every photo once an epoch


def test_mirror_and_shift_move_a_map_without_changing_it() -> None:
    from mountainid.training.train import augment_maps

    x, shape = _maps(1, 64), (5, 5, 3)
    config = HeadConfig(map_augment=True)
    out, targets, weights = augment_maps(x, np.eye(2)[np.arange(64) % 2], np.ones(64), shape, config,
                                         np.random.default_rng(0))
    maps, moved = x.reshape(-1, *shape), out.reshape(-1, *shape)
    assert np.array_equal(targets, np.eye(2)[np.arange(64) % 2]) and np.array_equal(weights, np.ones(64))
    # The centre cell of a shifted map is some cell of the original, mirrored or not.
    assert all(any(np.allclose(moved[i, 2, 2], cell) for cell in maps[i].reshape(-1, 3)) for i in range(64))
    mirrored = np.mean([np.allclose(moved[i], maps[i, :, ::-1]) for i in range(64)])
    assert 0 < np.mean([np.allclose(moved[i], maps[i]) for i in range(64)]) + mirrored < 0.5  # most are shifted


def test_mixup_blends_labels_and_weights_with_the_maps() -> None:
    from mountainid.training.train import augment_maps

    x, shape = _maps(2, 32), (5, 5, 3)
    labels = np.eye(2)[np.arange(32) % 2]
    weights = np.where(np.arange(32) % 2, 2.0, 1.0)
    out, targets, blended = augment_maps(x, labels, weights, shape, HeadConfig(mixup=0.4),
                                         np.random.default_rng(0))
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert (targets.max(axis=1) >= 0.5).all() and (targets.max(axis=1) < 1).any()
    np.testing.assert_allclose(blended, 1.0 + targets[:, 1], rtol=1e-5)  # weights mix like the labels
    assert out.shape == x.shape


def test_mirror_averaged_model_is_saved_and_served_as_the_mean_of_both_views(settings, tmp_path) -> None:
    from mountainid.predict import load_keras
    from mountainid.training.train import mirror_averaged, train_head
    from mountainid.vision.features import FeatureExtractor

    extractor = FeatureExtractor(settings, FeatureSpec(cut="block_15_add"))
    x = _maps(3, 8, extractor.cut_shape)
    y = np.arange(8) % 2
    head, _ = train_head(x, y, x[:2], y[:2], 2, HeadConfig(epochs=1, map_augment=True, mixup=0.4), extractor)
    served = mirror_averaged(head, extractor)
    mirror = x.reshape(-1, *extractor.cut_shape)[:, :, ::-1].reshape(len(x), -1)
    expected = (np.asarray(head(x)) + np.asarray(head(mirror))) / 2
    served.save(tmp_path / "model.keras")
    loaded = load_keras((tmp_path / "model.keras").read_bytes())
    np.testing.assert_allclose(np.asarray(loaded(x)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="need --cut"):
        train_head(np.zeros((4, 1280), np.float32), y[:4], x[:0], y[:0], 2, HeadConfig(mixup=0.2),
                   FeatureExtractor(settings))


def test_stochastic_depth_drops_whole_residual_branches_in_training_and_nothing_when_serving(settings) -> None:
    import keras

    from mountainid.training.train import build_head
    from mountainid.vision.features import FeatureExtractor

    extractor = FeatureExtractor(settings, FeatureSpec(64, cut="block15", backbone="efficientnet_lite2"))
    x = _maps(4, 4, extractor.cut_shape)
    plain = build_head(x.shape[1], 3, HeadConfig(dropout=0.0), extractor)
    dropping = build_head(x.shape[1], 3, HeadConfig(dropout=0.0, stochastic_depth=0.5), extractor)
    dropping.set_weights(plain.get_weights())  # dropout layers hold no weights: the same network otherwise
    top = next(layer for layer in dropping.layers if isinstance(layer, keras.Model))
    rates = {layer.name: layer.rate for layer in top.layers if isinstance(layer, keras.layers.Dropout)}
    assert rates == {f"block{i}_drop": 0.5 * i / 20 for i in (16, 17, 18, 19)}  # 20 widens: no residual
    np.testing.assert_allclose(np.asarray(dropping(x)), np.asarray(plain(x)), atol=1e-6)
    trained = [np.asarray(dropping(x, training=True)) for _ in range(3)]
    assert not np.allclose(trained[0], trained[1]) or not np.allclose(trained[1], trained[2])
    with pytest.raises(ValueError, match="stochastic-depth"):
        from mountainid.training.train import train_head

        y = np.arange(4) % 2
        train_head(x, y, x[:0], y[:0], 2, HeadConfig(stochastic_depth=0.2),
                   FeatureExtractor(settings, FeatureSpec(cut="block_15_add")))


def test_a_scaled_head_learning_rate_moves_the_classifier_that_much_faster_and_is_saved(settings, tmp_path) -> None:
    import keras

    from mountainid.predict import load_keras
    from mountainid.training.train import build_head, train_head
    from mountainid.vision.features import FeatureExtractor

    extractor = FeatureExtractor(settings)  # the filter's pooled embeddings: a head only, quick
    x, y = _maps(5, 16, (1280,)), np.arange(16) % 2
    config = HeadConfig(dropout=0.0, weight_decay=0.0, label_smoothing=0.0, learning_rate=1e-3, epochs=1,
                        batch_size=16, balance=False)

    def effective_kernel(head) -> np.ndarray:  # the logits' weights, whatever the parametrisation
        if "head_lr_scale" in [layer.name for layer in head.layers]:
            return np.asarray(head.get_layer("mountain_logits").kernel) * head.get_layer("head_lr_scale").scale
        return np.asarray(head.get_layer("mountain").kernel)

    moved = {}
    for scale in (1.0, 10.0):
        chosen = dataclasses.replace(config, head_lr_scale=scale)
        keras.utils.set_random_seed(chosen.seed)  # as train_head does: the same start
        before = effective_kernel(build_head(1280, 2, chosen, extractor))
        head, _ = train_head(x, y, x[:0], y[:0], 2, chosen, extractor, announce=False)  # one Adam step
        moved[scale] = float(np.abs(effective_kernel(head) - before).max())
        assert np.abs(before).max() < 0.2  # Glorot-sized either way: a faster head, not a larger one
    assert moved[10.0] == pytest.approx(10 * moved[1.0], rel=0.05)  # Adam's first step: about lr per weight
    head.save(tmp_path / "model.keras")
    np.testing.assert_allclose(np.asarray(load_keras((tmp_path / "model.keras").read_bytes())(x)),
                               np.asarray(head(x)), atol=1e-6)
