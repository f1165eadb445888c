"""segviz's Gradio app: `python app.py [--host H] [--port P]` (or SEGVIZ_HOST / SEGVIZ_PORT)."""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import segviz.ui  # noqa: E402

demo = segviz.ui.build()
demo.queue(default_concurrency_limit=1, max_size=16)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("SEGVIZ_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SEGVIZ_PORT", "7860")))
    parser.add_argument("--no-warm-up", action="store_true",
                        help="do not prepare the CamVid models on their fastest backend in the background at start")
    args = parser.parse_args()
    if not args.no_warm_up:
        import threading

        from segviz.inference import warm_up

        threading.Thread(target=warm_up, kwargs={"log": lambda line: print(f"backend: {line}", flush=True)},
                         daemon=True).start()
    demo.launch(server_name=args.host, server_port=args.port, show_error=True)
