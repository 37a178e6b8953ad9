"""The two ways a served model verifies: its whole keypoint gallery in memory, or, once the gallery
outgrows MOUNTAINID_GALLERY_MEMORY_MB, a shortlist per upload whose keypoints are read from the bucket."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mountainid.bucket import local_features_name, model_file
from mountainid.predict import SHORTLIST, Predictor
from mountainid.store import LocalBlobStore
from tests.web.conftest import web_settings


def test_a_gallery_too_big_for_memory_is_verified_against_a_shortlist_read_from_the_bucket(
        predictor: Predictor, bucket_copy: Path, weights_path: Path, reframed_training_photo: Path) -> None:
    store = LocalBlobStore(bucket_copy)
    shortlisted = Predictor.load(store, predictor.version, web_settings(weights_path, bucket_copy,
                                                                        MOUNTAINID_GALLERY_MEMORY_MB="0"))
    assert predictor.verifier is not None and shortlisted.verifier is None  # nothing held in memory
    assert len(predictor.verifier) > SHORTLIST  # so the shortlist really is a part of the gallery
    data = reframed_training_photo.read_bytes()
    whole, short = predictor.predict(data), shortlisted.predict(data)
    assert short.evidence is not None and short.evidence.photo.photo_id == reframed_training_photo.stem
    assert short.guesses[0].slug == whole.guesses[0].slug
    assert abs(short.evidence.inliers - whole.evidence.inliers) <= 0.2 * whole.evidence.inliers

    # A damaged keypoint file costs that photo's evidence, never the answer (training repairs the file).
    store.put(local_features_name(reframed_training_photo.stem), b"damaged")
    damaged = shortlisted.predict(data)
    assert damaged.guesses and (damaged.evidence is None
                                or damaged.evidence.photo.photo_id != reframed_training_photo.stem)


def test_uploads_verified_side_by_side_get_the_answers_they_get_one_at_a_time(
        predictor: Predictor, trained_bucket: Path, reframed_training_photo: Path, k2_heldout: Path) -> None:
    """Keypoints run beside the network passes and gallery searches run at once (no lock): the same
    answers, evidence and matched points as uploads taken one after the other."""
    store = LocalBlobStore(trained_bucket)
    photos = [reframed_training_photo.read_bytes(), k2_heldout.read_bytes(),
              *(store.get(name) for name in store.list_names("accepted/")[:4])]
    alone = [predictor.predict(data) for data in photos]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(predictor.predict, photos * 3))
    assert together == alone * 3


def test_a_mountain_in_the_same_view_is_named_and_shares_the_evidence(
        predictor: Predictor, bucket_copy: Path, weights_path: Path, reframed_training_photo: Path) -> None:
    """A model whose gallery put the answer's mountain in one view with another (metrics.json's also_in_view,
    as the training run learns it) names that neighbour with a verified answer, and no longer lets the match
    alone decide between the two: the evidence counts for both, so the classifier tells them apart."""
    import json

    data = reframed_training_photo.read_bytes()
    alone = predictor.predict(data)
    assert alone.evidence is not None and alone.also_in_view == []  # this small gallery shares no view
    answer, neighbour = alone.guesses[0].slug, next(s for s in predictor.labels if s != alone.guesses[0].slug)
    store = LocalBlobStore(bucket_copy)
    name = model_file(predictor.version, "metrics.json")
    info = json.loads(store.get(name))
    info["also_in_view"] = {answer: [neighbour], neighbour: [answer]}
    store.put(name, json.dumps(info).encode())
    viewed = Predictor.load(store, predictor.version, web_settings(weights_path, bucket_copy))
    shared_answer = viewed.predict(data)
    assert shared_answer.also_in_view == [viewed.names[neighbour if shared_answer.guesses[0].slug == answer
                                                       else answer]]
    before = {g.slug: g.probability for g in alone.guesses}
    after = {g.slug: g.probability for g in shared_answer.guesses}
    # The match now counts for the neighbour too: it gains what the answer had from the match alone.
    assert after.get(neighbour, 0.0) > before.get(neighbour, 0.0) + 0.05
    assert after[answer] < before[answer]


def test_an_answer_no_training_photo_verifies_is_held_to_the_higher_threshold(
        predictor: Predictor, shared_dir: Path, reframed_training_photo: Path) -> None:
    """A photo of a mountain the model does not know has no training photo to agree with: its answer is the
    head's alone and must clear ``unverified_threshold``, while a verified answer clears ``unknown_threshold``."""
    import copy

    known = reframed_training_photo.read_bytes()
    verified = predictor.predict(known)
    scenes = [(data, predictor.predict(data)) for data in
              (path.read_bytes() for path in sorted((shared_dir / "data" / "scenes" / "mountain").iterdir())[:5])]
    unknown, other = max(((data, answer) for data, answer in scenes if answer.is_mountain),
                         key=lambda pair: pair[1].guesses[0].probability)
    assert verified.verified and verified.evidence is not None
    assert not other.verified and other.evidence is None and other.also_in_view == []
    strict = copy.copy(predictor)  # the same model, its thresholds set either side of both answers
    strict.unknown_threshold = min(verified.guesses[0].probability, other.guesses[0].probability) - 1e-3
    strict.unverified_threshold = 1.01
    assert strict.predict(known).sure and not strict.predict(unknown).sure
    strict.unverified_threshold = strict.unknown_threshold
    assert strict.predict(unknown).sure  # the threshold, not the photo, made the difference
