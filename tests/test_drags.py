import json

import numpy as np
import pytest
import torch

from puppet_master.drags import K_MAX, DragSet, deduplicate_trajectories, parse_drag_argument, stack_drag_tensors
from puppet_master.errors import DragError


def test_from_pairs_interpolates_linearly_frame0_is_start():
    d = DragSet.from_pairs([((10, 20), (110, 70))], width=200, height=100, num_frames=11)
    assert d.trajectories.shape == (1, 11, 2)
    np.testing.assert_allclose(d.trajectories[0, 0], [10, 20])
    np.testing.assert_allclose(d.trajectories[0, -1], [110, 70])
    np.testing.assert_allclose(d.trajectories[0, 5], [60, 45])  # midway
    np.testing.assert_allclose(np.diff(d.trajectories[0], axis=0), np.tile([[10, 5]], (10, 1)))


def test_to_tensor_layout_matches_design_section_2():
    d = DragSet.from_pairs([((64, 128), (192, 64)), ((0.5 * 256, 0.25 * 256), (0.5 * 256, 0.75 * 256))], 256, 256, 14)
    t = d.to_tensor()
    assert t.shape == (14, K_MAX, 4) and t.dtype == torch.float32
    # start repeated in every frame, frame 0 current == start, last frame current == end
    torch.testing.assert_close(t[:, 0, :2], torch.tensor([[0.25, 0.5]]).expand(14, 2))
    torch.testing.assert_close(t[0, 0, 2:], t[0, 0, :2])
    torch.testing.assert_close(t[-1, 0, 2:], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(t[-1, 1, 2:], torch.tensor([0.5, 0.75]))
    assert torch.count_nonzero(t[:, 2:]) == 0  # unused slots all zero in every frame


def test_tensor_round_trip_and_reference_drags(golden_a):
    drags = golden_a["input.drags"]  # (2, 14, 5, 4)
    d0 = DragSet.from_tensor(drags[0], 256, 256)
    assert d0.num_drags == 2 and d0.num_frames == 14
    torch.testing.assert_close(d0.to_tensor(5), drags[0], atol=1e-6, rtol=0)
    d1 = DragSet.from_tensor(drags[1], 256, 256)
    assert d1.num_drags == 1
    # reference drags are linear start->end interpolations: our builder reproduces them
    rebuilt = DragSet.from_pairs([(d1.starts[0], d1.ends[0])], 256, 256, 14)
    torch.testing.assert_close(rebuilt.to_tensor(5), drags[1], atol=1e-6, rtol=0)


def test_json_round_trip_pixels_and_normalized(tmp_path):
    d = DragSet.from_pairs([((10, 20), (30, 40)), ((50, 60), (5, 6))], 100, 80, 8)
    for coords in ("pixels", "normalized"):
        path = tmp_path / f"{coords}.json"
        path.write_text(json.dumps(d.to_json(coords)))
        back = DragSet.from_json(path, num_frames=8)
        np.testing.assert_allclose(back.trajectories, d.trajectories, atol=1e-9)
        assert (back.width, back.height) == (100, 80)


def test_json_start_end_and_rescaling_to_the_actual_image():
    text = json.dumps({"image_size": [100, 50], "drags": [{"start": [10, 10], "end": [50, 20]}]})
    d = DragSet.from_json(text, width=200, height=100, num_frames=5)
    np.testing.assert_allclose(d.starts[0], [20, 20])
    np.testing.assert_allclose(d.ends[0], [100, 40])
    bare = DragSet.from_json('[{"start": [0.1, 0.2], "end": [0.3, 0.4]}]'.replace("[{", '{"coordinates": "normalized", "drags": [{').replace("}]", "}]}"), width=10, height=10, num_frames=3)
    np.testing.assert_allclose(bare.ends[0], [3, 4])


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: DragSet.from_pairs([], 10, 10), "no drags"),
        (lambda: DragSet.from_pairs([((1, 1), (2, 2))] * 6, 10, 10), "at most 5"),
        (lambda: DragSet.from_pairs([((1, float("nan")), (2, 2))], 10, 10), "non-finite"),
        (lambda: DragSet.from_pairs([((-1, 1), (2, 2))], 10, 10), "starts outside the image"),
        (lambda: DragSet.from_pairs([((1, 1), (2, 25))], 10, 10), "more than one image size outside"),
        (lambda: DragSet.from_json('{"image_size": {"a": 1}, "drags": [{"start": [1, 1], "end": [2, 2]}]}'), "image_size"),
        (lambda: DragSet.from_json('{"image_size": [1e999, 64], "drags": [{"start": [1, 1], "end": [2, 2]}]}'), "finite"),
        (lambda: DragSet.from_json('{"image_size": [10.5, 64], "drags": [{"start": [1, 1], "end": [2, 2]}]}'), "whole"),
        (lambda: DragSet.from_json('{"drags": [{"start": [1, true], "end": [2, 2]}]}', 10, 10), "number"),
        (lambda: DragSet.from_json('{"drags": [{"start": [1, 1, 1], "end": [2, 2]}]}', 10, 10), r"\[x, y\]"),
        (lambda: DragSet.from_json('{"drags": "abc"}', 10, 10), "non-empty list"),
        (lambda: DragSet.from_json('{"drags": [[1, 2]]}', 10, 10), "must be an object"),
        (lambda: DragSet.from_json({"drags": [{"start": [1, 1], "end": [2, 2]}] * 6}, 10, 10), "at most 5"),
        (lambda: DragSet.from_json("[" * 100_000 + "]" * 100_000, 10, 10), "nested too deeply"),
        (lambda: DragSet.from_json({"drags": [{"trajectory": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}]}, 10, 10), "nested too deeply"),
        (lambda: DragSet.from_tensor(torch.zeros(14, 5, 4, dtype=torch.int64), 10, 10), "float"),
        (lambda: DragSet.from_tensor(torch.zeros(1).expand(14, 2**31, 4), 10, 10), "1 to 64 slots"),
        (lambda: DragSet.from_tensor(torch.full((14, 5, 4), float("nan")), 10, 10), "non-finite"),
        (lambda: DragSet.from_trajectories([[(1, 1)] * 4, [(1, 1)] * 5], 10, 10), "same number of frames"),
        (lambda: DragSet.from_trajectories([[(1, 1)] * 4], 10, 10, num_frames=14), "14 frames"),
        (lambda: DragSet.from_json('{"drags": [{"start": [1, 1]}]}', 10, 10), "start"),
        (lambda: DragSet.from_json("{not json", 10, 10), "not valid"),
        (lambda: DragSet.from_json("/no/such/file.json", 10, 10), "cannot read"),
        (lambda: DragSet.from_json('{"drags": [{"start": [1, 1], "end": [2, 2]}]}'), "image_size"),
        (lambda: DragSet.from_json('{"drags": [{"trajectory": [[1, 1], [2, 2]]}]}', 10, 10, num_frames=3), "3 frames"),
    ],
)
def test_invalid_drags_raise_clear_errors(build, message):
    with pytest.raises(DragError, match=message):
        build()


def test_later_points_may_leave_the_image_start_may_not(tmp_path):
    # a part moving out of view (Drag-a-Move holds normalised points up to 1.10): valid, clipped by the encoding
    d = DragSet.from_pairs([((5, 5), (11, 2))], 10, 10, num_frames=3)
    np.testing.assert_allclose(d.ends[0], [11, 2])
    t = d.to_tensor()
    assert float(t[-1, 0, 2]) == pytest.approx(1.1)
    drags = torch.zeros(14, 5, 4)
    drags[:, 0, :2] = torch.tensor([0.5, 0.5])
    drags[:, 0, 2] = torch.linspace(0.5, 1.1, 14)
    drags[:, 0, 3] = 0.5
    back = DragSet.from_tensor(drags, 256, 256)
    assert back.trajectories[0, -1, 0] == pytest.approx(1.1 * 256)
    (tmp_path / "d.json").write_bytes(b'{"drags": [{"start": [1, 1], "end": [2, 2]}]}\xff\xfe')
    with pytest.raises(DragError, match="not UTF-8"):
        DragSet.from_json(tmp_path / "d.json", 10, 10)


def test_parse_drag_argument():
    assert parse_drag_argument("1,2:3.5,4") == ((1.0, 2.0), (3.5, 4.0))
    for bad in ["1,2", "1,2:3", "a,b:c,d", "1,2:3,4:5,6", "1,inf:2,2"]:
        with pytest.raises(DragError):
            parse_drag_argument(bad)


def test_dedup_threshold_is_20_per_frame_at_256():
    n = 14
    base = np.stack([np.linspace(50, 150, n), np.full(n, 100.0)], -1)
    just_inside = base + [0, 20.0]  # distance 20 per frame: sum = 20 N = delta -> duplicate
    just_outside = base + [0, 20.01]
    assert deduplicate_trajectories(np.stack([base, just_inside])) == [0]
    assert deduplicate_trajectories(np.stack([base, just_outside])) == [0, 1]
    # greedy: the first of a group is kept, later ones compared with kept ones only
    far = base + [0, 100.0]
    assert deduplicate_trajectories(np.stack([base, just_inside, far, far + [0, 1]])) == [0, 2]


def test_dedup_scales_with_image_size():
    # at 512x512 the same physical offset is 2x the pixels: 40 px/frame is the threshold
    n = 6
    base = np.stack([np.linspace(100, 300, n), np.full(n, 200.0)], -1)
    d = DragSet.from_trajectories([base, base + [0, 39.9]], 512, 512)
    assert d.deduplicated().num_drags == 1
    d = DragSet.from_trajectories([base, base + [0, 40.2]], 512, 512)
    assert d.deduplicated().num_drags == 2


def test_transformed_maps_points_and_resample_keeps_ends():
    d = DragSet.from_pairs([((10, 20), (30, 40))], 100, 50, 5)
    m = d.transformed(2.0, (0, 50), 200, 200)
    np.testing.assert_allclose(m.starts[0], [20, 90])
    r = d.resample(9)
    assert r.num_frames == 9
    np.testing.assert_allclose(r.trajectories[0, [0, -1]], d.trajectories[0, [0, -1]])


def test_stack_drag_tensors_batch_layout():
    a = DragSet.from_pairs([((1, 1), (2, 2))], 10, 10, 4)
    b = DragSet.from_pairs([((3, 3), (4, 4)), ((5, 5), (6, 6))], 10, 10, 4)
    t = stack_drag_tensors([a, b])
    assert t.shape == (2, 4, K_MAX, 4)
    assert torch.count_nonzero(t[0, :, 1:]) == 0 and torch.count_nonzero(t[1, :, 2:]) == 0
