"""The live monitor page in a real headless Chromium (Selenium + Debian's chromium-driver):
it loads, updates as frames arrive, and its screenshot is non-blank and shows numbers."""
from __future__ import annotations

import io
import os
import shutil
import threading
import time

import numpy as np
import pytest
import zmq
from stream_helpers import (
    base_cfg,
    free_port,
    rings,
    small_classifier,
    stripes,
    wait_until,
)

from speckle_embed.stream.messages import encode_frames
from speckle_embed.stream.service import StreamService

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")

if not (CHROMIUM and DRIVER):
    if os.geteuid() == 0:  # CI runs as root after `make browser`: a missing browser is a failure there
        pytest.fail("chromium/chromedriver missing: run `make browser` (apt-get install chromium chromium-driver)",
                    pytrace=False)
    pytest.skip("chromium/chromedriver not installed and not root to install them (`make browser` as root)",
                allow_module_level=True)


def test_monitor_page_updates_in_a_headless_browser(tmp_path):
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    port = free_port()
    cfg = base_cfg(tmp_path, {"kind": "zmq", "endpoint": f"tcp://127.0.0.1:{port}"},
                   monitor={"enabled": True, "host": "127.0.0.1", "port": 0, "interval_s": 0.2})
    sup = np.concatenate([rings(4, 1), stripes(4, 1)])
    svc = StreamService(cfg, classifier=small_classifier(), supports=(sup, ["single"] * 4 + ["no_hit"] * 4)).start()
    waiter = threading.Thread(target=svc.wait, daemon=True)
    waiter.start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.bind(f"tcp://127.0.0.1:{port}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.set_page_load_timeout(20)
        driver.get(svc.monitor.url)
        text = lambda i: driver.find_element(By.ID, i).text
        assert wait_until(lambda: text("classified") == "0", 10)            # connected, nothing yet
        for t in range(3):
            push.send_multipart(encode_frames(rings(10, 10 + t), 10 + t))
            push.send_multipart(encode_frames(stripes(10, 10 + t), 20 + t))
            time.sleep(0.4)
        assert wait_until(lambda: text("classified") == "60", 15), text("classified")   # the page updated
        assert text("frames-in") == "60" and text("dropped") == "0"
        assert wait_until(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#latest img")) == 2, 5)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#supports img")) == 6
        assert float(text("p99")) > 0
        png = driver.get_screenshot_as_png()
        (tmp_path / "monitor.png").write_bytes(png)
        if os.environ.get("STREAM_PAGE_SCREENSHOT"):
            shutil.copy(tmp_path / "monitor.png", os.environ["STREAM_PAGE_SCREENSHOT"])
    finally:
        driver.quit()
        push.close()
        ctx.term()
        svc.request_stop()
        waiter.join(10)
        svc.shutdown()
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert img.std() > 10                                                    # non-blank
    # the thumbnails and plots put many distinct grey levels on screen (a blank page has a handful)
    assert len(np.unique(img)) > 50
