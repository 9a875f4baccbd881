"""COCO -> WebDataset shards (tools/make_shards.py) and reading them back."""
