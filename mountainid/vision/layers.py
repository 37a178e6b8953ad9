"""Keras layers the saved models use beyond Keras' own; :func:`custom_objects` is what loading a model needs."""

from __future__ import annotations

from functools import cache


@cache
def custom_objects() -> dict[str, type]:
    """The layers by name, for ``keras.models.load_model(..., custom_objects=...)`` (built once: Keras is
    imported only when a model is)."""
    import keras

    class MirrorMaps(keras.layers.Layer):
        """An activation map (N, H, W, C) mirrored left to right: the map of a photo's mirror image, near enough."""

        def call(self, maps):
            return keras.ops.flip(maps, axis=2)

    return {"MirrorMaps": MirrorMaps}

