"""dreamshot.faces (pairing, insightface folder checks) and dreamshot.shapes (synthetic characters).

No face-recognition weights install offline here, so insightface is only checked for its refusals
(missing/empty folder, never downloading); the ShapeAnalyzer stand-in covers the pairing logic.
"""

import numpy as np
import pytest

from dreamshot.errors import DreamShotInputError
from dreamshot.faces import FaceAnalyzer, assign, cosine_matrix, load_insightface
from dreamshot.shapes import SHAPE_CAST, ShapeAnalyzer, classify_region, render_scene


def test_assign_is_one_to_one_and_thresholded():
    sim = np.array([[0.9, 0.8], [0.85, 0.1], [0.2, 0.3]])
    # Greedy would give row 0 -> 0 and leave row 1 with 0.1; Hungarian maximises the total.
    assert assign(sim, 0.5) == [1, 0, None]
    assert assign(sim, 0.95) == [None, None, None]
    assert assign(np.zeros((0, 3)), 0.5) == []


def test_cosine_matrix():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[3.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_matrix(a, b), [[1.0, 2 ** -0.5], [0.0, 2 ** -0.5]], atol=1e-6)


@pytest.mark.parametrize("k", range(len(SHAPE_CAST)))
def test_each_character_is_classified_on_its_own_region(k):
    others = [c for i, c in enumerate(SHAPE_CAST) if i != k][:2]
    placements = [(others[0], (2, 30, 30, 60)), (SHAPE_CAST[k], (34, 10, 70, 50)), (others[1], (74, 20, 110, 60))]
    image, masks = render_scene(112, 64, placements, background_seed=k)
    assert masks[1].sum() > 200
    got, conf = classify_region(image, masks[1])
    assert got == k and conf > 0.9
    got_box, _ = classify_region(image, (34, 10, 70, 50))
    assert got_box == k
    # Background alone is nobody.
    assert classify_region(image, (0, 0, 112, 6))[0] is None


def test_shape_analyzer_pairs_shots_with_references():
    analyzer = ShapeAnalyzer()
    assert isinstance(analyzer, FaceAnalyzer)
    refs = []
    for i in (0, 2, 5):
        img, _ = render_scene(48, 48, [(SHAPE_CAST[i], (8, 8, 40, 40))], background_seed=100 + i)
        (face,) = analyzer.detect(img)
        refs.append(face.embedding)
    shot, _ = render_scene(128, 64, [(SHAPE_CAST[5], (4, 10, 40, 50)), (SHAPE_CAST[0], (70, 8, 110, 56))], 7)
    faces = analyzer.detect(shot)
    assert len(faces) == 2
    pairing = assign(cosine_matrix(np.stack([f.embedding for f in faces]), np.stack(refs)), 0.5)
    by_x = {round(f.box[0]): p for f, p in zip(faces, pairing)}
    assert by_x[min(by_x)] == 2 and by_x[max(by_x)] == 0  # teal at left -> ref 2, ruby at right -> ref 0


def test_insightface_folder_refusals(tmp_path):
    with pytest.raises(DreamShotInputError, match="model_dir.*no insightface model folder"):
        load_insightface("")
    with pytest.raises(DreamShotInputError, match="is not a folder"):
        load_insightface(tmp_path / "missing")
    with pytest.raises(DreamShotInputError, match=r"no \.onnx model files.*buffalo_l"):
        load_insightface(tmp_path)
