"""protocol=vidmp3_clip: the paper's clip (16 frames, stride 4, from the start) for any method's data."""

from __future__ import annotations

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from vedit.run import CONF_DIR


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_vidmp3_clip_protocol_takes_16_frames_every_4th_from_the_start(tmp_path):
    folder = tmp_path / "JPEGImages" / "480p" / "ramp"
    folder.mkdir(parents=True)
    for t in range(70):  # frame t has grey level 3 t: which source frame was kept is readable
        Image.fromarray(np.full((16, 16, 3), 3 * t, np.uint8)).save(folder / f"{t:05d}.png")
    for method in ("vidmp3", "pix2video", "framewise"):
        cfg = composed(f"method={method}", "data=davis", f"data.root={tmp_path}", "data.sequences=[ramp]",
                       "data.transform.size=[16,16]", "protocol=vidmp3_clip")
        assert (cfg.data.transform.max_frames, cfg.data.transform.stride, cfg.data.transform.start) == (16, 4, 0)
        video = instantiate(cfg.data).load("ramp").video
        levels = (video.frames.mean(dim=(1, 2, 3)) * 255).round().tolist()
        assert levels == [3.0 * t for t in range(0, 64, 4)], method
    short = composed("data=davis", "protocol=vidmp3_clip")
    assert short.data.transform.size == [512, 512]  # the protocol changes time only
    assert composed("data=davis").data.transform.max_frames is None  # off unless asked
