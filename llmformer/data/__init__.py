"""Training and evaluation data without torch: synthetic scenes generated on the fly
(`llmformer.data.synthetic`, composed from `shapes`, `textures`, `layout`, `relations` and `captions`) and a
COCO-Stuff folder reader (`llmformer.data.cocostuff`). Both yield items with an RGB image, a label map into
`classes` (255 = ignore) and a caption, so one training loop takes either. `llmformer.data.scene_folder`
writes scenes as files for `runtime.evaluate`; `llmformer.data.frames` makes generated frames with scripted
captions for builds without trained weights, calibration and tests."""
from llmformer.data.cocostuff import CocoStuff, CocoStuffItem, CocoStuffLayoutError, write_cocostuff_layout
from llmformer.data.synthetic import (BACKGROUND_NAMES, HELDOUT_NAMES, IGNORE, OBJECT_NAMES, SPLITS, Scene, SceneObject,
                            SyntheticScenes, make_scene, split_classes)

__all__ = ["BACKGROUND_NAMES", "HELDOUT_NAMES", "IGNORE", "OBJECT_NAMES", "SPLITS", "Scene", "SceneObject",
           "SyntheticScenes", "make_scene", "split_classes", "CocoStuff", "CocoStuffItem", "CocoStuffLayoutError",
           "write_cocostuff_layout"]
