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


def test_stopping_ffmpeg_early_prints_nothing_but_the_error(tmp_path, monkeypatch, caplog):
    """A video over the frame limit stops ffmpeg mid-stream; when ffmpeg does not quit at once (a busy
    machine), imageio-ffmpeg kills it after 1.5 s and logs that it had to: not news for a stop we asked
    for, so read_video leaves the user the one error line."""
    import logging
    import subprocess

    import imageio_ffmpeg

    path = tmp_path / "long.mp4"
    write_video(np.zeros((12, 16, 16, 3), np.uint8), path, fps=7)
    # ffmpeg that never quits by itself: imageio-ffmpeg then takes its kill path
    monkeypatch.setattr(subprocess.Popen, "poll", lambda self: None)
    caplog.set_level(logging.WARNING, logger="imageio_ffmpeg")
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader), next(reader)
    reader.close()
    assert "had to kill ffmpeg" in caplog.text  # the path is taken, and logs without our filter
    caplog.clear()
    with pytest.raises(UserInputError, match="more than 3"):
        read_video(path, max_frames=3)
    assert "had to kill ffmpeg" not in caplog.text and not logging.getLogger("imageio_ffmpeg").filters
