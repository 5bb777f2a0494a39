"""The detector on ground-truth renders (issue acceptance) and on hand-made edge cases."""

import numpy as np
import pytest

from worlds.shapes.data import make_scene
from worlds.shapes.detector import box_iou, classify_shape, detect, largest_component, open_mask
from worlds.shapes.render import SceneObject, draw_scene, object_mask


def test_acceptance_on_500_ground_truth_scenes():
    tp = fp = fn = 0
    ious = []
    for i in range(500):
        scene = make_scene(seed=123, index=i)
        truth = {(o.colour, o.shape): o.box for o in scene.objects}
        pred = {(d.colour, d.shape): d.box for d in detect(scene.image)}
        for key, box in pred.items():
            if key in truth:
                tp += 1
                ious.append(box_iou(box, truth[key]))
            else:
                fp += 1
        fn += len(set(truth) - set(pred))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision >= 0.98 and recall >= 0.98, (precision, recall)
    assert np.mean(ious) >= 0.9


def test_antialiased_rim_is_not_a_second_colour():
    # half-covered red pixels on a grey background are nearest to orange; they must not become an object
    img = draw_scene([SceneObject("red", "square", (0.1, 0.1, 0.55, 0.55), rgb=(235, 45, 45))])
    assert [(d.colour, d.shape) for d in detect(img)] == [("red", "square")]


def test_empty_and_noisy_images():
    assert detect(np.full((64, 64, 3), 220, np.uint8)) == []
    rng = np.random.default_rng(0)
    speckle = np.full((64, 64, 3), 220, np.uint8)
    ys, xs = rng.integers(0, 64, 60), rng.integers(0, 64, 60)
    speckle[ys, xs] = (40, 70, 225)  # isolated blue pixels: no object
    assert detect(speckle) == []
    with pytest.raises(ValueError, match="RGB"):
        detect(np.zeros((64, 64), np.uint8))


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_shape_templates_classify_ideal_masks(shape):
    mask = object_mask(SceneObject("red", shape, (0.2, 0.3, 0.6, 0.7))) >= 0.5
    got, iou, box = classify_shape(mask)
    assert got == shape and iou > 0.9


def test_components_and_opening():
    m = np.zeros((10, 10), bool)
    m[1:4, 1:4] = True  # 9 px
    m[6:9, 5:9] = True  # 12 px
    m[0, 9] = True
    assert largest_component(m).sum() == 12
    line = np.zeros((10, 10), bool)
    line[5, :] = True
    assert open_mask(line).sum() == 0
    assert box_iou((0, 0, 1, 1), (0, 0, 0.5, 1)) == pytest.approx(0.5)
