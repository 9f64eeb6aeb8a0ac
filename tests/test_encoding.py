import torch

from puppet_master.drags import encode_drags, used_drag_slots


def test_encoding_equals_reference_golden_a_exactly(golden_a):
    drags = golden_a["input.drags"]
    for s in (32, 16, 8):
        enc = encode_drags(drags, s)
        assert enc.shape == (2, 14, 30, s, s)
        assert torch.equal(enc, golden_a[f"encoding.{s}"]), f"resolution {s} differs"


def test_encoding_cells_and_offsets_by_hand():
    # one drag from (0.3, 0.6) to (0.8, 0.1) over 3 frames at s = 10
    drags = torch.zeros(1, 3, 2, 4)
    start = torch.tensor([0.3, 0.6])
    ends = [torch.tensor([0.3, 0.6]), torch.tensor([0.55, 0.35]), torch.tensor([0.8, 0.1])]
    for n in range(3):
        drags[0, n, 0, :2] = start
        drags[0, n, 0, 2:] = ends[n]
    enc = encode_drags(drags, 10)
    assert enc.shape == (1, 3, 12, 10, 10)
    # start (0.3, 0.6): j = round(3 - .5) = 2 (half to even), i = round(6 - .5) = 6 (5.5 -> 6)
    assert torch.allclose(enc[0, 1, 0:2, 6, 2], torch.tensor([1.0, 0.0]), atol=1e-6)
    # frame-1 point (0.55, 0.35): j = round(5.0) = 5, i = round(3.0) = 3 -> offsets (0.5, 0.5)
    assert torch.allclose(enc[0, 1, 2:4, 3, 5], torch.tensor([0.5, 0.5]), atol=1e-6)
    # final point (0.8, 0.1): j = round(7.5) = 8, i = round(0.5) = 0 -> offsets (0, 1)
    assert torch.allclose(enc[0, 1, 4:6, 0, 8], torch.tensor([0.0, 1.0]), atol=1e-6)
    # everything else of the used slot is -1: exactly 3 cells x 2 channels set per frame
    assert int((enc[0, 1, :6] != -1).sum()) <= 6
    # the unused slot is -1 everywhere
    assert torch.all(enc[:, :, 6:] == -1)


def test_encoding_non_square_and_clipping():
    drags = torch.zeros(1, 2, 1, 4)
    drags[0, :, 0] = torch.tensor([0.999, 0.999, 0.0001, 0.5])
    enc = encode_drags(drags, (4, 6))  # h = 4, w = 6
    assert enc.shape == (1, 2, 6, 4, 6)
    # start -> last cell (i=3, j=5), offset = s*x - j
    torch.testing.assert_close(enc[0, 0, 0:2, 3, 5], torch.tensor([6 * 0.999 - 5, 4 * 0.999 - 3]))
    # current x near 0 -> j clipped to 0
    torch.testing.assert_close(enc[0, 0, 2:4, 2, 0], torch.tensor([6 * 0.0001, 4 * 0.5 - 2]))


def test_used_slots():
    drags = torch.zeros(2, 3, 5, 4)
    drags[0, 1, 2, 3] = 0.5
    used = used_drag_slots(drags)
    assert used.tolist() == [[False, False, True, False, False], [False] * 5]
