"""Evaluation (in the inference frame of core/frame.py): network maps of whole images, COCO results and COCOeval (eval.py, tools, demo.py).

    inference.py  resize, pad, batch, predict, flip test, multi-scale averaging -> maps
    runner.py     the loop: batches -> maps -> grouping -> COCO results, timed per stage
    sources.py    images and ground truth from a folder + COCO json, or from shards
    coco.py       results format, COCOeval with the skeleton's sigmas (the ten numbers), atomic results json
    crowdpose.py  CrowdPose's AP on easy, medium and hard images (by each image's crowdIndex)
    ideal.py      ideal maps rendered from ground truth (tools/gt_upper_bound.py, tests)
"""
