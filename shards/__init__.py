"""COCO-style keypoint jsons -> WebDataset shards (tools/make_shards.py) and reading them back;
keypoint_sets.py makes one keypoint set's json from another's (tools/convert_keypoints.py)."""
