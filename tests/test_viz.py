"""The charts the tabs and the review report draw."""
import io

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from segviz import viz  # noqa: E402
from segviz.data.palettes import CAMVID  # noqa: E402
from segviz.receptive_field import DepthPoint  # noqa: E402


def test_every_chart_draws_and_pyplot_keeps_none_of_them():
    """A figure that pyplot keeps lives until someone closes it: in a server, every chart of a request whose
    result was never shown (a cancelled run) would stay in memory."""
    plt.close("all")
    names = ["FCN-8s", "PSPNet", "U-Net"]
    points = [DepthPoint(1, 3, "conv", "a"), DepthPoint(2, 7, "strided", "b"), DepthPoint(3, 480, "global", "c")]
    figures = [viz.agreement_figure(np.array([[1, 0.8, 0.7], [0.8, 1, 0.9], [0.7, 0.9, 1]]), names),
               viz.class_share_figure(np.full((3, 11), 1 / 11), names, CAMVID),
               viz.field_depth_figure({n: points for n in names}, (360, 480)),
               viz.coverage_figure(np.arange(25).reshape(5, 5) % 3, [1, 2]),
               viz.trimap_figure([1, 2, 3], {"FCN-8s": [40, 50, 60], "FCN-8s + CRF": [42, 52, 61]}),
               viz.confusion_figure(np.eye(11) * 10 + 1, CAMVID.classes, "FCN-8s")]
    assert plt.get_fignums() == []
    for fig in figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        with Image.open(buf) as im:
            assert im.size == (round(fig.get_figwidth() * 100), round(fig.get_figheight() * 100))
            assert np.asarray(im.convert("L")).std() > 5  # something was drawn
