"""MountainID: name the mountain in a photo. The core library every deployable imports."""
