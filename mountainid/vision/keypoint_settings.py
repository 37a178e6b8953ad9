"""The keypoint extractor's settings and the id they give its output, apart from the extractor itself.

The id names the keypoints' cache in the bucket (``mountainid.bucket``), whose names every deployable
imports, the ingest function too; so it comes without OpenCV, which only the extractor needs.
"""

MAX_SIDE = 640  # the probe's setting: 84-87 ms a photo on this CPU, 1,000-1,500 keypoints
KEYPOINTS = 1500
EXTRACTOR_ID = f"rootsift{KEYPOINTS}-{MAX_SIDE}"
