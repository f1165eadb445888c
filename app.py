"""segviz's Gradio app: `python app.py [--host H] [--port P] [--queue N] [--max-file-size SIZE]`.

Environment: SEGVIZ_HOST, SEGVIZ_PORT, SEGVIZ_QUEUE (requests waiting at most; a full queue
answers with the queue's message), SEGVIZ_MAX_FILE_SIZE (largest upload, e.g. "20mb").
"""
from __future__ import annotations

import argparse
import os
import re
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from segviz import env_number  # noqa: E402


def file_size(text: str, name: str = "") -> str:
    """An upload limit in the form Gradio reads ("20mb", "500kb", "1gb"); anything else is a one-line
    ValueError (naming the setting ``name`` when given)."""
    if not re.fullmatch(r"\s*[0-9]+\s*[kmgt]?b\s*", text, re.IGNORECASE) or not int(re.sub(r"\D", "", text)):
        raise ValueError(f"{name + '=' if name else ''}{text!r}: must be a file size such as 20mb, 500kb or 1gb")
    return text


try:  # the modules that read settings at import: SEGVIZ_KEEP_OUTPUTS, SEGVIZ_CRF_BUDGET, SEGVIZ_CACHE_MB
    import segviz.ui  # noqa: E402
    import segviz.ui.compare  # noqa: E402,F401

    QUEUE = env_number("SEGVIZ_QUEUE", 16, minimum=1)
    PORT = env_number("SEGVIZ_PORT", 7860)
    MAX_FILE_SIZE = file_size(os.environ.get("SEGVIZ_MAX_FILE_SIZE", "").strip() or "20mb", "SEGVIZ_MAX_FILE_SIZE")
except ValueError as e:  # a malformed setting: one line, no traceback
    sys.exit(f"error: {e}")

demo = segviz.ui.build()

demo.queue(default_concurrency_limit=1, max_size=QUEUE)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("SEGVIZ_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--queue", type=int, default=QUEUE, help="requests that may wait (default %(default)s)")
    parser.add_argument("--max-file-size", type=file_size, default=MAX_FILE_SIZE,
                        help="largest upload (default %(default)s)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="do not prepare the CamVid models on their fastest backend (and run each twice at its "
                             "input size) in the background at start")
    args = parser.parse_args()
    if args.queue < 1:
        parser.error("--queue must be at least 1")
    if not args.no_warm_up:
        import threading

        from segviz.inference import warm_up

        threading.Thread(target=warm_up, kwargs={"log": lambda line: print(f"backend: {line}", flush=True)},
                         daemon=True).start()
    demo.queue(default_concurrency_limit=1, max_size=args.queue)
    demo.launch(server_name=args.host, server_port=args.port, show_error=True, max_file_size=args.max_file_size)
