import numpy as np
import pytest

from puppet_master.errors import UserInputError
from puppet_master.video import check_output_path, draw_drags, read_video, write_video


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".mp4"])
def test_round_trip_keeps_identical_consecutive_frames(tmp_path, suffix):
    frames = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (0, 0, 0, 120, 120, 250)])
    path = write_video(frames, tmp_path / f"v{suffix}", fps=7)
    back = read_video(path)
    assert back.shape == frames.shape  # Pillow/libwebp merge identical frames; reading expands them again
    if suffix != ".mp4":
        np.testing.assert_allclose(back.mean(axis=(1, 2, 3)), frames.mean(axis=(1, 2, 3)), atol=3)


def test_write_refuses_overwrite_and_leaves_no_temp(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    write_video(frames, tmp_path / "a.gif")
    with pytest.raises(UserInputError, match="--overwrite"):
        write_video(frames, tmp_path / "a.gif")
    with pytest.raises(UserInputError, match=".mp4"):
        check_output_path(tmp_path / "a.avi")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif"]


def test_draw_drags_marks_the_track():
    frames = np.full((3, 32, 32, 3), 255, np.uint8)
    out = draw_drags(frames, np.array([[[4.0, 4.0], [16.0, 16.0], [28.0, 28.0]]]))
    assert (out[0] != 255).any() and (out[2, 28, 28] != 255).any() and (out[2, 4, 28] == 255).all()
    assert (frames == 255).all()  # input untouched
